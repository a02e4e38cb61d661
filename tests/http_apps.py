"""Small ASGI apps and raw-socket helpers for the byte-level HTTP protocol tests."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests import conftest

Headers = list[tuple[str, str]]


# -- apps ------------------------------------------------------------------------------------------


def recorder(scopes: list[dict[str, Any]], body: bytes = b"ok") -> Any:
    """Records each http scope (a shallow copy), reads the body, answers ``body``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        scopes.append(dict(scope))
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    return app


async def path_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body and answers ``<path>:<body>``."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    data = scope["path"].encode() + b":" + body
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(data))]})
    await send({"type": "http.response.body", "body": data})


def responder(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"hello") -> Any:
    """Answers a fixed response in one body message, without reading the request body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        await send({"type": "http.response.body", "body": body})

    return app


async def wait_thread_event(event: threading.Event, timeout: float = 10.0) -> None:
    """Await a threading.Event from inside an app without blocking the server's loop."""
    deadline = time.monotonic() + timeout
    while not event.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("test gate was never opened")
        await asyncio.sleep(0.005)


# -- raw sockets -----------------------------------------------------------------------------------


_open_sockets: list[socket.socket] = []


@pytest.fixture(autouse=True)
def close_test_sockets() -> Any:
    """Close every socket a test opened with open_conn()/track(), even when the test failed."""
    yield
    while _open_sockets:
        sock = _open_sockets.pop()
        if sock.fileno() >= 0:
            conftest._pushback.pop(sock.fileno(), None)
        sock.close()


def track(sock: socket.socket) -> socket.socket:
    _open_sockets.append(sock)
    return sock


def open_conn(port: int, timeout: float = 5.0) -> socket.socket:
    """conftest.connect() without bytes left over from an earlier socket with the same fd."""
    sock = track(conftest.connect(port, timeout=timeout))
    conftest._pushback.pop(sock.fileno(), None)
    return sock


def read_rest(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything still to come until the server closes, including bytes read_response() kept."""
    return conftest._pushback.pop(sock.fileno(), b"") + conftest.recv_all(sock, timeout)


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything until the server closes the connection."""
    with open_conn(port, timeout) as sock:
        sock.sendall(request)
        return conftest.recv_all(sock, timeout)


def split_response(data: bytes) -> tuple[str, Headers, bytes]:
    """(status line, header pairs in order with lower-cased names, rest) of raw response bytes."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        assert colon, f"malformed header line {line!r}"
        headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers, rest


def header_values(headers: Headers, name: str) -> list[str]:
    return [v for n, v in headers if n == name]


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    """Decode a complete chunked body; returns (body, bytes after the last chunk)."""
    body = b""
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        assert sep, "truncated chunk size line"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data.startswith(b"\r\n"), f"bad chunked trailer {data[:50]!r}"
            return body, data[2:]
        assert data[size : size + 2] == b"\r\n", "chunk not followed by CRLF"
        body += data[:size]
        data = data[size + 2 :]


def assert_error_response(data: bytes, status: int) -> None:
    """A well-formed server error answer: status line, matching content-length, connection: close."""
    line, headers, body = split_response(data)
    assert line.startswith(f"HTTP/1.1 {status} "), line
    assert len(line) > len(f"HTTP/1.1 {status} "), "status line has no reason phrase"
    lengths = header_values(headers, "content-length")
    assert lengths == [str(len(body))], (lengths, body)
    assert header_values(headers, "connection") == ["close"]
    assert header_values(headers, "transfer-encoding") == []


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in time")
        time.sleep(interval)


# -- logs ------------------------------------------------------------------------------------------


def capture_polycorn_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Route polycorn.error and polycorn.access to caplog at INFO, whatever logging set-up ran before.

    Call before starting the server: the access log is switched on or off at start-up.
    """
    for name in ("polycorn", "polycorn.error", "polycorn.access"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "propagate", True)
        monkeypatch.setattr(logger, "disabled", False)
        caplog.set_level(logging.INFO, logger=name)


def app_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "polycorn.error" and r.levelno >= logging.ERROR]
