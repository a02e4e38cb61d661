"""Reads an environment variable at import time (set by ``--env-file``)."""

from __future__ import annotations

import os
from typing import Any

GREETING = os.environ.get("POLYCORN_TEST_GREETING", "<unset>")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": GREETING.encode()})
