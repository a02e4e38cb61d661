"""One event loop serving one app: bind, lifespan, serve, graceful shutdown on signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from polycorn.config import Config
from polycorn.config_file import read_env_file
from polycorn.importer import load_app
from polycorn.lifespan import Lifespan
from polycorn.logs import configure_logging
from polycorn.loops import activation, eventloop, sockets, startup
from polycorn.loops.acceptor import Acceptor
from polycorn.loops.allocator import HeapTrimmer, tune_malloc
from polycorn.loops.coordination import LoopCoordinator
from polycorn.service import HttpService
from polycorn.tls import server_tls

logger = logging.getLogger("polycorn.error")

_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def prepare_process(config: Config) -> None:
    """Process-wide set-up that must precede importing the app: .env file, logging, sys.path.

    --app-dir goes on sys.path here, once, before any worker thread imports: changing sys.path
    while another thread imports is racy (and trips coverage.py's import tracking).
    """
    app_dir = os.path.abspath(config.app_dir)
    if isinstance(config.app, str) and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    if config.env_file is not None:  # its variables replace the process environment's (the CLI applied them already)
        os.environ.update(read_env_file(config.env_file))
    # Worker processes run this too: only the process the user started warns about flags.
    configure_logging(config, announce=multiprocessing.parent_process() is None)


@dataclass
class WorkerHooks:
    """How a supervised worker talks to its supervisor; a lone server has none."""

    worker_id: int
    on_ready: Callable[[], None]
    #: --limit-max-requests reached: ask for a replacement instead of just exiting.
    on_recycle: Callable[[], None]
    coordinator: LoopCoordinator | None = None
    #: Shutdown began and the listeners are closed: this loop accepts no more connections.
    on_draining: Callable[[], None] | None = None


class Server:
    """Serve ``config.app`` on the running loop; ``serve()`` embeds in an existing loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = False
        self.bound: list[socket.socket] = []
        self.service: HttpService | None = None
        self.graceful = True
        self._exit: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._exit_requested = False
        self._restart = False  # the exit is a replacement (SIGUSR2 to a worker): WebSockets get 1012
        self._listeners: list[Any] = []
        self._bound_here = False  # bound by this server: shut down and unlinked at exit (not handed-over ones)
        self._accepting_wanted = False
        self._background: asyncio.Task[None] | None = None  # a pending accept start/stop

    def run(self, sockets: list[socket.socket] | None = None, hooks: WorkerHooks | None = None) -> None:
        """Blocking entry point: choose the loop, serve until SIGINT/SIGTERM."""
        eventloop.run(self.serve(sockets, hooks), eventloop.loop_factory(self.config.loop))

    async def serve(self, listen: list[socket.socket] | None = None, hooks: WorkerHooks | None = None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        self._force = asyncio.Event()
        if self._exit_requested:
            self._exit.set()
        tls = server_tls(config)  # unreadable certificates stop the server before the app is imported
        tune_malloc(config.malloc_trim_threshold)  # process-wide; each worker process sets it
        app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
        if listen is None:
            handed = activation.inherited(config)  # systemd socket activation or --fd
            self.bound = handed if handed is not None else [sockets.bind(config)]
            self._bound_here = handed is None
        else:
            self.bound = listen
        lifespan = Lifespan(app, config.lifespan)
        try:
            await lifespan.startup()
        except BaseException:
            self._close_sockets(listen is None)
            raise
        max_requests = config.limit_max_requests
        if max_requests and config.limit_max_requests_jitter:
            max_requests += random.randint(0, config.limit_max_requests_jitter)
        service = self.service = HttpService(
            config,
            app,
            loop,
            lifespan.state,
            on_max_requests=hooks.on_recycle if hooks is not None else self.request_exit,
            max_requests=max_requests,
            tls=tls,
            worker_id=hooks.worker_id if hooks is not None else 0,
        )
        await self._accept(True)
        if not service.reject and config.limit_concurrency:
            service.on_saturation = lambda full: self._set_accepting(not full)
        coordinator = hooks.coordinator if hooks is not None else None
        if coordinator is not None:
            coordinator.attach(service, loop)
        installed = self._install_signals(loop, worker=hooks is not None)
        self.started = True
        if hooks is not None:
            hooks.on_ready()
            logger.info(
                "worker %d ready: pid %d, %s, %s parser",
                hooks.worker_id,
                os.getpid(),
                eventloop.loop_name(loop),
                service.parser_class.name,
            )
        else:
            self._log_started(loop, service)
        trimmer = HeapTrimmer(loop, config.malloc_trim_interval)
        trimmer.start()
        try:
            await self._exit.wait()
        finally:
            logger.info("shutting down")
            trimmer.stop()
            self._accepting_wanted = False
            for srv in self._listeners:
                srv.close()
            self._listeners = []
            if self._bound_here:
                # New connections are refused from now on instead of waiting in the backlog of a
                # socket nobody will accept from again (and being reset when it closes). A socket
                # handed over outlives us: what queues on it is for the next server.
                for sock in self.bound:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            if hooks is not None and hooks.on_draining is not None:
                hooks.on_draining()
            shutdown = loop.create_task(service.shutdown(config.timeout_graceful_shutdown, self._restart))
            force = loop.create_task(self._force.wait())
            await asyncio.wait((shutdown, force), return_when=asyncio.FIRST_COMPLETED)
            if not shutdown.done():
                logger.warning("second signal: forcing exit, in-flight requests are cancelled")
                service.cancel_all()
                await asyncio.wait((shutdown,), timeout=5)
                self.graceful = False
            else:
                self.graceful = shutdown.result()
            force.cancel()
            if coordinator is not None:
                coordinator.detach()
            if not self._force.is_set():
                await lifespan.shutdown()
            self._remove_signals(loop, installed)
            self._close_sockets(listen is None)
            self.started = False
            logger.info("finished server process %d", os.getpid())

    def _log_started(self, loop: asyncio.AbstractEventLoop, service: HttpService) -> None:
        startup.log_startup(self.config, eventloop.loop_name(loop), service.parser_class.name, "1, in this process")
        for sock in self.bound:
            logger.info("listening on %s (press CTRL+C to quit)", sockets.describe(sock, self.config))

    async def _accept(self, on: bool) -> None:
        """Start or stop accepting on every listening socket.

        Stopping leaves the listening socket, and the connections queued in its backlog, alone:
        a uvloop server gets a duplicate of the socket to close; on a selector loop an
        :class:`Acceptor` just stops watching it.
        """
        assert self.service is not None
        if on and self._exit_requested:
            return  # a resume scheduled just before shutdown began
        self._accepting_wanted = on
        if on and not self._listeners:
            loop = asyncio.get_running_loop()
            factory = self.service.protocol_factory
            tls = self.service.tls
            ssl_options = tls.loop_options if tls is not None else {}
            for sock in self.bound:
                if isinstance(loop, asyncio.SelectorEventLoop):
                    self._listeners.append(Acceptor(loop, sock, factory, self.config.backlog, ssl_options))
                    continue
                srv = await loop.create_server(factory, sock=sock.dup(), backlog=self.config.backlog, **ssl_options)
                if not self._accepting_wanted or self._exit_requested:  # stopped while starting
                    srv.close()
                    break
                self._listeners.append(srv)
        elif not on:
            for srv in self._listeners:
                srv.close()
            self._listeners = []

    def _set_accepting(self, on: bool) -> None:
        """Backpressure (--limit-concurrency-mode queue): the kernel backlog holds new clients."""
        if self._exit_requested:
            return  # shutting down: accepting never resumes (serve() stops it)
        if self.started and self._accepting_wanted != on and self.service is not None and self.service.accepting:
            logger.debug("at --limit-concurrency: %s accepting", "resuming" if on else "pausing")
            self._accepting_wanted = on  # now, not when the task runs: a later decision wins
            task = asyncio.get_running_loop().create_task(self._accept(on))
            self._background = task  # keep a reference until it is done

    def request_exit(self, restart: bool = False) -> None:
        """Begin a graceful shutdown (thread-unsafe: call on the server's loop).

        ``restart``: a supervisor replaces this worker; the server itself goes on.
        """
        self._exit_requested = True
        self._restart = self._restart or restart
        if self._exit is not None:
            if self._exit.is_set():
                assert self._force is not None
                self._force.set()
            self._exit.set()

    def _close_sockets(self, owned: bool) -> None:
        for sock in self.bound:
            if owned:
                if self._bound_here and sock.family == getattr(socket, "AF_UNIX", None) and self.config.uds:
                    try:
                        os.unlink(self.config.uds)
                    except OSError:
                        pass
                sock.close()

    def _request_graceful_exit(self, restart: bool = False) -> None:
        """A worker process's SIGTERM: graceful, and idempotent.

        systemd (KillMode=control-group) and a terminal's CTRL+C signal every process of the group
        while the supervisor also stops each worker: a second SIGTERM must not force a worker that
        is draining. The supervisor forces a worker with SIGKILL instead.
        """
        if self._exit is None or not self._exit.is_set():
            self.request_exit(restart)

    def _install_signals(self, loop: asyncio.AbstractEventLoop, worker: bool = False) -> list[Any]:
        if threading.current_thread() is not threading.main_thread():
            return []  # embedded in a thread: the embedding code decides when to stop
        installed: list[Any] = []
        if worker:
            # SIGINT is the terminal's CTRL+C, for the supervisor to handle (it then stops us).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            loop.add_signal_handler(signal.SIGTERM, self._request_graceful_exit)
            # SIGUSR2 from the supervisor: this worker is being replaced (rolling restart, recycle).
            loop.add_signal_handler(signal.SIGUSR2, self._request_graceful_exit, True)
            return [signal.SIGTERM, signal.SIGUSR2]
        for sig in _EXIT_SIGNALS:
            try:
                loop.add_signal_handler(sig, self.request_exit)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.request_exit))
        return installed

    def _remove_signals(self, loop: asyncio.AbstractEventLoop, installed: list[Any]) -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
