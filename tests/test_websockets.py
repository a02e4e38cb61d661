"""WebSockets over ASGI: the handshake, messages both ways, closing, denial, app failures.

Real servers, the real ``websockets`` client, and a raw-frame client where a test needs bytes the
library would never send. Limits, backpressure and shutdown live in test_websocket_limits.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import connect, is_closed, read_response
from tests.http_apps import wait_for
from tests.ws_apps import RawClient, Recorder, echo_app, frame, handshake_request


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def ws_url(srv: Any, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"


# -- the happy path --------------------------------------------------------------------------------


def test_echo_text_and_bytes(serve: Any, stack: dict[str, str]) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec), **stack)

    async def client() -> None:
        async with ws_connect(ws_url(srv)) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xff" * 10)
            assert await ws.recv() == b"\x00\xff" * 10
            await ws.send("")
            assert await ws.recv() == ""

    run(client())
    wait_for(lambda: rec.disconnects)
    assert rec.disconnects == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]


def test_scope(serve: Any, stack: dict[str, str]) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec), root_path="/api", **stack)

    async def client() -> None:
        async with ws_connect(ws_url(srv, "/room%20one/x?a=1&b=%20"), subprotocols=["chat", "v2.chat"]) as ws:
            assert ws.subprotocol == "chat"

    run(client())
    (scope,) = rec.scopes
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/api/room one/x"
    assert scope["raw_path"] == b"/api/room%20one/x"
    assert scope["root_path"] == "/api"
    assert scope["query_string"] == b"a=1&b=%20"
    assert scope["subprotocols"] == ["chat", "v2.chat"]
    assert scope["client"][0] == "127.0.0.1" and isinstance(scope["client"][1], int)
    assert scope["server"] == ("127.0.0.1", srv.port)
    assert "websocket.http.response" in scope["extensions"]
    assert "method" not in scope
    headers = dict(scope["headers"])
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"sec-websocket-protocol"] == b"chat, v2.chat"
    assert all(name == name.lower() for name, _ in scope["headers"])


def test_forwarded_proto_https_becomes_wss(serve: Any) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec), proxy_headers=True, forwarded_allow_ips="127.0.0.1")

    async def client() -> None:
        async with ws_connect(ws_url(srv), additional_headers={"X-Forwarded-Proto": "https"}):
            pass

    run(client())
    assert rec.scopes[0]["scheme"] == "wss"


def test_accept_with_subprotocol_and_headers(serve: Any) -> None:
    srv = serve(echo_app(subprotocol="v2", headers=[(b"x-room", b"lobby"), (b"server", b"mine")]))

    async def client() -> None:
        async with ws_connect(ws_url(srv), subprotocols=["v1", "v2"]) as ws:
            assert ws.subprotocol == "v2"
            headers = ws.response.headers
            assert headers["x-room"] == "lobby"
            assert headers.get_all("server") == ["mine"]  # the app's replaces ours, never both
            assert headers["sec-websocket-protocol"] == "v2"

    run(client())


def test_large_messages_and_fragments(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(echo_app(), **stack)
    big = bytes(range(256)) * 4096  # 1 MiB

    async def client() -> None:
        async with ws_connect(ws_url(srv), max_size=None) as ws:
            await ws.send(big)
            assert await ws.recv() == big
            # An iterable is sent as one fragmented message: the app gets it whole.
            await ws.send(["frag", "mented ", "tëxt"])
            assert await ws.recv() == "fragmented tëxt"
            await ws.send([b"a" * 70000, b"b" * 3])
            assert await ws.recv() == b"a" * 70000 + b"bbb"

    run(client())


def test_compression_negotiated_and_off(serve: Any) -> None:
    on = serve(echo_app())
    off = serve(echo_app(), ws_per_message_deflate=False)
    text = "compress me " * 1000

    async def client(srv: Any) -> str | None:
        async with ws_connect(ws_url(srv), compression="deflate") as ws:
            await ws.send(text)
            assert await ws.recv() == text
            return ws.response.headers.get("sec-websocket-extensions")

    negotiated = run(client(on))
    assert negotiated is not None and negotiated.startswith("permessage-deflate")
    assert run(client(off)) is None


def test_client_ping_gets_pong(serve: Any) -> None:
    srv = serve(echo_app())

    async def client() -> None:
        async with ws_connect(ws_url(srv), ping_interval=None) as ws:
            latency = await asyncio.wait_for(await ws.ping(b"abc"), 5)
            assert latency >= 0

    run(client())
    raw = RawClient(srv.port)
    raw.send(0x9, b"raw-ping")
    assert raw.recv_frame() == (0xA, b"raw-ping")
    raw.close()


def test_frames_sent_with_the_handshake_are_not_lost(serve: Any, stack: dict[str, str]) -> None:
    """Bytes after the upgrade head in the same packet belong to the WebSocket, not to HTTP."""
    from tests.ws_apps import frame

    srv = serve(echo_app(), **stack)
    raw = RawClient(srv.port, early=frame(0x1, b"early") + frame(0x2, b"bird"))
    assert raw.status == 101
    assert raw.recv_frame() == (0x1, b"early")
    assert raw.recv_frame() == (0x2, b"bird")
    raw.close()


# -- closing ---------------------------------------------------------------------------------------


def test_close_codes_both_ways(serve: Any, stack: dict[str, str]) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec), **stack)

    async def app_closes() -> None:
        async with ws_connect(ws_url(srv)) as ws:
            await ws.send("close:4000:bye now")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye now")

    async def client_closes() -> None:
        async with ws_connect(ws_url(srv)) as ws:
            await ws.close(4001, "ciao")

    run(app_closes())
    run(client_closes())
    wait_for(lambda: len(rec.disconnects) == 2)
    assert rec.disconnects[0]["code"] == 4000
    assert rec.disconnects[1] == {"type": "websocket.disconnect", "code": 4001, "reason": "ciao"}


def test_dropped_connection_is_1006_and_empty_close_is_1005(serve: Any) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec))
    raw = RawClient(srv.port)
    raw.close()  # no close frame at all
    wait_for(lambda: rec.disconnects)
    raw = RawClient(srv.port)
    raw.send(0x8, b"")  # a close frame without a code
    opcode, payload = raw.recv_frame()
    assert opcode == 0x8 and payload == b""
    assert raw.closed()
    raw.close()
    wait_for(lambda: len(rec.disconnects) == 2)
    assert [d["code"] for d in rec.disconnects] == [1006, 1005]


def test_invalid_utf8_text_fails_with_1007(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(echo_app(), **stack)
    for frames in ([(0x1, b"ok \xff\xfe", True)], [(0x1, b"caf", False), (0x0, b"\xc3\x28", True)]):
        raw = RawClient(srv.port)
        for opcode, payload, fin in frames:
            raw.send(opcode, payload, fin)
        opcode, payload = raw.recv_frame()
        assert opcode == 0x8 and raw.close_code(payload) == 1007
        assert raw.closed()
        raw.close()


def test_protocol_error_fails_with_1002(serve: Any) -> None:
    srv = serve(echo_app())
    raw = RawClient(srv.port)
    raw.send(0x0, b"continuation without a start")
    opcode, payload = raw.recv_frame()
    assert opcode == 0x8 and raw.close_code(payload) == 1002
    raw.close()


def test_send_after_disconnect_raises_oserror(serve: Any) -> None:
    errors: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except OSError as exc:
            errors.append(exc)

    srv = serve(app)
    RawClient(srv.port).close()
    wait_for(lambda: errors)
    assert isinstance(errors[0], OSError)


# -- answers other than 101 ------------------------------------------------------------------------


def test_close_before_accept_is_403(serve: Any, stack: dict[str, str]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close"})

    srv = serve(app, **stack)
    sock = connect(srv.port)
    sock.sendall(handshake_request())
    status, headers, _ = read_response(sock)
    assert status == 403 and headers["connection"] == "close"
    assert is_closed(sock)
    sock.close()


def test_denial_response(serve: Any, stack: dict[str, str]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"entry"})

    srv = serve(app, **stack)
    sock = connect(srv.port)
    sock.sendall(handshake_request())
    status, headers, body = read_response(sock)
    assert (status, body) == (401, b"no entry")
    assert headers["www-authenticate"] == "Bearer" and headers["connection"] == "close"
    assert is_closed(sock)
    sock.close()

    async def client() -> None:
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(ws_url(srv)):
                pass
        assert info.value.response.status_code == 401

    run(client())


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (handshake_request().replace(b"Sec-WebSocket-Key", b"X-Not-Key"), 400),
        (handshake_request().replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: short"), 400),
        (handshake_request(version=b"8"), 426),
        (handshake_request(method=b"POST").replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"), 400),
    ],
    ids=["missing-key", "bad-key", "bad-version", "post"],
)
def test_invalid_upgrades(serve: Any, stack: dict[str, str], request_bytes: bytes, status: int) -> None:
    called: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["type"])

    srv = serve(app, **stack)
    sock = connect(srv.port)
    sock.sendall(request_bytes)
    got, headers, _ = read_response(sock)
    assert got == status and headers["connection"] == "close"
    if status == 426:
        assert headers["sec-websocket-version"] == "13" and headers["upgrade"] == "websocket"
    assert is_closed(sock)
    sock.close()
    assert "websocket" not in called  # refused before the app is asked


def test_http10_upgrade_is_plain_http(serve: Any) -> None:
    """RFC 9110 §7.8: an Upgrade in an HTTP/1.0 request is ignored."""
    srv = serve(echo_app())
    sock = connect(srv.port)
    sock.sendall(handshake_request().replace(b"HTTP/1.1", b"HTTP/1.0"))
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"plain http")
    sock.close()


# -- app failures ----------------------------------------------------------------------------------


def _app_that(when: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        if when == "raises-before-accept":
            raise ValueError("boom")
        if when == "returns-before-accept":
            return
        await send({"type": "websocket.accept"})
        await receive()  # the client's first message
        if when == "raises-after-accept":
            raise ValueError("boom")

    return app


@pytest.mark.parametrize("when", ["raises-before-accept", "returns-before-accept"])
def test_app_failing_before_accept_is_500(serve: Any, when: str, caplog: pytest.LogCaptureFixture) -> None:
    srv = serve(_app_that(when))
    sock = connect(srv.port)
    sock.sendall(handshake_request())
    status, _, _ = read_response(sock)
    sock.close()
    assert status == 500
    assert any(r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.parametrize(("when", "code"), [("raises-after-accept", 1011), ("returns-after-accept", 1000)])
def test_app_ending_after_accept_closes(serve: Any, when: str, code: int) -> None:
    srv = serve(_app_that(when))

    async def client() -> None:
        async with ws_connect(ws_url(srv)) as ws:
            await ws.send("hi")
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == code

    run(client())


def test_app_returning_as_the_clients_close_arrives_leaves_the_close_alone(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The app's last message and the client's close frame come in one read: the app returns
    while the close handshake is already under way, and the server must not start another."""
    srv = serve(_app_that("returns-after-accept"), **stack)
    client = RawClient(srv.port)
    assert client.status == 101
    client.sock.sendall(frame(0x1, b"last") + frame(0x8, b"\x0f\xa0bye"))  # close 4000
    opcode, payload = client.recv_frame()
    assert (opcode, client.close_code(payload)) == (0x8, 4000)  # the client's close, answered
    assert client.closed()
    client.sock.close()
    # A second close raised in the request task (websockets' InvalidState), logged as an error.
    time.sleep(0.3)
    gc.collect()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    "header",
    [(b"x-bad", b"a\r\nset-cookie: x=1"), (b"x-bad", b"a\x00b"), (b"set-cookie: x=1\r\nx", b"v"), (b"x bad", b"v")],
    ids=["crlf-in-value", "nul-in-value", "crlf-in-name", "space-in-name"],
)
def test_invalid_accept_header_is_refused(serve: Any, header: tuple[bytes, bytes]) -> None:
    srv = serve(echo_app(headers=[header]))
    sock = connect(srv.port)
    sock.sendall(handshake_request())
    status, headers, _ = read_response(sock)
    sock.close()
    assert status == 500 and "set-cookie" not in headers and "x-bad" not in headers


def test_http_and_websocket_on_one_server(serve: Any, stack: dict[str, str]) -> None:
    """A keep-alive HTTP request before the upgrade on the same connection is answered first."""
    srv = serve(echo_app(), **stack)
    sock = connect(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" + handshake_request())
    assert read_response(sock)[2] == b"plain http"
    status, _, _ = read_response(sock, head_only=True)
    assert status == 101
    sock.close()
