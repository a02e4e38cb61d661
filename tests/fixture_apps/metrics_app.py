"""An app with one route per outcome the metrics tests count (tests/test_metrics.py).

- ``/ok``: 200; ``/missing``: 404; ``/boom``: the app raises (the server answers 500).
- ``/hold?path=FILE``: waits until FILE exists, then answers 200: requests held in flight for as
  long as the test wants, in process and thread workers alike.
- ``/pid``: 200 with the worker's process id.
- A WebSocket at ``/deny``: closed before the accept (the server answers 403); at any other
  path: accepted, then echoes until the client closes.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import parse_qs


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if scope["path"] == "/deny":
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path = scope["path"]
    if path == "/ok":
        await _answer(send, 200, b"ok")
    elif path == "/boom":
        raise RuntimeError("boom (on purpose)")
    elif path == "/hold":
        release = parse_qs(scope["query_string"].decode())["path"][0]
        while not os.path.exists(release):
            await asyncio.sleep(0.02)
        await _answer(send, 200, b"released")
    elif path == "/pid":
        await _answer(send, 200, str(os.getpid()).encode())
    else:
        await _answer(send, 404, b"not here")
