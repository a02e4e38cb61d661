"""gunicorn worker classes: gunicorn's arbiter supervises the processes, Polycorn serves in each.

``gunicorn -k polycorn.workers.PolycornWorker module:app`` (or ``PolycornH11Worker``, the pure
Python asyncio + h11 stack; ``polycorn.workers`` hands gunicorn these classes). This is the only
module that imports gunicorn, and only gunicorn imports it: gunicorn is not a dependency of Polycorn.

The arbiter owns the listening sockets, the worker count, replacing workers and the timeouts; each
worker runs one :class:`polycorn.loops.server.Server` on those sockets. The worker's half of the
contract with the arbiter is kept here: a heartbeat from the event loop (so a blocked loop is killed
after ``--timeout``), exit when the arbiter goes away, gunicorn's meaning for each signal, and exit
codes the arbiter understands.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]
from gunicorn.workers.base import Worker  # type: ignore[import-untyped]

from polycorn.config import Config, option_fields
from polycorn.errors import AppLoadError, ConfigError, PolycornError
from polycorn.loops import eventloop
from polycorn.loops.server import Server, WorkerHooks
from polycorn.tls import server_tls

__all__ = ["PolycornH11Worker", "PolycornWorker", "polycorn_options"]

#: Polycorn options that gunicorn decides: a subclass's CONFIG_KWARGS may not set them (the
#: value names what to use instead). A setting that would silently do nothing is refused.
GUNICORN_OWNED = {
    "host": "gunicorn's --bind",
    "port": "gunicorn's --bind",
    "uds": "gunicorn's --bind unix:PATH",
    "fd": "gunicorn's --bind fd://N",
    "uds_perms": "gunicorn's --umask",
    "backlog": "gunicorn's --backlog",
    "workers": "gunicorn's --workers",
    "worker_mode": "gunicorn's process workers",
    "reuse_port": "gunicorn's --reuse-port",
    "pin_cpus": "a post_fork hook",
    "timeout_worker_healthcheck": "gunicorn's --timeout",
    "reload": "gunicorn's --reload",
    "reload_dirs": "gunicorn's --reload-extra-file",
    "reload_includes": "gunicorn's --reload-extra-file",
    "reload_excludes": "gunicorn's --reload",
    "app_dir": "gunicorn's --chdir or --pythonpath",
    "env_file": "gunicorn's --env",
    "log_config": "gunicorn's --log-config",
    "log_format": "gunicorn's logging settings",
    "use_colors": "gunicorn's logging settings",
    "metrics_port": "a metrics exporter of gunicorn's",
    "metrics_host": "a metrics exporter of gunicorn's",
    "limit_max_requests": "gunicorn's --max-requests",
    "limit_max_requests_jitter": "gunicorn's --max-requests-jitter",
}

#: gunicorn's header count when limit_request_fields is 0 ("unlimited") or larger.
_GUNICORN_MAX_HEADERS = 32768

#: gunicorn's log levels that Polycorn knows (Polycorn's "trace" has no gunicorn spelling).
_LEVELS = ("critical", "error", "warning", "info", "debug")


def polycorn_options(cfg: Any) -> dict[str, Any]:
    """Polycorn options equivalent to the gunicorn settings that have an equivalent.

    ``cfg`` is gunicorn's ``Config``. Settings that only newer gunicorn versions have
    (``root_path``, ``asgi_lifespan``) are read when present. ``limit_request_line`` is None for
    gunicorn's "unlimited": :meth:`PolycornWorker.polycorn_config` bounds it by the head limit.
    """
    if cfg.keyfile and not cfg.certfile:
        raise ConfigError("--keyfile: only used with --certfile")
    if str(getattr(cfg, "proxy_protocol", "off")).lower() not in ("off", "false", "none", ""):
        raise ConfigError("--proxy-protocol: the PROXY protocol is not supported by the Polycorn workers")
    allowed = cfg.forwarded_allow_ips
    if isinstance(allowed, str):
        allowed = allowed.split(",")
    allowed = [ip.strip() for ip in allowed if ip.strip()]
    line = cfg.limit_request_line
    fields = cfg.limit_request_fields
    level = str(cfg.loglevel).lower()
    options: dict[str, Any] = {
        "workers": 1,
        "log_level": level if level in _LEVELS else "info",
        "access_log": cfg.accesslog is not None,
        # The access line goes to gunicorn's handlers, which may write to a file: no ANSI colours.
        "use_colors": False,
        "timeout_keep_alive": float(cfg.keepalive),
        "timeout_graceful_shutdown": drain_seconds(cfg.graceful_timeout),
        # gunicorn reads 0 as "unlimited": the head limit still bounds the line.
        "limit_request_line": line if line > 0 else None,
        "limit_request_fields": fields if 0 < fields <= _GUNICORN_MAX_HEADERS else _GUNICORN_MAX_HEADERS,
        # gunicorn trusts every UNIX socket peer; Polycorn's name for them is 'unix'.
        "forwarded_allow_ips": ",".join([*allowed, "unix"]),
        # An empty secure_scheme_headers is gunicorn's way to believe no proxy header.
        "proxy_headers": bool(allowed) and bool(cfg.secure_scheme_headers),
        "root_path": getattr(cfg, "root_path", "") or "",
        "lifespan": getattr(cfg, "asgi_lifespan", "auto") or "auto",
    }
    if cfg.is_ssl:
        options["ssl_certfile"] = cfg.certfile
        options["ssl_keyfile"] = cfg.keyfile
        options["ssl_ciphers"] = cfg.ciphers
        options["ssl_cert_reqs"] = int(cfg.cert_reqs)
        if cfg.ca_certs and int(cfg.cert_reqs) != 0:
            # With cert_reqs 0, gunicorn loads the CAs but checks nothing: they mean nothing here either.
            options["ssl_ca_certs"] = cfg.ca_certs
    return options


def drain_seconds(graceful_timeout: float) -> float:
    """How long in-flight requests may run once a worker stops, within gunicorn's graceful_timeout.

    The arbiter kills a stopping worker when graceful_timeout is over: stopping to wait a second
    before (half of it when it is shorter than two) leaves the worker time to cancel what still
    runs and to run the app's lifespan shutdown.
    """
    grace = float(graceful_timeout)
    return max(0.0, grace - min(1.0, grace / 2))


class PolycornWorker(Worker):
    """A gunicorn worker that serves the ASGI app with Polycorn (uvloop and httptools where installed).

    Subclass it to set Polycorn options gunicorn has no setting for::

        class MyWorker(PolycornWorker):
            CONFIG_KWARGS = {**PolycornWorker.CONFIG_KWARGS, "ws_max_size": 1 << 20}
    """

    #: Polycorn options (``polycorn.Config`` field names) applied over those taken from
    #: gunicorn's settings; options gunicorn itself decides (GUNICORN_OWNED) are refused.
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server: Server | None = None
        self._stopping = False
        self._beat: asyncio.TimerHandle | None = None

    # -- configuration ------------------------------------------------------------------------
    @classmethod
    def polycorn_config(cls, cfg: Any, app: Any = None, max_requests: int | None = None) -> Config:
        """The worker's Polycorn configuration; raises ConfigError (one line) when it is invalid."""
        options = polycorn_options(cfg)
        names = {f.name for f in option_fields()}
        for name in cls.CONFIG_KWARGS:
            if name not in names:
                raise ConfigError(f"{cls.__name__}.CONFIG_KWARGS: {name!r} is not a Polycorn option")
            if name in GUNICORN_OWNED:
                raise ConfigError(
                    f"{cls.__name__}.CONFIG_KWARGS: {name!r} is gunicorn's to decide (use {GUNICORN_OWNED[name]})"
                )
        options.update(cls.CONFIG_KWARGS)
        if options["limit_request_line"] is None:
            options["limit_request_line"] = options.get("limit_request_head", Config.limit_request_head)
        if max_requests is not None and 0 < max_requests < sys.maxsize:  # gunicorn's "no limit" is sys.maxsize
            options["limit_max_requests"] = max_requests
        if app is not None:
            options["app"] = app
        return Config(**options)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Run by the arbiter before it starts workers: bad settings stop gunicorn with one line (exit 2)."""
        try:
            server_tls(cls.polycorn_config(cfg, max_requests=cfg.max_requests))  # certificates load, or not
        except ConfigError as exc:
            log.error("Error: %s", exc)
            sys.exit(exc.exit_code)
        if cfg.threads > 1:
            log.warning("%s runs one event loop per process: --threads is ignored", cls.__name__)
        if cfg.is_ssl and cfg.ca_certs and int(cfg.cert_reqs) == 0:
            log.warning("--ca-certs is ignored: client certificates are only checked with --cert-reqs 1 or 2")

    # -- gunicorn's Worker interface ----------------------------------------------------------
    def run(self) -> None:
        """Serve until told to stop; a start-up failure exits with a code that halts the arbiter.

        Without that code the arbiter would boot a replacement, which fails the same way, forever.
        """
        try:
            config = self.polycorn_config(self.cfg, self.wsgi, self.max_requests)
            share_gunicorn_logs(self.log, config)
            eventloop.run(self._serve(config), eventloop.loop_factory(config.loop))
        except PolycornError as exc:
            self.log.error("Polycorn worker failed to start: %s", exc)
            sys.exit(Arbiter.APP_LOAD_ERROR if isinstance(exc, AppLoadError) else Arbiter.WORKER_BOOT_ERROR)

    async def _serve(self, config: Config) -> None:
        loop = asyncio.get_running_loop()
        server = self.server = Server(config)
        self._take_signals(loop)  # covers the lifespan start-up; Server.serve installs its own after
        if not self.alive:  # SIGTERM while the app was being imported
            self._stop()
        hooks = WorkerHooks(worker_id=self.age, on_ready=self._on_ready, on_recycle=self._on_recycle)
        self._heartbeat()
        try:
            await server.serve([s.sock for s in self.sockets], hooks)
        finally:
            if self._beat is not None:
                self._beat.cancel()
            # Done serving: a late SIGTERM (systemd signals the whole group, and the arbiter too)
            # has nothing left to stop, and must not turn a clean exit into death by signal.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _on_ready(self) -> None:
        # Server.serve has just installed a supervised worker's signal handlers (SIGINT ignored,
        # SIGUSR2 a graceful restart): gunicorn's meanings replace them.
        self._take_signals(asyncio.get_running_loop())

    def _on_recycle(self) -> None:
        """max_requests reached: stop gracefully; the arbiter starts the replacement."""
        self._stop(restart=True)

    # -- heartbeat ------------------------------------------------------------------------------
    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: well within the arbiter's timeout, and at most one.

        ``self.timeout`` is half of gunicorn's --timeout (the arbiter passes it so); 0 disables
        the timeout, but the arbiter still has to be watched.
        """
        return min(1.0, self.timeout / 2) if self.timeout else 1.0

    def _heartbeat(self) -> None:
        """Tell the arbiter the loop runs; leave when it is gone or has asked this worker to go."""
        self.notify()
        if not self._stopping:
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self._stop()
            elif not self.alive:  # gunicorn's code reload (--reload) or a hook ended this worker
                self._stop()
        self._beat = asyncio.get_running_loop().call_later(self.heartbeat_interval, self._heartbeat)

    # -- signals ----------------------------------------------------------------------------------
    def _take_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """gunicorn's signal meanings, through the event loop.

        gunicorn's own handlers (Worker.init_signals) serve while the app is imported; they are
        plain Python handlers, which a loop waiting for I/O would not run in time. SIGABRT, the
        arbiter's timeout, keeps gunicorn's handler for that very reason: it runs inside the
        Python code that blocks the loop and raises SystemExit there (its traceback shows where).
        """
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        loop.add_signal_handler(signal.SIGINT, self._quit)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        loop.add_signal_handler(signal.SIGWINCH, self.log.debug, "worker: SIGWINCH ignored.")
        loop.remove_signal_handler(signal.SIGUSR2)  # gunicorn never sends it to a worker: the default applies

    def _stop(self, restart: bool = False) -> None:
        """Graceful stop (SIGTERM, max_requests, the arbiter gone): in-flight requests finish.

        Idempotent: the arbiter signals a stopping worker again (SIGTERM on every pass while
        there are more workers than wanted), which must not cut its drain short.
        """
        self.alive = False
        if not self._stopping and self.server is not None:
            self._stopping = True
            self.server.request_exit(restart)

    def _quit(self) -> None:
        """SIGINT or SIGQUIT: quick exit. In-flight requests are cancelled, no lifespan shutdown."""
        self.alive = False
        self.cfg.worker_int(self)
        if self.server is not None:
            if not self._stopping:
                self._stopping = True
                self.server.request_exit()
            self.server.request_exit()  # a second request forces the exit


class PolycornH11Worker(PolycornWorker):
    """The same worker on the pure Python stack: asyncio's event loop and the h11 parser."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "asyncio", "http": "h11"}


def share_gunicorn_logs(glog: Any, config: Config) -> None:
    """Polycorn's log records go to gunicorn's handlers: its files, formats, syslog, USR1 reopening.

    Loggers that a gunicorn logging configuration gave handlers of their own are left as they are.
    """
    error_log = getattr(glog, "error_log", None)
    access_log = getattr(glog, "access_log", None)
    root = logging.getLogger("polycorn")
    level = getattr(logging, config.log_level.upper(), logging.INFO)
    if error_log is not None and not root.handlers:
        root.handlers = list(error_log.handlers)
        root.propagate = False
    root.setLevel(level)
    logging.getLogger("polycorn.error").setLevel(level)
    access = logging.getLogger("polycorn.access")
    if access_log is not None and config.access_log and not access.handlers:
        access.handlers = list(access_log.handlers)
        access.propagate = False
    access.setLevel(logging.INFO)
    access.disabled = not config.access_log
