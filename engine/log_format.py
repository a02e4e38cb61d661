"""How log records render: escaping, the access line, and the text and JSON formatters.

Everything here is decided once at start-up (the access template, which request headers are
read, colours, the JSON encoder), so that rendering a record is a few attribute reads and one
``str.format`` call.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from polycorn.errors import ConfigError

# C0 and C1 controls and DEL: a request path or header must not forge log lines or move a
# terminal's cursor (log injection, ANSI escapes).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """Render request-controlled text safe for a log line."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# -- the access line --------------------------------------------------------------------------------

#: Every field an access line may name, in the order of the values ``HttpService.log_access``
#: builds: the first seven are what the default line needs and are always computed; the rest only
#: when a format (or a structured output) asks for them.
ACCESS_FIELDS = (
    "client",
    "method",
    "target",
    "http_version",
    "status",
    "bytes",
    "duration_ms",
    "path",
    "query",
    "user_agent",
    "referer",
    "request_id",
    "worker_id",
)
_CORE = 7
_INDEX = {name: i for i, name in enumerate(ACCESS_FIELDS)}
_HEADER_FIELDS = frozenset({"user_agent", "referer", "request_id"})
_PART_FIELDS = frozenset({"path", "query"})
#: Where the status colour and the reset code go in the template's arguments (colours on).
_COLOUR, _RESET = len(ACCESS_FIELDS), len(ACCESS_FIELDS) + 1

DEFAULT_ACCESS_FORMAT = '{client} - "{method} {target} HTTP/{http_version}" {status} {bytes} {duration_ms}ms'

#: Values of the right type for each field: a format spec is tried on them at start-up.
_SAMPLE = ("127.0.0.1:50000", "GET", "/a?b=c", "1.1", 200, 1234, 1.25, "/a", "b=c", "-", "-", "-", 0, "", "")

RESET = "\x1b[0m"
#: Access status colour by class: 1xx and 3xx cyan, 2xx green, 4xx yellow, 5xx red.
STATUS_COLOURS = {1: "\x1b[36m", 2: "\x1b[32m", 3: "\x1b[36m", 4: "\x1b[33m", 5: "\x1b[31m"}
#: Level name colours of the text formatter.
LEVEL_COLOURS = {
    "TRACE": "\x1b[34m",
    "DEBUG": "\x1b[36m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}


@dataclass(frozen=True)
class AccessFormat:
    """An --access-log-format compiled once at start-up for one loop's HttpService."""

    text: str
    #: The fields the format names.
    fields: frozenset[str]
    #: The line from the values, a tuple in ACCESS_FIELDS order (and, with colours, the status
    #: colour and the reset code after them): ``%`` formatting where the format allows (the
    #: default line is one ``template % values``), ``str.format`` where it has format specs.
    render: Callable[[tuple[Any, ...]], str]
    #: The values after the first seven (``extras(scope, status)``), or None when nothing uses them.
    extras: Callable[[dict[str, Any], int], tuple[Any, ...]] | None
    #: Every field's name, when each is also an attribute of the record (JSON, --log-config).
    keys: tuple[str, ...] | None


def compile_access_format(
    text: str | None, *, worker_id: int = 0, colours: bool = False, every_field: bool = False
) -> AccessFormat:
    """Check an --access-log-format and compile it; ConfigError (one line) if it is not valid.

    ``colours``: the status is wrapped in its class's colour (a text log on a terminal).
    ``every_field``: a structured output (JSON, a user's --log-config) gets every field, so every
    one is computed; otherwise only those the format names, and headers only if it names one.
    """
    if text is None:
        text = DEFAULT_ACCESS_FORMAT
    if not text:
        raise ConfigError("--access-log-format: empty format")
    if "\n" in text or "\r" in text:
        raise ConfigError("--access-log-format: must be a single line (no CR or LF)")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"--access-log-format: {exc} in {text!r}") from None
    percent_parts: list[str] = []  # the same line as a %-template, if it has no format specs
    format_parts: list[str] = []  # and as a positional str.format template
    order: list[int] = []  # the value indices in the order the line uses them
    fields: set[str] = set()
    percent = True
    for literal, name, spec, conversion in parsed:
        percent_parts.append(literal.replace("%", "%%"))
        format_parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if name not in _INDEX:
            what = "a field name is missing ('{}')" if not name else f"unknown field {name!r}"
            raise ConfigError(f"--access-log-format: {what}; fields: {', '.join(ACCESS_FIELDS)}")
        if spec and "{" in spec:
            raise ConfigError(f"--access-log-format: nested fields in the format spec of {{{name}}} are not supported")
        fields.add(name)
        index = _INDEX[name]
        if spec or conversion:
            percent = False
        elif name == "duration_ms":
            spec = ".2f"  # a bare {duration_ms} renders like the default line: two decimals
        field = f"{{{index}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        percent_field = "%.2f" if name == "duration_ms" else "%s"  # used only if no field has a spec
        if name == "status" and colours:
            format_parts.append(f"{{{_COLOUR}}}{field}{{{_RESET}}}")
            percent_parts.append("%s" + percent_field + "%s")
            order += (_COLOUR, index, _RESET)
        else:
            format_parts.append(field)
            percent_parts.append(percent_field)
            order.append(index)
    extras = _extras(frozenset(fields), worker_id, every_field, colours and "status" in fields)
    width = _CORE if extras is None else len(_SAMPLE) if colours and "status" in fields else len(ACCESS_FIELDS)
    try:
        "".join(format_parts).format(*_SAMPLE)  # a spec that does not suit its field's type
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ConfigError(f"--access-log-format: {exc} in {text!r}") from None
    percent_template = "".join(percent_parts) if percent else None
    render = _renderer(percent_template, "".join(format_parts), order, width)
    render(_SAMPLE[:width])
    return AccessFormat(text, frozenset(fields), render, extras, ACCESS_FIELDS if every_field else None)


def _renderer(percent: str | None, template: str, order: list[int], width: int) -> Callable[[tuple[Any, ...]], str]:
    if percent is None:
        format_line = template.format
        return lambda values: format_line(*values)
    if order == list(range(width)):
        return percent.__mod__  # the values are the template's arguments as they come
    if not order:
        line = percent % ()
        return lambda values: line
    pick = itemgetter(*order)
    if len(order) == 1:
        return lambda values: percent % (pick(values),)
    return lambda values: percent % pick(values)


_REQUEST_HEADERS = {b"user-agent": 0, b"referer": 1, b"x-request-id": 2}.get


def _extras(
    fields: frozenset[str], worker_id: int, every_field: bool, colours: bool
) -> Callable[[dict[str, Any], int], tuple[Any, ...]] | None:
    """The function that computes the values after the first seven, or None if none are used."""
    parts = every_field or not fields.isdisjoint(_PART_FIELDS)
    headers = every_field or not fields.isdisjoint(_HEADER_FIELDS)
    if not (every_field or colours or any(_INDEX[name] >= _CORE for name in fields)):
        return None
    absent = ("-", "-", "-")

    def extras(scope: dict[str, Any], status: int) -> tuple[Any, ...]:
        if parts:
            path = escape(scope["path"])
            query = escape(scope["query_string"].decode("latin-1"))
        else:
            path = query = ""
        if headers:
            found: list[str | None] = [None, None, None]
            for name, value in scope["headers"]:
                slot = _REQUEST_HEADERS(name)
                if slot is not None and found[slot] is None:  # the first of repeated fields
                    found[slot] = escape(value.decode("latin-1"))
            user_agent, referer, request_id = (v if v is not None else "-" for v in found)
        else:
            user_agent, referer, request_id = absent
        if colours:
            colour = STATUS_COLOURS.get(status // 100, "")
            return (path, query, user_agent, referer, request_id, worker_id, colour, RESET)
        return (path, query, user_agent, referer, request_id, worker_id)

    return extras


# -- formatters -------------------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """logging.Formatter that can colour the level name (only when told to, decided at start-up)."""

    def __init__(
        self, fmt: str | None = None, datefmt: str | None = None, style: Any = "%", colors: bool = False
    ) -> None:
        super().__init__(fmt, datefmt, style)
        self.colors = colors

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not self.colors:
            return super().formatMessage(record)
        colour = LEVEL_COLOURS.get(record.levelname)
        if colour is None:
            return super().formatMessage(record)
        # A copy: other handlers see the same record and must not get the colour codes.
        clone = copy.copy(record)
        clone.levelname = colour + record.levelname.ljust(8) + RESET  # padded inside: codes take no width
        return super().formatMessage(clone)


#: Attributes every LogRecord has (and the ones formatters add): the rest came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_RESERVED = frozenset({"time", "level", "logger", "message", "exc_info", "stack_info"})


@functools.cache
def json_dumps() -> Callable[[dict[str, Any]], str]:
    """The JSON encoder, chosen once: orjson where installed, unless the GIL is off.

    On a free-threaded build running without the GIL, importing an extension that does not
    declare free-threading support turns the GIL back on for the whole process; orjson is then
    not even imported, and the standard library encodes.
    """
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if gil_enabled is None or gil_enabled():
        try:
            import orjson
        except ImportError:
            pass
        else:
            dumps = orjson.dumps

            def encode(obj: dict[str, Any]) -> str:
                return str(dumps(obj, default=str), "utf-8")

            return encode
    return functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, then the record's extras.

    An access record's extras are its fields (``HttpService.log_access`` passes them); a record
    with exception information gets its traceback as ``exc_info``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dumps = json_dumps()
        self._second: tuple[int, str] = (-1, "")

    def _time(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        cached = self._second  # one tuple read: thread workers share this formatter
        if cached[0] != seconds:
            cached = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
            self._second = cached
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _RESERVED and key[:1] != "_":
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return self._dumps(out)
