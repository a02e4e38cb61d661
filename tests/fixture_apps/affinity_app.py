"""Reports which CPUs the serving worker may run on, and which process and thread it is."""

from __future__ import annotations

import json
import os
import threading
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps(
        {"pid": os.getpid(), "thread": threading.get_native_id(), "cpus": sorted(os.sched_getaffinity(0))}
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
