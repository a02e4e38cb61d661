"""An ASGI app for the gunicorn worker tests, and worker subclasses they load.

Every response says which worker process served it (``pid``). Lifespan and request progress are
marked on stderr with the pid, for the tests to wait on.

- ``/`` : JSON with pid, scheme, client, root_path and what lifespan start-up put in the state
- ``/sleep?s=N`` : answers after N seconds without blocking the loop
- ``/block?s=N`` : blocks the whole event loop for N seconds (``time.sleep``)
- ``/ws`` : WebSocket echo, prefixed with the pid
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from polycorn.workers import PolycornWorker


def mark(text: str) -> None:
    print(f"MARK {text} pid={os.getpid()}", file=sys.stderr, flush=True)


async def _lifespan(receive: Any, send: Any, state: dict[str, Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state["started_by"] = os.getpid()
            mark("lifespan startup")
            await send({"type": "lifespan.startup.complete"})
        else:
            mark("lifespan shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _websocket(receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"{os.getpid()}:{message.get('text')}"})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, scope["state"])
        return
    if scope["type"] == "websocket":
        await _websocket(receive, send)
        return
    path = scope["path"]
    query = dict(item.split("=", 1) for item in scope["query_string"].decode().split("&") if "=" in item)
    if path == "/sleep":
        mark(f"sleep start {query['s']}")
        try:
            await asyncio.sleep(float(query["s"]))
        except asyncio.CancelledError:
            mark("sleep cancelled")
            raise
    elif path == "/block":
        mark(f"block start {query['s']}")
        time.sleep(float(query["s"]))
    body = json.dumps(
        {
            "pid": os.getpid(),
            "path": path,
            "scheme": scope["scheme"],
            "client": scope["client"],
            "root_path": scope["root_path"],
            "started_by": scope.get("state", {}).get("started_by"),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class NotAsgi:
    """A class where an ASGI callable is expected: ASGI 2 apps are refused."""


async def failing_startup(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app whose lifespan start-up fails."""
    if scope["type"] == "lifespan":
        await receive()
        mark("lifespan startup failing")
        await send({"type": "lifespan.startup.failed", "message": "no database"})


class OwnedOptionWorker(PolycornWorker):
    """Sets an option gunicorn decides: refused."""

    CONFIG_KWARGS = {"workers": 4}


class BadValueWorker(PolycornWorker):
    """An option value Polycorn refuses."""

    CONFIG_KWARGS = {"limit_request_head": 10}


class HeaderWorker(PolycornWorker):
    """A Polycorn option gunicorn has no setting for, on top of the default stack."""

    CONFIG_KWARGS = {**PolycornWorker.CONFIG_KWARGS, "headers": (("x-served-by", "polycorn-subclass"),)}
