"""``/sleep/N`` answers after N seconds; lifespan and cancellation leave marks on stderr."""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def mark(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                mark("MARK lifespan startup")
                await send({"type": "lifespan.startup.complete"})
            else:
                mark("MARK lifespan shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path.startswith("/sleep/"):
        seconds = float(path.rsplit("/", 1)[1])
        mark(f"MARK request started {path}")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            mark("MARK request cancelled")
            raise
        body = b"slept %s" % path.rsplit("/", 1)[1].encode() + b"." * 5000
    else:
        body = b"fast"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
