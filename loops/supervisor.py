"""The supervisor: owns the listening sockets, starts one worker per loop, keeps them alive.

Event driven: worker readiness, messages and exits arrive as callbacks on the supervisor's own
loop (pipe and process-sentinel readers, or ``call_soon_threadsafe`` from worker threads);
signals only schedule work on that loop. The only timer is the health check, which reads the
heartbeats the workers' loops write into shared memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from polycorn.config import Config
from polycorn.errors import AppLoadError, AppStartupError, ConfigError, PolycornError
from polycorn.loops import activation, eventloop, sockets, startup
from polycorn.loops.coordination import SharedStats
from polycorn.loops.startup import gil_enabled
from polycorn.loops.workers import ProcessWorker, ThreadWorker, Worker
from polycorn.parsing import parser_class
from polycorn.tls import server_tls

if TYPE_CHECKING:
    from polycorn.loops.metrics import MetricsEndpoint

logger = logging.getLogger("polycorn.error")

#: A worker that dies this many times within CRASH_WINDOW seconds stops the server.
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
_ERRORS = {2: ConfigError, 3: AppStartupError, 4: AppLoadError}
#: Why a replacement worker was started (the metrics count each): its worker died unexpectedly,
#: reached --limit-max-requests, had its loop blocked past --timeout-worker-healthcheck, or is
#: being replaced by a rolling restart (SIGHUP, --reload).
RESTART_REASONS = ("crashed", "recycled", "blocked", "rolling")


def supervised(config: Config) -> bool:
    """Whether the options need a supervisor rather than one in-process loop."""
    return (
        config.workers == "auto"
        or int(config.workers) > 1
        or config.reload
        or bool(config.limit_max_requests)
        or config.metrics_port is not None  # the supervisor serves the metrics of every worker
    )


def worker_count(config: Config) -> int:
    """'auto': the CPUs this process may run on (its affinity mask), not all the machine has."""
    if config.workers == "auto":
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1
    return int(config.workers)


def worker_mode(config: Config) -> str:
    """'auto' takes threads only when the GIL is off at run time; --reload always uses processes."""
    if config.reload:
        if config.worker_mode == "thread":
            logger.warning("--reload re-imports the app in fresh processes: using process workers")
        return "process"
    if config.worker_mode == "auto":
        return "process" if gil_enabled() else "thread"
    if config.worker_mode == "thread" and gil_enabled():
        logger.warning(
            "--worker-mode thread with the GIL enabled: the loops share one core at a time; "
            "process workers (or a free-threaded Python) use every core"
        )
    return config.worker_mode


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._gil_at_start = gil_enabled()
        self.count = worker_count(config)
        self.mode = worker_mode(config)
        if self.mode == "process" and not isinstance(config.app, str):
            raise ConfigError(
                "process workers import the app themselves: pass it as an import string 'module:attribute'"
            )
        self.stats = SharedStats(capacity=max(16, self.count * 4))
        self.workers: list[Worker] = []
        self.seats: list[list[socket.socket]] = []
        self.shared: list[socket.socket] | None = None
        self._bound_here = True  # False for sockets handed over (activation, --fd): never shut down or unlinked
        self.next_id = 0
        self.free_slots = deque(range(self.stats.capacity))
        self.crashes: deque[float] = deque()
        self.shutting_down = False
        self.starting = True
        self.error: PolycornError | None = None
        self.rolling = False
        self._health: asyncio.TimerHandle | None = None
        self._reloader: asyncio.Task[None] | None = None
        self.retiring: set[int] = set()
        if config.reload:
            from polycorn.loops.reload import check_available

            check_available()
        self.restarts = dict.fromkeys(RESTART_REASONS, 0)
        self._metrics: MetricsEndpoint | None = None
        if config.metrics_port is not None:
            from polycorn.loops.metrics import check_available as check_metrics_available

            check_metrics_available()
        # Each worker builds its own SSLContext (one cannot be pickled); this one only makes bad
        # certificate files or a wrong key password stop the server before any worker starts.
        server_tls(config)

    def run(self) -> None:
        eventloop.run(self.main(), eventloop.loop_factory(self.config.loop))
        if self.error is not None:
            raise self.error

    # -- sockets -----------------------------------------------------------------------------
    def _bind(self) -> None:
        config = self.config
        handed = activation.inherited(config)  # systemd socket activation or --fd: shared by all workers
        self._bound_here = handed is None
        # Only Linux spreads connections across SO_REUSEPORT sockets; the BSDs and macOS hand them
        # all to one socket, so there one shared socket is the balanced choice.
        reuse = (
            handed is None
            and config.reuse_port
            and config.fd is None
            and config.uds is None
            and sys.platform.startswith("linux")
            and hasattr(socket, "SO_REUSEPORT")
        )
        if reuse:
            first = sockets.bind_reuseport(config.host, config.port, config.backlog)
            port = first.getsockname()[1]  # port 0 is resolved once; every worker shares it
            self.seats = [[first]] + [
                [sockets.bind_reuseport(config.host, port, config.backlog)] for _ in range(self.count - 1)
            ]
            self._port = port
        else:
            self.shared = handed if handed is not None else [sockets.bind(config)]
            self.seats = [self.shared for _ in range(self.count)]

    def _new_seat(self) -> int:
        if self.shared is not None:
            self.seats.append(self.shared)
        else:
            self.seats.append([sockets.bind_reuseport(self.config.host, self._port, self.config.backlog)])
        return len(self.seats) - 1

    # -- main ----------------------------------------------------------------------------------
    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self._bind()
        self._done: asyncio.Future[None] = loop.create_future()
        installed = self._install_signals(loop)
        listen = self.seats[0]
        startup.log_startup(
            self.config,
            eventloop.loop_name_of(eventloop.loop_factory(self.config.loop)),
            parser_class(self.config.http).name,
            f"{self.count} {self.mode} worker{'s' if self.count > 1 else ''}, "
            + ("one SO_REUSEPORT socket each" if self.shared is None else "one shared socket")
            + (", pinned to CPUs" if self.config.pin_cpus else ""),
            threads=self.mode == "thread",
        )
        for sock in listen:
            logger.info("listening on %s (press CTRL+C to quit)", sockets.describe(sock, self.config))
        try:
            if self.config.metrics_port is not None:
                from polycorn.loops.metrics import MetricsEndpoint

                self._metrics = MetricsEndpoint(self.config, self)
                self._metrics.start()  # before the workers: a port in use stops the server now
            started = [self._spawn(seat) for seat in range(self.count)]
            results = await asyncio.gather(*(w.ready for w in started))
            self.starting = False
            if self.shutting_down and self.error is None:  # interrupted while starting
                await self._done
                return
            if not all(results) or self.error is not None:
                if self.error is None:
                    failed = next(w for w, ok in zip(started, results, strict=True) if not ok)
                    self.error = self._startup_error(failed)
                await self._stop_all()
                return
            if self.mode == "thread" and gil_enabled() and not self._gil_at_start:
                logger.warning(
                    "importing the app enabled the GIL (an extension without free-threading support): "
                    "thread workers will not run in parallel; --worker-mode process would"
                )
            logger.info("all %d workers ready", len(started))
            self._schedule_health()
            if self.config.reload:
                self._reloader = loop.create_task(self._watch())
            await self._done
        finally:
            if self._metrics is not None:
                self._metrics.stop()  # after the workers: their final counts were scrapable
            if self._health is not None:
                self._health.cancel()
            if self._reloader is not None:
                self._reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reloader
            for sig in installed:
                loop.remove_signal_handler(sig)
            for seat in self.seats:
                for sock in seat:
                    sock.close()
            if self.config.uds and self._bound_here:
                with contextlib.suppress(OSError):
                    os.unlink(self.config.uds)
            logger.info("supervisor %d finished", os.getpid())

    def _spawn(self, seat: int) -> Worker:
        slot = self.free_slots.popleft()
        self.stats.clear(slot)
        cls = ThreadWorker if self.mode == "thread" else ProcessWorker
        worker = cls(self.config, self.next_id, slot, seat, self.seats[seat], self.stats, self)
        self.next_id += 1
        self.workers.append(worker)
        worker.start()
        return worker

    def _startup_error(self, worker: Worker) -> PolycornError:
        if worker.failure is not None:
            code, message = worker.failure
            return _ERRORS.get(code, PolycornError)(message)
        return PolycornError(f"{worker.ident} exited with code {worker.exitcode} during start-up")

    # -- worker events ---------------------------------------------------------------------------
    def worker_ready(self, worker: Worker) -> None:
        logger.debug("%s ready", worker.ident)

    def worker_failed(self, worker: Worker, code: int, message: str) -> None:
        if worker.state == "starting" and self.starting and self.error is None:
            self.error = _ERRORS.get(code, PolycornError)(message)
        logger.error("%s failed: %s", worker.ident, message)

    def worker_recycle(self, worker: Worker) -> None:
        if worker.state == "ready" and not self.shutting_down:
            logger.info("%s reached --limit-max-requests: recycling it", worker.ident)
            asyncio.get_running_loop().create_task(self._replace(worker, reason="recycled"))

    def worker_draining(self, worker: Worker) -> None:
        """It stopped accepting. A removed seat's own socket stops listening now: the kernel would
        otherwise keep queueing connections on it until the worker exits, then reset them all."""
        seat = worker.seat
        if seat not in self.retiring or self.seats[seat] is self.shared:
            return
        if not any(w.seat == seat and w is not worker for w in self.workers):
            for sock in self.seats[seat]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            logger.info("%s stopped accepting: its listening socket is closed", worker.ident)

    def worker_exited(self, worker: Worker) -> None:
        self.free_slots.append(worker.slot)
        if worker in self.workers:
            self.workers.remove(worker)
        stopping = worker.stop_requests > 0
        if not stopping and not self.shutting_down and not self.starting:
            self._crashed(worker)
        self._release_seat(worker.seat)
        if self.shutting_down and not self.workers and not self._done.done():
            self._done.set_result(None)

    def _release_seat(self, seat: int) -> None:
        """Retire a removed seat (TTOU) once no worker serves it; its own socket closes then."""
        if seat in self.retiring and not any(w.seat == seat for w in self.workers):
            self.retiring.discard(seat)
            if self.seats[seat] is not self.shared:
                for sock in self.seats[seat]:
                    sock.close()
            self.seats[seat] = []

    def _fill_seats(self) -> None:
        """Start a worker for every seat left without one (after a failed start under --reload)."""
        for seat, listen in enumerate(self.seats):
            if listen and seat not in self.retiring and not any(w.seat == seat for w in self.workers):
                self.restarts["rolling"] += 1
                self._spawn(seat)

    def _crashed(self, worker: Worker) -> None:
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
            self.crashes.popleft()
        if worker.ready_at == 0.0 and (worker.replacement or self.config.reload):
            return  # a failed replacement: the old worker stays (--reload: until the next change)
        if worker.ready_at == 0.0:
            # It never got ready: the app cannot start now; respawning would only loop.
            self.error = self._startup_error(worker)
            logger.error("%s could not start; stopping the server", worker.ident)
            self.shutdown()
            return
        if len(self.crashes) >= CRASH_LIMIT:
            self.error = PolycornError(f"workers crashed {len(self.crashes)} times in {CRASH_WINDOW:g}s; giving up")
            logger.error("%s", self.error)
            self.shutdown()
            return
        delay = min(0.05 * 2 ** (len(self.crashes) - 1), 5.0)
        logger.warning("%s died (exit code %s); starting a replacement in %.2fs", worker.ident, worker.exitcode, delay)
        asyncio.get_running_loop().call_later(delay, self._respawn, worker.seat)

    def _respawn(self, seat: int) -> None:
        if not self.shutting_down:
            self.restarts["crashed"] += 1
            self._spawn(seat)

    # -- replacement, rolling restart, scaling ----------------------------------------------------
    async def _replace(self, old: Worker, *, kill: bool = False, reason: str = "rolling") -> bool:
        """Start the replacement on the same socket, wait until it is ready, then retire ``old``.

        The listening socket stays open throughout, so the connections queued on it are served
        by whichever of the two accepts first: none is dropped.
        """
        self.restarts[reason] += 1
        new = self._spawn(old.seat)
        new.replacement = True
        if not await new.ready:
            logger.error("the replacement for %s did not start; keeping it", old.ident)
            return False
        if kill:
            old.kill()
        else:
            old.stop(restart=True)
        return True

    async def rolling_restart(self) -> None:
        if self.rolling or self.shutting_down:
            return
        self.rolling = True
        try:
            logger.info("rolling restart of %d workers", len(self.workers))
            for worker in [w for w in self.workers if w.state == "ready"]:
                if self.shutting_down or not await self._replace(worker):
                    break
            else:
                if not self.shutting_down:
                    self._fill_seats()
        finally:
            self.rolling = False

    def add_worker(self) -> None:
        if len(self.free_slots) < 2:  # keep room for a replacement during restarts
            logger.warning("SIGTTIN: no room for another worker (%d slots)", self.stats.capacity)
            return
        seat = self._new_seat()
        self.count += 1
        worker = self._spawn(seat)
        logger.info("SIGTTIN: adding %s (%d workers)", worker.ident, self.count)

    def remove_worker(self) -> None:
        ready = [w for w in self.workers if w.state in ("ready", "starting")]
        if len(ready) <= 1:
            logger.info("SIGTTOU: keeping the last worker")
            return
        worker = max(ready, key=lambda w: w.seat)
        self.retiring.add(worker.seat)
        self.count -= 1
        logger.info("SIGTTOU: stopping %s (%d workers)", worker.ident, self.count)
        worker.stop()

    # -- health ------------------------------------------------------------------------------------
    def _schedule_health(self) -> None:
        timeout = self.config.timeout_worker_healthcheck
        if timeout > 0:
            self._health = asyncio.get_running_loop().call_later(timeout / 4, self._check_health)

    def _check_health(self) -> None:
        timeout = self.config.timeout_worker_healthcheck
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.state != "ready":
                continue
            beat = self.stats.heartbeat(worker.slot)
            if beat and now - beat > timeout:
                logger.error(
                    "%s: event loop blocked for %.1fs (--timeout-worker-healthcheck %gs); replacing it",
                    worker.ident,
                    now - beat,
                    timeout,
                )
                worker.state = "blocked"
                asyncio.get_running_loop().create_task(self._replace(worker, kill=True, reason="blocked"))
        self._schedule_health()

    # -- reload ---------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        from polycorn.loops.reload import watch_changes

        async for changed in watch_changes(self.config):
            logger.info("reloading: %s changed", ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else ""))
            await self.rolling_restart()

    # -- signals and shutdown --------------------------------------------------------------------------
    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[Any]:
        handlers = {
            signal.SIGINT: self.shutdown,
            signal.SIGTERM: self.shutdown,
            getattr(signal, "SIGHUP", None): lambda: loop.create_task(self.rolling_restart()),
            getattr(signal, "SIGTTIN", None): self.add_worker,
            getattr(signal, "SIGTTOU", None): self.remove_worker,
            getattr(signal, "SIGUSR1", None): self.log_stats,
        }
        installed = []
        for sig, handler in handlers.items():
            if sig is None:
                continue
            try:
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        return installed

    def listening_sockets(self) -> list[socket.socket]:
        """Each listening socket once (the shared one sits in every seat), for the metrics."""
        return list({id(sock): sock for seat in list(self.seats) for sock in seat}.values())

    def log_stats(self) -> None:
        for row in self.stats.snapshot():
            logger.info(
                "worker %d: %d in flight, %d connections, %d served",
                row["worker"],
                row["inflight"],
                row["connections"],
                row["served"],
            )

    def shutdown(self) -> None:
        """First call: graceful stop of every worker; second call: force them."""
        first = not self.shutting_down
        self.shutting_down = True
        if first:
            logger.info("shutting down %d workers", len(self.workers))
            # Refuse new connections now (for every worker's copy of each socket at once) rather
            # than let them queue on sockets that nobody will accept from again. Sockets handed
            # over outlive us: what queues on them is for the next server.
            for seat in self.seats if self._bound_here else []:
                for sock in seat:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            asyncio.get_running_loop().create_task(self._stop_all())
        else:
            logger.warning("second signal: forcing the workers to exit")
            for worker in list(self.workers):
                worker.stop()

    async def _stop_all(self) -> None:
        self.shutting_down = True
        workers = list(self.workers)
        for worker in workers:
            if worker.stop_requests == 0:  # one already draining (TTOU, a restart) is not forced
                worker.stop()
        if workers:
            grace = self.config.timeout_graceful_shutdown + 10
            _, pending = await asyncio.wait([w.exited for w in workers], timeout=grace)
            for worker in workers:
                if not worker.exited.done():
                    logger.error("%s did not stop in time: killing it", worker.ident)
                    worker.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if not self._done.done():
            self._done.set_result(None)
