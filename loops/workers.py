"""Worker processes and worker threads behind one interface; each runs one event loop.

The supervisor sees only :class:`Worker`: ``start``, ``stop`` (graceful; a second call forces),
``kill``, and four events it is told about on its own loop: ready, failed (at start-up, with an
exit code), recycle (max requests reached) and exited.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from polycorn.config import Config
from polycorn.errors import PolycornError
from polycorn.loops import eventloop
from polycorn.loops.coordination import LoopCoordinator, SharedStats
from polycorn.loops.server import Server, WorkerHooks, prepare_process

logger = logging.getLogger("polycorn.error")

# spawn: a clean interpreter per worker, safe with threads and uvloop in the parent (fork is not).
_CONTEXT = multiprocessing.get_context("spawn")


class Events(Protocol):
    def worker_ready(self, worker: Worker) -> None: ...
    def worker_failed(self, worker: Worker, code: int, message: str) -> None: ...
    def worker_recycle(self, worker: Worker) -> None: ...
    def worker_draining(self, worker: Worker) -> None: ...
    def worker_exited(self, worker: Worker) -> None: ...


def pin_to_cpu(seat: int) -> None:
    """Pin the calling process (or, on Linux, thread) to one CPU of the allowed set."""
    if not hasattr(os, "sched_setaffinity"):
        logger.warning("--pin-cpus: CPU affinity is not supported on this platform")
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[seat % len(cpus)]})


class Worker:
    """What the supervisor knows of one worker, whatever runs it."""

    def __init__(
        self,
        config: Config,
        worker_id: int,
        slot: int,
        seat: int,
        listen: list[socket.socket],
        stats: SharedStats,
        events: Events,
    ) -> None:
        self.config = config
        self.worker_id = worker_id
        self.slot = slot
        self.seat = seat
        self.listen = listen
        self.stats = stats
        self.events = events
        self.loop = asyncio.get_running_loop()
        self.state = "starting"  # starting -> ready -> stopping -> exited
        self.started_at = time.monotonic()
        self.ready_at = 0.0
        self.exitcode: int | None = None
        self.failure: tuple[int, str] | None = None
        self.stop_requests = 0
        self.replacement = False  # started by a rolling restart: failing it is not fatal
        self.ready: asyncio.Future[bool] = self.loop.create_future()
        self.exited: asyncio.Future[None] = self.loop.create_future()

    @property
    def ident(self) -> str:
        return f"worker {self.worker_id}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, restart: bool = False) -> None:
        """Graceful stop; ``restart``: the worker is being replaced (its WebSockets get 1012)."""
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    # Events, always delivered on the supervisor's loop.
    def _ready(self) -> None:
        if self.state == "starting":
            self.state = "ready"
            self.ready_at = time.monotonic()
        if not self.ready.done():
            self.ready.set_result(True)
        self.events.worker_ready(self)

    def _failed(self, code: int, message: str) -> None:
        self.failure = (code, message)
        self.events.worker_failed(self, code, message)

    def _exited(self, exitcode: int | None) -> None:
        if self.state == "exited":
            return
        self.state = "exited"
        self.exitcode = exitcode
        self.stats.clear(self.slot)
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.exited.done():
            self.exited.set_result(None)
        self.events.worker_exited(self)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            self._ready()
        elif kind == "failed":
            self._failed(int(message[1]), str(message[2]))
        elif kind == "recycle":
            self.events.worker_recycle(self)
        elif kind == "draining":
            self.events.worker_draining(self)


def _post_quietly(post: Callable[[tuple[Any, ...]], None], message: tuple[Any, ...]) -> None:
    """For messages sent during shutdown, when the supervisor may already be gone."""
    try:
        post(message)
    except (OSError, RuntimeError):
        pass


def _hooks(
    worker_id: int, slot: int, stats: SharedStats, config: Config, post: Callable[[tuple[Any, ...]], None]
) -> WorkerHooks:
    interval = config.timeout_worker_healthcheck / 4 if config.timeout_worker_healthcheck else 1.0
    return WorkerHooks(
        worker_id=worker_id,
        on_ready=lambda: post(("ready",)),
        on_recycle=lambda: post(("recycle",)),
        on_draining=lambda: _post_quietly(post, ("draining",)),
        coordinator=LoopCoordinator(stats, slot, worker_id, interval),
    )


# -- processes ------------------------------------------------------------------------------------


def _exit_with_supervisor() -> None:
    """Linux: SIGTERM this worker when the supervisor dies, however it dies (``kill -9`` too).

    Without it an orphaned worker would go on serving, holding the port, with nobody to stop it.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl()
        os.kill(os.getpid(), signal.SIGTERM)


def _process_main(
    config: Config, listen: list[socket.socket], worker_id: int, seat: int, slot: int, stats: SharedStats, conn: Any
) -> None:
    """Entry point of a spawned worker process."""
    _exit_with_supervisor()
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # the supervisor's signals, not the worker's
    try:
        if config.pin_cpus:
            pin_to_cpu(seat)  # by seat: a replacement takes the CPU of the worker it replaces
        prepare_process(config)
        hooks = _hooks(worker_id, slot, stats, config, conn.send)
        Server(config).run(listen, hooks)
    except PolycornError as exc:
        conn.send(("failed", exc.exit_code, str(exc)))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        pass


class ProcessWorker(Worker):
    def start(self) -> None:
        parent, child = _CONTEXT.Pipe()
        self._conn = parent
        self.process = _CONTEXT.Process(
            target=_process_main,
            args=(self.config, self.listen, self.worker_id, self.seat, self.slot, self.stats, child),
            name=f"polycorn-worker-{self.worker_id}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.loop.add_reader(parent.fileno(), self._on_message)
        self.loop.add_reader(self.process.sentinel, self._on_sentinel)

    @property
    def ident(self) -> str:
        return f"worker {self.worker_id} (pid {self.process.pid})"

    def _on_message(self) -> None:
        try:
            while self._conn.poll():
                self._dispatch(self._conn.recv())
        except (EOFError, OSError):
            self.loop.remove_reader(self._conn.fileno())

    def _on_sentinel(self) -> None:
        self.loop.remove_reader(self.process.sentinel)
        if not self._conn.closed:
            self._on_message()  # what it said before it went
            self.loop.remove_reader(self._conn.fileno())
            self._conn.close()
        self.process.join()
        self._exited(self.process.exitcode)

    def stop(self, restart: bool = False) -> None:
        """SIGTERM (SIGUSR2 for a replacement): graceful; asked twice, SIGKILL (both are idempotent)."""
        if self.state == "exited":
            return
        self.stop_requests += 1
        self.state = "stopping"
        if self.stop_requests > 1:
            sig = signal.SIGKILL
        else:
            sig = signal.SIGUSR2 if restart else signal.SIGTERM
        try:
            os.kill(self.process.pid, sig)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        if self.state != "exited":
            self.stop_requests += 1
            self.state = "stopping"
            self.process.kill()


# -- threads --------------------------------------------------------------------------------------


class ThreadWorker(Worker):
    def start(self) -> None:
        self.server = Server(self.config)
        self.worker_loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._main, name=f"polycorn-worker-{self.worker_id}", daemon=True)
        self.thread.start()

    @property
    def ident(self) -> str:
        return f"worker {self.worker_id} (thread {getattr(self, 'native_id', '?')})"

    def _post(self, message: tuple[Any, ...]) -> None:
        self.loop.call_soon_threadsafe(self._dispatch, message)

    def _main(self) -> None:
        self.native_id = threading.get_native_id()
        config = self.config
        code: int | None = 0
        try:
            if config.pin_cpus:
                pin_to_cpu(self.seat)
            hooks = _hooks(self.worker_id, self.slot, self.stats, config, self._post)

            async def serve() -> None:
                self.worker_loop = asyncio.get_running_loop()
                await self.server.serve(self.listen, hooks)

            eventloop.run(serve(), eventloop.loop_factory(config.loop))
        except PolycornError as exc:
            code = exc.exit_code
            self._post(("failed", exc.exit_code, str(exc)))
        except BaseException as exc:
            code = 1
            logger.exception("worker %d crashed", self.worker_id)
            self._post(("failed", 1, f"{type(exc).__name__}: {exc}"))
        finally:
            try:
                self.loop.call_soon_threadsafe(self._exited, code)
            except RuntimeError:
                pass  # the supervisor's loop is already closed

    def stop(self, restart: bool = False) -> None:
        if self.state == "exited":
            return
        self.stop_requests += 1
        self.state = "stopping"
        loop = self.worker_loop
        if loop is not None and not loop.is_closed():
            try:
                # request_exit twice = forced, as a second signal is for a process.
                loop.call_soon_threadsafe(self.server.request_exit, restart)
            except RuntimeError:
                pass
        else:
            self.server.request_exit(restart)  # not started yet: it will exit at once

    def kill(self) -> None:
        """A thread cannot be killed: force its shutdown, which happens once its loop runs again."""
        self.stop()
        if self.stop_requests < 2:
            self.stop()
