"""Cross-loop coordination through per-worker slots in shared memory.

Each worker owns one slot and is its only writer; everybody may read every slot. Nothing is
locked: a slot field is one aligned 8-byte double, written whole.

With --limit-concurrency, each loop stores its in-flight count whenever it changes and sums all
slots when it admits a request (``PeerCounts``): the request path never leaves the loop, and the
server-wide limit can only be overshot by admissions racing within the same instant on different
loops. A timer on each loop (``LIMIT_CADENCE``) also wakes that loop's queued requests when
another loop frees a slot, and publishes the other counters (connections, requests served) and a
heartbeat written by the loop itself, which the supervisor's health check reads.

With --metrics-port, each loop also keeps request counters of its own (``LoopCounters``: plain
ints, no lock, nothing shared per request) and the same timer copies them into its slot. Counters
only grow during a worker's life; when the supervisor clears the slot of a worker that exited, it
first adds them to its retired totals, so server-wide totals never go back (``read()``).

The same memory serves process workers (inherited through ``multiprocessing``) and thread
workers, and it is the supervisor's live view of the server (``snapshot()``, ``read()``).
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import threading
import time
from bisect import bisect_left
from typing import Any

from polycorn.service import HttpService

# Slot layout: one row of doubles per worker (exact for counts up to 2**53). Identity and gauges
# first, then the counters, which survive their worker in the supervisor's retired totals.
PID, WORKER, INFLIGHT, CONNECTIONS, SERVED, HEARTBEAT, LIVE, WEBSOCKETS, QUEUED = range(9)
FIELD_NAMES = ("pid", "worker", "inflight", "connections", "served", "heartbeat", "live", "websockets", "queued")
#: Counters (--metrics-port only): connections accepted, requests answered 503 at
#: --limit-concurrency in reject mode, the sum of request durations in seconds, then the
#: responses by ``status // 100`` (STATUS_CLASSES fields: index 1 is 1xx ... 5 is 5xx; the others
#: can only hold non-standard codes) and the request-duration histogram, one field per bucket of
#: DURATION_BOUNDS plus +Inf last, each counting its own observations (not cumulative).
ACCEPTED, REJECTED, DURATION_SUM = 9, 10, 11
STATUS = 12
STATUS_CLASSES = 10
BUCKETS = STATUS + STATUS_CLASSES
#: Upper bounds (seconds, inclusive) of the request-duration histogram buckets: 1 ms to 10 s.
DURATION_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FIELDS = BUCKETS + len(DURATION_BOUNDS) + 1
#: The fields a worker only ever increases, kept server-wide after it exits.
COUNTERS = range(ACCEPTED, FIELDS)

#: Publication cadence (seconds) with a concurrency limit to share, and without one.
LIMIT_CADENCE = 0.005
STATS_CADENCE = 1.0


class SharedStats:
    """The table of slots: created by the supervisor before any worker starts.

    The retired totals and their lock are the supervisor's own: a process worker gets the shared
    table only (see ``__getstate__``), and only the supervisor clears slots.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.array: Any = multiprocessing.RawArray(ctypes.c_double, capacity * FIELDS)
        self.retired = [0.0] * FIELDS
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "array": self.array}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.capacity = state["capacity"]
        self.array = state["array"]
        self.retired = [0.0] * FIELDS
        self._lock = threading.Lock()

    def view(self) -> Any:  # a memoryview of doubles (typeshed types its items as int)
        return memoryview(self.array).cast("B").cast("d")

    def clear(self, slot: int) -> None:
        """Forget a worker that exited; its counters move to the retired totals in the same step."""
        view = self.view()
        base = slot * FIELDS
        retired = self.retired
        with self._lock:  # against read() in the metrics thread: counted once, never twice
            for field in COUNTERS:
                retired[field] += view[base + field]
            for field in range(FIELDS):
                view[base + field] = 0.0

    def read(self) -> tuple[list[list[float]], list[float]]:
        """The rows of the live workers and the retired totals, as one consistent reading."""
        view = self.view()
        with self._lock:
            rows = [
                view[base : base + FIELDS].tolist()
                for base in range(0, self.capacity * FIELDS, FIELDS)
                if view[base + LIVE]
            ]
            return rows, list(self.retired)

    def heartbeat(self, slot: int) -> float:
        return float(self.view()[slot * FIELDS + HEARTBEAT])

    def snapshot(self) -> list[dict[str, float]]:
        """Live stats per worker, for the logs (SIGUSR1)."""
        view = self.view()
        rows = []
        for slot in range(self.capacity):
            base = slot * FIELDS
            if view[base + LIVE]:
                rows.append({name: float(view[base + i]) for i, name in enumerate(FIELD_NAMES)})
        return rows


class PeerCounts:
    """In-flight counts shared at every admission and completion (only with a concurrency limit).

    Each loop stores its own count when it changes and sums everybody's when it admits, so the
    server-wide limit can only be overshot by admissions that race within the same instant on
    different loops (there is no lock to make check-and-increment atomic across loops).
    """

    __slots__ = ("_view", "_own", "_column")

    def __init__(self, view: Any, slot: int) -> None:
        self._view = view
        self._own = slot * FIELDS + INFLIGHT
        self._column = view[INFLIGHT::FIELDS]

    def publish(self, inflight: int) -> None:
        self._view[self._own] = float(inflight)

    def others(self) -> int:
        return int(sum(self._column) - self._view[self._own])


class LoopCounters:
    """One loop's request counters (--metrics-port): plain ints on the loop, published by its tick.

    The connection and WebSocket code call these only when ``service.metrics`` is set, which
    ``LoopCoordinator.attach`` decides once.
    """

    __slots__ = ("accepted", "rejected", "websockets", "statuses", "buckets", "duration_sum")

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.websockets = 0  # open now: +1 at the handshake's 101, -1 when the connection is lost
        self.statuses = [0] * STATUS_CLASSES
        self.buckets = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0

    def request(self, status: int, seconds: float) -> None:
        """A request's response is complete (a WebSocket's: its 101 or refusal) after ``seconds``."""
        self.statuses[status // 100] += 1
        self.buckets[bisect_left(DURATION_BOUNDS, seconds)] += 1
        self.duration_sum += seconds

    def error(self, status: int) -> None:
        """The server answered a malformed or timed-out request itself: no duration to observe."""
        self.statuses[status // 100] += 1


class LoopCoordinator:
    """A worker loop's side: publish own counters, read the others', wake queued requests."""

    def __init__(self, stats: SharedStats, slot: int, worker_id: int, heartbeat_interval: float) -> None:
        self.stats = stats
        self.slot = slot
        self.worker_id = worker_id
        self.heartbeat_interval = heartbeat_interval
        self._timer: asyncio.TimerHandle | None = None
        self._service: HttpService | None = None
        self._counters: LoopCounters | None = None

    def attach(self, service: HttpService, loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._loop = loop
        view = self._view = self.stats.view()
        base = self._base = self.slot * FIELDS
        view[base + PID] = float(
            os.getpid() if threading.current_thread() is threading.main_thread() else threading.get_native_id()
        )
        view[base + WORKER] = float(self.worker_id)
        view[base + LIVE] = 1.0
        limited = bool(service.config.limit_concurrency)
        if limited:
            service.peers = PeerCounts(view, self.slot)
        if service.config.metrics_port is not None:
            service.metrics = self._counters = LoopCounters()
            service.timed = True  # request durations are measured from now on
        self._interval = min(LIMIT_CADENCE if limited else STATS_CADENCE, self.heartbeat_interval)
        self._limited = limited
        self._tick()

    def _tick(self) -> None:
        service = self._service
        assert service is not None
        self._publish(service)
        if self._limited and (service.waiting or service.saturated):
            service.release()  # another loop may have freed a slot since our last look
        self._timer = self._loop.call_later(self._interval, self._tick)

    def _publish(self, service: HttpService) -> None:
        view = self._view
        base = self._base
        view[base + INFLIGHT] = float(service.inflight)
        view[base + CONNECTIONS] = float(len(service.connections))
        view[base + SERVED] = float(service.served)
        # The heartbeat is written by the loop itself: a blocked loop stops beating.
        view[base + HEARTBEAT] = time.monotonic()
        counters = self._counters
        if counters is not None:
            view[base + WEBSOCKETS] = float(counters.websockets)
            view[base + QUEUED] = float(len(service.waiting))
            view[base + ACCEPTED] = float(counters.accepted)
            view[base + REJECTED] = float(counters.rejected)
            view[base + DURATION_SUM] = counters.duration_sum
            for field, count in enumerate(counters.statuses, STATUS):
                view[base + field] = float(count)
            for field, count in enumerate(counters.buckets, BUCKETS):
                view[base + field] = float(count)

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._service is not None:
            # Final counts: the requests of a worker that exits gracefully are all kept.
            self._publish(self._service)
            self._view[self._base + INFLIGHT] = 0.0
