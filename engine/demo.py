"""A small raw-ASGI demo app: ``polycorn polycorn.demo:app``.

Routes: ``/`` (hello), ``/json``, ``/echo`` (POST body back), ``/stream`` (chunked).
"""

from __future__ import annotations

import json
from typing import Any

_HELLO = b"Hello, world!"
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_JSON = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/":
        await _respond(send, 200, _HELLO, _TEXT)
    elif path == "/json":
        body = json.dumps({"message": "Hello, world!", "server": "polycorn"}).encode()
        await _respond(send, 200, body, _JSON)
    elif path == "/echo":
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await _respond(send, 200, b"".join(chunks), [(b"content-type", b"application/octet-stream")])
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": _TEXT})
        for i in range(10):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _respond(send, 404, b"Not Found", _TEXT)


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
