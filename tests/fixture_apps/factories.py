"""App factories for ``--factory``."""

from __future__ import annotations

from typing import Any


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"built by the factory"})


def make_app() -> Any:
    return _app


def broken_factory() -> Any:
    raise ValueError("factory exploded")
