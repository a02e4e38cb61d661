"""The app ``tests/test_faults.py`` runs in a ``polycorn`` child process.

``/hello``            a small fixed answer
``/stream/N``         N bytes (content-length) in fresh 64 KiB parts; every send() is timed
``/progress``         JSON: bytes the current /stream handed to send(), sends that waited, longest wait
``/exit``             raises SystemExit(3) before answering
``/work/ID?ms=M&parts=P``
                      writes ``SEEN ID`` to stderr (the request reached the app), sleeps M ms, then
                      answers ``ID`` (content-length) or, with P > 0, P chunked parts ``ID.i;``
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

PART = 64 * 1024
_TEMPLATE = bytes(range(256)) * (PART // 256)

stats: dict[str, Any] = {"sent": 0, "waits": 0, "longest_wait": 0.0, "done": False}


async def _text(send: Any, body: bytes, status: int = 200) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stream(send: Any, size: int) -> None:
    stats.update(sent=0, waits=0, longest_wait=0.0, done=False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
    index = 0
    while stats["sent"] < size:
        n = min(PART, size - stats["sent"])
        # A fresh object every time: a server buffering without bound would hold all of them.
        part = index.to_bytes(8, "big") + _TEMPLATE[8:n] if n >= 8 else _TEMPLATE[:n]
        index += 1
        more = stats["sent"] + n < size
        started = time.monotonic()
        await send({"type": "http.response.body", "body": part, "more_body": more})
        waited = time.monotonic() - started
        if waited > 0.005:
            stats["waits"] += 1
            stats["longest_wait"] = max(stats["longest_wait"], waited)
        stats["sent"] += n
    stats["done"] = True


async def _work(scope: dict[str, Any], send: Any) -> None:
    rid = scope["path"].rsplit("/", 1)[1].encode()
    os.write(2, b"SEEN %s\n" % rid)  # one write: lines of two workers never interleave
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    await asyncio.sleep(int(query.get("ms", "0")) / 1000)
    parts = int(query.get("parts", "0"))
    if not parts:
        await _text(send, rid)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(parts):
        await send({"type": "http.response.body", "body": b"%s.%d;" % (rid, i), "more_body": True})
        await asyncio.sleep(0.005)
    await send({"type": "http.response.body", "body": b""})


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
    if path == "/hello":
        await _text(send, b"hello")
    elif path.startswith("/stream/"):
        await _stream(send, int(path.rsplit("/", 1)[1]))
    elif path == "/exit":
        raise SystemExit(3)
    elif path == "/progress":
        await _text(send, json.dumps(stats).encode())
    elif path.startswith("/work/"):
        await _work(scope, send)
    else:
        await _text(send, b"not found", 404)
