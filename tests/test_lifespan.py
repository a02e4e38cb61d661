"""The ASGI lifespan protocol: auto, on, off, failures and state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from polycorn.errors import AppStartupError
from polycorn.lifespan import Lifespan
from tests.conftest import RunningServer, run_cli
from tests.fixture_apps.process import FIXTURE_DIR


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@pytest.fixture
def error_log() -> Iterator[Recorder]:
    """Records polycorn.error directly (independent of how logging was configured)."""
    logger = logging.getLogger("polycorn.error")
    handler = Recorder()
    old_level, old_disabled = logger.level, logger.disabled
    logger.setLevel(logging.DEBUG)
    logger.disabled = False
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    logger.disabled = old_disabled


def lifespan_app(events: list[str], *, state: dict[str, Any] | None = None) -> Callable[..., Any]:
    """Records the order of lifespan and request events; fills the lifespan state."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await asyncio.sleep(0.05)  # start-up work the server must wait for
                    if state is not None:
                        scope["state"].update(state)
                    events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        events.append(f"request {scope['path']}")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_auto_runs_startup_before_requests_and_shutdown_at_exit(serve: Any) -> None:
    events: list[str] = []
    srv = serve(lifespan_app(events), lifespan="auto")
    assert events == ["startup"]  # finished before the server reported itself started
    assert httpx.get(srv.url + "/a", timeout=10).text == "ok"
    assert httpx.get(srv.url + "/b", timeout=10).text == "ok"
    srv.stop()
    assert events == ["startup", "request /a", "request /b", "shutdown"]


def test_on_with_a_supporting_app(serve: Any) -> None:
    events: list[str] = []
    srv = serve(lifespan_app(events), lifespan="on")
    assert httpx.get(srv.url + "/x", timeout=10).status_code == 200
    srv.stop()
    assert events == ["startup", "request /x", "shutdown"]


def test_auto_with_an_app_that_raises_on_lifespan_still_serves(serve: Any, error_log: Recorder) -> None:
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope type {scope['type']}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    srv = serve(app, lifespan="auto")
    r = httpx.get(srv.url, timeout=10)
    assert (r.status_code, r.text) == (200, "served")
    srv.stop()
    assert calls == ["lifespan", "http"]  # shutdown is not sent to an app without lifespan support
    infos = error_log.messages(logging.INFO)
    assert any("lifespan" in m and "unsupported" in m for m in infos), infos
    assert not any("lifespan" in m for m in error_log.messages(logging.ERROR))


def test_auto_with_an_app_that_returns_at_once(serve: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    srv = serve(app, lifespan="auto")
    assert httpx.get(srv.url, timeout=10).status_code == 204


def test_off_never_calls_the_app_with_lifespan(serve: Any) -> None:
    events: list[str] = []
    seen_types: list[str] = []
    inner = lifespan_app(events)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen_types.append(scope["type"])
        await inner(scope, receive, send)

    srv = serve(app, lifespan="off")
    assert httpx.get(srv.url + "/only", timeout=10).text == "ok"
    srv.stop()
    assert seen_types == ["http"]
    assert events == ["request /only"]


def test_failed_startup_raises_app_startup_error_when_embedded() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    srv = RunningServer(app, lifespan="on")
    with pytest.raises(RuntimeError, match="failed to start"):
        srv.start()
    assert isinstance(srv.error, AppStartupError)
    assert "no database" in str(srv.error)
    assert srv.server.bound[0].fileno() == -1  # the socket was closed again


def test_on_with_failing_startup_exits_3_via_the_cli() -> None:
    result = run_cli("lifespan_apps:failing_startup", "--port", "0", "--lifespan", "on", "--app-dir", FIXTURE_DIR)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stderr  # never started serving
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "start-up failed" in errors[0] and "database unreachable" in errors[0]


def test_on_with_an_app_raising_during_startup_exits_3(error_log: Recorder) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        raise KeyError("missing-setting")

    async def main() -> None:
        lifespan = Lifespan(app, "on")
        await lifespan.startup()

    with pytest.raises(AppStartupError, match="missing-setting") as info:
        asyncio.run(main())
    assert info.value.exit_code == 3
    assert any("exception in the ASGI lifespan handler" in m for m in error_log.messages(logging.ERROR))


def test_failed_shutdown_is_logged(serve: Any, error_log: Recorder) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.failed", "message": "could not flush"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    srv = serve(app, lifespan="on")
    assert httpx.get(srv.url, timeout=10).status_code == 200
    srv.stop()
    assert any("could not flush" in m for m in error_log.messages(logging.ERROR))


def test_state_is_a_shallow_copy_per_request(serve: Any) -> None:
    events: list[str] = []
    shared_list: list[str] = []
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan_app(events, state={"db": "connected", "shared": shared_list})(scope, receive, send)
            return
        state = scope["state"]
        seen.append(dict(state))
        state["per_request"] = scope["path"]  # must not leak into the next request
        state["db"] = "overwritten"
        state["shared"].append(scope["path"])  # the objects themselves are shared
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    srv = serve(app, lifespan="auto")
    for path in ("/one", "/two", "/three"):
        assert httpx.get(srv.url + path, timeout=10).status_code == 200
    assert len(seen) == 3
    assert all(set(s) == {"db", "shared"} for s in seen), seen
    assert all(s["db"] == "connected" for s in seen)
    assert all(s["shared"] is shared_list for s in seen)
    assert shared_list == ["/one", "/two", "/three"]


def test_state_without_lifespan_is_an_empty_dict(serve: Any) -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope.get("state"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    srv = serve(app, lifespan="off")
    httpx.get(srv.url, timeout=10)
    assert seen == [{}]


def test_request_tasks_are_named_and_a_task_factory_set_at_startup_makes_them(serve: Any) -> None:
    """Request tasks come from the loop's task factory when the app's startup installed one."""
    made: list[asyncio.Task[Any]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)  # named by create_task once the factory returns (3.11 passes no name)
        return task

    def app_for(install: bool) -> Callable[..., Any]:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        if install:
                            asyncio.get_running_loop().set_task_factory(factory)
                        await send({"type": "lifespan.startup.complete"})
                    else:
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            task = asyncio.current_task()
            assert task is not None
            body = task.get_name().encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        return app

    plain = serve(app_for(False), lifespan="on")
    assert httpx.get(plain.url, timeout=10).text == "polycorn-request"
    assert made == []
    plain.stop()

    factored = serve(app_for(True), lifespan="on")
    assert httpx.get(factored.url, timeout=10).text == "polycorn-request"
    assert httpx.get(factored.url, timeout=10).text == "polycorn-request"
    names = [task.get_name() for task in made]
    assert names.count("polycorn-request") == 2, names
