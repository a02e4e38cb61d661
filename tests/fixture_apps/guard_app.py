"""An app for the supervisor's guards: ``/die`` kills the serving worker, ``/`` reports the GIL."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/die":
        os._exit(1)  # a worker crash, as a segfaulting extension would cause
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    body = json.dumps({"gil": gil, "pid": os.getpid(), "tid": threading.get_native_id()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
