"""The one raw-ASGI app every server in ``loadtests/bench.py`` serves.

Raw ASGI (no framework) so that the numbers measure the servers, not a router:

* ``GET /``      -> 200, ``text/plain``, the 13 bytes ``Hello, world!``
* ``GET /json``  -> 200, ``application/json``, a small object serialised per request
* ``GET /cpu``   -> 200, ``text/plain``, after about 1 ms of pure-Python work (``CPU_LOOPS``
  iterations; the answer is the result): a handler whose cost is the app's, not the server's
* ``GET /worker`` -> 200, ``text/plain``, with the serving process and thread in an ``x-worker``
  header (``pid=1234 tid=1234``; ``tid`` is the thread's native id), so a client can tell which
  worker answered
* ``GET /big``   -> 200, ``application/octet-stream``, 100 KiB (``BIG_SIZE``) with a Content-Length
* ``POST /upload`` -> 200, ``text/plain``, after reading the whole request body (every
  ``http.request`` message until ``more_body`` is false); the answer is the number of bytes read
  (any method is accepted: a GET reads an empty body)
* ``GET /stream`` -> 200, ``text/plain``, no Content-Length: ``STREAM_CHUNKS`` chunks of
  ``STREAM_CHUNK_SIZE`` bytes, each sent with ``more_body=True``, then an empty closing body, so the
  server uses chunked transfer encoding
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

#: Size of the GET /big body.
BIG_SIZE = 100 * 1024
_BIG = b"x" * BIG_SIZE
_BIG_HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % BIG_SIZE)]

#: GET /stream: this many chunks of this many bytes.
STREAM_CHUNKS = 10
STREAM_CHUNK_SIZE = 1024
_CHUNK = b"x" * STREAM_CHUNK_SIZE
_STREAM_HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]

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


async def read_body(receive: Any) -> int:
    """Receive the whole request body; the number of bytes (the body itself is dropped)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return size
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return size


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
    elif path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": _BIG_HEADERS})
        await send({"type": "http.response.body", "body": _BIG})
    elif path == "/upload":
        body = b"%d" % await read_body(receive)
        headers = [_TEXT_HEADERS[0], (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        for _ in range(STREAM_CHUNKS):
            await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND_HEADERS})
        await send({"type": "http.response.body", "body": b"Not Found"})
