"""Logging: the default configuration, --log-config files, and which formatter and colours apply.

How records render (the access line, text and JSON formatters, escaping) is polycorn.log_format.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.config
import sys
from typing import TYPE_CHECKING, Any, TextIO

from polycorn.errors import ConfigError
from polycorn.log_format import JsonFormatter, TextFormatter, compile_access_format
from polycorn.log_format import escape as escape

if TYPE_CHECKING:
    from polycorn.config import Config

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

error_logger = logging.getLogger("polycorn.error")
access_logger = logging.getLogger("polycorn.access")

_LINE = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"

DEFAULT_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {"format": _LINE},
        "access": {"format": _LINE},
    },
    "handlers": {
        "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "polycorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "polycorn.error": {"level": "INFO"},
        "polycorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}


def logging_dict(log_format: str = "text", colours_err: bool = False, colours_out: bool = False) -> dict[str, Any]:
    """The dictConfig Polycorn applies without --log-config: error log on stderr, access log on stdout."""
    config = copy.deepcopy(DEFAULT_LOGGING)
    formatters = config["formatters"]
    if log_format == "json":
        formatters["default"] = {"()": JsonFormatter}
        formatters["access"] = {"()": JsonFormatter}
    else:
        formatters["default"] = {"()": TextFormatter, "fmt": _LINE, "colors": colours_err}
        formatters["access"] = {"()": TextFormatter, "fmt": _LINE, "colors": colours_out}
    return config


def colours_for(use_colors: bool | None, stream: TextIO) -> bool:
    """--use-colors, --no-use-colors, or (unset) whether the stream is a terminal."""
    if use_colors is not None:
        return use_colors
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def access_colours(config: Config) -> bool:
    """Whether the access status is coloured: text logs on stdout (where they go) with colours on.

    Never with --log-config (its formatters decide) nor with JSON.
    """
    return config.log_config is None and config.log_format == "text" and colours_for(config.use_colors, sys.stdout)


def configure_logging(config: Config, *, announce: bool = True) -> None:
    """Apply the default or the user's logging configuration, then the level flags.

    Run in every process that serves (the supervisor's and each worker process's); thread
    workers share their process's. A bad --access-log-format stops start-up here, before the
    app is imported. ``announce``: this is the process the user started, which warns about
    ignored flags once (worker processes do not repeat it).
    """
    compile_access_format(config.access_log_format)
    if config.log_config is None:
        colours_err = colours_for(config.use_colors, sys.stderr) if config.log_format == "text" else False
        colours_out = access_colours(config)
        logging.config.dictConfig(logging_dict(config.log_format, colours_err, colours_out))
    else:
        _load_config_file(config.log_config)
    log_level = config.log_level
    level = TRACE if log_level == "trace" else getattr(logging, log_level.upper())
    logging.getLogger("polycorn").setLevel(level)
    logging.getLogger("polycorn.error").setLevel(level)
    if not config.access_log:
        access_logger.handlers.clear()
        access_logger.propagate = False
        access_logger.disabled = True
    else:
        access_logger.disabled = False
        access_logger.setLevel(level)
    ignored = config.log_format != "text" or config.use_colors is not None
    if config.log_config is not None and ignored and announce:
        error_logger.warning("--log-config decides the log format: --log-format and --use-colors are ignored")


def _load_config_file(path: str) -> None:
    try:
        if path.endswith(".json"):
            with open(path) as fh:
                logging.config.dictConfig(json.load(fh))
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ConfigError("--log-config: a YAML file needs PyYAML (pip install 'polycorn[yaml]')") from None
            with open(path) as fh:
                logging.config.dictConfig(yaml.safe_load(fh))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"--log-config: no such file {path!r}") from None
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the parser's message looks like
        raise ConfigError(f"--log-config: {path!r} is not a valid logging configuration: {reason}") from None


def request_target(scope: dict[str, Any]) -> str:
    """The request's path and query as one escaped string, for access and error log lines."""
    query = scope["query_string"]
    return escape(scope["path"] + ("?" + query.decode("latin-1") if query else ""))
