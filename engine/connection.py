"""The one HTTP/1.1 connection: both parser adapters feed it, so both behave the same.

Life of a connection (state is derived from two fields, ``active`` and ``pipeline``):
  idle       no request in flight; the keep-alive deadline runs
  busy       ``active`` cycle running; later pipelined requests wait in ``pipeline`` with
             reading paused (RFC 9112 §9.3.2: responses go out in request order)
  closing    the transport is closing; nothing more is parsed
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from polycorn.cycle import BODY, DONE, RequestCycle
from polycorn.logs import escape, request_target
from polycorn.parsing import ProtocolError
from polycorn.response import error_response
from polycorn.websocket import WebSocketCycle, is_websocket_upgrade

if TYPE_CHECKING:
    from polycorn.service import HttpService

logger = logging.getLogger("polycorn.error")

#: What a connection runs: an HTTP request, or a WebSocket session until the app accepts it.
Cycle = RequestCycle | WebSocketCycle

# Request header names the connection acts on; everything else passes through untouched.
_HOST, _CONNECTION, _EXPECT, _UPGRADE, _XFF, _XFP = range(6)
_REQUEST_SPECIAL = {
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
}.get

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}.get
_FORWARDED_SCHEMES = {b"http": "http", b"https": "https", b"ws": "ws", b"wss": "wss"}.get


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "service",
        "loop",
        "transport",
        "parser",
        "client",
        "server",
        "scheme",
        "trusted",
        "active",
        "parsing",
        "pipeline",
        "pending_error",
        "reading_paused",
        "writing_paused",
        "drain_waiter",
        "deadline",
        "timer",
        "closed",
        "eof",
        "upgrade",
    )

    def __init__(self, service: HttpService) -> None:
        self.service = service
        self.loop = service.loop
        self.parser = service.parser_class(self, service.parser_limits)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"  # no TLS served yet; a trusted proxy's X-Forwarded-Proto may change it
        self.trusted = False
        self.active: Cycle | None = None  # the cycle whose response is being written
        self.parsing: Cycle | None = None  # the cycle receiving body bytes
        self.pipeline: deque[Cycle] | None = None
        self.pending_error: ProtocolError | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.eof = False
        self.upgrade: WebSocketCycle | None = None  # a WebSocket handshake the app has not answered

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        service = self.service
        service.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (tuple, list)) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("sockname")
        if isinstance(sock, (tuple, list)) and len(sock) >= 2:
            self.server = (str(sock[0]), int(sock[1]))
        elif sock:
            self.server = (str(sock), None)  # UNIX socket: (path, None) per the ASGI spec
        self.trusted = service.trusts(self.client)
        if service.write_limits:
            transport.set_write_buffer_limits(high=service.write_high_water)  # type: ignore[attr-defined]
        if not service.accepting:
            # Accepted just before shutdown began: its request, already on the way, is answered.
            self.close_if_idle(service.shutdown_linger)
            return
        if service.keep_alive:
            self._idle()  # a connection that never sends a request is idle too

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)

    def eof_received(self) -> bool | None:
        self.eof = True
        active = self.active
        if active is None or active.waiter is not None or (self.parsing is active and not active.body_done):
            # Idle, an app waiting in receive() (for the disconnect, say), or a body that can
            # never be completed: to all of these the client is gone, so close (http.disconnect).
            return None
        # A half-closed client may still read the answer to the request it already sent.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.service.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for cycle in (self.active, self.parsing, *(self.pipeline or ())):
            if cycle is not None:
                cycle.disconnected = True
                cycle.wake()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.service.connection_closed()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's buffer drops below its low-water mark (or the peer left)."""
        if self.writing_paused and not self.closed:
            waiter = self.drain_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.drain_waiter = None

    # -- parser sink ----------------------------------------------------------------------------
    def on_head(self, method: bytes, target: bytes, http_version: str, headers: list[tuple[bytes, bytes]]) -> None:
        service = self.service
        if http_version != "1.1" and http_version != "1.0":
            raise ProtocolError(505, f"HTTP version {http_version} not supported")
        keep_alive = http_version == "1.1"
        hosts = 0
        expect_continue = upgrade = False
        upgrade_to = None
        client = self.client
        scheme = self.scheme
        for name, value in headers:
            kind = _REQUEST_SPECIAL(name)
            if kind is None:
                continue
            if kind == _HOST:
                hosts += 1
            elif kind == _CONNECTION:
                for token in value.lower().split(b","):
                    token = token.strip()
                    if token == b"close":
                        keep_alive = False
                    elif token == b"keep-alive" and http_version == "1.0":
                        keep_alive = True
                    elif token == b"upgrade":
                        upgrade = True
            elif kind == _UPGRADE:
                upgrade_to = value
            elif kind == _EXPECT:
                if value.lower() == b"100-continue":
                    expect_continue = http_version == "1.1"
                else:
                    raise ProtocolError(417, "unsupported expectation")
            elif kind == _XFF:
                if self.trusted:  # service.trusts() is False without --proxy-headers
                    host = value.rpartition(b",")[2].strip().decode("latin-1")
                    if host:
                        client = (host, 0)
            elif kind == _XFP and self.trusted:
                proto = _FORWARDED_SCHEMES(value.rpartition(b",")[2].strip().lower())
                if proto is not None:
                    scheme = proto
        if not service.keep_alive:
            keep_alive = False  # --timeout-keep-alive 0: one request per connection
        if hosts != 1 and (hosts or http_version == "1.1"):
            # RFC 9112 §3.2: exactly one Host in HTTP/1.1; never several.
            raise ProtocolError(400, "missing Host header" if not hosts else "several Host headers")
        switching = upgrade or method == b"CONNECT"
        if switching:
            # No protocol switch is served here: answer the request as plain HTTP and close, as
            # RFC 9110 §7.8 allows; httptools stops parsing at such a request anyway.
            keep_alive = False

        if target[:1] == b"/":
            raw_path, _, query = target.partition(b"?")
        elif target == b"*" and method == b"OPTIONS":
            raw_path, query = b"*", b""
        else:
            raw_path, query = _absolute_form(target)
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(400, "non-ASCII bytes in the request target") from None
        if "%" in path:
            path = unquote(path)
        root_path = service.root_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": http_version,
            "server": self.server,
            "client": client,
            "scheme": scheme,
            "method": _METHODS(method) or method.decode("ascii"),
            "root_path": root_path,
            "path": root_path + path if root_path else path,
            "raw_path": service.root_path_bytes + raw_path if root_path else raw_path,
            "query_string": query,
            "headers": headers,
            "state": service.state.copy(),
            "extensions": {"http.response.pathsend": {}},
        }
        if not keep_alive:
            self.parser.stop()  # an upgrade (switching) is always the last request
        cycle: Cycle
        if (
            switching
            and upgrade_to is not None
            and http_version == "1.1"  # RFC 9110 §7.8: an HTTP/1.0 Upgrade is ignored
            and service.websockets is not None
            and is_websocket_upgrade(upgrade_to)
        ):
            cycle = self._websocket(method, target, scope)
        else:
            cycle = RequestCycle(
                self,
                scope,
                keep_alive,
                expect_continue,
                method == b"HEAD",
                service.clock() if service.access_log else 0.0,
            )
            if switching:
                cycle.body_done = True
        self.parsing = cycle
        if self.active is None:
            self._run(cycle)
        else:
            if self.pipeline is None:
                self.pipeline = deque()
            self.pipeline.append(cycle)
            self.pause_reading()

    def _websocket(self, method: bytes, target: bytes, scope: dict[str, Any]) -> WebSocketCycle:
        """An upgrade to WebSocket: a session that waits for its turn like any request.

        Its scope is the HTTP scope but for these keys (the WebSocket scope has no method).
        """
        scope["type"] = "websocket"
        del scope["method"]
        scope["extensions"] = {"websocket.http.response": {}}
        cycle = self.upgrade = WebSocketCycle.upgrade(self, method, target, scope)
        self.pause_reading()  # frames stay in the kernel until the app accepts
        return cycle

    def on_upgrade_data(self, data: bytes) -> None:
        if self.upgrade is not None:
            self.upgrade.early += data

    def on_body(self, chunk: bytes) -> None:
        cycle = self.parsing
        if cycle is not None:
            cycle.feed_body(chunk)
            if cycle.buffered > self.service.read_high_water and not self.reading_paused:
                self.pause_reading()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is not None:
            cycle.end_body()
            self.parsing = None

    # -- cycles ---------------------------------------------------------------------------------
    def _run(self, cycle: Cycle) -> None:
        self.active = cycle
        service = self.service
        if not service.admit():
            if service.reject:
                cycle.status = 503
                cycle.state = DONE
                self.transport.write(error_response(503, service.date_line))
                self.on_response_complete(cycle, False)
                return
            # Queue mode: the request waits for a slot; nothing more is read meanwhile.
            self.pause_reading()
            service.enqueue(self, cycle)
            return
        self.start(cycle)

    def start(self, cycle: Cycle) -> None:
        """Run the app for an admitted request (counted in flight by the service)."""
        cycle.task = task = self.loop.create_task(cycle.run(self.service.app))
        self.service.tasks.add(task)

    def on_response_complete(self, cycle: Cycle, keep_alive: bool) -> None:
        service = self.service
        if service.access_log:
            service.log_access(cycle)
        if cycle.waiter is not None:
            cycle.wake()  # a receive() waiting for a disconnect gets one now
        self.active = None
        service.request_served()
        if not keep_alive or self.closed:
            self.close()
            return
        pipeline = self.pipeline
        if pipeline:
            self._run(pipeline.popleft())
            if not pipeline:
                self.maybe_resume_reading()
            return
        if self.eof:
            self.close()  # the half-closed client has had every answer it asked for
            return
        if self.pending_error is not None:
            self._send_error(self.pending_error)
            return
        if not service.accepting:
            self.close()
            return
        self.maybe_resume_reading()
        self._idle()

    def abort_cycle(self, cycle: Cycle) -> None:
        """The response cannot be finished: the client sees the connection close."""
        if self.active is cycle:
            self.active = None
        self.close()

    # -- flow control -----------------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def maybe_resume_reading(self) -> None:
        """Resume once nothing waits in the pipeline and the body buffer is below high water."""
        if not self.reading_paused or self.closed or self.pipeline or self.pending_error is not None:
            return
        if self.upgrade is not None:
            return  # the WebSocket session resumes reading once it owns the transport
        cycle = self.parsing
        if cycle is not None and cycle.state != DONE and cycle.buffered > self.service.read_high_water:
            return
        self.reading_paused = False
        self.transport.resume_reading()

    # -- keep-alive ---------------------------------------------------------------------------------
    def _idle(self) -> None:
        service = self.service
        self.deadline = self.loop.time() + service.keep_alive
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def _on_timer(self) -> None:
        # Re-armed lazily: a request in between only moves the deadline, it does not touch timers.
        self.timer = None
        if self.active is not None or self.closed:
            return
        if self.loop.time() >= self.deadline:
            self.close()
        else:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    def close_if_idle(self, linger: float = 0.0) -> bool:
        """Shutdown: close an idle connection, a busy one after its response (``connection: close``).

        With ``linger``, an idle connection is closed only that many seconds later: a request that
        was already on its way (on a fresh connection, or the next one of a keep-alive client) is
        answered, with ``connection: close``, instead of being lost to a close racing it.
        """
        if self.active is None and not self.pipeline:
            if linger <= 0 or self.closed:
                self.close()
                return True
            deadline = self.loop.time() + linger
            if self.timer is None or deadline < self.deadline:
                self.deadline = deadline
                if self.timer is not None:
                    self.timer.cancel()
                self.timer = self.loop.call_at(deadline, self._on_timer)
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.parser.stop()
            self.transport.close()

    def force_close(self) -> None:
        self.closed = True
        self.transport.abort()

    # -- errors -----------------------------------------------------------------------------------
    def _protocol_error(self, exc: ProtocolError) -> None:
        self.parser.stop()
        active = self.active
        broken = self.parsing
        if broken is not None and broken is not active and self.pipeline and broken in self.pipeline:
            # A queued request whose body broke off would wait for bytes that never come.
            self.pipeline.remove(broken)
            broken.disconnected = True
            self.parsing = None
        if active is not None and (self.parsing is not active or active.body_done):
            # The broken bytes belong to a later request: answer the earlier ones first.
            self.pending_error = exc
            self.pause_reading()
            return
        if active is not None:
            active.disconnected = True
            active.wake()
            if active.state == BODY:
                self.close()  # part of a response is out: all the client can get is the close
                return
            self.active = None
        self._send_error(exc)

    def _send_error(self, exc: ProtocolError) -> None:
        logger.info(
            "invalid HTTP request from %s: %s (answered %d)",
            _peer(self.client),
            escape(exc.reason),
            exc.status,
        )
        if not self.closed:
            self.transport.write(error_response(exc.status, self.service.date_line, headers=exc.headers))
        self.close()

    def describe_request(self, cycle: Cycle) -> str:
        scope = cycle.scope
        return f'"{scope.get("method", "GET")} {request_target(scope)} HTTP/{scope["http_version"]}" from {_peer(self.client)}'

    def log_app_error(self, cycle: Cycle, exc: BaseException) -> None:
        logger.error("exception in ASGI app while serving %s", self.describe_request(cycle), exc_info=exc)


def _absolute_form(target: bytes) -> tuple[bytes, bytes]:
    """RFC 9112 §3.2.2: only the path and query of an absolute-form target reach the app."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise ProtocolError(400, "invalid request target")
    slash = rest.find(b"/")
    question = rest.find(b"?")
    if slash < 0 or (0 <= question < slash):
        path_and_query = b"/" + rest[question:] if question >= 0 else b"/"
    else:
        path_and_query = rest[slash:]
    raw_path, _, query = path_and_query.partition(b"?")
    return raw_path or b"/", query


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "unix socket"
