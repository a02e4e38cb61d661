"""Starlette and FastAPI WebSocket endpoints on Polycorn, driven by the real websockets client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.http_apps import wait_for


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def starlette_app(events: list[Any]) -> Starlette:
    async def chat(ws: StarletteWebSocket) -> None:
        if ws.query_params.get("token") != "ok":
            await ws.close(code=1008)  # before accept: the client sees HTTP 403
            return
        await ws.accept(subprotocol="chat.v1", headers=[(b"x-room", ws.path_params["room"].encode())])
        try:
            while True:
                data = await ws.receive_json()
                await ws.send_json({"room": ws.path_params["room"], "echo": data})
        except WebSocketDisconnect as exc:
            events.append(("disconnect", exc.code))

    return Starlette(routes=[WebSocketRoute("/rooms/{room}", chat)])


def fastapi_app(events: list[Any]) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{name}")
    async def endpoint(websocket: WebSocket, name: str) -> None:
        await websocket.accept()
        await websocket.send_text(f"hello {name}")
        try:
            async for message in websocket.iter_bytes():
                await websocket.send_bytes(message[::-1])
        except WebSocketDisconnect as exc:  # pragma: no cover - iter_bytes ends quietly
            events.append(("raised", exc.code))
        events.append(("done", name))

    return app


def test_starlette_websocket(serve: Any, stack: dict[str, str]) -> None:
    events: list[Any] = []
    srv = serve(starlette_app(events), **stack)
    base = f"ws://127.0.0.1:{srv.port}"

    async def client() -> None:
        async with ws_connect(f"{base}/rooms/blue?token=ok", subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            assert ws.response.headers["x-room"] == "blue"
            await ws.send('{"n": 1}')
            assert await ws.recv() == '{"room":"blue","echo":{"n":1}}'
            await ws.close(4002, "done")
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(f"{base}/rooms/blue?token=bad"):
                pass
        assert info.value.response.status_code == 403

    run(client())
    wait_for(lambda: events)  # the app records its end after the client is gone
    assert events == [("disconnect", 4002)]


def test_fastapi_websocket(serve: Any, stack: dict[str, str]) -> None:
    events: list[Any] = []
    srv = serve(fastapi_app(events), **stack)

    async def client() -> None:
        async with ws_connect(f"ws://127.0.0.1:{srv.port}/ws/ada") as ws:
            assert await ws.recv() == "hello ada"
            await ws.send(b"abc")
            assert await ws.recv() == b"cba"
            await ws.send(b"x" * 100_000)
            assert await ws.recv() == b"x" * 100_000
        async with ws_connect(f"ws://127.0.0.1:{srv.port}/nowhere") as ws:  # pragma: no cover
            await ws.recv()

    with pytest.raises((InvalidStatus, ConnectionClosed)) as info:
        run(client())
    # FastAPI closes an unknown WebSocket route before accepting: HTTP 403.
    assert isinstance(info.value, InvalidStatus) and info.value.response.status_code == 403
    wait_for(lambda: events)  # the app records its end after the client is gone
    assert events == [("done", "ada")]
