"""WebSocket limits and lifecycle: message size, backpressure both ways, keep-alive pings, the open
and close timeouts, shutdown close codes (in process and under a supervisor), ``--ws none`` and
``--limit-concurrency``.

Real servers, the real ``websockets`` client, and ``RawClient`` where the client has to misbehave
(never read, never answer a ping or a close). Where the test needs to see inside the server (the
session's queue, the transport's write buffer), it asks on the server's own loop (``on_loop``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from polycorn.websocket import WebSocketCycle
from tests import conftest
from tests.conftest import RunningServer, is_closed, read_response, recv_all
from tests.fixture_apps.process import Child, polycorn
from tests.http_apps import (  # noqa: F401 (close_test_sockets: an autouse fixture)
    close_test_sockets,
    open_conn,
    track,
    wait_for,
    wait_thread_event,
)
from tests.ws_apps import RawClient, Recorder, echo_app, frame, handshake_request

ROOT = str(Path(__file__).resolve().parent.parent)
PING, PONG, CLOSE, TEXT, BINARY, CONT = 0x9, 0xA, 0x8, 0x1, 0x2, 0x0
LOOPS = ["uvloop", "asyncio"]


# -- helpers ------------------------------------------------------------------------------------------


def ws_url(srv: RunningServer, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"


def on_loop(srv: RunningServer, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on the server's loop (its state is only consistent there); its result."""
    result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def call() -> None:
        try:
            result.set_result(fn())
        except BaseException as exc:
            result.set_exception(exc)

    srv.loop.call_soon_threadsafe(call)
    return result.result(5)


def session_of(srv: RunningServer) -> WebSocketCycle:
    """The server's one accepted WebSocket session (it joins service.connections on accept)."""

    def find() -> WebSocketCycle | None:
        assert srv.server.service is not None
        found = [c for c in srv.server.service.connections if isinstance(c, WebSocketCycle)]
        assert len(found) <= 1, found
        return found[0] if found else None

    return wait_for(lambda: on_loop(srv, find))


def numbered(i: int, size: int) -> bytes:
    """A ``size``-byte message that says its place in a sequence (checked for loss and order)."""
    return i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4)


def stable(read: Callable[[], Any], settle: float = 0.5, timeout: float = 15.0) -> Any:
    """Poll ``read()`` until it returns the same value for ``settle`` seconds; that value."""
    deadline = time.monotonic() + timeout
    value = read()
    since = time.monotonic()
    while time.monotonic() - since < settle:
        if time.monotonic() > deadline:
            raise AssertionError(f"still changing after {timeout}s: {value!r}")
        time.sleep(0.01)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    """``raw(port, ...)`` opens a RawClient, closed after the test."""
    clients: list[RawClient] = []

    def open_client(port: int, **kwargs: Any) -> RawClient:
        client = RawClient(port, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def closed_by_server(ws: ClientConnection, timeout: float = 10.0) -> ConnectionClosed:
    """Wait for the server to close ``ws`` (anything it sends first is skipped); the exception."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as info:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
    return info.value


# -- apps -----------------------------------------------------------------------------------------------


def gated_receiver(rec: Recorder, gate: threading.Event) -> Any:
    """Accepts, then calls receive() only once ``gate`` is set: messages pile up meanwhile."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await wait_thread_event(gate, 30)
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                rec.disconnects.append(event)
                return
            rec.received.append(event)

    return app


def flood_sender(rec: Recorder, count: int, size: int) -> Any:
    """Accepts and sends ``count`` numbered ``size``-byte messages as fast as send() lets it."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        for i in range(count):
            await send({"type": "websocket.send", "bytes": numbered(i, size)})
            rec.sent = i + 1
        rec.disconnects.append(await receive())

    return app


def never_answers(rec: Recorder) -> Any:
    """Takes websocket.connect and then neither accepts nor denies; records what receive() says next."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        rec.disconnects.append(await receive())

    return app


def blocking_echo(blocked: threading.Event) -> Any:
    """echo_app, except that ``block`` blocks the server's loop for 0.3 s (sets ``blocked`` first)
    and then answers ``unblocked``."""
    echo = echo_app()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await echo(scope, receive, send)

        async def intercept() -> dict[str, Any]:
            while True:
                event = await receive()
                if event.get("text") != "block":
                    return event
                blocked.set()
                time.sleep(0.3)  # on purpose: nothing else runs on the loop meanwhile
                await send({"type": "websocket.send", "text": "unblocked"})

        return await echo(scope, intercept, send)

    return app


# -- 1: ws_max_size -------------------------------------------------------------------------------------


def test_message_at_ws_max_size_passes_one_byte_more_closes_1009(serve: Any) -> None:
    """The limit is inclusive; beyond it the server fails the connection with 1009 (too big)."""
    rec = Recorder()
    srv = serve(echo_app(rec), ws_max_size=1000)
    with ws_connect(ws_url(srv), compression=None, max_size=None) as ws:
        ws.send(b"b" * 1000)
        assert ws.recv(timeout=5) == b"b" * 1000
        ws.send("t" * 1000)
        assert ws.recv(timeout=5) == "t" * 1000
        ws.send(b"b" * 1001)
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    wait_for(lambda: rec.disconnects)
    assert rec.disconnects[0]["code"] == 1009


def test_ws_max_size_counts_every_fragment_of_a_message(serve: Any, raw: Any) -> None:
    """Fragments each under the limit but over it together are one message too big: 1009."""
    srv = serve(echo_app(), ws_max_size=1000, ws_per_message_deflate=False)
    client = raw(srv.port)
    assert client.status == 101
    client.sock.sendall(frame(BINARY, b"a" * 500, fin=False) + frame(CONT, b"b" * 500))
    assert client.recv_frame() == (BINARY, b"a" * 500 + b"b" * 500)  # exactly at the limit
    client.sock.sendall(frame(BINARY, b"a" * 400, fin=False) + frame(CONT, b"b" * 400, fin=False))
    client.sock.sendall(frame(CONT, b"c" * 400))
    opcode, payload = client.recv_frame()
    assert opcode == CLOSE and client.close_code(payload) == 1009
    assert client.closed()  # a server that fails the connection closes TCP at once


def test_ws_max_size_bounds_decompression(serve: Any) -> None:
    """A compressed frame far smaller than the limit that inflates beyond it is refused (1009):
    the limit applies after decompression, so a small frame cannot expand into a huge message."""
    rec = Recorder()
    srv = serve(echo_app(rec), ws_max_size=64 * 1024)
    with ws_connect(ws_url(srv), compression="deflate", max_size=None) as ws:
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        ws.send(b"\0" * (64 * 1024))  # at the limit once inflated: fine
        assert ws.recv(timeout=5) == b"\0" * (64 * 1024)
        ws.send(b"\0" * (16 * 1024 * 1024))  # ~16 KiB on the wire, 16 MiB inflated
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    wait_for(lambda: rec.disconnects)
    assert rec.disconnects[0]["code"] == 1009


# -- 2: read-side backpressure --------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_reading_pauses_at_ws_max_queue_and_nothing_is_lost(serve: Any, raw: Any, loop: str) -> None:
    """An app that does not receive() stops the server reading once ws_max_queue messages wait:
    the queue stays bounded (by what one read can hold past the limit), the client's sends block
    on TCP, and once the app drains every message arrives, in order."""
    rec = Recorder()
    gate = threading.Event()
    max_queue, size, count = 4, 64 * 1024, 300
    srv = serve(gated_receiver(rec, gate), ws_max_queue=max_queue, ws_per_message_deflate=False, loop=loop)
    client = raw(srv.port)
    assert client.status == 101
    session = session_of(srv)
    sent = [0]
    errors: list[BaseException] = []

    def send_all() -> None:
        try:
            client.sock.settimeout(60)
            for i in range(count):
                client.sock.sendall(frame(BINARY, numbered(i, size)))
                sent[0] = i + 1
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send_all, daemon=True)
    try:
        sender.start()
        wait_for(lambda: on_loop(srv, lambda: session.reading_paused))
        queued = stable(lambda: on_loop(srv, lambda: len(session.queue)))
        # One read is at most 256 KiB on both loops: the messages it completes, plus the one it
        # finishes from the read before, may land after the pause.
        assert max_queue <= queued <= max_queue + 256 * 1024 // size + 1, queued
        assert on_loop(srv, lambda: session.reading_paused)
        assert sender.is_alive() and sent[0] < count, "the client's sends never blocked"
        assert not rec.received
    finally:
        gate.set()
    sender.join(30)
    assert not sender.is_alive() and not errors, errors
    wait_for(lambda: len(rec.received) == count, timeout=30)
    assert [m["bytes"] for m in rec.received] == [numbered(i, size) for i in range(count)]
    assert not on_loop(srv, lambda: session.reading_paused)
    client.send(CLOSE, struct.pack("!H", 1000))
    assert client.recv_frame()[0] == CLOSE
    wait_for(lambda: rec.disconnects)
    assert rec.disconnects[0]["code"] == 1000


# -- 3: write-side backpressure (a client that does not read) --------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_consumer_bounds_the_write_buffer_and_blocks_send(serve: Any, raw: Any, loop: str) -> None:
    """A client that reads nothing: the app's send() waits once the transport holds more than
    write_high_water, so the server's buffer stays bounded; once the client reads, all arrives."""
    rec = Recorder()
    size, count, high = 64 * 1024, 300, 65536
    srv = serve(flood_sender(rec, count, size), ws_per_message_deflate=False, loop=loop, write_high_water=high)
    client = raw(srv.port)
    assert client.status == 101
    session = session_of(srv)
    peak = [0]

    def buffered() -> int:
        size_now = int(session.transport.get_write_buffer_size())
        peak[0] = max(peak[0], size_now)
        return size_now

    wait_for(lambda: on_loop(srv, lambda: session.conn.writing_paused))
    sent = stable(lambda: (rec.sent, on_loop(srv, buffered)))[0]
    assert 0 < sent < count, sent
    # At most high water before the last write, plus that one frame (10-byte binary head).
    assert peak[0] <= high + size + 10, peak[0]
    assert on_loop(srv, lambda: session.conn.writing_paused and session.conn.drain_waiter is not None)
    assert rec.sent == sent  # send() is waiting, not failing: nothing more went out
    for i in range(count):
        opcode, payload = client.recv_frame(timeout=10)
        assert (opcode, payload[:4]) == (BINARY, i.to_bytes(4, "big"))
        assert payload == numbered(i, size)
    # The last frame is on the wire before its send() returns: wait for the app to record it.
    assert wait_for(lambda: rec.sent == count)
    client.send(CLOSE, struct.pack("!H", 1000))
    assert client.recv_frame()[0] == CLOSE
    wait_for(lambda: rec.disconnects)
    assert rec.disconnects[0]["code"] == 1000


# -- 4: keep-alive pings ----------------------------------------------------------------------------------


def test_server_pings_and_a_client_that_answers_stays_open(serve: Any, raw: Any) -> None:
    """Pings come every ws_ping_interval; answered with matching pongs they never time out."""
    srv = serve(echo_app(), ws_ping_interval=0.2, ws_ping_timeout=0.3)
    started = time.monotonic()
    client = raw(srv.port)
    assert client.status == 101
    payloads = []
    while len(payloads) < 5:  # 5 intervals: well past interval + timeout (0.5 s)
        opcode, payload = client.recv_frame()
        assert opcode == PING, (opcode, payload)
        payloads.append(payload)
        client.send(PONG, payload)
    assert time.monotonic() - started >= 5 * 0.2 - 0.05  # one per interval, not sooner
    assert len(set(payloads)) == 5  # a fresh payload each time
    client.send(TEXT, b"still here")
    while True:
        opcode, payload = client.recv_frame()
        if opcode != PING:
            break
        client.send(PONG, payload)
    assert (opcode, payload) == (TEXT, b"still here")


@pytest.mark.parametrize("answer", ["never", "wrong payload"])
def test_unanswered_ping_closes_1011(serve: Any, raw: Any, answer: str) -> None:
    """No pong (or only pongs for another payload) within ws_ping_timeout: close 1011, then TCP."""
    rec = Recorder()
    srv = serve(echo_app(rec), ws_ping_interval=0.2, ws_ping_timeout=0.3)
    started = time.monotonic()
    client = raw(srv.port)
    assert client.status == 101
    opcode, payload = client.recv_frame()
    assert opcode == PING
    if answer == "wrong payload":
        client.send(PONG, b"not " + payload)
    opcode, payload = client.recv_frame()
    assert opcode == CLOSE and client.close_code(payload) == 1011, (opcode, payload)
    assert time.monotonic() - started >= 0.45  # the interval, then the whole timeout
    assert client.closed()
    wait_for(lambda: rec.disconnects)
    assert rec.disconnects[0]["code"] == 1011


def test_client_ping_gets_a_pong_with_the_same_payload(serve: Any, raw: Any) -> None:
    """RFC 6455 §5.5.3: the pong echoes the ping's application data (empty included)."""
    srv = serve(echo_app())
    client = raw(srv.port)
    assert client.status == 101
    client.send(PING, b"are you there?")
    assert client.recv_frame() == (PONG, b"are you there?")
    client.send(PING, b"")
    assert client.recv_frame() == (PONG, b"")


# -- 5: ws_open_timeout ------------------------------------------------------------------------------------


def test_handshake_not_answered_in_ws_open_timeout_gets_503(serve: Any, stack: dict[str, str]) -> None:
    """An app that neither accepts nor denies: the client gets 503 after about ws_open_timeout and
    the app's receive() returns websocket.disconnect."""
    rec = Recorder()
    srv = serve(never_answers(rec), ws_open_timeout=0.3, **stack)
    sock = open_conn(srv.port)
    started = time.monotonic()
    sock.sendall(handshake_request())
    status, _, _ = read_response(sock)
    elapsed = time.monotonic() - started
    assert status == 503
    assert 0.25 <= elapsed < 5, elapsed
    assert is_closed(sock)
    wait_for(lambda: rec.disconnects)
    assert rec.disconnects[0]["type"] == "websocket.disconnect"


# -- 6: ws_close_timeout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_client_that_never_answers_the_close_is_dropped_after_ws_close_timeout(serve: Any, raw: Any, loop: str) -> None:
    """The app closes with 4000: the close frame goes out first, and a client that never answers
    it loses the TCP connection after ws_close_timeout instead of holding it forever."""
    rec = Recorder()
    srv = serve(echo_app(rec), ws_close_timeout=0.3, loop=loop)
    client = raw(srv.port)
    assert client.status == 101
    asked = time.monotonic()
    client.send(TEXT, b"close:4000:bye")
    opcode, payload = client.recv_frame()
    assert opcode == CLOSE
    assert (client.close_code(payload), payload[2:]) == (4000, b"bye")
    assert client.closed(timeout=5)
    assert time.monotonic() - asked >= 0.25  # it waited for our close frame first
    wait_for(lambda: rec.disconnects)
    assert (rec.disconnects[0]["code"], rec.disconnects[0]["reason"]) == (4000, "bye")


# -- 7: shutdown -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("restart", "code"), [(False, 1001), (True, 1012)], ids=["stop", "restart"])
def test_server_shutdown_closes_open_websockets(serve: Any, restart: bool, code: int) -> None:
    """Stopping: 1001 (going away); being replaced: 1012 (service restart). The app sees it too."""
    rec = Recorder()
    srv = serve(echo_app(rec))
    with ws_connect(ws_url(srv)) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        srv.loop.call_soon_threadsafe(srv.server.request_exit, restart)
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == code
    srv._thread.join(10)
    assert not srv._thread.is_alive() and srv.error is None
    assert srv.server.graceful  # the session closed cleanly, nothing was cancelled
    assert [d["code"] for d in rec.disconnects] == [code]


def test_limit_max_requests_counts_a_websocket_session_when_it_ends(serve: Any) -> None:
    """A lone server: the session that ends is request 1 of 1, so the server stops, and the
    other open session is told 1001 (going away: nothing replaces a lone server)."""
    rec = Recorder()
    srv = serve(echo_app(rec), limit_max_requests=1)
    with ws_connect(ws_url(srv)) as first, ws_connect(ws_url(srv)) as second:
        second.send("hi")
        assert second.recv(timeout=5) == "hi"
        assert srv.server.started
        first.close()
        closed = closed_by_server(second)
    assert closed.rcvd is not None and closed.rcvd.code == 1001
    srv._thread.join(10)
    assert not srv._thread.is_alive() and srv.error is None
    assert sorted(d["code"] for d in rec.disconnects) == [1000, 1001]


# Under a supervisor (subprocess).

_READY = re.compile(r"worker (\d+) ready: pid (\d+)")


@contextlib.contextmanager
def supervised(*extra: str, workers: int = 2) -> Iterator[tuple[Child, str]]:
    """``polycorn --workers N`` (processes: the tests tell workers apart by pid) serving
    tests.ws_apps:identity_echo_app; its ws:// address."""
    child = polycorn(
        "tests.ws_apps:identity_echo_app",
        "--app-dir",
        ROOT,
        "--worker-mode",
        "process",
        "--workers",
        str(workers),
        "--port",
        "0",
        "--no-access-log",
        *extra,
    )
    try:
        url = child.url()
        child.wait_for(f"all {workers} workers ready")
        wait_count(child, " ready: pid ", workers)  # each worker's own line may come a bit later
        yield child, "ws" + url.removeprefix("http")
    finally:
        if child.proc.poll() is None:
            child.send_signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                child.proc.wait(15)
        child.kill()


def ready_pids(child: Child) -> list[int]:
    return [int(pid) for _, pid in _READY.findall(child.output)]


def wait_count(child: Child, text: str, count: int, timeout: float = 20.0) -> None:
    wait_for(lambda: child.output.count(text) >= count or child.proc.poll() is not None, timeout=timeout)
    assert child.output.count(text) >= count, child.output


@contextlib.contextmanager
def open_session(url: str) -> Iterator[tuple[ClientConnection, int]]:
    """A session and the pid of the worker serving it (the app says so first)."""
    with ws_connect(url + "/ws", open_timeout=10) as ws:
        hello = ws.recv(timeout=10)
        assert isinstance(hello, str) and hello.startswith("pid "), hello
        yield ws, int(hello[4:])


def test_sighup_rolling_restart_closes_websockets_1012_and_the_client_reconnects() -> None:
    """A replaced worker tells its sessions 1012 (service restart: come back), and a client that
    reconnects is served by a replacement."""
    with supervised() as (child, url):
        old = ready_pids(child)
        with open_session(url) as (ws, pid):
            assert pid in old
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
            child.send_signal(signal.SIGHUP)
            closed = closed_by_server(ws, timeout=30)
        assert closed.rcvd is not None and closed.rcvd.code == 1012, child.output
        wait_count(child, "finished server process", 2)  # both old workers are gone ...
        wait_count(child, " ready: pid ", 4)  # ... and both replacements ready
        new = [p for p in ready_pids(child) if p not in old]
        assert len(new) == 2 and not set(new) & set(old), child.output
        with open_session(url) as (again, pid):
            assert pid in new
            again.send("after")
            assert again.recv(timeout=5) == "after"
        assert "died" not in child.output
        assert child.proc.poll() is None


def test_rolling_restart_of_thread_workers_closes_websockets_1012() -> None:
    """Thread workers are told "restart" by a direct call instead of SIGUSR2: same close code."""
    with supervised("--worker-mode", "thread") as (child, url):
        with open_session(url) as (ws, _):
            ws.send("before")
            assert ws.recv(timeout=5) == "before"
            child.send_signal(signal.SIGHUP)
            closed = closed_by_server(ws, timeout=30)
        assert closed.rcvd is not None and closed.rcvd.code == 1012, child.output
        # Each replacement is ready just before its predecessor finishes: a session opened in
        # between may land on the old loop, which (rightly) sends it 1012 too.
        wait_count(child, "finished server process", 2)  # both old loops are gone ...
        wait_count(child, " ready: pid ", 4)  # ... and both replacements ready
        with open_session(url) as (again, _):
            again.send("after")
            assert again.recv(timeout=5) == "after"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_supervisor_closes_websockets_1001(sig: int) -> None:
    """The whole server stopping is 1001 (going away), not 1012, and the exit is clean."""
    with supervised() as (child, url):
        with open_session(url) as (ws, _):
            child.send_signal(sig)
            closed = closed_by_server(ws, timeout=30)
        assert closed.rcvd is not None and closed.rcvd.code == 1001, child.output
        assert child.wait(20) == 0, child.output


def test_limit_max_requests_recycle_closes_the_other_websockets_1012() -> None:
    """One worker, --limit-max-requests 1: the first session to end is its one request, so it is
    recycled; a session still open on it gets 1012 and reconnects to the replacement."""
    with supervised("--limit-max-requests", "1", workers=1) as (child, url):
        with open_session(url) as (second, pid):
            with open_session(url) as (first, same):
                assert pid == same
                first.send("x")
                assert first.recv(timeout=5) == "x"
            closed = closed_by_server(second, timeout=30)
        assert closed.rcvd is not None and closed.rcvd.code == 1012, child.output
        assert "reached --limit-max-requests: recycling it" in child.output
        wait_count(child, "finished server process", 1)
        with open_session(url) as (_, new):
            assert new != pid
            wait_for(lambda: new in ready_pids(child))  # the replacement
        assert "died" not in child.output


# -- 8: --ws none --------------------------------------------------------------------------------------------


def test_ws_none_serves_an_upgrade_request_as_plain_http(serve: Any, stack: dict[str, str]) -> None:
    """--ws none: the upgrade is ignored (RFC 9110 §7.8 allows it), the app gets an http scope, and
    the connection closes after the response since the client may be expecting another protocol."""
    rec = Recorder()
    srv = serve(echo_app(rec), ws="none", **stack)
    sock = open_conn(srv.port)
    sock.sendall(handshake_request())
    status, headers, body = read_response(sock)
    assert (status, body) == (200, b"plain http")
    assert headers.get("connection") == "close"
    assert "upgrade" not in headers and "sec-websocket-accept" not in headers
    assert is_closed(sock)
    assert not rec.scopes  # the app never saw a websocket scope


# -- 9: --limit-concurrency --------------------------------------------------------------------------------


_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_open_websocket_holds_the_only_slot_in_queue_mode(serve: Any, stack: dict[str, str]) -> None:
    """An open session is a request in flight: at --limit-concurrency 1 a plain request and a
    second handshake wait until it ends, then both are served."""
    srv = serve(echo_app(), limit_concurrency=1, **stack)
    with ws_connect(ws_url(srv)) as ws:
        ws.send("hold")
        assert ws.recv(timeout=5) == "hold"
        plain = open_conn(srv.port)
        upgrade = open_conn(srv.port)
        wait_for(lambda: on_loop(srv, lambda: len(srv.server.service.connections)) == 3)  # all accepted
        plain.sendall(_GET)
        upgrade.sendall(handshake_request())
        for sock in (plain, upgrade):
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # held, neither answered nor refused
    plain.settimeout(5)
    assert read_response(plain)[:3:2] == (200, b"plain http")
    upgrade.settimeout(5)
    assert read_response(upgrade, head_only=True)[0] == 101
    upgrade.sendall(frame(CLOSE, struct.pack("!H", 1000)))
    # The server echoes the close, then closes TCP: the session ended and the slot is free.
    assert recv_all(upgrade) == b"\x88\x02" + struct.pack("!H", 1000)
    # ... and accepting resumed: a new connection is served.
    fresh = open_conn(srv.port)
    fresh.sendall(_GET)
    assert read_response(fresh)[:3:2] == (200, b"plain http")


def test_connection_arriving_as_accepting_pauses_is_served_later(serve: Any, stack: dict[str, str]) -> None:
    """Queue mode stops accepting when a request finds no free slot. A connection the loop picks
    up in the same poll as that request is already accepted: it must wait for a slot like the
    others, not be lost. (The app blocks the loop for a moment so that both events land in one
    poll, the request first.)"""
    blocked = threading.Event()
    srv = serve(blocking_echo(blocked), limit_concurrency=1, **stack)
    plain = open_conn(srv.port)
    with ws_connect(ws_url(srv)) as ws:
        ws.send("hold")
        assert ws.recv(timeout=5) == "hold"
        wait_for(lambda: on_loop(srv, lambda: len(srv.server.service.connections)) == 2)  # both accepted
        ws.send("block")
        assert blocked.wait(5)
        plain.sendall(_GET)  # finds the slot taken: accepting pauses ...
        late = open_conn(srv.port)  # ... and this one is accepted in the same loop iteration
        late.sendall(_GET)
        assert ws.recv(timeout=5) == "unblocked"
    plain.settimeout(5)
    assert read_response(plain)[:3:2] == (200, b"plain http")
    late.settimeout(5)
    assert read_response(late)[:3:2] == (200, b"plain http")


@pytest.mark.parametrize("loop", LOOPS)
def test_shutdown_as_the_last_session_ends_does_not_resume_accepting(serve: Any, loop: str) -> None:
    """Queue mode resumes accepting when the slot frees. When that happens just as shutdown
    begins (here the app asks for the exit and ends the session holding the slot in one step, as
    a SIGTERM arriving at that moment would), accepting must stay off: the server stops and a
    new connection is refused."""
    servers: list[RunningServer] = []
    echo = echo_app()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return await echo(scope, receive, send)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            if event.get("text") == "exit":
                servers[0].server.request_exit()
                return  # at once: the server closes the session (1000), the slot frees

    srv = serve(app, limit_concurrency=1, loop=loop)
    servers.append(srv)
    with ws_connect(ws_url(srv)):
        queued = open_conn(srv.port)
        queued.sendall(handshake_request())  # waits for the slot: accepting pauses
        wait_for(lambda: on_loop(srv, lambda: srv.server.service.saturated))
    status, _, _ = read_response(queued, head_only=True)
    assert status == 101
    queued.sendall(frame(TEXT, b"exit"))
    queued.settimeout(5)
    close = conftest._pushback.pop(queued.fileno(), b"")
    while len(close) < 4:
        close += queued.recv(4 - len(close))
    assert close == b"\x88\x02" + struct.pack("!H", 1000)
    try:
        # Shutdown has begun (the session waits for our close frame): nothing is accepted now.
        wait_for(lambda: not on_loop(srv, lambda: srv.server.service.accepting))
        with pytest.raises(OSError):
            track(socket.create_connection(("127.0.0.1", srv.port), timeout=2))
    finally:
        # Whatever happened, no listener is left open to outlive this test (and warn in another).
        on_loop(srv, lambda: [listener.close() for listener in srv.server._listeners])
        queued.sendall(frame(CLOSE, close[2:]))  # the closing handshake is complete
    srv._thread.join(10)
    assert not srv._thread.is_alive(), "the server did not stop"
    assert srv.error is None


def test_open_websocket_holds_the_only_slot_in_reject_mode(serve: Any, stack: dict[str, str]) -> None:
    """Reject mode: while a session holds the only slot, a plain request and a handshake get 503;
    once it ends, both are served again."""
    srv = serve(echo_app(), limit_concurrency=1, limit_concurrency_mode="reject", **stack)
    with ws_connect(ws_url(srv)) as ws:
        ws.send("hold")
        assert ws.recv(timeout=5) == "hold"
        plain = open_conn(srv.port)
        plain.sendall(_GET)
        assert read_response(plain)[0] == 503
        upgrade = open_conn(srv.port)
        upgrade.sendall(handshake_request())
        assert read_response(upgrade)[0] == 503
        assert is_closed(upgrade)

    # The slot is free again once the session ended (the app's task is done a moment later).
    def served() -> bool:
        sock = open_conn(srv.port)
        sock.sendall(_GET)
        return read_response(sock)[:3:2] == (200, b"plain http")

    wait_for(served)
    with ws_connect(ws_url(srv)) as ws:
        ws.send("again")
        assert ws.recv(timeout=5) == "again"
