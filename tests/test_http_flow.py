"""Request bodies, disconnects, keep-alive, pipelining, 100-continue, flow control, app errors.

Real servers over real sockets; every protocol test runs on all four (parser, loop) stacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import is_closed, read_response
from tests.http_apps import (  # noqa: F401 (close_test_sockets: an autouse fixture)
    app_errors,
    capture_polycorn_logs,
    close_test_sockets,
    exchange,
    header_values,
    open_conn,
    path_echo,
    read_rest,
    responder,
    split_response,
    track,
    wait_for,
    wait_thread_event,
)

# -- request bodies ------------------------------------------------------------------------------------


def _message_recorder(messages: list[dict[str, Any]], steps: list[threading.Event] | None = None) -> Any:
    """Records every receive() message; answers the concatenated body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if steps and len(messages) <= len(steps):
                steps[len(messages) - 1].set()
            if message["type"] != "http.request":
                return
            body += message["body"]
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_get_without_body(serve: Any, stack: dict[str, str]) -> None:
    messages: list[dict[str, Any]] = []
    srv = serve(_message_recorder(messages), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[:3:2] == (200, b"")
    assert messages == [{"type": "http.request", "body": b"", "more_body": False}]
    sock.close()


def test_content_length_body_in_several_writes(serve: Any, stack: dict[str, str]) -> None:
    messages: list[dict[str, Any]] = []
    steps = [threading.Event() for _ in range(3)]
    srv = serve(_message_recorder(messages, steps), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\nfirst")
    # Each write goes out only after the app has had the previous part: one message per write.
    assert steps[0].wait(5)
    sock.sendall(b"-2nd-")
    assert steps[1].wait(5)
    sock.sendall(b"third")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"first-2nd-third")
    assert [m["type"] for m in messages] == ["http.request"] * 3
    assert [m["body"] for m in messages] == [b"first", b"-2nd-", b"third"]
    assert [m["more_body"] for m in messages] == [True, True, False]
    sock.close()


def test_chunked_request_body(serve: Any, stack: dict[str, str]) -> None:
    messages: list[dict[str, Any]] = []
    steps = [threading.Event()]
    srv = serve(_message_recorder(messages, steps), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert steps[0].wait(5)
    sock.sendall(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"hello world")
    assert messages[0] == {"type": "http.request", "body": b"hello", "more_body": True}
    assert b"".join(m["body"] for m in messages) == b"hello world"
    assert messages[-1]["more_body"] is False
    # The connection is still in sync after a chunked body.
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    assert read_response(sock)[2] == b"ok"
    sock.close()


def test_large_body_reassembles(serve: Any, stack: dict[str, str]) -> None:
    payload = os.urandom(1024 * 1024 + 7)
    srv = serve(path_echo, **stack)
    with httpx.Client(trust_env=False) as client:
        response = client.post(srv.url + "/big", content=payload)
    assert response.status_code == 200
    assert response.content == b"/big:" + payload


# -- disconnects ------------------------------------------------------------------------------------------


def _disconnect_watcher(messages: list[dict[str, Any]], done: threading.Event, send_after: bool = False) -> Any:
    errors: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] == "http.disconnect":
                    break
            if send_after:
                try:
                    await send({"type": "http.response.start", "status": 200, "headers": []})
                    await send({"type": "http.response.body", "body": b"too late"})
                except BaseException as exc:
                    errors.append(exc)
                    raise
        finally:
            done.set()

    app.errors = errors  # type: ignore[attr-defined]
    return app


def test_disconnect_while_waiting_in_receive(serve: Any, stack: dict[str, str]) -> None:
    messages: list[dict[str, Any]] = []
    done = threading.Event()
    srv = serve(_disconnect_watcher(messages, done), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    wait_for(lambda: messages)  # the app has its body and now waits for the disconnect
    sock.close()
    assert done.wait(5), "the app never saw http.disconnect"
    assert messages == [{"type": "http.request", "body": b"abc", "more_body": False}, {"type": "http.disconnect"}]


def test_disconnect_mid_body(serve: Any, stack: dict[str, str]) -> None:
    messages: list[dict[str, Any]] = []
    done = threading.Event()
    srv = serve(_disconnect_watcher(messages, done), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
    wait_for(lambda: messages)
    sock.close()
    assert done.wait(5), "the app waiting for the rest of the body never saw http.disconnect"
    assert messages[0] == {"type": "http.request", "body": b"partial", "more_body": True}
    assert messages[-1] == {"type": "http.disconnect"}


def test_send_after_disconnect_raises_oserror(serve: Any, stack: dict[str, str]) -> None:
    messages: list[dict[str, Any]] = []
    done = threading.Event()
    app = _disconnect_watcher(messages, done, send_after=True)
    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: messages)
    sock.close()
    assert done.wait(5)
    assert messages[-1] == {"type": "http.disconnect"}
    assert len(app.errors) == 1 and isinstance(app.errors[0], OSError), app.errors


def test_receive_after_response_returns_disconnect(serve: Any, stack: dict[str, str]) -> None:
    after: list[dict[str, Any]] = []
    done = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        after.append(await receive())  # must not wait for the client: the response is complete
        done.set()

    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[2] == b"done"
    assert done.wait(5)
    assert after == [{"type": "http.disconnect"}]
    assert not is_closed(sock, 0.1)  # the keep-alive connection itself is fine
    sock.close()


def test_half_closed_client_still_gets_its_response(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(path_echo, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    sock.shutdown(socket.SHUT_WR)
    _, _, body = split_response(read_rest(sock))
    assert body == b"/half:body"
    sock.close()


# -- keep-alive ----------------------------------------------------------------------------------------------


def test_keep_alive_several_requests(serve: Any, stack: dict[str, str]) -> None:
    ports: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        ports.append(scope["client"][1])
        await path_echo(scope, receive, send)

    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    for i in range(5):
        sock.sendall(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d" % (i, i))
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"/%d:%d" % (i, i))
        assert "connection" not in headers
    assert ports == [sock.getsockname()[1]] * 5
    assert not is_closed(sock, 0.3)  # default keep-alive timeout is 5 s
    sock.close()


def test_keep_alive_timeout_closes_idle_connection(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), timeout_keep_alive=0.3, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # still open right after a response
    assert read_response(sock)[0] == 200
    assert is_closed(sock, 5.0)
    sock.close()
    idle = open_conn(srv.port)  # a connection that never sends a request is idle too
    assert is_closed(idle, 5.0)
    idle.close()


def test_http10_closes_by_default(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(body=b"ten"), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    line, headers, body = split_response(read_rest(sock))  # returns only because the server closed
    assert line.startswith("HTTP/1.1 200")
    assert header_values(headers, "connection") == ["close"]
    assert body == b"ten"
    sock.close()


def test_http10_keep_alive_when_asked(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(path_echo, **stack)
    sock = open_conn(srv.port)
    for i in range(2):
        sock.sendall(b"GET /%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"/%d:" % i)
        assert headers["connection"] == "keep-alive"
    sock.close()


def test_client_connection_close(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = read_response(sock)
    assert (status, body) == (200, b"hello")
    assert headers["connection"] == "close"
    assert is_closed(sock)
    sock.close()


def test_app_connection_close_header(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(headers=[(b"Connection", b"close")]), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_rest(sock)
    _, headers, body = split_response(data)
    assert header_values(headers, "connection") == ["close"]  # one header, not the app's and ours
    assert body == b"hello"
    sock.close()


# -- pipelining ------------------------------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(path_echo, **stack)
    sock = open_conn(srv.port)
    sock.sendall(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /4 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /5 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nend"
    )
    bodies = [read_response(sock)[2] for _ in range(5)]
    assert bodies == [b"/1:", b"/2:hello", b"/3:abcde", b"/4:", b"/5:end"]
    assert is_closed(sock)
    sock.close()


def test_many_pipelined_requests(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(path_echo, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(100)))
    for i in range(100):
        assert read_response(sock)[2] == b"/%d:" % i
    sock.close()


def test_slow_first_pipelined_request_is_not_overtaken(serve: Any, stack: dict[str, str]) -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        events.append("start " + scope["path"])
        if scope["path"] == "/slow":
            await asyncio.sleep(0.2)
        events.append("end " + scope["path"])
        await path_echo(scope, receive, send)

    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    sock.sendall(
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nPOST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nquick"
    )
    assert read_response(sock)[2] == b"/slow:"
    assert read_response(sock)[2] == b"/fast:quick"
    assert events == ["start /slow", "end /slow", "start /fast", "end /fast"]
    sock.close()


# -- Expect: 100-continue -------------------------------------------------------------------------------------


def test_expect_continue_sent_on_first_receive(serve: Any, stack: dict[str, str]) -> None:
    go = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await wait_thread_event(go)
        await path_echo(scope, receive, send)

    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    sock.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):
            sock.recv(1)  # the app has not asked for the body yet: no 100
    finally:
        go.set()
    sock.settimeout(5)
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(65536)
        assert chunk
        interim += chunk
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"hello")
    status, headers, body = read_response(sock)
    assert (status, body) == (200, b"/up:hello")
    assert "connection" not in headers
    sock.sendall(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[2] == b"/again:"
    sock.close()


def test_expect_continue_not_sent_when_app_does_not_read(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(status=413, body=b"no thanks"), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
    data = read_rest(sock)  # returns: the server closes after answering
    assert b"100 Continue" not in data
    line, headers, body = split_response(data)
    assert line.startswith("HTTP/1.1 413")
    assert header_values(headers, "connection") == ["close"]
    assert body == b"no thanks"
    sock.close()


# -- flow control ------------------------------------------------------------------------------------------------

_READ_SIZE = 256 * 1024  # the most one transport read hands the protocol (asyncio and uvloop)


def test_upload_buffering_is_bounded(serve: Any, stack: dict[str, str]) -> None:
    total = 8 * 1024 * 1024
    payload = os.urandom(total)
    go = threading.Event()
    stats: dict[str, Any] = {"paused": False, "max_buffered": 0, "max_message": 0, "received": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        cycle = receive.__self__  # the RequestCycle: what the server holds for this request
        conn = cycle.conn
        while not conn.reading_paused:
            stats["max_buffered"] = max(stats["max_buffered"], cycle.buffered)
            await asyncio.sleep(0.002)
        stats["max_buffered"] = max(stats["max_buffered"], cycle.buffered)
        stats["paused"] = True
        await wait_thread_event(go)
        stats["max_buffered"] = max(stats["max_buffered"], cycle.buffered)
        digest = hashlib.sha256()
        while True:
            message = await receive()
            stats["max_buffered"] = max(stats["max_buffered"], cycle.buffered)
            stats["max_message"] = max(stats["max_message"], len(message["body"]))
            stats["received"] += len(message["body"])
            digest.update(message["body"])
            if not message["more_body"]:
                break
        data = digest.hexdigest().encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})

    srv = serve(app, **stack)
    high_water = srv.config.read_high_water
    sock = track(socket.socket())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # keep the client's kernel buffer small
    sock.settimeout(30)
    sock.connect(("127.0.0.1", srv.port))
    sent = threading.Event()

    def upload() -> None:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total + payload)
        sent.set()

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    try:
        wait_for(lambda: stats["paused"])
        time.sleep(0.2)  # more time for bytes to pile up if reading were not really paused
        assert not sent.is_set(), "the whole upload was accepted while the app read nothing"
        assert stats["max_buffered"] <= high_water + _READ_SIZE, stats
    finally:
        go.set()
    uploader.join(20)
    assert sent.is_set()
    status, _, body = read_response(sock)
    assert status == 200
    assert body == hashlib.sha256(payload).hexdigest().encode()
    assert stats["received"] == total
    assert stats["max_buffered"] <= high_water + _READ_SIZE, stats
    assert stats["max_message"] <= high_water + _READ_SIZE, stats
    sock.close()


def test_streamed_download_waits_for_slow_client(serve: Any, stack: dict[str, str]) -> None:
    block = 1024 * 1024
    count = 64
    blocks = [os.urandom(block) for _ in range(4)]
    expected = hashlib.sha256()
    for i in range(count):
        expected.update(blocks[i % 4])
    progress = [0]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(count):
            await send({"type": "http.response.body", "body": blocks[i % 4], "more_body": i < count - 1})
            progress[0] = i + 1

    srv = serve(app, **stack)
    sock = track(socket.socket())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # keep the client's kernel buffer small
    sock.settimeout(30)
    sock.connect(("127.0.0.1", srv.port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    # Do not read: the app's send() must stall once the buffers are full.
    wait_for(lambda: progress[0] > 0)
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() - stable_since < 0.3:
        assert time.monotonic() < deadline, "send() never stalled"
        if progress[0] != last:
            last, stable_since = progress[0], time.monotonic()
        time.sleep(0.02)
    stalled_at = progress[0]
    assert stalled_at < count // 2, f"the app sent {stalled_at} MiB to a client that read nothing"
    # Now read: the app resumes and every byte arrives, in order.
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
    buf = bytearray(rest)
    digest = hashlib.sha256()
    received = 0
    view = memoryview(bytearray(1024 * 1024))
    while True:
        # Decode chunk framing incrementally, hashing the payload without quadratic copies.
        while b"\r\n" not in buf[:20]:
            n = sock.recv_into(view)
            assert n, "closed mid-body"
            buf += view[:n]
        size_line = bytes(buf[:20]).partition(b"\r\n")[0]
        size = int(size_line, 16)
        del buf[: len(size_line) + 2]
        while len(buf) < size + 2:
            n = sock.recv_into(view)
            assert n, "closed mid-body"
            buf += view[:n]
        digest.update(buf[:size])
        received += size
        assert buf[size : size + 2] == b"\r\n"
        del buf[: size + 2]
        if size == 0:
            break
    assert received == count * block
    assert digest.hexdigest() == expected.hexdigest()
    assert progress[0] == count
    assert bytes(buf) == b""
    sock.close()


def test_streamed_download_with_content_length(serve: Any, stack: dict[str, str]) -> None:
    block = os.urandom(256 * 1024)
    count = 64

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"%d" % (len(block) * count))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(count):
            await send({"type": "http.response.body", "body": block, "more_body": i < count - 1})

    srv = serve(app, **stack)
    with httpx.Client(trust_env=False, timeout=30) as client:
        response = client.get(srv.url)
    assert response.headers["content-length"] == str(len(block) * count)
    assert "transfer-encoding" not in response.headers
    assert response.content == block * count


# -- app errors and content-length enforcement -------------------------------------------------------------------


def _sender(*messages: dict[str, Any], raise_after: bool = False) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        for message in messages:
            await send(message)
        if raise_after:
            raise RuntimeError("app failure")

    return app


def _start(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": list(headers)}


def _body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def test_body_longer_than_content_length(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(_sender(_start((b"content-length", b"5")), _body(b"abc", True), _body(b"defgh")), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_rest(sock)  # returns because the server closes: the response cannot be finished
    line, headers, body = split_response(data)
    assert line.startswith("HTTP/1.1 200")
    assert header_values(headers, "content-length") == ["5"]
    assert body == b"abc"  # never more than declared
    wait_for(lambda: app_errors(caplog))
    assert len(app_errors(caplog)) == 1
    assert "longer than its content-length" in str(app_errors(caplog)[0].exc_info[1])
    sock.close()


def test_body_longer_than_content_length_in_one_message(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(_sender(_start((b"content-length", b"2")), _body(b"too long")), **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the server closes
    line, headers, _ = split_response(data)
    assert line.startswith("HTTP/1.1 500")  # nothing was written yet: a clean 500 instead
    assert b"too long" not in data
    assert header_values(headers, "connection") == ["close"]
    assert len(app_errors(caplog)) == 1


def test_body_shorter_than_content_length(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(_sender(_start((b"content-length", b"10")), _body(b"abc", True), _body(b"")), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_rest(sock)  # the client is not left waiting for 7 bytes that never come
    _, headers, body = split_response(data)
    assert header_values(headers, "content-length") == ["10"]
    assert body == b"abc"
    wait_for(lambda: app_errors(caplog))
    assert len(app_errors(caplog)) == 1
    assert "shorter than its content-length" in str(app_errors(caplog)[0].exc_info[1])
    sock.close()


def test_body_shorter_in_one_message_is_500(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(_sender(_start((b"content-length", b"10")), _body(b"abc")), **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    line, _, body = split_response(data)
    assert line.startswith("HTTP/1.1 500")
    assert b"abc" not in body


def test_exception_before_start_is_500_and_connection_stays(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/fail":
            raise ValueError("broken handler")
        await path_echo(scope, receive, send)

    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 500
    assert headers["content-length"] == str(len(body)) and body == b"Internal Server Error"
    assert "connection" not in headers
    sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[:3:2] == (200, b"/ok:")
    errors = app_errors(caplog)
    assert len(errors) == 1
    assert isinstance(errors[0].exc_info[1], ValueError)
    assert "GET /fail HTTP/1.1" in errors[0].getMessage()
    sock.close()


def test_exception_after_body_started_closes(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(_sender(_start(), _body(b"partial", True), raise_after=True), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = read_rest(sock)  # a socket timeout here would mean a hung client
    line, headers, rest = split_response(data)
    assert line.startswith("HTTP/1.1 200")
    assert header_values(headers, "transfer-encoding") == ["chunked"]
    assert rest == b"7\r\npartial\r\n"  # no terminating chunk: the client can tell it was cut
    sock.close()


def test_exception_after_start_before_body_is_500(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(_sender(_start((b"x-app", b"1")), raise_after=True), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = read_response(sock)
    assert status == 500  # the 200 head was never written, so a clean 500 is still possible
    assert "x-app" not in headers
    sock.close()


@pytest.mark.parametrize("sent", ["nothing", "start-only"])
def test_app_returning_without_response_is_500(
    serve: Any,
    stack: dict[str, str],
    sent: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(_sender(*([_start()] if sent == "start-only" else [])), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (500, b"Internal Server Error")
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # still usable
    assert read_response(sock)[0] == 500
    assert sum("returned without completing the response" in r.getMessage() for r in app_errors(caplog)) == 2
    sock.close()


def test_app_returning_mid_body_closes(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(_sender(_start(), _body(b"abc", True)), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    _, headers, rest = split_response(read_rest(sock))
    assert header_values(headers, "transfer-encoding") == ["chunked"]
    assert rest == b"3\r\nabc\r\n"  # no zero-size chunk: the client can tell the body was cut
    sock.close()


def test_streamed_parts_of_one_step_leave_together_and_slow_ones_at_once(serve: Any, stack: dict[str, str]) -> None:
    """Small body parts sent in one step of the app are written together (one system call);
    a part followed by a wait is written before the wait, never held back until the next part."""
    released = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(20):  # more than one batch, all in one step
            await send({"type": "http.response.body", "body": b"%02d," % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"x" * 20000, "more_body": True})  # a big part
        await send({"type": "http.response.body", "body": b"wait", "more_body": True})
        # The client must see everything so far before this request can go on.
        while not released.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"done"})

    srv = serve(app, **stack)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    expected = b"".join(b"%02d," % i for i in range(20)) + b"x" * 20000 + b"wait"
    seen = b""
    deadline = time.monotonic() + 5
    while b"4\r\nwait\r\n" not in seen:
        assert time.monotonic() < deadline, f"a part was held back: {seen[-200:]!r}"
        seen += sock.recv(65536)
    released.set()
    status, _, body = read_response_from(seen, sock)
    assert status == 200 and body == expected + b"done"
    sock.close()


def read_response_from(already: bytes, sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """read_response() for a response whose first bytes were read already."""
    from tests.conftest import _pushback

    _pushback[sock.fileno()] = already
    return read_response(sock)
