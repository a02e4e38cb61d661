"""The start-up block: what the user actually got, which may differ from what they asked for.

``auto`` choices fall back silently by design (no uvloop on Windows, no httptools on PyPy), and a
free-threaded CPython turns the GIL back on when an extension without free-threading support is
imported: the block says which implementation serves, and a warning says when a fast path was
expected but is missing.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import sysconfig

from polycorn.config import Config
from polycorn.version import __version__, build

logger = logging.getLogger("polycorn.error")


def free_threaded_build() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)())


def _version(module: str) -> str:
    """The version of a module the server already imported (importlib.metadata would cost ~2 MiB)."""
    return str(getattr(sys.modules.get(module), "__version__", "?"))


def python_line() -> str:
    line = f"{platform.python_implementation()} {platform.python_version()}"
    if not free_threaded_build():
        return line
    return f"{line}, free-threaded build, GIL {'on' if gil_enabled() else 'off'}"


def _accelerated() -> bool:
    """Where the fast path is a dependency (see pyproject.toml), its absence is worth a warning."""
    return platform.python_implementation() == "CPython" and sys.platform not in ("win32", "cygwin")


def describe(config: Config, loop: str, parser: str, workers: str) -> list[str]:
    """The lines of the block, after the title line; ``loop`` and ``parser`` are what runs."""
    kib = 1024
    websockets = "off (--ws none)" if config.ws == "none" else f"websockets {_version('websockets')}"
    if config.ws != "none" and config.ws_per_message_deflate:
        websockets += ", permessage-deflate offered"
    concurrency = (
        f"{config.limit_concurrency} in flight ({config.limit_concurrency_mode})"
        if config.limit_concurrency
        else "unlimited"
    )
    recycle = f", recycle after {config.limit_max_requests} requests" if config.limit_max_requests else ""
    lines = [
        f"event loop   {loop}" + (f" {_version('uvloop')}" if loop == "uvloop" else ""),
        f"HTTP parser  {parser} {_version(parser)}" + (" (llhttp)" if parser == "httptools" else ""),
        f"WebSocket    {websockets}",
        f"build        {build()}",
        f"workers      {workers}",
        f"limits       concurrency {concurrency}{recycle}; request line {config.limit_request_line} B, "
        f"{config.limit_request_fields} fields, head {config.limit_request_head // kib} KiB; "
        f"WebSocket message {config.ws_max_size // kib // kib} MiB",
        f"timeouts     keep-alive {config.timeout_keep_alive:g}s, request head {config.timeout_request_header:g}s, "
        f"request body {config.timeout_request_body:g}s, graceful shutdown {config.timeout_graceful_shutdown:g}s",
    ]
    if config.ssl_certfile is not None:
        clients = {"none": "no client certificates", "optional": "client certificates checked if sent"}
        lines.append(
            f"TLS          {config.ssl_min_version} or later, "
            + clients.get(config.ssl_cert_reqs, "client certificates required")
        )
    return lines


def log_startup(config: Config, loop: str, parser: str, workers: str, *, threads: bool = False) -> None:
    """One record (one block in text logs, one object in JSON logs), then the warnings.

    ``threads``: the loops run as threads of this process, which a GIL serialises.
    """
    title = f"Polycorn {__version__} on {python_line()}, pid {os.getpid()}"
    logger.info("\n  ".join([title, *describe(config, loop, parser, workers)]))
    for warning in startup_warnings(config, loop, parser, threads=threads):
        logger.warning(warning)


def startup_warnings(config: Config, loop: str, parser: str, *, threads: bool = False) -> list[str]:
    found = []
    if _accelerated():
        if config.loop == "auto" and loop != "uvloop":
            found.append("uvloop is not installed: the slower asyncio loop serves (pip install uvloop)")
        if config.http == "auto" and parser != "httptools":
            found.append("httptools is not installed: the slower h11 parser serves (pip install httptools)")
    if free_threaded_build() and gil_enabled():
        consequence = ": thread workers will not run in parallel" if threads else ""
        if os.environ.get("PYTHON_GIL") == "1" or getattr(sys.flags, "gil", None) == 1:
            found.append(f"the GIL is on (PYTHON_GIL=1 or -X gil=1){consequence}")
        else:
            found.append(
                "an extension module without free-threading support re-enabled the GIL (Python's "
                f"RuntimeWarning names it){consequence}"
            )
    return found
