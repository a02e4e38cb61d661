"""The one raw-ASGI app every server in ``loadtests/bench.py`` serves.

Raw ASGI (no framework) so that the numbers measure the servers, not a router:

* ``GET /``      -> 200, ``text/plain``, the 13 bytes ``Hello, world!``
* ``GET /json``  -> 200, ``application/json``, a small object serialised per request
* anything else  -> 404
"""

from __future__ import annotations

import json
from typing import Any

_HELLO = b"Hello, world!"
_TEXT_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")]
_JSON_TYPE = (b"content-type", b"application/json")
_NOT_FOUND_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"9")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    path = scope["path"]
    if path == "/":
        await send({"type": "http.response.start", "status": 200, "headers": _TEXT_HEADERS})
        await send({"type": "http.response.body", "body": _HELLO})
    elif path == "/json":
        body = json.dumps({"message": "Hello, world!"}).encode()
        headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND_HEADERS})
        await send({"type": "http.response.body", "body": b"Not Found"})
