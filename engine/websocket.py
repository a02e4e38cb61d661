"""WebSocket sessions (ASGI WebSocket spec 2.4) on the websockets library's sans-I/O protocol.

The HTTP connection parses the upgrade request with whichever HTTP parser it runs, checks it and
hands it here. Until the app answers, the session is an ASGI cycle of that connection (the
denial response even goes through the HTTP response writer). Once the app accepts, the session
takes the transport over (``transport.set_protocol``) and drives ``websockets``' ServerProtocol
itself: frames in, ASGI events out, with backpressure both ways.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from polycorn.cycle import DONE, RequestCycle
from polycorn.errors import ClientDisconnected, ConfigError
from polycorn.logs import escape
from polycorn.parsing import ProtocolError
from polycorn.response import PHRASES, TOKEN, error_response, valid_header_block

try:
    from websockets.datastructures import Headers
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
    from websockets.frames import Opcode
    from websockets.http11 import Request, Response
    from websockets.protocol import State
    from websockets.server import ServerProtocol
except ImportError:  # pragma: no cover - then websocket_settings() turns upgrades off
    ServerProtocol = None  # type: ignore[assignment,misc]
else:
    _TEXT, _BINARY, _CONT, _CLOSE, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE, Opcode.PONG
    _OPEN_STATE = State.OPEN

    class _ServerProtocol(ServerProtocol):
        def recv_frame(self, frame: Any) -> None:
            if frame.opcode is _CLOSE:
                # RFC 6455 §5.4/§5.5: a close frame may come between the fragments of a message;
                # the unfinished message is dropped and the close is clean (Autobahn case 7.1.5).
                # websockets would fail the connection with 1002 instead.
                self.current_size = None
            super().recv_frame(frame)


if TYPE_CHECKING:
    from polycorn.config import Config
    from polycorn.connection import HttpConnection

logger = logging.getLogger("polycorn.error")

# Session states (the handshake is the app's to answer; then frames flow until one side closes).
HANDSHAKE = 0  # websocket.connect delivered or pending; the HTTP connection owns the transport
DENYING = 1  # the app streams an HTTP denial response (websocket.http.response.*)
OPEN = 2  # accepted: this session owns the transport
CLOSED = 3  # closing handshake done or connection lost, or the handshake was refused

GOING_AWAY = 1001
SERVICE_RESTART = 1012

_SCHEMES = {"http": "ws", "https": "wss"}
_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
_UPGRADE_REQUIRED = b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
_DISCONNECT_ABNORMAL = 1006


class WebSocketSettings:
    """What every session of a loop shares, decided once at start-up."""

    __slots__ = (
        "extensions",
        "max_size",
        "max_queue",
        "resume_at",
        "ping_interval",
        "ping_timeout",
        "open_timeout",
        "close_timeout",
    )

    def __init__(self, config: Config) -> None:
        if ServerProtocol is None:
            raise ImportError("websockets")
        # Our own compressor keeps a 4 KiB window at a low memory level: a few tens of KiB per
        # compressed connection instead of ~300 KiB. Decompression is bounded by max_size.
        self.extensions = (
            [ServerPerMessageDeflateFactory(server_max_window_bits=12, compress_settings={"memLevel": 5})]
            if config.ws_per_message_deflate
            else None
        )
        self.max_size = config.ws_max_size
        self.max_queue = config.ws_max_queue
        self.resume_at = config.ws_max_queue // 2
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.open_timeout = config.ws_open_timeout
        self.close_timeout = config.ws_close_timeout


def websocket_settings(config: Config) -> WebSocketSettings | None:
    """The loop's WebSocket settings, or None where upgrades are served as plain HTTP."""
    if config.ws == "none":
        return None
    try:
        return WebSocketSettings(config)
    except ImportError:
        if config.ws == "websockets":
            raise ConfigError("--ws websockets: the websockets library is not installed") from None
        logger.warning("the websockets library is not installed: WebSocket upgrades are served as plain HTTP")
        return None


def is_websocket_upgrade(value: bytes) -> bool:
    """Whether an Upgrade header value offers the websocket protocol (RFC 6455 §4.2.1)."""
    return any(token.strip() == b"websocket" for token in value.lower().split(b","))


class WebSocketCycle(asyncio.Protocol):
    """One WebSocket session: the ASGI receive/send pair and, once accepted, the transport's protocol."""

    __slots__ = (
        "conn",
        "service",
        "settings",
        "loop",
        "transport",
        "scope",
        "protocol",
        "response",
        "state",
        "status",
        "task",
        "started_at",
        "bytes_sent",
        "body_done",
        "buffered",
        "disconnected",
        "waiter",
        "connect_sent",
        "queue",
        "early",
        "reading_paused",
        "fragments",
        "decoder",
        "timer",
        "close_timer",
        "ping_payload",
        "denial",
        "close_code",
        "close_reason",
    )

    def __init__(
        self, conn: HttpConnection, scope: dict[str, Any], protocol: ServerProtocol, response: Response
    ) -> None:
        service = conn.service
        self.conn = conn
        self.service = service
        self.settings: WebSocketSettings = service.websockets  # type: ignore[assignment]
        self.loop = conn.loop
        self.transport = conn.transport
        self.scope = scope
        self.protocol = protocol
        self.response = response
        self.state = HANDSHAKE
        self.status = 0
        self.task: asyncio.Task[None] | None = None
        self.started_at = service.clock() if service.timed else 0.0
        self.bytes_sent = 0
        self.body_done = True  # an upgrade request has no body (the HTTP connection asks)
        self.buffered = 0
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.connect_sent = False
        self.queue: deque[dict[str, Any]] = deque()
        self.early = b""
        self.reading_paused = False
        self.fragments: list[Any] | None = None
        self.decoder: codecs.IncrementalDecoder | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.ping_payload = b""
        self.denial: RequestCycle | None = None
        self.close_code = _DISCONNECT_ABNORMAL
        self.close_reason = ""

    # -- the handshake, decided by the HTTP connection ---------------------------------------
    @classmethod
    def upgrade(
        cls,
        conn: HttpConnection,
        method: bytes,
        target: bytes,
        scope: dict[str, Any],
    ) -> WebSocketCycle:
        """Check an upgrade request (RFC 6455 §4.2.1) and make its session; ProtocolError if invalid."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        settings: WebSocketSettings = conn.service.websockets  # type: ignore[assignment]
        if method != b"GET":
            raise ProtocolError(400, "WebSocket upgrade with a method other than GET")
        versions = [v for n, v in headers if n.lower() == b"sec-websocket-version"]
        if versions != [b"13"]:
            # RFC 6455 §4.4: name the version we speak; RFC 9110 §15.5.22: 426 carries Upgrade.
            raise ProtocolError(426, f"unsupported WebSocket version {escape(repr(versions))}", _UPGRADE_REQUIRED)
        # The protocol starts OPEN: the request was parsed already, only accept() is needed of it.
        protocol = _ServerProtocol(extensions=settings.extensions, state=_OPEN_STATE, max_size=settings.max_size)
        request = Request(
            path=target.decode("latin-1"),
            headers=Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]),
        )
        response = protocol.accept(request)
        if response.status_code != 101:
            reason = str(protocol.handshake_exc or response.reason_phrase)
            raise ProtocolError(400, f"invalid WebSocket handshake: {reason}")
        subprotocols: list[str] = []
        for name, value in headers:
            if name.lower() == b"sec-websocket-protocol":
                subprotocols.extend(p.strip().decode("latin-1") for p in value.split(b",") if p.strip())
        scope["scheme"] = _SCHEMES.get(scope["scheme"], scope["scheme"])
        scope["subprotocols"] = subprotocols
        return cls(conn, scope, protocol, response)

    # -- what the HTTP connection expects of a cycle -------------------------------------------
    def feed_body(self, chunk: bytes) -> None:  # pragma: no cover - an upgrade request has no body
        pass

    def end_body(self) -> None:
        pass

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the app ------------------------------------------------------------------------------
    async def run(self, app: Any) -> None:
        open_timeout = self.settings.open_timeout
        if open_timeout:
            self.timer = self.loop.call_later(open_timeout, self._open_expired)
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._abort()  # a shutdown past its grace period
        except ClientDisconnected:
            logger.debug("WebSocket client disconnected")
        except BaseException as exc:
            self.conn.log_app_error(self, exc)
            self._fail(1011)
            if not isinstance(exc, Exception):
                raise
        else:
            if self.state == HANDSHAKE and not self.disconnected:
                logger.error(
                    "ASGI app returned without accepting or denying the WebSocket %s",
                    self.conn.describe_request(self),
                )
            self._fail(1000)
        finally:
            self._cancel_timer()
            if self.status == 101:
                self.service.request_served()
            self.service.request_done(self.task)

    def _fail(self, code: int) -> None:
        """The app is done: close an open session with ``code``, answer a pending handshake 500."""
        state = self.state
        if state == OPEN:
            # The client's close may have come with the app's last message: answered already.
            if not self.disconnected and self.protocol.state is _OPEN_STATE:
                self._close(code, "")
        elif state == HANDSHAKE:
            if not self.disconnected:
                self._refuse(500)
        elif state == DENYING and self.denial is not None:
            self.denial._fail()
            self.state = CLOSED

    async def receive(self) -> dict[str, Any]:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        queue = self.queue
        while not queue:
            if self.disconnected or self.state == CLOSED:
                return {"type": "websocket.disconnect", "code": self.close_code, "reason": self.close_reason}
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        message = queue.popleft()
        if self.reading_paused and len(queue) <= self.settings.resume_at:
            self._resume_reading()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        mtype = message["type"]
        state = self.state
        if state == OPEN:
            if mtype == "websocket.send":
                if self.disconnected or self.protocol.state is not _OPEN_STATE:
                    raise ClientDisconnected("the WebSocket is closed")
                text = message.get("text")
                if text is not None:
                    self.protocol.send_text(text.encode())
                else:
                    data = message.get("bytes")
                    if data is None:
                        raise RuntimeError("websocket.send needs 'bytes' or 'text'")
                    self.protocol.send_binary(data)
                self._flush()
                conn = self.conn
                if conn.writing_paused:
                    await conn.drain()  # the HTTP connection's write-side state serves both
            elif mtype == "websocket.close":
                if not self.disconnected and self.protocol.state is _OPEN_STATE:
                    self._close(message.get("code") or 1000, message.get("reason") or "")
            else:
                raise RuntimeError(f"expected 'websocket.send' or 'websocket.close', got {mtype!r}")
            return
        if self.disconnected:
            raise ClientDisconnected("the client disconnected")
        if state == HANDSHAKE:
            if mtype == "websocket.accept":
                self._accept(message)
            elif mtype == "websocket.close":
                self._refuse(403)  # ASGI: a close before the accept is an HTTP 403
            elif mtype == "websocket.http.response.start":
                self._cancel_timer()
                scope = dict(self.scope, type="http", method="GET")
                denial = RequestCycle(self.conn, scope, False, False, False, self.started_at)
                self.denial = denial
                self.conn.active = denial
                self.state = DENYING
                await denial.send({"type": "http.response.start", **_without_type(message)})
            else:
                raise RuntimeError(
                    f"expected 'websocket.accept', 'websocket.close' or a denial response, got {mtype!r}"
                )
        elif state == DENYING and mtype == "websocket.http.response.body":
            streaming = self.denial
            assert streaming is not None
            await streaming.send({"type": "http.response.body", **_without_type(message)})
            if streaming.state == DONE:
                self.state = CLOSED
        elif mtype == "websocket.close" and state == CLOSED:
            pass  # closing twice is harmless
        else:
            raise RuntimeError(f"ASGI message {mtype!r} is not valid now")

    # -- answering the handshake -----------------------------------------------------------------
    def _accept(self, message: dict[str, Any]) -> None:
        self._cancel_timer()
        conn = self.conn
        service = self.service
        subprotocol = message.get("subprotocol")
        parts = []
        app_server = app_date = False
        for name, value in message.get("headers") or ():
            if not isinstance(name, (bytes, bytearray)) or TOKEN(name) is None:
                raise RuntimeError(f"invalid WebSocket accept header name {name!r}")
            lname = name.lower()
            if lname == b"sec-websocket-protocol":
                # The spec wants the subprotocol key; accept the header too, but never twice.
                if subprotocol is None:
                    subprotocol = value.decode("latin-1")
                continue
            app_server = app_server or lname == b"server"
            app_date = app_date or lname == b"date"
            parts.append(b"%s: %s\r\n" % (name, value))
        if subprotocol is not None:
            parts.append(b"sec-websocket-protocol: %s\r\n" % subprotocol.encode("latin-1"))
        block = b"".join(parts)
        if not valid_header_block(block, len(parts)):
            raise RuntimeError("invalid WebSocket accept header value (CR, LF or NUL)")
        headers = self.response.headers
        head = [_SWITCHING, b"sec-websocket-accept: %s\r\n" % headers["Sec-WebSocket-Accept"].encode("ascii")]
        extensions = headers.get("Sec-WebSocket-Extensions")
        if extensions is not None:
            head.append(b"sec-websocket-extensions: %s\r\n" % extensions.encode("ascii"))
        head.append(service.head_defaults(app_server, app_date))
        head.append(block)
        head.append(b"\r\n")
        conn.write(b"".join(head))  # after any response to a request before it, still held
        transport = self.transport
        self.status = 101
        self.state = OPEN
        if service.timed:
            service.record(self)
        if service.metrics is not None:
            service.metrics.websockets += 1
        # The transport is ours from here on: frames no longer pass through the HTTP parser.
        service.connections.discard(conn)
        service.connections.add(self)
        conn.active = self
        transport.set_protocol(self)
        conn.upgrade = None
        if self.early:
            early, self.early = self.early, b""
            self.data_received(early)
        if not self.reading_paused and not conn.writing_paused:
            transport.resume_reading()
        if self.settings.ping_interval:
            self.timer = self.loop.call_later(self.settings.ping_interval, self._ping)
        if not service.accepting and self.protocol.state is _OPEN_STATE:
            self._close(service.websocket_close_code, "")

    def _refuse(self, status: int) -> None:
        """Answer the handshake with a plain HTTP error (403 for a close before accept, 500, 503)."""
        self._cancel_timer()
        conn = self.conn
        self.status = status
        self.state = CLOSED
        if not conn.closed:
            conn.write(error_response(status, self.service.date_line))
            self.bytes_sent = len(PHRASES[status])
        conn.on_response_complete(self, False)

    def _open_expired(self) -> None:
        self.timer = None
        if self.state == HANDSHAKE:
            logger.warning(
                "WebSocket handshake not answered within %gs (--ws-open-timeout): %s",
                self.settings.open_timeout,
                self.conn.describe_request(self),
            )
            self._refuse(503)
            self.disconnected = True
            self.wake()

    # -- asyncio.Protocol, once accepted -----------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        if events:
            self._frames(events)
        self._flush()

    def _frames(self, events: list[Any]) -> None:
        queue = self.queue
        for frame in events:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                data = frame.data
                if type(data) is not bytes:
                    data = bytes(data)
                if opcode is _TEXT:
                    if frame.fin:
                        try:
                            message: dict[str, Any] = {"type": "websocket.receive", "text": data.decode()}
                        except UnicodeDecodeError:
                            self._invalid_utf8()
                            return
                    else:
                        self.decoder = utf8 = codecs.getincrementaldecoder("utf-8")()
                        self.fragments = []
                        if not self._decode(utf8, data, False):
                            return
                        continue
                elif opcode is _BINARY:
                    if frame.fin:
                        message = {"type": "websocket.receive", "bytes": data}
                    else:
                        self.decoder = None
                        self.fragments = [data]
                        continue
                else:
                    fragments = self.fragments
                    assert fragments is not None  # the protocol rejects a stray continuation
                    decoder = self.decoder
                    if decoder is not None:
                        if not self._decode(decoder, data, frame.fin):
                            return
                    else:
                        fragments.append(data)
                    if not frame.fin:
                        continue
                    self.fragments = None
                    if decoder is not None:
                        self.decoder = None
                        message = {"type": "websocket.receive", "text": "".join(fragments)}
                    else:
                        message = {"type": "websocket.receive", "bytes": b"".join(fragments)}
                queue.append(message)
                waiter = self.waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if len(queue) >= self.settings.max_queue and not self.reading_paused:
                    self.reading_paused = True
                    self.transport.pause_reading()
            elif opcode is _CLOSE:
                self.fragments = None
                self.decoder = None
                close = self.protocol.close_rcvd
                if close is not None:
                    self.close_code, self.close_reason = int(close.code), close.reason
            elif opcode is _PONG and self.ping_payload and frame.data == self.ping_payload:
                self.ping_payload = b""
                self._cancel_timer()
                self.timer = self.loop.call_later(self.settings.ping_interval, self._ping)

    def _decode(self, decoder: codecs.IncrementalDecoder, data: bytes, final: bool) -> bool:
        """Decode a text fragment as it arrives: invalid UTF-8 fails at once (RFC 6455 §8.1)."""
        try:
            text = decoder.decode(data, final)
        except UnicodeDecodeError:
            self._invalid_utf8()
            return False
        assert self.fragments is not None
        self.fragments.append(text)
        return True

    def _invalid_utf8(self) -> None:
        self.fragments = None
        self.decoder = None
        self.protocol.fail(1007, "invalid UTF-8 in a text message")
        self._closing(1007)

    def _flush(self) -> None:
        transport = self.transport
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            else:
                # The end of the stream: a server closes the TCP connection first (RFC 6455 §7.1.1).
                transport.close()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.disconnected = True
        self.state = CLOSED
        self._cancel_timer()
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        protocol = self.protocol
        if protocol.close_rcvd is None and protocol.close_sent is not None:
            self.close_code, self.close_reason = int(protocol.close_sent.code), protocol.close_sent.reason
        self.wake()
        self.conn.closed = True
        self.conn.resume_writing()  # a send() waiting to drain learns the peer is gone
        service = self.service
        service.connections.discard(self)
        if service.metrics is not None:
            service.metrics.websockets -= 1
        service.connection_closed()

    def pause_writing(self) -> None:
        # The client does not read: stop reading too, so that what we owe it (pongs, the close
        # echo) cannot pile up in the write buffer; the app's send() waits (HttpConnection.drain).
        self.conn.pause_writing()
        if not self.reading_paused:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.conn.resume_writing()
        if not self.reading_paused:
            self.transport.resume_reading()

    def _resume_reading(self) -> None:
        self.reading_paused = False
        if not self.conn.writing_paused and not self.disconnected:
            self.transport.resume_reading()

    # -- closing ---------------------------------------------------------------------------------
    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the client's close frame (or the timeout) ends it."""
        self.protocol.send_close(code, reason)
        self._closing(code)

    def _closing(self, code: int) -> None:
        self._cancel_timer()
        self.close_code = code
        timeout = self.settings.close_timeout
        if timeout and self.close_timer is None and not self.disconnected:
            self.close_timer = self.loop.call_later(timeout, self._abort)
        self._flush()

    def _abort(self) -> None:
        self.close_timer = None
        if not self.disconnected:
            if self.status == 101:
                self.force_close()
            else:
                self.conn.force_close()

    def _ping(self) -> None:
        self.timer = None
        if self.disconnected or self.protocol.state is not _OPEN_STATE:
            return
        self.ping_payload = payload = os.urandom(4)
        self.protocol.send_ping(payload)
        self._flush()
        if self.settings.ping_timeout:
            self.timer = self.loop.call_later(self.settings.ping_timeout, self._ping_expired)

    def _ping_expired(self) -> None:
        self.timer = None
        if self.disconnected or self.protocol.state is not _OPEN_STATE:
            return
        logger.info("WebSocket ping not answered within %gs: closing", self.settings.ping_timeout)
        self.protocol.fail(1011, "keepalive ping timeout")
        self._closing(1011)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- what the service expects of a connection -------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.disconnected

    def close_if_idle(self, linger: float = 0.0) -> bool:
        """Shutdown: close with 1001 (going away) or 1012 (service restart); the app sees the disconnect."""
        if self.state == OPEN and not self.disconnected and self.protocol.state is _OPEN_STATE:
            self._close(self.service.websocket_close_code, "")
        return False

    def force_close(self) -> None:
        self.disconnected = True
        self.transport.abort()


def _without_type(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "type"}
