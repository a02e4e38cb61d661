"""Configuration files: ``polycorn.toml``, the ``[tool.polycorn]`` table of ``pyproject.toml``, and ``.env``.

A TOML file is read into checked option values keyed by :class:`~polycorn.config.Config` field
name. The CLI hands them to click as the lowest-priority source, so the command line and the
environment override them without special cases; precedence is the CLI's business, not this
module's. Checking the TOML types here (and not leaving it to click) lets every mistake name the
file and the key. :func:`render_toml` is the way back: a Config as a file this module can read.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycorn.config import Config, cli_flag, option_fields
from polycorn.errors import ConfigError

#: The file looked for in the working directory first; pyproject.toml is the fallback.
POLYCORN_TOML = "polycorn.toml"
PYPROJECT_TOML = "pyproject.toml"


@dataclass(frozen=True)
class ConfigFile:
    """A read and checked configuration file."""

    #: The path as given or found, for messages and --print-config comments.
    path: str
    #: ``"tool.polycorn"`` for a pyproject.toml, ``None`` when the options are at the top level.
    table: str | None
    #: Config field name (or ``"app"``) -> value, already of the option's type.
    values: Mapping[str, Any]


def find_config_file() -> ConfigFile | None:
    """The working directory's polycorn.toml, else its pyproject.toml if that has [tool.polycorn].

    A pyproject.toml without the table belongs to other tools and is not an error.
    """
    if os.path.isfile(POLYCORN_TOML):
        return ConfigFile(POLYCORN_TOML, None, _check(POLYCORN_TOML, None, _parse(POLYCORN_TOML)))
    if os.path.isfile(PYPROJECT_TOML):
        table = _polycorn_table(PYPROJECT_TOML, _parse(PYPROJECT_TOML))
        if table is not None:
            return ConfigFile(PYPROJECT_TOML, "tool.polycorn", _check(PYPROJECT_TOML, "tool.polycorn", table))
    return None


def read_config_file(path: str) -> ConfigFile:
    """Read the file named by --config: a file called pyproject.toml must have [tool.polycorn]."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config: no such file {path!r}")
    document = _parse(path)
    if Path(path).name != PYPROJECT_TOML:
        return ConfigFile(path, None, _check(path, None, document))
    table = _polycorn_table(path, document)
    if table is None:
        raise ConfigError(f"{path}: has no [tool.polycorn] table")
    return ConfigFile(path, "tool.polycorn", _check(path, "tool.polycorn", table))


def read_env_file(path: str) -> dict[str, str]:
    """The variables of a .env file (python-dotenv's syntax and ``${VAR}`` interpolation).

    Keys without a value (a bare ``NAME`` line) are left out, as python-dotenv's load_dotenv does.
    """
    try:
        from dotenv import dotenv_values
    except ImportError:
        raise ConfigError("--env-file needs python-dotenv (pip install 'polycorn[dotenv]')") from None
    if not os.path.isfile(path):
        raise ConfigError(f"--env-file: no such file {path!r}")
    return {name: value for name, value in dotenv_values(path).items() if value is not None}


def _parse(path: str) -> dict[str, Any]:
    # Imported here: only a run that finds a config file pays for the TOML parser.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - tomli is a dependency below 3.11
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    try:
        with open(path, "rb") as file:
            document: dict[str, Any] = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return document


def _polycorn_table(path: str, document: dict[str, Any]) -> dict[str, Any] | None:
    """The [tool.polycorn] table, or None when there is none."""
    tool = document.get("tool", {})
    table = tool.get("polycorn") if isinstance(tool, dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: tool.polycorn must be a table, got {_kind(table)}")
    return table


def _keys() -> dict[str, dataclasses.Field[Any]]:
    """Every accepted spelling of an option key: field name or flag, with dashes or underscores."""
    keys: dict[str, dataclasses.Field[Any]] = {}
    for f in option_fields():
        for name in (f.name, cli_flag(f)[2:]):
            keys[name.replace("_", "-")] = f
            keys[name.replace("-", "_")] = f
    return keys


def _check(path: str, table: str | None, raw: Mapping[str, Any]) -> dict[str, Any]:
    keys = _keys()
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    where = f" in [{table}]" if table else ""
    for key, value in raw.items():
        if key == "app":
            if not isinstance(value, str):
                raise ConfigError(f"{path}: app: expected a string 'module:attribute', got {_kind(value)}")
            name, checked = "app", value
        else:
            f = keys.get(key)
            if f is None:
                close = difflib.get_close_matches(key, list(keys), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{path}: unknown option {key!r}{where}{hint}")
            name, checked = f.name, _value(path, key, f, value)
        if name in spelled:
            raise ConfigError(f"{path}: {key!r} and {spelled[name]!r} set the same option")
        spelled[name] = key
        values[name] = checked
    return values


def _value(path: str, key: str, f: dataclasses.Field[Any], value: Any) -> Any:
    """``value`` as the option's type, or a ConfigError naming the file and the key."""
    meta = f.metadata
    kind = meta["kind"]
    type_name = str(f.type)

    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: expected {expected}, got {_kind(value)}")

    if kind in ("bool", "flag"):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "choice":
        choices = meta["choices"]
        if not isinstance(value, str):
            raise wrong("one of " + ", ".join(repr(c) for c in choices))
        for choice in choices:
            if choice.lower() == value.lower():
                return choice
        raise ConfigError(f"{path}: {key}: {value!r} is not one of {', '.join(choices)}")
    if kind == "multi":
        if f.name == "headers" and isinstance(value, dict):
            items = []
            for name, text in value.items():
                if not isinstance(text, str):
                    raise ConfigError(f"{path}: {key}.{name}: expected a string, got {_kind(text)}")
                items.append(f"{name}: {text}")
            return tuple(items)
        expected = "an array of strings" + (" or a table" if f.name == "headers" else "")
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise wrong(expected)
        return tuple(value)
    if type_name.startswith("int | str"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise wrong("an integer or a string")
        return value
    if type_name.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if type_name.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if not isinstance(value, str):
        raise wrong("a string")
    return value


def _kind(value: Any) -> str:
    """A TOML value described in TOML's words, for error messages."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


# -- writing -------------------------------------------------------------------------------------


def render_toml(config: Config, sources: Mapping[str, str], *, app_set: bool = True, heading: str = "") -> str:
    """``config`` as a polycorn.toml: every option, each one's source as a trailing comment.

    ``sources`` maps a field name to where its value came from (``--port``, ``$POLYCORN_PORT``,
    ``polycorn.toml``); options missing from it have their default. Options that are not set
    (``None``) and secrets are written as comments: TOML has no null, and a masked password saved
    back into a file would be a wrong one.
    """
    lines = [f"# {line}" if line else "#" for line in heading.splitlines()]
    if app_set:
        lines.append(_line("app", _toml(config.app), sources.get("app")))
    else:
        lines.append("# app = (not set: give APP, $POLYCORN_APP or app in the config file)")
    groups: dict[str, list[dataclasses.Field[Any]]] = {}
    for f in option_fields():
        groups.setdefault(f.metadata["group"], []).append(f)
    for group, fields in groups.items():
        lines += ["", f"# -- {group}"]
        for f in fields:
            lines.append(_option_line(f, getattr(config, f.name), sources.get(f.name)))
    return "\n".join(lines) + "\n"


def _option_line(f: dataclasses.Field[Any], value: Any, source: str | None) -> str:
    key = cli_flag(f)[2:]
    if f.metadata.get("secret") and value is not None:  # option(secret=True): never written out
        return _line(f"# {key}", "(masked)", source)
    if value is None:
        return _line(f"# {key}", "(not set)", source)
    return _line(key, _toml(value), source)


def _line(key: str, text: str, source: str | None) -> str:
    line = f"{key} = {text}"
    return f"{line}  # from {source}" if source else line


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, except that TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple):
        return (
            "[" + ", ".join(_toml(f"{item[0]}: {item[1]}" if isinstance(item, tuple) else item) for item in value) + "]"
        )
    raise TypeError(f"no TOML form for {value!r}")
