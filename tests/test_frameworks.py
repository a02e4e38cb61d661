"""Real frameworks on Polycorn: Starlette and FastAPI on every stack, Django in a child process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import StreamingResponse as FastAPIStreamingResponse
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fixture_apps.process import FIXTURE_DIR, polycorn

# -- Starlette --------------------------------------------------------------------------------------


class SentTypes:
    """Pure ASGI middleware recording the message types the app sends, per path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: dict[str, list[str]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = self.sent.setdefault(scope["path"], [])

        async def recording_send(message: dict[str, Any]) -> None:
            record.append(message["type"] + ("+more" if message.get("more_body") else ""))
            await send(message)

        await self.app(scope, receive, recording_send)


def starlette_app(static_file: Path, release: threading.Event, background_log: list[Any]) -> SentTypes:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"started_by": "lifespan"}

    async def json_endpoint(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "framework": "starlette",
                "query": dict(request.query_params),
                "state": request.state.started_by,
                "client_host": request.client.host if request.client else None,
            }
        )

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(
            body,
            media_type=request.headers.get("content-type", "application/octet-stream"),
            headers={"x-body-sha256": hashlib.sha256(body).hexdigest()},
        )

    async def stream(request: Request) -> StreamingResponse:
        count = int(request.query_params.get("n", "5"))

        async def numbers() -> AsyncIterator[bytes]:
            for i in range(count):
                await asyncio.sleep(0)
                yield b"line %d\n" % i

        return StreamingResponse(numbers(), media_type="text/plain")

    async def file(request: Request) -> FileResponse:
        return FileResponse(static_file, media_type="application/octet-stream")

    async def background(request: Request) -> Response:
        async def task(tag: str) -> None:
            # Sent messages so far, then wait for the test to confirm it already has the response.
            background_log.append(("sent", list(middleware.sent["/background"])))
            released = await asyncio.to_thread(release.wait, 10)
            background_log.append(("done", tag, released))

        return Response("queued", background=BackgroundTask(task, request.query_params["tag"]))

    app = Starlette(
        routes=[
            Route("/json", json_endpoint),
            Route("/echo", echo, methods=["POST", "PUT"]),
            Route("/stream", stream),
            Route("/file", file, methods=["GET", "HEAD"]),
            Route("/background", background),
        ],
        lifespan=lifespan,
    )
    middleware = SentTypes(app)
    return middleware


@pytest.fixture
def static_file(tmp_path: Path) -> Path:
    path = tmp_path / "static.bin"
    path.write_bytes(os.urandom(300_000))
    return path


@pytest.fixture
def starlette_server(serve: Any, stack: dict[str, str], static_file: Path) -> Any:
    release = threading.Event()
    background_log: list[Any] = []
    app = starlette_app(static_file, release, background_log)
    srv = serve(app, lifespan="on", **stack)
    srv.app, srv.release, srv.background_log = app, release, background_log
    yield srv
    release.set()


def test_starlette_json(starlette_server: Any) -> None:
    r = httpx.get(starlette_server.url + "/json?a=1&b=two", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "framework": "starlette",
        "query": {"a": "1", "b": "two"},
        "state": "lifespan",
        "client_host": "127.0.0.1",
    }


def test_starlette_request_body_echo(starlette_server: Any) -> None:
    payload = os.urandom(200_000)
    with httpx.Client(base_url=starlette_server.url, timeout=10) as client:
        r = client.post("/echo", content=payload, headers={"content-type": "application/x-test"})
        assert r.status_code == 200
        assert r.content == payload
        assert r.headers["x-body-sha256"] == hashlib.sha256(payload).hexdigest()
        assert r.headers["content-type"] == "application/x-test"

        # A chunked upload (no content-length) on the same keep-alive connection.
        def chunks() -> Any:
            for i in range(20):
                yield b"%04d" % i * 100

        r = client.put("/echo", content=chunks())
        assert r.status_code == 200
        assert r.content == b"".join(b"%04d" % i * 100 for i in range(20))
        assert client.get("/echo").status_code == 405


def test_starlette_streaming_response(starlette_server: Any) -> None:
    with httpx.Client(timeout=10) as client, client.stream("GET", starlette_server.url + "/stream?n=50") as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        lines = list(r.iter_lines())
    assert lines == [f"line {i}" for i in range(50)]


def test_starlette_file_response_uses_pathsend(starlette_server: Any, static_file: Path) -> None:
    expected = static_file.read_bytes()
    with httpx.Client(base_url=starlette_server.url, timeout=10) as client:
        r = client.get("/file")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(expected))
        assert r.content == expected
        assert "etag" in r.headers
        # The keep-alive connection is still usable after a sendfile transfer.
        assert client.get("/json").status_code == 200
        head = client.head("/file")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(expected))
        assert head.content == b""
        ranged = client.get("/file", headers={"range": "bytes=10-19"})
        assert ranged.status_code == 206
        assert ranged.content == expected[10:20]
    assert starlette_server.app.sent["/file"][:2] == ["http.response.start", "http.response.pathsend"]


def test_starlette_background_task_runs_after_the_response(starlette_server: Any) -> None:
    r = httpx.get(starlette_server.url + "/background?tag=t1", timeout=10)
    assert (r.status_code, r.text) == (200, "queued")
    log = starlette_server.background_log
    # The response reached us while the background task is still waiting for us.
    deadline = time.monotonic() + 5
    while not log and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log and log[0] == ("sent", ["http.response.start", "http.response.body"])
    assert not any(entry[0] == "done" for entry in log)
    starlette_server.release.set()
    deadline = time.monotonic() + 10
    while len(log) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log[1] == ("done", "t1", True)


# -- FastAPI ------------------------------------------------------------------------------------------


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


def fastapi_app() -> FastAPI:
    app = FastAPI()

    async def current_user(x_user: str | None = Header(default=None)) -> str:
        if x_user is None:
            raise HTTPException(status_code=401, detail="missing x-user")
        return x_user

    @app.post("/items")
    async def create_item(item: Item, user: str = Depends(current_user)) -> dict[str, Any]:
        return {"owner": user, "name": item.name, "total": item.price * 2, "tags": sorted(item.tags)}

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @app.get("/stream")
    async def stream() -> FastAPIStreamingResponse:
        async def gen() -> AsyncIterator[str]:
            for i in range(20):
                yield f"event {i}\n"

        return FastAPIStreamingResponse(gen(), media_type="text/plain")

    return app


def test_fastapi(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(fastapi_app(), **stack)
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        r = client.post("/items", json={"name": "widget", "price": 2.5, "tags": ["b", "a"]}, headers={"x-user": "ann"})
        assert r.status_code == 200, r.text
        assert r.json() == {"owner": "ann", "name": "widget", "total": 5.0, "tags": ["a", "b"]}

        r = client.post("/items", json={"name": "widget", "price": 2.5})
        assert r.status_code == 401
        assert r.json() == {"detail": "missing x-user"}

        r = client.post("/items", json={"name": "widget", "price": "not a number"}, headers={"x-user": "ann"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "price"]

        r = client.get("/items/42", params={"q": "a b/c"})
        assert r.json() == {"item_id": 42, "q": "a b/c"}
        assert client.get("/items/not-an-int").status_code == 422

        with client.stream("GET", "/stream") as streamed:
            assert streamed.headers["transfer-encoding"] == "chunked"
            assert list(streamed.iter_lines()) == [f"event {i}" for i in range(20)]

        r = client.get("/openapi.json")
        assert r.status_code == 200
        assert "/items/{item_id}" in r.json()["paths"]


def test_fastapi_concurrent_clients(serve: Any) -> None:
    srv = serve(fastapi_app())

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            responses = await asyncio.gather(*(client.get(f"/items/{i}") for i in range(30)))
        return [r.json() for r in responses]

    assert asyncio.run(main()) == [{"item_id": i, "q": None} for i in range(30)]


# -- Django (its settings are process-wide, so it runs in a child process) ---------------------------


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_django(parser: str) -> None:
    child = polycorn("django_app:application", "--port", "0", "--http", parser, "--app-dir", FIXTURE_DIR)
    try:
        url = child.url(timeout=30)
        with httpx.Client(base_url=url, timeout=10) as client:
            r = client.get("/hello/", params={"q": "polycorn"})
            assert r.status_code == 200, r.text
            assert r.json() == {"framework": "django", "method": "GET", "path": "/hello/", "q": "polycorn"}
            r = client.post("/echo/", content=b"abcdef" * 1000)
            assert r.status_code == 200
            assert r.content == (b"abcdef" * 1000)[::-1]
            assert client.get("/nope/").status_code == 404
    finally:
        child.send_signal(signal.SIGTERM)
        rc = child.wait(15)
        child.kill()
    assert rc == 0, child.output
    # Django's ASGI handler refuses the lifespan scope: 'auto' carries on without it.
    assert "lifespan" in child.stderr.lower() and "unsupported" in child.stderr.lower()
    assert "Traceback" not in child.stderr
