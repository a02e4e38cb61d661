"""The one raw-ASGI app every server in ``loadtests/bench.py`` serves.

Raw ASGI (no framework) so that the numbers measure the servers, not a router:

* ``GET /``      -> 200, ``text/plain``, the 13 bytes ``Hello, world!``
* ``GET /json``  -> 200, ``application/json``, a small object serialised per request
* ``GET /cpu``   -> 200, ``text/plain``, after about 1 ms of pure-Python work (``CPU_LOOPS``
  iterations; the answer is the result): a handler whose cost is the app's, not the server's
* ``GET /worker`` -> 200, ``text/plain``, with the serving process and thread in an ``x-worker``
  header (``pid=1234 tid=1234``; ``tid`` is the thread's native id), so a client can tell which
  worker answered
* anything else  -> 404
* any WebSocket path (scope type ``websocket``; ``loadtests/bench_ws.py``) -> accepted, then every
  message echoed back as it came (text as text, bytes as bytes) until the client disconnects
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

_HELLO = b"Hello, world!"
_TEXT_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")]
_JSON_TYPE = (b"content-type", b"application/json")
_NOT_FOUND_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"9")]

#: Iterations of the /cpu loop: about 1 ms of CPython 3.11 on a current x86 core.
CPU_LOOPS = 17_000


def burn(loops: int = CPU_LOOPS) -> int:
    """Pure-Python work that holds the interpreter (and, with a GIL, the GIL) throughout."""
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


async def echo(receive: Any, send: Any) -> None:
    """Accept a WebSocket and echo each message, text as text and bytes as bytes, until it closes."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":  # websocket.disconnect
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


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
    if kind == "websocket":
        await echo(receive, send)
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
    elif path == "/cpu":
        body = b"%d" % burn()
        headers = [_TEXT_HEADERS[0], (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/worker":
        ident = b"pid=%d tid=%d" % (os.getpid(), threading.get_native_id())
        headers = [*_TEXT_HEADERS[:1], (b"content-length", b"2"), (b"x-worker", ident)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND_HEADERS})
        await send({"type": "http.response.body", "body": b"Not Found"})
