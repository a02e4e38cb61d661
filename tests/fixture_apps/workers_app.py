"""An app that says which worker served it, for the multi-worker tests.

Every JSON answer carries ``pid`` (``os.getpid()``: one per process worker) and ``tid``
(``threading.get_native_id()``: one per thread worker), so the pair identifies the worker's loop
in both worker modes.

- ``/`` (any other path): just the identity.
- ``/sleep/S``: ``await asyncio.sleep(S)`` first (the loop stays free).
- ``/block/S``: ``time.sleep(S)`` first (the whole loop is blocked).
  Both print ``MARK started PATH in PID:TID`` to stderr when they begin.
- ``/concurrency``: counts the requests in flight on the whole server with marker files in the
  directory named by ``$WORKERS_MARKER_DIR``; holds the request 0.5 s (``?s=`` to change) and
  answers the most markers it saw, its own included.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import uuid
from typing import Any


def identity() -> dict[str, int]:
    return {"pid": os.getpid(), "tid": threading.get_native_id()}


def mark(path: str) -> None:
    print(f"MARK started {path} in {os.getpid()}:{threading.get_native_id()}", file=sys.stderr, flush=True)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    payload: dict[str, Any] = identity()
    if path.startswith("/sleep/"):
        mark(path)
        await asyncio.sleep(float(path.rsplit("/", 1)[1]))
    elif path.startswith("/block/"):
        mark(path)
        time.sleep(float(path.rsplit("/", 1)[1]))
    elif path == "/concurrency":
        query = scope["query_string"].decode()
        hold = float(query[2:]) if query.startswith("s=") else 0.5
        folder = os.environ["WORKERS_MARKER_DIR"]
        marker = os.path.join(folder, uuid.uuid4().hex)
        with open(marker, "w"):
            pass
        try:
            seen = len(os.listdir(folder))
            await asyncio.sleep(hold)
            seen = max(seen, len(os.listdir(folder)))
        finally:
            os.unlink(marker)
        payload["observed"] = seen
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
