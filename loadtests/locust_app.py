"""A small Starlette API for the Locust load tests (``loadtests/locustfile.py``): mixed, realistic traffic.

Any ASGI server can run it, from the repository root::

    python -m polycorn locust_app:app --app-dir loadtests --port 8000 --no-access-log
    python -m uvicorn locust_app:app --app-dir loadtests --port 8000 --no-access-log

Endpoints (``loadtests/locustfile.py`` checks every response against this contract):

* ``GET /health``: ``{"ok": true}``, for readiness checks.
* ``GET /items/{id}``: one item as JSON; ids 1..``CATALOG_SIZE`` always exist (a read-only catalog),
  created items exist until evicted; 404 otherwise.
* ``GET /items?limit=N``: ``{"count": k, "items": [...]}`` with the first ``k = min(N, 100)`` catalog
  items; 422 unless ``1 <= N <= 100``.
* ``POST /items``: a JSON object ``{"name": str (1..100 chars), "price": number >= 0, "tags": [str]
  (optional, at most 10)}``; 201 with the created item (``id`` added, ids start above the catalog),
  422 with ``{"errors": [...]}`` when invalid. The store keeps the newest ``STORE_LIMIT`` created
  items (per process: with several workers, a created item is only visible to the worker that made it).
* ``GET /stream?n=N``: N newline-terminated JSON lines ``{"i": i, "pad": "..."}``, each sent as its
  own body chunk (a chunked response); 422 unless ``1 <= N <= 1000``.
* ``POST /upload``: reads the whole body (streamed, up to ``UPLOAD_LIMIT`` bytes, else 413) and
  answers ``{"size": bytes, "sha256": hex}``.
* ``WS /ws``: echoes every message, text as text and bytes as bytes.
* ``WS /ws/chat``: sends ``{"type": "welcome"}`` on connect; then answers each text message, which
  must be a JSON object ``{"user": str, "text": str}``, with ``{"type": "message", "seq": n,
  "user": ..., "text": ..., "length": len(text)}`` (``seq`` counts from 1 per connection), and
  anything else with ``{"type": "error", "seq": n, "detail": ...}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

CATALOG_SIZE = 100
STORE_LIMIT = 10_000
LIST_LIMIT = 100
STREAM_LIMIT = 1000
UPLOAD_LIMIT = 16 * 1024 * 1024

CATALOG: dict[int, dict[str, Any]] = {
    i: {"id": i, "name": f"item {i}", "price": round(i * 1.25, 2), "tags": ["catalog", f"group-{i % 7}"]}
    for i in range(1, CATALOG_SIZE + 1)
}
STORE: OrderedDict[int, dict[str, Any]] = OrderedDict()
_ids = itertools.count(CATALOG_SIZE + 1)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int | None:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        return None
    return value if low <= value <= high else None


def validate_item(data: Any) -> list[str]:
    """The problems with a POST /items body (empty when valid)."""
    if not isinstance(data, dict):
        return ["body must be a JSON object"]
    errors = []
    name = data.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 100:
        errors.append("name: a string of 1 to 100 characters")
    price = data.get("price")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
        errors.append("price: a number >= 0")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or len(tags) > 10 or not all(isinstance(t, str) for t in tags):
        errors.append("tags: a list of at most 10 strings")
    unknown = sorted(set(data) - {"name", "price", "tags"})
    if unknown:
        errors.append(f"unknown fields: {', '.join(unknown)}")
    return errors


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def get_item(request: Request) -> Response:
    try:
        item_id = int(request.path_params["item_id"])
    except ValueError:
        return JSONResponse({"detail": "id must be an integer"}, status_code=422)
    item = CATALOG.get(item_id) or STORE.get(item_id)
    if item is None:
        return JSONResponse({"detail": "not found"}, status_code=404)
    return JSONResponse(item)


async def list_items(request: Request) -> Response:
    limit = _int_param(request, "limit", 10, 1, LIST_LIMIT)
    if limit is None:
        return JSONResponse({"detail": f"limit: an integer from 1 to {LIST_LIMIT}"}, status_code=422)
    items = [CATALOG[i] for i in range(1, limit + 1)]
    return JSONResponse({"count": len(items), "items": items})


async def create_item(request: Request) -> Response:
    try:
        data = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"errors": ["body is not valid JSON"]}, status_code=422)
    errors = validate_item(data)
    if errors:
        return JSONResponse({"errors": errors}, status_code=422)
    item = {"id": next(_ids), "name": data["name"], "price": data["price"], "tags": data.get("tags", [])}
    STORE[item["id"]] = item
    while len(STORE) > STORE_LIMIT:
        STORE.popitem(last=False)
    return JSONResponse(item, status_code=201)


async def stream(request: Request) -> Response:
    n = _int_param(request, "n", 10, 1, STREAM_LIMIT)
    if n is None:
        return JSONResponse({"detail": f"n: an integer from 1 to {STREAM_LIMIT}"}, status_code=422)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            yield json.dumps({"i": i, "pad": "x" * 64}).encode() + b"\n"
            if i % 16 == 15:
                await asyncio.sleep(0)  # let other requests in during long streams

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


async def upload(request: Request) -> Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > UPLOAD_LIMIT:
            return JSONResponse({"detail": f"body over {UPLOAD_LIMIT} bytes"}, status_code=413)
        digest.update(chunk)
    return JSONResponse({"size": size, "sha256": digest.hexdigest()})


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect:
        return


async def ws_chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"type": "welcome"})
    seq = 0
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            seq += 1
            try:
                if message.get("text") is None:
                    raise ValueError("expected a text message")
                data = json.loads(message["text"])
                if not (
                    isinstance(data, dict) and isinstance(data.get("user"), str) and isinstance(data.get("text"), str)
                ):
                    raise ValueError("expected {'user': str, 'text': str}")
            except ValueError as exc:
                await websocket.send_json({"type": "error", "seq": seq, "detail": str(exc)})
                continue
            reply = {
                "type": "message",
                "seq": seq,
                "user": data["user"],
                "text": data["text"],
                "length": len(data["text"]),
            }
            await websocket.send_json(reply)
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/items/{item_id}", get_item),
        Route("/items", list_items, methods=["GET"]),
        Route("/items", create_item, methods=["POST"]),
        Route("/stream", stream),
        Route("/upload", upload, methods=["POST"]),
        WebSocketRoute("/ws", ws_echo),
        WebSocketRoute("/ws/chat", ws_chat),
    ]
)
