"""The gunicorn worker classes, at the path gunicorn users name: ``-k polycorn.workers.PolycornWorker``.

A worker runs a :class:`polycorn.loops.server.Server`, and the engine layer does not import the
loops layer at import time: the classes live in :mod:`polycorn.loops.gunicorn` and are looked up
from there when gunicorn asks for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polycorn.loops.gunicorn import PolycornH11Worker, PolycornWorker

__all__ = ["PolycornH11Worker", "PolycornWorker"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from polycorn.loops import gunicorn

        return getattr(gunicorn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
