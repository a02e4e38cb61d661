"""Timeouts against slow and idle clients: request head, request body, keep-alive (real sockets)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from tests.conftest import connect, is_closed, read_response, recv_all

HEAD_START = b"GET / HTTP/1.1\r\nhost: x\r\n"


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class BodyReader:
    """Reads the whole body (after ``delay`` seconds), records what receive() gave, answers its size."""

    def __init__(self, delay: float = 0.0, start_first: bool = False) -> None:
        self.delay = delay
        self.start_first = start_first
        self.messages: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.start_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"started", "more_body": True})
        size = 0
        while True:
            message = await receive()
            self.messages.append(message["type"])
            if message["type"] == "http.disconnect":
                return
            size += len(message["body"])
            if not message["more_body"]:
                break
        body = str(size).encode()
        if self.start_first:
            await send({"type": "http.response.body", "body": body})
            return
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _answer_and_close(sock: socket.socket, within: float) -> tuple[bytes, float]:
    started = time.monotonic()
    data = recv_all(sock, timeout=within)
    return data, time.monotonic() - started


def test_incomplete_head_gets_408_and_close(serve: Any, stack: dict[str, str], caplog: Any) -> None:
    srv = serve(hello, timeout_request_header=0.5, **stack)
    with caplog.at_level(logging.INFO, logger="polycorn.error"), connect(srv.port) as sock:
        sock.sendall(HEAD_START)
        data, took = _answer_and_close(sock, 5.0)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert b"connection: close\r\n" in data
    assert 0.3 < took < 3.0
    records = [r for r in caplog.records if "incomplete request head" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "--timeout-request-header" in records[0].getMessage()


def test_header_timeout_counts_from_the_first_byte_not_the_last(serve: Any, stack: dict[str, str]) -> None:
    """Slowloris: a byte now and then does not keep the head alive."""
    srv = serve(hello, timeout_request_header=1.0, timeout_keep_alive=5, **stack)
    with connect(srv.port) as sock:
        started = time.monotonic()
        sock.sendall(HEAD_START)
        closed = False
        for i in range(20):
            time.sleep(0.2)
            try:
                sock.sendall(b"x-slow-%d: 1\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if time.monotonic() - started > 1.6:
                break
        data = recv_all(sock, timeout=3.0)
        took = time.monotonic() - started
    assert closed or data.startswith(b"HTTP/1.1 408 "), data
    assert took < 3.5, "the dribbling client kept its connection past the head timeout"


def test_header_timeout_applies_to_the_next_request_on_a_keep_alive_connection(
    serve: Any, stack: dict[str, str]
) -> None:
    srv = serve(hello, timeout_request_header=0.5, timeout_keep_alive=5, **stack)
    with connect(srv.port) as sock:
        sock.sendall(HEAD_START + b"\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(HEAD_START)  # the next request's head, never finished
        data, took = _answer_and_close(sock, 5.0)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert took < 3.0, "the keep-alive timeout (5 s) applied instead of the head timeout"


def test_silent_connection_is_closed_without_a_response(serve: Any, stack: dict[str, str]) -> None:
    """No byte of a request: idle (keep-alive timeout), so nothing is answered, just closed."""
    srv = serve(hello, timeout_request_header=5, timeout_keep_alive=0.3, **stack)
    with connect(srv.port) as sock:
        data, took = _answer_and_close(sock, 5.0)
    assert data == b""
    assert took < 3.0


def test_without_keep_alive_a_silent_connection_still_closes(serve: Any, stack: dict[str, str]) -> None:
    """--timeout-keep-alive 0 arms no idle timer: the head timeout bounds a fresh connection."""
    srv = serve(hello, timeout_request_header=0.3, timeout_keep_alive=0, **stack)
    with connect(srv.port) as sock:
        data, took = _answer_and_close(sock, 5.0)
    assert data == b""
    assert took < 3.0


def test_silent_connections_each_close_at_their_own_deadline(serve: Any, stack: dict[str, str]) -> None:
    """One timer serves all new connections (polycorn.first_byte): each still closes at its own
    deadline, oldest first, and one that sends a request leaves the wait and is served."""
    keep_alive = 0.6
    srv = serve(hello, timeout_request_header=5, timeout_keep_alive=keep_alive, **stack)
    started = time.monotonic()
    with connect(srv.port) as first:
        time.sleep(0.4)
        with connect(srv.port) as second, connect(srv.port) as talker:
            talker.sendall(HEAD_START + b"\r\n")
            assert read_response(talker)[0] == 200
            assert is_closed(first, timeout=5.0)
            first_closed = time.monotonic() - started
            assert not is_closed(second, timeout=0.1), "the later connection went with the first"
            assert is_closed(second, timeout=5.0)
            second_closed = time.monotonic() - started
    assert first_closed >= keep_alive - 0.05
    assert second_closed >= 0.4 + keep_alive - 0.05


def test_header_timeout_zero_waits_beyond_keep_alive(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(hello, timeout_request_header=0, timeout_keep_alive=0.2, **stack)
    with connect(srv.port) as sock:
        sock.sendall(HEAD_START)
        assert not is_closed(sock, timeout=0.8), "a begun head was closed although the timeout is off"
        sock.sendall(b"\r\n")
        assert read_response(sock)[0] == 200


def test_body_timeout_gets_408_and_the_app_a_disconnect(serve: Any, stack: dict[str, str], caplog: Any) -> None:
    app = BodyReader()
    srv = serve(app, timeout_request_body=0.5, **stack)
    with caplog.at_level(logging.INFO, logger="polycorn.error"), connect(srv.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12345")
        data, took = _answer_and_close(sock, 5.0)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert 0.3 < took < 3.0
    deadline = time.monotonic() + 3
    while app.messages[-1:] != ["http.disconnect"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.messages == ["http.request", "http.disconnect"]
    assert any("--timeout-request-body" in r.getMessage() for r in caplog.records)


def test_body_timeout_is_per_silence_not_for_the_whole_body(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(BodyReader(), timeout_request_body=0.6, **stack)
    with connect(srv.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\n")
        for _ in range(8):  # 8 x 0.25 s: longer than the timeout in all, never silent that long
            time.sleep(0.25)
            sock.sendall(b"x")
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"8")


def test_body_timeout_counts_only_while_the_app_waits(serve: Any, stack: dict[str, str]) -> None:
    """An app busy before reading does not make the client late."""
    srv = serve(BodyReader(delay=1.0), timeout_request_body=0.5, **stack)
    with connect(srv.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nab")
        time.sleep(1.2)  # the app starts reading at 1.0 s: 0.2 s of waiting so far
        sock.sendall(b"cd")
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"4")


def test_body_timeout_after_the_response_began_only_closes(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(BodyReader(start_first=True), timeout_request_body=0.5, **stack)
    with connect(srv.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12345")
        data, took = _answer_and_close(sock, 5.0)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert b"408" not in data
    assert b"started" in data and not data.endswith(b"0\r\n\r\n"), "the chunked body must stay incomplete"
    assert took < 3.0


def test_body_timeout_zero_waits(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(BodyReader(), timeout_request_body=0, timeout_keep_alive=0.2, **stack)
    with connect(srv.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nab")
        time.sleep(0.8)  # past the keep-alive deadline left from before the request
        sock.sendall(b"cd")
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"4")


def test_long_poll_waiting_for_disconnect_is_not_a_body_timeout(serve: Any, stack: dict[str, str]) -> None:
    """Once the body is complete, an app waiting in receive() waits for the disconnect only."""
    seen: list[str] = []

    async def long_poll(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append((await receive())["type"])
        seen.append((await receive())["type"])

    srv = serve(long_poll, timeout_request_body=0.3, **stack)
    with connect(srv.port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab")
        assert not is_closed(sock, timeout=1.0)
    deadline = time.monotonic() + 3
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == ["http.request", "http.disconnect"]


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_thousand_slow_clients_do_not_delay_a_normal_one(serve: Any, parser: str) -> None:
    srv = serve(hello, http=parser, timeout_request_header=3.0, log_level="warning")
    slow: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(HEAD_START + b"x-slow: %d\r\n" % i)
            slow.append(sock)
        for sock in slow[::10]:
            sock.sendall(b"x-more: 1\r\n")
        started = time.monotonic()
        with connect(srv.port) as sock:
            sock.sendall(HEAD_START + b"\r\n")
            status, _, body = read_response(sock)
        took = time.monotonic() - started
        assert (status, body) == (200, b"ok")
        assert took < 2.0, f"a normal request took {took:.2f}s behind the slow clients"
        answered = 0
        for sock in slow:
            data = recv_all(sock, timeout=10.0)
            answered += data.startswith(b"HTTP/1.1 408 ")
        assert answered == len(slow)
    finally:
        for sock in slow:
            sock.close()
