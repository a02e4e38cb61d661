"""Cross-loop coordination through per-worker slots in shared memory.

Each worker owns one slot and is its only writer; everybody may read every slot. Nothing is
locked: a slot field is one aligned 8-byte double, written whole.

With --limit-concurrency, each loop stores its in-flight count whenever it changes and sums all
slots when it admits a request (``PeerCounts``): the request path never leaves the loop, and the
server-wide limit can only be overshot by admissions racing within the same instant on different
loops. A timer on each loop (``LIMIT_CADENCE``) also wakes that loop's queued requests when
another loop frees a slot, and publishes the other counters (connections, requests served) and a
heartbeat written by the loop itself, which the supervisor's health check reads.

The same memory serves process workers (inherited through ``multiprocessing``) and thread
workers, and it is the supervisor's live view of the server (``snapshot()``).
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import threading
import time
from typing import Any

from polycorn.service import HttpService

# Slot layout: one row of doubles per worker.
PID, WORKER, INFLIGHT, CONNECTIONS, SERVED, HEARTBEAT, LIVE = range(7)
FIELDS = 7
FIELD_NAMES = ("pid", "worker", "inflight", "connections", "served", "heartbeat", "live")

#: Publication cadence (seconds) with a concurrency limit to share, and without one.
LIMIT_CADENCE = 0.005
STATS_CADENCE = 1.0


class SharedStats:
    """The table of slots: created by the supervisor before any worker starts."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.array: Any = multiprocessing.RawArray(ctypes.c_double, capacity * FIELDS)

    def view(self) -> Any:  # a memoryview of doubles (typeshed types its items as int)
        return memoryview(self.array).cast("B").cast("d")

    def clear(self, slot: int) -> None:
        """Forget a worker that exited: its requests no longer count anywhere."""
        view = self.view()
        for field in range(FIELDS):
            view[slot * FIELDS + field] = 0.0

    def heartbeat(self, slot: int) -> float:
        return float(self.view()[slot * FIELDS + HEARTBEAT])

    def snapshot(self) -> list[dict[str, float]]:
        """Live stats per worker, for logs and (later) metrics."""
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


class LoopCoordinator:
    """A worker loop's side: publish own counters, read the others', wake queued requests."""

    def __init__(self, stats: SharedStats, slot: int, worker_id: int, heartbeat_interval: float) -> None:
        self.stats = stats
        self.slot = slot
        self.worker_id = worker_id
        self.heartbeat_interval = heartbeat_interval
        self._timer: asyncio.TimerHandle | None = None
        self._service: HttpService | None = None

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
        self._interval = min(LIMIT_CADENCE if limited else STATS_CADENCE, self.heartbeat_interval)
        self._limited = limited
        self._tick()

    def _tick(self) -> None:
        service = self._service
        assert service is not None
        view = self._view
        base = self._base
        view[base + INFLIGHT] = float(service.inflight)
        view[base + CONNECTIONS] = float(len(service.connections))
        view[base + SERVED] = float(service.served)
        # The heartbeat is written by the loop itself: a blocked loop stops beating.
        view[base + HEARTBEAT] = time.monotonic()
        if self._limited and (service.waiting or service.saturated):
            service.release()  # another loop may have freed a slot since our last look
        self._timer = self._loop.call_later(self._interval, self._tick)

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._service is not None:
            self._view[self._base + INFLIGHT] = 0.0
