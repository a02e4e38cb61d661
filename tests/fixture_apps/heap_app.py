"""Answers how much of 3 MiB, freed just now, the serving process gave back to the OS (in KiB).

The blocks are 64 KiB each, the size of a request body that made glibc's heap shrink and grow
again per request before ``--malloc-trim-threshold``. ``GET /rss`` answers the process's resident
memory (KiB) instead, for what ``--malloc-trim-interval`` returns later.
"""

from __future__ import annotations

import os
from typing import Any


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/rss":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"%d" % (_rss() // 1024)})
        return
    blocks = [bytes(64 * 1024) for _ in range(48)]
    before = _rss()
    del blocks
    released = (before - _rss()) // 1024
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"%d" % released})
