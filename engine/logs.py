"""Logging: the default configuration, --log-config files, and safe rendering of request data."""

from __future__ import annotations

import json
import logging
import logging.config
import re
from typing import Any

from polycorn.errors import ConfigError

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

error_logger = logging.getLogger("polycorn.error")
access_logger = logging.getLogger("polycorn.access")

# C0 and C1 controls and DEL: a request path or header must not forge log lines or move a
# terminal's cursor (log injection, ANSI escapes).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """Render request-controlled text safe for a log line."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


DEFAULT_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {"format": "%(asctime)s %(levelname)-8s %(name)s: %(message)s"},
        "access": {"format": "%(asctime)s %(levelname)-8s %(name)s: %(message)s"},
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


def configure_logging(log_config: str | None, log_level: str, access_log: bool) -> None:
    """Apply the default or the user's logging configuration, then the level flags."""
    if log_config is None:
        logging.config.dictConfig(DEFAULT_LOGGING)
    else:
        _load_config_file(log_config)
    level = TRACE if log_level == "trace" else getattr(logging, log_level.upper())
    logging.getLogger("polycorn").setLevel(level)
    logging.getLogger("polycorn.error").setLevel(level)
    if not access_log:
        access_logger.handlers.clear()
        access_logger.propagate = False
        access_logger.disabled = True
    else:
        access_logger.disabled = False
        access_logger.setLevel(level)


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
        raise ConfigError(f"--log-config: {path!r} is not a valid logging configuration: {exc}") from None


def request_target(scope: dict[str, Any]) -> str:
    """The request's path and query as one escaped string, for access and error log lines."""
    query = scope["query_string"]
    return escape(scope["path"] + ("?" + query.decode("latin-1") if query else ""))
