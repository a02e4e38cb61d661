"""Request limits, concurrency and request-count limits, and malformed requests.

Every protocol test runs on all four (parser, loop) stacks; the error answers must be complete,
well-formed responses followed by a close.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import pytest

from tests.conftest import is_closed, read_response
from tests.http_apps import (  # noqa: F401 (close_test_sockets: an autouse fixture)
    assert_error_response,
    capture_polycorn_logs,
    close_test_sockets,
    exchange,
    open_conn,
    path_echo,
    read_rest,
    recorder,
    responder,
    track,
    wait_for,
    wait_thread_event,
)

# -- head limits ------------------------------------------------------------------------------------------


def test_request_line_too_long_is_414(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), **stack)
    data = exchange(srv.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_error_response(data, 414)
    # RFC 9110's reason phrase on every Python (3.11's http.HTTPStatus says "Request-URI Too Long").
    assert data.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    assert data.endswith(b"\r\n\r\nURI Too Long")


def test_request_line_limit_option(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), limit_request_line=100, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET /" + b"b" * 50 + b" HTTP/1.1\r\nHost: x\r\n\r\n")  # under the limit
    assert read_response(sock)[0] == 200
    sock.sendall(b"GET /" + b"b" * 150 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_error_response(read_rest(sock), 414)
    sock.close()


def test_endless_request_line_is_414_without_waiting(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), limit_request_line=200, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET /" + b"c" * 1000)  # no end of line ever comes
    assert_error_response(read_rest(sock), 414)
    sock.close()


def test_too_many_header_fields_is_431(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), limit_request_fields=5, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(3)) + b"\r\n")
    assert read_response(sock)[0] == 200  # 4 fields: fine
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n")
    assert_error_response(read_rest(sock), 431)
    sock.close()


def test_head_too_large_is_431(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), limit_request_head=1024, **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n")
    assert_error_response(data, 431)


def test_head_too_large_over_many_lines_is_431(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), limit_request_head=1024, **stack)
    headers = b"".join(b"X-Field-%d: %s\r\n" % (i, b"v" * 60) for i in range(40))  # ~3 KiB, 41 fields
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert_error_response(data, 431)


def test_endless_head_is_431_without_waiting(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), limit_request_head=1024, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"v" * 4000)  # no end of the head
    assert_error_response(read_rest(sock), 431)
    sock.close()


def test_too_many_fields_in_a_head_not_yet_ended_is_431_without_waiting(serve: Any, stack: dict[str, str]) -> None:
    """Field counts are checked as each read is parsed, not only once the head ends."""
    srv = serve(responder(), limit_request_fields=5, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10)))  # no end
    assert_error_response(read_rest(sock), 431)
    sock.close()


def test_too_many_trailer_fields_not_yet_ended_is_431_without_waiting(serve: Any, stack: dict[str, str]) -> None:
    """A trailer section is bounded like a head, as each read is parsed."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass  # the whole body, trailers included, before answering
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    srv = serve(app, limit_request_fields=5, **stack)
    sock = open_conn(srv.port)
    sock.sendall(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(10))  # no end of the trailer section
    )
    assert_error_response(read_rest(sock), 431)
    sock.close()


def test_endless_trailer_field_is_431_without_waiting(serve: Any, stack: dict[str, str]) -> None:
    """One trailer field that never ends is bounded like a head (--limit-request-head), not held."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    srv = serve(app, limit_request_head=4096, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: ")
    with contextlib.suppress(OSError):  # the server may close while the bytes still go out
        for _ in range(8):
            sock.sendall(b"v" * 2048)
            time.sleep(0.02)  # separate reads: the bound must hold across them
    assert_error_response(read_rest(sock), 431)
    sock.close()


def test_large_chunks_in_many_reads_are_not_mistaken_for_trailers(serve: Any, stack: dict[str, str]) -> None:
    """A chunk's data spread over many reads is body, however long: no 431 (see the test above)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % size})

    srv = serve(app, limit_request_head=4096, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (64 * 1024))
    for _ in range(16):
        sock.sendall(b"v" * 4096)
        time.sleep(0.01)
    sock.sendall(b"\r\n0\r\nX-T: done\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"65536")
    sock.close()


def test_h11_max_incomplete_event_size_bounds_the_h11_buffer(serve: Any) -> None:
    """The h11-only bound applies to a head still incomplete, below --limit-request-head."""
    srv = serve(responder(), http="h11", h11_max_incomplete_event_size=1024, limit_request_head=65536)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 3000)  # 3 KiB and no end yet
    assert_error_response(read_rest(sock), 431)
    sock.close()
    # The same head arriving whole is one complete event for h11: the head limit alone applies.
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.close()


# -- concurrency and request-count limits -------------------------------------------------------------------


def test_limit_concurrency_answers_503(serve: Any, stack: dict[str, str]) -> None:
    started = threading.Event()
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            started.set()
            await wait_thread_event(release)
        await path_echo(scope, receive, send)

    srv = serve(app, limit_concurrency=1, limit_concurrency_mode="reject", **stack)
    slow = open_conn(srv.port)
    slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        assert started.wait(5)
        data = exchange(srv.port, b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_error_response(data, 503)
    finally:
        release.set()
    assert read_response(slow)[:3:2] == (200, b"/slow:")
    # The slot is free again: the next request on the same connection is served.
    slow.sendall(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(slow)[:3:2] == (200, b"/third:")
    slow.close()


def test_limit_concurrency_queue_mode_holds_requests(serve: Any, stack: dict[str, str]) -> None:
    """Queue mode (the default): excess requests wait for a slot instead of failing."""
    started = threading.Event()
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            started.set()
            await wait_thread_event(release)
        await path_echo(scope, receive, send)

    srv = serve(app, limit_concurrency=1, **stack)
    slow = open_conn(srv.port)
    slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        assert started.wait(5)
        waiting = [open_conn(srv.port) for _ in range(3)]
        for i, sock in enumerate(waiting):
            sock.sendall(b"GET /queued%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        # A pipelined second request on the busy connection waits too.
        slow.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in waiting:
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # held, not answered and not refused
    finally:
        release.set()
    assert read_response(slow)[:3:2] == (200, b"/slow:")
    assert read_response(slow)[:3:2] == (200, b"/after:")
    for i, sock in enumerate(waiting):
        sock.settimeout(5)
        status, _, body = read_response(sock)
        assert (status, body) == (200, b"/queued%d:" % i)
        sock.close()
    slow.close()


def test_limit_max_requests_shuts_down(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), limit_max_requests=3, **stack)
    port = srv.port
    sock = open_conn(port)
    for _ in range(2):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[:3:2] == (200, b"ok")
    assert srv.server.started
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[:3:2] == (200, b"ok")  # the third is still answered in full
    assert is_closed(sock, 5)
    sock.close()
    wait_for(lambda: not srv.server.started)
    srv._thread.join(10)
    assert not srv._thread.is_alive()
    assert srv.error is None
    assert len(scopes) == 3
    assert any("--limit-max-requests" in r.getMessage() for r in caplog.records)
    with pytest.raises(OSError):
        track(socket.create_connection(("127.0.0.1", port), timeout=2))


# -- malformed requests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"BLAH\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET / FTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nNo-Colon\r\n\r\n",
    ],
    ids=["word", "method-only", "extra-token", "wrong-protocol", "tls", "space-in-name", "no-colon"],
)
def test_garbage_is_400(serve: Any, stack: dict[str, str], request_bytes: bytes) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    assert_error_response(exchange(srv.port, request_bytes), 400)
    assert scopes == []  # the app never saw it


def test_invalid_request_is_logged(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(responder(), **stack)
    assert_error_response(exchange(srv.port, b"BLAH\r\n\r\n"), 400)
    wait_for(lambda: [r for r in caplog.records if "invalid HTTP request" in r.getMessage()])


def test_missing_host_is_400(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    assert_error_response(exchange(srv.port, b"GET / HTTP/1.1\r\n\r\n"), 400)
    assert scopes == []
    # HTTP/1.0 needs no Host.
    assert exchange(srv.port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_two_hosts_is_400(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    assert_error_response(exchange(srv.port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400)
    assert_error_response(exchange(srv.port, b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400)
    assert scopes == []


def test_unsupported_http_version_is_505(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    assert_error_response(exchange(srv.port, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505)
    assert scopes == []


def test_invalid_chunk_size_is_400(serve: Any, stack: dict[str, str]) -> None:
    messages: list[dict[str, Any]] = []
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    break
        finally:
            done.set()

    srv = serve(app, **stack)
    data = exchange(
        srv.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    )
    assert_error_response(data, 400)
    assert done.wait(5)
    assert messages[-1] == {"type": "http.disconnect"}  # the app waiting for the body is told
    assert all(m.get("body", b"") == b"" for m in messages)


def test_invalid_chunk_after_valid_chunk_is_400(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(path_echo, **stack)
    data = exchange(
        srv.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n-1\r\nx\r\n0\r\n\r\n"
    )
    assert_error_response(data, 400)


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"Content-Length: abc\r\n",
        b"Content-Length: -1\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        b"Transfer-Encoding: gzip\r\n",
    ],
    ids=["two-lengths", "non-numeric", "negative", "te-and-cl", "unknown-coding"],
)
def test_ambiguous_framing_is_rejected(serve: Any, stack: dict[str, str], framing: bytes) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    data = exchange(srv.port, b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\nabc0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 501")
    assert b"connection: close" in data.partition(b"\r\n\r\n")[0]
    assert scopes == []


def test_error_after_good_pipelined_request(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(path_echo, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nBROKEN LINE\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"/first:")  # the good request is answered first
    assert_error_response(read_rest(sock), 400)
    sock.close()
