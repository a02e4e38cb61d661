"""Per-loop HTTP state shared by that loop's connections.

Everything decidable at start-up is decided here once (parser, limits, default header bytes,
access log on or off), so the per-request path only reads attributes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from polycorn.config import Config
from polycorn.connection import HttpConnection
from polycorn.first_byte import FirstByteWait
from polycorn.log_format import compile_access_format
from polycorn.logs import access_colours, access_logger, request_target
from polycorn.outbox import Outbox
from polycorn.parsing import ParserLimits, parser_class
from polycorn.websocket import GOING_AWAY, SERVICE_RESTART, websocket_settings

if TYPE_CHECKING:
    from polycorn.connection import Cycle
    from polycorn.tls import ServerTLS
    from polycorn.websocket import WebSocketCycle

logger = logging.getLogger("polycorn.error")

#: Seconds an idle connection stays open once shutdown began, so that a request racing the close
#: (the next one of a keep-alive client, the first one of a just-accepted connection) is answered.
SHUTDOWN_LINGER = 0.5

#: Client addresses whose trust (--forwarded-allow-ips) one loop remembers.
_TRUST_CACHE_SIZE = 4096

#: The write-buffer high-water mark transports start with (asyncio's and uvloop's).
_TRANSPORT_HIGH_WATER = 64 * 1024


class HttpService:
    def __init__(
        self,
        config: Config,
        app: Any,
        loop: asyncio.AbstractEventLoop,
        state: dict[str, Any] | None = None,
        on_max_requests: Callable[[], None] | None = None,
        max_requests: int | None = None,
        tls: ServerTLS | None = None,
        worker_id: int = 0,
    ) -> None:
        self.config = config
        self.app = app
        self.loop = loop
        #: TLS settings when serving HTTPS; its connections then say "https" and get the tls extension.
        self.tls = tls
        self.state: dict[str, Any] = state if state is not None else {}
        self.parser_class = parser_class(config.http)
        self.parser_limits = ParserLimits(
            request_line=config.limit_request_line,
            fields=config.limit_request_fields,
            head=config.limit_request_head,
            h11_incomplete_event=config.head_limit_h11,
        )
        self.keep_alive = config.timeout_keep_alive
        self.header_timeout = config.timeout_request_header
        self.body_timeout = config.timeout_request_body
        self.read_high_water = config.read_high_water
        self.write_high_water = config.write_high_water
        #: asyncio's and uvloop's transports default to 64 KiB already: only other values are set.
        self.write_limits = config.write_high_water != _TRANSPORT_HIGH_WATER
        self.websockets = websocket_settings(config)
        #: The close code open WebSockets get at shutdown: 1012 when the worker is being replaced.
        self.websocket_close_code = GOING_AWAY
        self.root_path = config.root_path
        self.root_path_bytes = config.root_path.encode("utf-8")
        self.proxy_headers = config.proxy_headers
        self._networks = config.forwarded_networks
        self._trust_unix = config.forwarded_unix
        self.forwarded_host = config.forwarded_host
        #: trusts_host() per address: parsing one costs about 3 µs per connection; bounded, so a
        #: flood of distinct addresses only makes it start over.
        self._trusted_hosts: dict[str, bool] = {}
        self.access_log = config.access_log and access_logger.isEnabledFor(logging.INFO) and not access_logger.disabled
        #: The supervisor's number of this loop's worker (0 for a lone server: the first worker).
        self.worker_id = worker_id
        # The access line, compiled once: log_access computes the seven values of the default line,
        # the others only when the format or a structured output (JSON, --log-config) uses them.
        access_format = compile_access_format(
            config.access_log_format,
            worker_id=worker_id,
            colours=access_colours(config),
            every_field=config.log_format == "json" or config.log_config is not None,
        )
        self._access_render = access_format.render
        self._access_extras = access_format.extras
        #: Structured outputs get every field as an attribute of the record (its JSON keys).
        self._access_keys = access_format.keys
        self.clock = time.perf_counter  # uvloop's loop.time() ticks in milliseconds
        #: --metrics-port: this loop's request counters (polycorn.loops.coordination.LoopCounters),
        #: set by the coordinator; None otherwise, and the request path then counts nothing.
        self.metrics: Any = None
        #: Whether request start times are taken and finished responses recorded (``record``): for
        #: the access log or metrics.
        self.timed = self.access_log
        self.connections: set[HttpConnection | WebSocketCycle] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        #: No task factory on the loop (one set by the app's lifespan startup counts): request
        #: tasks are made by asyncio.Task itself.
        self.plain_tasks = loop.get_task_factory() is None
        #: What a request's ``send`` returns when there is nothing to wait for (polycorn.cycle).
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.set_result(None)
        self.outbox = Outbox(loop)
        #: New connections until their first bytes: one timer for all (polycorn.first_byte).
        self.first_byte = FirstByteWait(loop, self.keep_alive or self.header_timeout)
        self.inflight = 0
        self.served = 0
        self._limit = config.limit_concurrency or 0
        #: Whether admit() must be asked (--limit-concurrency); else a request only counts in.
        self.limited = bool(self._limit)
        #: The other loops of this server, when there are any (set by polycorn.loops.coordination):
        #: ``publish(n)`` shares this loop's in-flight count, ``others()`` sums theirs. Both touch
        #: only shared memory, so admission stays on this loop with no lock and no round trip.
        self.peers: Any = None
        self.reject = config.limit_concurrency_mode == "reject"
        self.waiting: deque[tuple[HttpConnection, Cycle]] = deque()
        self.saturated = False
        #: Called with True when the server reaches --limit-concurrency in queue mode (stop
        #: accepting) and with False once it is back under the low-water mark.
        self.on_saturation: Callable[[bool], None] | None = None
        self._max_requests = (max_requests if max_requests is not None else config.limit_max_requests) or 0
        self._on_max_requests = on_max_requests
        self.accepting = True
        self.shutdown_linger = SHUTDOWN_LINGER
        self._drained: asyncio.Future[None] | None = None
        self._server_line = b"server: polycorn\r\n" if config.server_header else b""
        self._custom = b"".join(b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")) for n, v in config.headers)
        self._send_date = config.date_header
        self.date_line = b""
        self.default_head = b""
        self._date_timer: asyncio.TimerHandle | None = None
        self._tick()

    # -- Date header: computed once a second per loop (RFC 9110 §6.6.1) -------------------------
    def _tick(self) -> None:
        now = time.time()
        self.date_line = b"date: %s\r\n" % formatdate(now, usegmt=True).encode("ascii")
        self.default_head = self.head_defaults(False, False)
        self._date_timer = self.loop.call_later(1.0 - now % 1.0, self._tick)

    def head_defaults(self, app_server: bool, app_date: bool) -> bytes:
        """Server-added header bytes, leaving out the ones the app supplied itself."""
        server = b"" if app_server else self._server_line
        date = self.date_line if self._send_date and not app_date else b""
        return server + date + self._custom

    # -- admission and accounting ----------------------------------------------------------------
    def admit(self) -> bool:
        """Under --limit-concurrency, count a request in, or False at the limit (the caller queues
        it or sends 503). Without a limit the connection counts it in itself (HttpConnection._run)."""
        if self.waiting or self.inflight + self._others() >= self._limit:
            if not self.reject and not self.saturated:
                self._saturate(True)
            return False
        self.inflight += 1
        if self.peers is not None:
            self.peers.publish(self.inflight)
        return True

    def _others(self) -> int:
        peers = self.peers
        return peers.others() if peers is not None else 0

    def enqueue(self, conn: HttpConnection, cycle: Cycle) -> None:
        self.waiting.append((conn, cycle))

    def release(self) -> None:
        """Start queued requests while there is room; resume accepting below the low-water mark."""
        limit = self._limit
        waiting = self.waiting
        while waiting and self.inflight + self._others() < limit:
            conn, cycle = waiting.popleft()
            if conn.closed or cycle.disconnected:
                continue
            self.inflight += 1
            if self.peers is not None:
                self.peers.publish(self.inflight)
            conn.start(cycle)
        # Low water at 90 %: accepting does not flap on and off at the limit itself.
        if self.saturated and not waiting and self.inflight + self._others() < limit - limit // 10:
            self._saturate(False)

    def _saturate(self, on: bool) -> None:
        self.saturated = on
        if self.on_saturation is not None:
            self.on_saturation(on)

    def request_done(self, task: asyncio.Task[None] | None) -> None:
        self.inflight -= 1
        if self.peers is not None:
            self.peers.publish(self.inflight)
        if task is not None:
            self.tasks.discard(task)
        if self.waiting or self.saturated:
            self.release()
        if not self.accepting:
            self._check_drained()

    def request_served(self) -> None:
        self.served += 1
        if self.served == self._max_requests and self._on_max_requests is not None:
            logger.info("served %d requests (--limit-max-requests): shutting down", self.served)
            self._on_max_requests()

    def connection_closed(self) -> None:
        if not self.accepting:
            self._check_drained()

    def trusts(self, client: tuple[str, int] | None, transport: asyncio.BaseTransport | None = None) -> bool:
        """Whether this peer's proxy headers are believed (decided once per connection).

        A peer without an address counts as a UNIX socket peer ('unix') only if its socket is
        one: a TCP peer whose address could not be read stays untrusted.
        """
        if not self.proxy_headers:
            return False
        if self._networks is None:
            return True
        if client is None:
            return self._trust_unix and transport is not None and _is_unix(transport)
        return self.trusts_host(client[0])

    def trusts_host(self, host: str) -> bool:
        """Whether an address, a peer's or one in X-Forwarded-For/Forwarded, is a trusted proxy."""
        if self._networks is None:
            return True
        known = self._trusted_hosts.get(host)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            trusted = False
        else:
            trusted = any(addr in net for net in self._networks)
        if len(self._trusted_hosts) >= _TRUST_CACHE_SIZE:
            self._trusted_hosts.clear()
        self._trusted_hosts[host] = trusted
        return trusted

    def record(self, cycle: Cycle) -> None:
        """The access line and the metrics of a finished response (only when ``timed``): one clock read."""
        elapsed = self.clock() - cycle.started_at
        if self.access_log:
            self.log_access(cycle, elapsed)
        metrics = self.metrics
        if metrics is not None:
            metrics.request(cycle.status, elapsed)

    def log_access(self, cycle: Cycle, elapsed: float) -> None:
        """One access record; its values are in polycorn.log_format.ACCESS_FIELDS order."""
        scope = cycle.scope
        client = scope["client"]
        values: tuple[Any, ...] = (
            f"{client[0]}:{client[1]}" if client else "-",
            scope.get("method", "GET"),
            request_target(scope),
            scope["http_version"],
            cycle.status,
            cycle.bytes_sent,
            elapsed * 1000.0,
        )
        extras = self._access_extras
        if extras is not None:
            values += extras(scope, cycle.status)
        keys = self._access_keys
        if keys is None:
            access_logger.info(self._access_render(values))
        else:
            fields = dict(zip(keys, values, strict=True))
            fields["duration_ms"] = round(values[6], 3)
            access_logger.info(self._access_render(values), extra=fields)

    # -- graceful shutdown ---------------------------------------------------------------------
    async def shutdown(self, timeout: float, restart: bool = False) -> bool:
        """Stop taking requests, let in-flight ones finish; True if all did within ``timeout``.

        ``restart``: this loop is being replaced (a rolling restart, a recycle), not the server
        stopping, which open WebSockets learn from their close code.
        """
        self.accepting = False
        self.websocket_close_code = SERVICE_RESTART if restart else GOING_AWAY
        linger = self.shutdown_linger = min(self.shutdown_linger, timeout / 2)  # well within the grace
        for conn in list(self.connections):
            conn.close_if_idle(linger)
        graceful = True
        if self.connections or self.tasks:
            self._drained = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            except asyncio.TimeoutError:
                graceful = False
                logger.warning(
                    "graceful shutdown timed out after %gs: cancelling %d request(s), closing %d connection(s)",
                    timeout,
                    len(self.tasks),
                    len(self.connections),
                )
                self.cancel_all()
                if self.tasks:
                    await asyncio.wait(list(self.tasks), timeout=5)
        self.close()
        return graceful

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.force_close()

    def _check_drained(self) -> None:
        if not self.connections and not self.tasks and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def close(self) -> None:
        self.shutdown_linger = 0.0  # drained: a connection accepted after this is closed at once
        self.first_byte.close()
        if self._date_timer is not None:
            self._date_timer.cancel()
            self._date_timer = None

    def protocol_factory(self) -> HttpConnection:
        return HttpConnection(self)


def _is_unix(transport: asyncio.BaseTransport) -> bool:
    family = getattr(transport.get_extra_info("socket"), "family", None)
    return family is not None and family == getattr(socket, "AF_UNIX", None)
