"""--metrics-port: Prometheus metrics of the whole server, served by the supervisor.

Every worker loop publishes its counters into its slot of the shared stats table (see
polycorn.loops.coordination); the supervisor alone reads the table, adds the retired totals of
workers that exited, and renders the text exposition with prometheus-client's own helpers: a
custom collector on a private registry, written out by ``generate_latest``. prometheus-client's
multiprocess mode is not used: it wants one set of mmap files per process, written on every
update, and it knows nothing of thread workers, while the table already holds every loop's
numbers with no per-request shared-memory write at all.

The endpoint is a small ASGI app served by Polycorn's own HTTP service on its own event loop, in a
thread of the supervisor: a slow or hostile scraper cannot delay the supervisor's health checks
and restarts, and its requests are not counted among the application's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from polycorn.config import Config
from polycorn.errors import ConfigError
from polycorn.loops import eventloop, sockets
from polycorn.loops.coordination import (
    ACCEPTED,
    BUCKETS,
    CONNECTIONS,
    COUNTERS,
    DURATION_BOUNDS,
    DURATION_SUM,
    FIELDS,
    INFLIGHT,
    QUEUED,
    REJECTED,
    SERVED,
    STATUS,
    STATUS_CLASSES,
    WEBSOCKETS,
    WORKER,
    SharedStats,
)
from polycorn.service import HttpService

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

logger = logging.getLogger("polycorn.error")

#: The Prometheus text format, version 0.0.4, which every Prometheus version scrapes.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Options the endpoint shares with the application's server: the same timeouts and head limits.
_SHARED_OPTIONS = (
    "loop",
    "http",
    "backlog",
    "timeout_keep_alive",
    "timeout_request_header",
    "timeout_request_body",
    "timeout_graceful_shutdown",
    "limit_request_line",
    "limit_request_fields",
    "limit_request_head",
    "h11_max_incomplete_event_size",
    "server_header",
    "date_header",
)

#: Linux: a listening TCP socket's struct tcp_info holds its accept-queue length in tcpi_unacked.
_TCP_INFO_UNACKED = struct.Struct("=I")
_TCP_INFO_UNACKED_OFFSET = 24
_TCP_LISTEN = 10


def check_available() -> None:
    """prometheus-client is an optional dependency: without it, --metrics-port is a usage error."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError("--metrics-port needs prometheus-client (pip install 'polycorn[metrics]')") from None


class MetricsSource(Protocol):
    """What the collector reads: the supervisor."""

    @property
    def stats(self) -> SharedStats: ...

    @property
    def restarts(self) -> Mapping[str, int]:
        """Replacement workers started, by reason."""

    def listening_sockets(self) -> list[socket.socket]: ...


def accept_queue(listening: list[socket.socket]) -> int | None:
    """Connections waiting in the kernel's accept queues; None where that cannot be read.

    Linux reports a listening TCP socket's queue length in its tcp_info, the same number
    ``ss -lnt`` shows as Recv-Q; other systems and UNIX sockets have no such counter.
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "TCP_INFO"):
        return None
    total = 0
    readable = False
    for sock in listening:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        except OSError:  # closed meanwhile (a removed seat, shutdown)
            continue
        if len(info) < _TCP_INFO_UNACKED_OFFSET + 4 or info[0] != _TCP_LISTEN:
            continue
        total += _TCP_INFO_UNACKED.unpack_from(info, _TCP_INFO_UNACKED_OFFSET)[0]
        readable = True
    return total if readable else None


class ServerCollector:
    """A prometheus-client collector whose every ``collect()`` reads the shared table afresh."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        source = self.source
        rows, totals = source.stats.read()
        for row in rows:
            for field in COUNTERS:
                totals[field] += row[field]

        def live(field: int) -> float:
            return sum(row[field] for row in rows)

        requests = CounterMetricFamily(
            "polycorn_requests",
            "Responses sent, by status class (a WebSocket handshake counts once, as its 101 or refusal).",
            labels=["status_class"],
        )
        for digit in range(1, 6):
            requests.add_metric([f"{digit}xx"], totals[STATUS + digit])
        other = sum(totals[STATUS + digit] for digit in range(STATUS_CLASSES) if not 1 <= digit <= 5)
        if other:
            requests.add_metric(["other"], other)
        yield requests

        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound, field in zip((*DURATION_BOUNDS, math.inf), range(BUCKETS, FIELDS), strict=True):
            cumulative += totals[field]
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "polycorn_request_duration_seconds",
            "Seconds from a request's complete head to the end of its response (a WebSocket's: to its 101).",
            buckets=buckets,
            sum_value=totals[DURATION_SUM],
        )
        yield GaugeMetricFamily(
            "polycorn_requests_in_flight",
            "Requests admitted whose application call has not returned (open WebSocket sessions included).",
            value=live(INFLIGHT),
        )
        yield GaugeMetricFamily(
            "polycorn_requests_queued",
            "Requests waiting for a slot at --limit-concurrency (queue mode).",
            value=live(QUEUED),
        )
        yield CounterMetricFamily(
            "polycorn_requests_rejected",
            "Requests answered 503 at --limit-concurrency (reject mode).",
            value=totals[REJECTED],
        )
        websockets = live(WEBSOCKETS)
        connections = GaugeMetricFamily(
            "polycorn_open_connections", "Open client connections, by protocol.", labels=["protocol"]
        )
        connections.add_metric(["http"], live(CONNECTIONS) - websockets)
        connections.add_metric(["websocket"], websockets)
        yield connections
        yield CounterMetricFamily(
            "polycorn_connections_accepted", "Client connections accepted.", value=totals[ACCEPTED]
        )
        queued = accept_queue(source.listening_sockets())
        if queued is not None:
            yield GaugeMetricFamily(
                "polycorn_connections_queued",
                "Connections waiting in the kernel's accept queues (Linux, TCP).",
                value=queued,
            )
        yield GaugeMetricFamily("polycorn_workers", "Workers running.", value=len(rows))
        restarts = CounterMetricFamily(
            "polycorn_worker_restarts", "Replacement workers started, by reason.", labels=["reason"]
        )
        for reason, count in list(source.restarts.items()):
            restarts.add_metric([reason], count)
        yield restarts
        served = CounterMetricFamily(
            "polycorn_worker_requests_served",
            "Requests served by each running worker (a WebSocket session counts when it ends).",
            labels=["worker"],
        )
        for row in sorted(rows, key=lambda r: r[WORKER]):
            served.add_metric([str(int(row[WORKER]))], row[SERVED])
        yield served


def exposition_app(source: MetricsSource) -> Any:
    """The ASGI app of the endpoint: GET (or HEAD) /metrics, 404 elsewhere."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(source))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]] = []
        if scope["path"] != "/metrics":
            status, body = 404, b"Not Found: metrics are at /metrics\n"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b"Method Not Allowed\n"
            headers.append((b"allow", b"GET, HEAD"))
        else:
            status, body = 200, generate_latest(registry)
        content_type = CONTENT_TYPE if status == 200 else b"text/plain; charset=utf-8"
        headers += [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class MetricsEndpoint:
    """/metrics on --metrics-host:--metrics-port, served from a thread of the supervisor.

    ``start()`` binds in the caller's thread, so that a port in use stops the server at once
    with the usual bind error; connections queue on the socket until the thread accepts them.
    """

    def __init__(self, config: Config, source: MetricsSource) -> None:
        check_available()
        port = config.metrics_port if config.metrics_port is not None else 0
        # Plain HTTP, no access log, no lifespan, no WebSocket; the application's timeouts and limits.
        self.config = Config(
            app=exposition_app(source),
            host=config.metrics_host,
            port=port,
            ws="none",
            lifespan="off",
            access_log=False,
            proxy_headers=False,
            malloc_trim_threshold=0,
            **{name: getattr(config, name) for name in _SHARED_OPTIONS},
        )
        self.sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        assert self.sock is not None
        return sockets.describe(self.sock) + "/metrics"

    def start(self) -> None:
        self.sock = sockets.bind(self.config)  # BindError: the caller stops the server
        self._loop = loop = eventloop.loop_factory(self.config.loop)()
        self._thread = threading.Thread(target=self._main, args=(loop,), name="polycorn-metrics", daemon=True)
        self._thread.start()
        logger.info("metrics on %s", self.url)

    def stop(self) -> None:
        """Close the endpoint; scrapes in progress get --timeout-graceful-shutdown to finish."""
        timeout = self.config.timeout_graceful_shutdown + 5
        loop = self._loop
        if loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: the thread is over already
            loop.call_soon_threadsafe(self._request_stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the metrics endpoint did not stop within %gs", timeout)

    def _request_stop(self) -> None:
        self._stopping = True
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            eventloop.run(self._serve(), lambda: loop)
        except Exception:
            logger.exception("the metrics endpoint failed")

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        config = self.config
        service = HttpService(config, config.app, loop)
        server = await loop.create_server(service.protocol_factory, sock=self.sock, backlog=config.backlog)
        self._stopped = loop.create_future()
        if not self._stopping:
            await self._stopped
        server.close()
        await service.shutdown(config.timeout_graceful_shutdown)
