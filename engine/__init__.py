"""Polycorn: an ASGI server with one event loop per core.

The package root is the public facade: ``run``, ``Config`` and ``Server`` are reached lazily so
that importing the engine does not import the loops or CLI layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polycorn.config import Config
from polycorn.version import __version__

if TYPE_CHECKING:
    from polycorn.cli.main import run
    from polycorn.loops.server import Server

__all__ = ["Config", "Server", "run", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from polycorn.loops.server import Server

        return Server
    if name == "run":
        from polycorn.cli.main import run

        return run
    raise AttributeError(f"module 'polycorn' has no attribute {name!r}")
