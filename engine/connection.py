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

from polycorn import forwarded
from polycorn.cycle import BODY, DONE, START, RequestCycle
from polycorn.logs import escape, request_target
from polycorn.outbox import WRITE_SOON_BELOW, WRITE_SOON_PARTS
from polycorn.parsing import ProtocolError
from polycorn.response import PHRASES, error_response
from polycorn.websocket import WebSocketCycle, is_websocket_upgrade

if TYPE_CHECKING:
    from polycorn.service import HttpService

logger = logging.getLogger("polycorn.error")

#: What a connection runs: an HTTP request, or a WebSocket session until the app accepts it.
Cycle = RequestCycle | WebSocketCycle

# Request header names the connection acts on; everything else passes through untouched.
_HOST, _CONNECTION, _EXPECT, _UPGRADE, _PROXY = range(5)
_REQUEST_SPECIAL = {
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _PROXY,
    b"x-forwarded-proto": _PROXY,
    b"x-forwarded-host": _PROXY,
    b"forwarded": _PROXY,
}.get

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}.get
Task = asyncio.Task
#: The name of every request's task (asyncio.Task.get_name()).
REQUEST_TASK_NAME = "polycorn-request"
#: A deadline that never comes (a timeout set to 0).
_NEVER = float("inf")


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "service",
        "loop",
        "transport",
        "parser",
        "client",
        "server",
        "scheme",
        "tls",
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
        "timer_at",
        "head_since",
        "closed",
        "eof",
        "upgrade",
        "held",
        "unheard",
        "body_bytes",
    )

    def __init__(self, service: HttpService) -> None:
        self.service = service
        self.loop = service.loop
        self.parser = service.parser_class(self, service.parser_limits)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"  # "https" over TLS; a trusted proxy's X-Forwarded-Proto may change it
        self.tls: dict[str, Any] | None = None  # the ASGI tls extension, over TLS only
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
        self.timer_at = 0.0  # when ``timer`` fires
        #: When the first bytes of a request head not yet complete arrived (0.0: none pending).
        self.head_since = 0.0
        self.closed = False
        self.eof = False
        self.upgrade: WebSocketCycle | None = None  # a WebSocket handshake the app has not answered
        #: Small writes held until the loop's pass ends (polycorn.outbox); None when nothing is held.
        self.held: list[bytes] | None = None
        #: Waiting for its first bytes in the service's polycorn.first_byte.FirstByteWait (which
        #: sets and clears it): one attribute test per read instead of a dict lookup.
        self.unheard = False
        #: Request body bytes parsed on this connection so far (polycorn.parsing.Sink).
        self.body_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        service = self.service
        service.connections.add(self)
        if service.metrics is not None:
            service.metrics.accepted += 1
        # IPv4 addresses come as (str, int) already; IPv6 ones have two more fields to drop.
        peer = transport.get_extra_info("peername")
        if type(peer) is tuple and len(peer) == 2:
            self.client = peer
        elif isinstance(peer, (tuple, list)) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("sockname")
        if type(sock) is tuple and len(sock) == 2:
            self.server = sock
        elif isinstance(sock, (tuple, list)) and len(sock) >= 2:
            self.server = (str(sock[0]), int(sock[1]))
        elif sock:
            self.server = (str(sock), None)  # UNIX socket: (path, None) per the ASGI spec
        if service.tls is not None:
            self.scheme = "https"
            self.tls = service.tls.extension(transport)  # once: every request of it shares it
        self.trusted = service.trusts(self.client, transport)
        if service.write_limits:
            transport.set_write_buffer_limits(high=service.write_high_water)  # type: ignore[attr-defined]
        if not service.accepting:
            # Accepted just before shutdown began: its request, already on the way, is answered.
            self.close_if_idle(service.shutdown_linger)
            return
        # A connection that never sends a request is idle too: closed after --timeout-keep-alive
        # (--timeout-request-header with keep-alive off), by one timer for all such connections.
        service.first_byte.add(self)

    def data_received(self, data: bytes) -> None:
        if self.unheard:
            self.service.first_byte.discard(self)
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        # Nothing in flight after a feed means a head has begun but not ended (a completed one
        # sets ``active``; one answered at once closes): the --timeout-request-header clock starts.
        if self.active is None and self.head_since == 0.0 and self.parsing is None and not self.closed:
            self._head_started()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.held is not None:
            self.flush()  # answers already given, still held: they go out before any close
        active = self.active
        if active is None or active.waiter is not None or (self.parsing is active and not active.body_done):
            # Idle, an app waiting in receive() (for the disconnect, say), or a body that can
            # never be completed: to all of these the client is gone, so close (http.disconnect).
            return None
        # A half-closed client may still read the answer to the request it already sent.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.held = None  # the client is gone: nothing held can reach it
        self.service.connections.discard(self)
        if self.unheard:
            self.service.first_byte.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.active is not None or self.parsing is not None or self.pipeline:
            for cycle in (self.active, self.parsing, *(self.pipeline or ())):
                if cycle is not None:
                    cycle.disconnected = True
                    cycle.wake()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.service.connection_closed()
        self.parser.detach()

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

    # -- writing: everything goes out in order, held writes first (polycorn.outbox) ------------------
    def write_soon(self, data: bytes) -> None:
        """Write small ``data`` when the loop's pass ends, large ``data`` now."""
        held = self.held
        if len(data) >= WRITE_SOON_BELOW:
            self.write(data)
        elif held is None:
            self.held = [data]
            self.service.outbox.add(self)
        else:
            held.append(data)
            if len(held) >= WRITE_SOON_PARTS:
                self.flush()

    def write(self, data: bytes) -> None:
        """Write now, after whatever is held."""
        if self.held is not None:
            self.flush()
        self.transport.write(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        if self.held is not None:
            self.flush()
        self.transport.writelines(parts)

    def flush(self) -> None:
        """Write what is held (once the loop's pass ends, or before anything written after it)."""
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    # -- parser sink ----------------------------------------------------------------------------
    def on_head(
        self, method: bytes, target: bytes, http_version: str, headers: list[tuple[bytes, bytes]], complete: bool
    ) -> None:
        service = self.service
        keep_alive = http_version == "1.1"
        if not keep_alive and http_version != "1.0":
            raise ProtocolError(505, f"HTTP version {http_version} not supported")
        hosts = 0
        expect_continue = upgrade = closing = switching = False
        upgrade_to = None
        client = self.client
        scheme = self.scheme
        proxied: list[tuple[bytes, bytes]] | None = None  # proxy headers of a trusted peer
        for name, value in headers:
            kind = _REQUEST_SPECIAL(name)
            if kind is None:
                continue
            if kind == _HOST:
                hosts += 1
            elif kind == _CONNECTION:
                value = value.lower()
                if value == b"close":  # a single token, as most clients send it
                    closing = True
                    continue
                if value == b"keep-alive":
                    keep_alive = keep_alive or http_version == "1.0"
                    continue
                for token in value.split(b","):
                    token = token.strip()
                    if token == b"close":
                        closing = True
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
            elif self.trusted:  # a proxy header; service.trusts() is False without --proxy-headers
                if proxied is None:
                    proxied = []
                proxied.append((name, value))
        if proxied is not None:
            client, scheme, headers = forwarded.apply(
                proxied, client, scheme, headers, service.trusts_host, service.forwarded_host
            )
        if hosts != 1 and (hosts or http_version == "1.1"):
            # RFC 9112 §3.2: exactly one Host in HTTP/1.1; never several.
            raise ProtocolError(400, "missing Host header" if not hosts else "several Host headers")
        # The seven usual methods have their str at hand; any other may be CONNECT.
        method_name = _METHODS(method)
        if method_name is None:
            method_name = method.decode("ascii")
            switching = method_name == "CONNECT"
        if upgrade and upgrade_to:
            switching = True  # llhttp switches only for a non-empty Upgrade field (so does h11's adapter)
        if closing or switching or not service.keep_alive:
            # close wins wherever it stands among the tokens (RFC 9112 §9.6); no protocol switch
            # is served here: the request is answered as plain HTTP, then the connection closes,
            # as RFC 9110 §7.8 allows (httptools stops parsing there anyway); and with
            # --timeout-keep-alive 0 there is one request per connection.
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
            "method": method_name,
            "root_path": root_path,
            "path": root_path + path if root_path else path,
            "raw_path": service.root_path_bytes + raw_path if root_path else raw_path,
            "query_string": query,
            "headers": headers,
            "state": service.state.copy(),
            "extensions": {"http.response.pathsend": {}},
        }
        if self.tls is not None:
            scope["extensions"]["tls"] = self.tls
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
                service.clock() if service.timed else 0.0,
            )
            if switching or complete:
                cycle.body_done = True
        if not complete:
            self.parsing = cycle  # until on_message_complete
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
        extensions = scope["extensions"]  # the tls one, if any, stays
        del extensions["http.response.pathsend"]
        extensions["websocket.http.response"] = {}
        cycle = self.upgrade = WebSocketCycle.upgrade(self, method, target, scope)
        self.pause_reading()  # frames stay in the kernel until the app accepts
        return cycle

    def on_upgrade_data(self, data: bytes) -> None:
        if self.upgrade is not None:
            self.upgrade.early += data

    def on_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
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
        if not service.limited:
            service.inflight += 1  # without --limit-concurrency a request only counts in
        elif not service.admit():
            if service.reject:
                if service.metrics is not None:
                    service.metrics.rejected += 1
                cycle.status = 503
                cycle.state = DONE
                self.write(error_response(503, service.date_line))
                cycle.bytes_sent = len(PHRASES[503])
                self.on_response_complete(cycle, False)
                return
            # Queue mode: the request waits for a slot; nothing more is read meanwhile.
            self.pause_reading()
            service.enqueue(self, cycle)
            return
        self.start(cycle)

    def start(self, cycle: Cycle) -> None:
        """Run the app for an admitted request (counted in flight by the service)."""
        service = self.service
        if service.plain_tasks:
            # A named Task straight from its class: what loop.create_task makes without a task
            # factory, less the "Task-N" name that 3.11 formats for every unnamed task.
            task = Task(cycle.run(service.app), loop=self.loop, name=REQUEST_TASK_NAME)
        else:
            task = self.loop.create_task(cycle.run(service.app), name=REQUEST_TASK_NAME)
        cycle.task = task
        service.tasks.add(task)

    def on_response_complete(self, cycle: Cycle, keep_alive: bool) -> None:
        service = self.service
        if service.timed:
            service.record(cycle)
        if cycle.waiter is not None:
            cycle.wake()  # a receive() waiting for a disconnect gets one now
        self.active = None
        service.request_served()
        if not keep_alive or self.closed:
            self.close()
            return
        pipeline = self.pipeline
        if pipeline:
            if self.held is not None:
                self.flush()  # a client gone shows only when written to: find out before the next
            if self.transport.is_closing():
                self.close()  # a write found the client gone: run none of its queued requests
                return
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
            # Shutting down, after a response whose head promised keep-alive: a next request
            # already on its way is still answered (with connection: close), as on idle ones.
            self.head_since = 0.0
            self.maybe_resume_reading()
            self.close_if_idle(service.shutdown_linger)
            return
        if self.reading_paused:
            self.maybe_resume_reading()
        self.head_since = 0.0  # idle: the keep-alive deadline
        self._arm(self.loop.time() + service.keep_alive)

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

    # -- timeouts: keep-alive, request head, request body ---------------------------------------------
    # One timer per connection with one deadline, whose meaning follows the state: idle (the
    # keep-alive timeout), a head begun (--timeout-request-header) or the app waiting for body
    # bytes (--timeout-request-body). It is re-armed lazily: a new deadline later than the timer
    # only moves ``deadline``; the timer, when it fires, looks again.
    def _arm(self, deadline: float) -> None:
        """Set ``deadline``, bringing the timer forward only when it would fire after it."""
        self.deadline = deadline
        if deadline == _NEVER:
            return  # a pending timer sees the deadline moved away and stops
        timer = self.timer
        if timer is not None:
            if self.timer_at <= deadline:
                return
            timer.cancel()
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _head_started(self) -> None:
        timeout = self.service.header_timeout
        self.head_since = now = self.loop.time()
        # 0: the head may take forever (the keep-alive deadline no longer applies either).
        self._arm(now + timeout if timeout else _NEVER)

    def waiting_for_body(self) -> None:
        """The app awaits body bytes: the client has --timeout-request-body to send some."""
        timeout = self.service.body_timeout
        # Always set: the deadline left from the idle time before this request must not apply.
        self._arm(self.loop.time() + timeout if timeout else _NEVER)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        active = self.active
        if active is not None and not (
            isinstance(active, RequestCycle) and active.waiter is not None and not active.body_done
        ):
            return  # busy, and not for want of body bytes: the next wait for the body re-arms
        if self.loop.time() < self.deadline:
            if self.deadline == _NEVER:
                return
            self.timer_at = self.deadline
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        if active is not None:
            self._timed_out(active, "request body", "--timeout-request-body")
        elif self.head_since:
            why = "--timeout-request-header" if self.service.accepting else "shutting down"
            self._timed_out(None, "request head", why)
        else:
            self.close()  # idle past --timeout-keep-alive (or shutting down): no request is lost

    def _timed_out(self, cycle: RequestCycle | None, what: str, why: str) -> None:
        """RFC 9110 §15.5.9: 408 to a request that did not arrive in time, then close."""
        answer = cycle is None or cycle.state == START  # else a response has begun: only the close
        logger.info(
            "incomplete %s from %s (%s): %s",
            what,
            _peer(self.client),
            why,
            "answered 408, closing" if answer else "closing",
        )
        if cycle is not None:
            cycle.disconnected = True  # the app's receive() gets http.disconnect
            cycle.wake()
            if answer:
                cycle.state = DONE
                cycle.status = 408
        if answer:
            self.write(error_response(408, self.service.date_line))
            if self.service.metrics is not None:
                self.service.metrics.error(408)
        self.close()

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
                self._arm(deadline)
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.parser.stop()
            if self.held is not None:
                self.flush()
            self.transport.close()

    def force_close(self) -> None:
        self.closed = True
        self.held = None
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
            self.write(error_response(exc.status, self.service.date_line, headers=exc.headers))
            if self.service.metrics is not None:
                self.service.metrics.error(exc.status)
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
