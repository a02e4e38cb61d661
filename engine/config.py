"""The one option table.

Every option is declared exactly once, as a field of :class:`Config` with its CLI flag, help text
and bounds in the field metadata. The click command, the settings reference in docs/ and the
validation all read these fields, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from polycorn.errors import ConfigError
from polycorn.log_format import compile_access_format

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    kind: str = "value",
    choices: Sequence[str] | None = None,
    minimum: float | None = None,
    metavar: str | None = None,
    group: str = "server",
    envvar: str | None = None,
    secret: bool = False,
) -> Any:
    """Declare one option: a dataclass field whose metadata feeds the CLI and the docs.

    ``kind`` is ``value`` (typed by the default or ``metavar``), ``bool`` (``--x/--no-x``),
    ``flag`` (a plain on switch), ``choice`` or ``multi`` (repeatable). A ``secret`` stays out of
    the config's repr, which logs and tracebacks may show.
    """
    meta = {
        "help": help,
        "flag": flag,
        "kind": kind,
        "choices": tuple(choices) if choices else None,
        "minimum": minimum,
        "metavar": metavar,
        "group": group,
        "envvar": envvar,
        "secret": secret,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in Config")
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True)
class Config:
    """Validated, immutable, picklable server configuration (when ``app`` is an import string)."""

    app: Any = field(default="polycorn.demo:app", metadata={"help": "ASGI app", "kind": "app"})

    # --- sockets -------------------------------------------------------------------------
    host: str = option("127.0.0.1", "Bind socket to this host.", group="socket")
    port: int = option(8000, "Bind socket to this port; 0 picks a free port.", minimum=0, group="socket")
    uds: str | None = option(None, "Bind to a UNIX domain socket at this path.", metavar="PATH", group="socket")
    fd: int | None = option(
        None, "Serve on an already-open listening socket file descriptor.", metavar="INT", minimum=0, group="socket"
    )
    uds_perms: str | None = option(
        None,
        "Octal permissions of the --uds socket file, e.g. 660 (default: as the umask leaves them).",
        metavar="MODE",
        group="socket",
    )
    backlog: int = option(
        2048, "Maximum number of connections waiting in the kernel accept queue.", minimum=1, group="socket"
    )

    # --- TLS -------------------------------------------------------------------------------
    ssl_certfile: str | None = option(
        None,
        "Serve HTTPS: the server's PEM certificate file (its chain may follow; so may the key).",
        metavar="PATH",
        group="tls",
    )
    ssl_keyfile: str | None = option(
        None, "PEM private key of --ssl-certfile, when it is not in that file.", metavar="PATH", group="tls"
    )
    ssl_keyfile_password: str | None = option(
        None,
        "Password of an encrypted private key (the environment variable keeps it out of the process list).",
        metavar="TEXT",
        group="tls",
        envvar="POLYCORN_SSL_KEYFILE_PASSWORD",
        secret=True,
    )
    ssl_cert_reqs: str = option(
        "none",
        "Client certificates: 'none' asks for none, 'optional' checks one if sent, 'required' refuses "
        "clients without one (uvicorn's 0, 1, 2 work too).",
        metavar="none|optional|required",
        group="tls",
    )
    ssl_ca_certs: str | None = option(
        None,
        "PEM file (or directory) of the CA certificates client certificates must chain to.",
        metavar="PATH",
        group="tls",
    )
    ssl_ciphers: str | None = option(
        None,
        "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's); default: Python's secure list.",
        metavar="TEXT",
        group="tls",
    )
    ssl_min_version: Literal["TLSv1.2", "TLSv1.3"] = option(
        "TLSv1.2", "Oldest TLS version accepted.", kind="choice", choices=("TLSv1.2", "TLSv1.3"), group="tls"
    )
    ssl_handshake_timeout: float = option(
        10.0, "Seconds a client has to complete the TLS handshake.", minimum=0.1, group="tls"
    )

    # --- workers ---------------------------------------------------------------------------
    workers: int | str = option(
        1,
        "Number of event loops (workers), or 'auto' for one per CPU this process may run on.",
        metavar="N|auto",
        group="workers",
        envvar="WEB_CONCURRENCY",
    )
    worker_mode: Literal["auto", "process", "thread"] = option(
        "auto",
        "Run workers as processes or threads; 'auto' picks threads only when the GIL is off.",
        kind="choice",
        choices=("auto", "process", "thread"),
        group="workers",
    )
    reuse_port: bool = option(
        True,
        "One SO_REUSEPORT listening socket per worker (Linux); otherwise one shared socket.",
        kind="bool",
        group="workers",
    )
    pin_cpus: bool = option(False, "Pin worker i to CPU i (Linux sched_setaffinity).", kind="flag", group="workers")
    timeout_worker_healthcheck: float = option(
        10.0,
        "Replace a worker whose event loop has been blocked this many seconds (0 disables).",
        minimum=0,
        group="workers",
    )
    reload: bool = option(
        False, "Restart the workers when code changes (needs watchfiles).", kind="flag", group="workers"
    )
    reload_dirs: tuple[str, ...] = option(
        (),
        "Directory to watch with --reload (repeatable; default: --app-dir).",
        flag="--reload-dir",
        kind="multi",
        metavar="DIR",
        group="workers",
    )
    reload_includes: tuple[str, ...] = option(
        (),
        "Glob of files whose change triggers a reload (repeatable; default: *.py).",
        flag="--reload-include",
        kind="multi",
        metavar="GLOB",
        group="workers",
    )
    reload_excludes: tuple[str, ...] = option(
        (),
        "Glob of files to ignore with --reload (repeatable; default: .* and *~ files).",
        flag="--reload-exclude",
        kind="multi",
        metavar="GLOB",
        group="workers",
    )

    # --- implementation --------------------------------------------------------------------
    loop: Literal["auto", "uvloop", "asyncio"] = option(
        "auto",
        "Event loop: uvloop where installed, asyncio otherwise.",
        kind="choice",
        choices=("auto", "uvloop", "asyncio"),
        group="implementation",
    )
    http: Literal["auto", "httptools", "h11"] = option(
        "auto",
        "HTTP/1.1 parser: httptools where installed, h11 otherwise.",
        kind="choice",
        choices=("auto", "httptools", "h11"),
        group="implementation",
    )
    ws: Literal["auto", "websockets", "none"] = option(
        "auto",
        "WebSocket support: the websockets library's sans-I/O protocol where installed; 'none' serves upgrade requests as plain HTTP.",
        kind="choice",
        choices=("auto", "websockets", "none"),
        group="websockets",
    )
    ws_max_size: int = option(
        16 * 1024 * 1024,
        "Largest incoming WebSocket message in bytes, after decompression (close 1009 beyond).",
        minimum=1,
        group="websockets",
    )
    ws_max_queue: int = option(
        32, "Incoming WebSocket messages queued for the app before reading pauses.", minimum=1, group="websockets"
    )
    ws_ping_interval: float = option(
        20.0, "Seconds between keep-alive pings on an open WebSocket; 0 sends none.", minimum=0, group="websockets"
    )
    ws_ping_timeout: float = option(
        20.0,
        "Seconds to wait for the pong before closing the WebSocket (1011); 0 waits forever.",
        minimum=0,
        group="websockets",
    )
    ws_per_message_deflate: bool = option(
        True, "Offer permessage-deflate compression (RFC 7692) to WebSocket clients.", kind="bool", group="websockets"
    )
    ws_open_timeout: float = option(
        10.0,
        "Seconds the app has to accept or deny a WebSocket handshake (503 after); 0 waits forever.",
        minimum=0,
        group="websockets",
    )
    ws_close_timeout: float = option(
        10.0,
        "Seconds to wait for the client's close frame before dropping the connection; 0 waits forever.",
        minimum=0,
        group="websockets",
    )
    malloc_trim_threshold: int = option(
        4 * 1024 * 1024,
        "glibc only: free heap memory kept for reuse instead of being returned to the OS at once "
        "(bytes; 0 leaves glibc's own setting). Without it, every request body or response of tens "
        "of KiB can make the heap shrink and grow again.",
        minimum=0,
        group="implementation",
    )
    malloc_trim_interval: float = option(
        1.0,
        "glibc only: seconds between returns of the heap's free memory to the OS, so that what "
        "--malloc-trim-threshold kept for a burst does not stay resident after it; 0 never.",
        minimum=0,
        group="implementation",
    )
    lifespan: Literal["auto", "on", "off"] = option(
        "auto",
        "Lifespan protocol: 'auto' runs it if the app supports it, 'on' requires it.",
        kind="choice",
        choices=("auto", "on", "off"),
        group="implementation",
    )

    # --- application -----------------------------------------------------------------------
    factory: bool = option(
        False, "Treat APP as a zero-argument factory that returns the ASGI app.", kind="flag", group="application"
    )
    app_dir: str = option(
        ".", "Directory put first on sys.path before importing APP.", metavar="DIR", group="application"
    )
    env_file: str | None = option(
        None,
        "Load environment variables from this .env file (needs python-dotenv); POLYCORN_* ones in it "
        "configure Polycorn too.",
        metavar="PATH",
        group="application",
    )
    root_path: str = option(
        "", "ASGI root_path for an app mounted below a path prefix (behind a proxy).", group="application"
    )

    # --- logging ---------------------------------------------------------------------------
    log_config: str | None = option(
        None,
        "Logging configuration file: .json or .yaml (dictConfig) or .ini (fileConfig).",
        metavar="PATH",
        group="logging",
    )
    log_level: str = option("info", "Log level.", kind="choice", choices=LOG_LEVELS, group="logging")
    access_log: bool = option(
        True, "Log one line per request to the polycorn.access logger.", kind="bool", group="logging"
    )
    access_log_format: str | None = option(
        None,
        "Access log line with {field} placeholders: client, method, path, query, status, bytes, "
        "duration_ms, user_agent, referer, request_id, worker_id, http_version, target "
        "(default: '{client} - \"{method} {target} HTTP/{http_version}\" {status} {bytes} {duration_ms}ms').",
        metavar="TEXT",
        group="logging",
    )
    log_format: Literal["text", "json"] = option(
        "text",
        "Log records as text lines, or as one JSON object per line (access fields as keys).",
        kind="choice",
        choices=("text", "json"),
        group="logging",
    )
    use_colors: bool | None = option(
        None,
        "Colour text logs (default: only when the stream is a terminal).",
        kind="bool",
        group="logging",
    )

    # --- metrics ---------------------------------------------------------------------------
    metrics_port: int | None = option(
        None,
        "Serve Prometheus metrics of the whole server at /metrics on this port (off by default).",
        metavar="INT",
        minimum=0,
        group="metrics",
    )
    metrics_host: str = option("127.0.0.1", "Address the --metrics-port endpoint binds to.", group="metrics")

    # --- proxies ---------------------------------------------------------------------------
    proxy_headers: bool = option(
        True,
        "Take the client address and scheme from X-Forwarded-For/X-Forwarded-Proto and Forwarded "
        "(RFC 7239) sent by --forwarded-allow-ips peers.",
        kind="bool",
        group="proxy",
    )
    forwarded_allow_ips: str = option(
        "127.0.0.1",
        "Comma-separated IPs or CIDRs whose proxy headers are trusted; 'unix' trusts UNIX socket "
        "peers, '*' every peer.",
        group="proxy",
        envvar="FORWARDED_ALLOW_IPS",
    )
    forwarded_host: bool = option(
        False,
        "Let a trusted proxy's X-Forwarded-Host (or Forwarded host=) replace the request's Host header.",
        kind="bool",
        group="proxy",
    )

    # --- limits ----------------------------------------------------------------------------
    limit_concurrency: int | None = option(
        None, "Maximum requests in flight on the whole server (all workers).", metavar="INT", minimum=1, group="limits"
    )
    limit_concurrency_mode: Literal["queue", "reject"] = option(
        "queue",
        "At --limit-concurrency: 'queue' stops accepting and reading until a slot frees, 'reject' answers 503.",
        kind="choice",
        choices=("queue", "reject"),
        group="limits",
    )
    limit_max_requests: int | None = option(
        None, "Recycle a worker after it has served this many requests.", metavar="INT", minimum=1, group="limits"
    )
    limit_max_requests_jitter: int = option(
        0,
        "Add a random 0..N to each worker's --limit-max-requests so workers do not recycle together.",
        minimum=0,
        group="limits",
    )
    limit_request_line: int = option(
        8190, "Maximum bytes in the request line (414 beyond).", minimum=64, group="limits"
    )
    limit_request_fields: int = option(
        100, "Maximum number of request header fields (431 beyond).", minimum=1, group="limits"
    )
    limit_request_head: int = option(
        65536,
        "Maximum bytes of the whole request head: line and headers (431 beyond); a chunked body's trailer section too.",
        minimum=256,
        group="limits",
    )
    h11_max_incomplete_event_size: int | None = option(
        None,
        "h11 parser buffer bound in bytes; defaults to --limit-request-head.",
        metavar="INT",
        minimum=256,
        group="limits",
    )
    read_high_water: int = option(
        65536, "Request body bytes buffered per request before reading pauses.", minimum=1024, group="limits"
    )
    write_high_water: int = option(
        65536, "Transport write-buffer bytes above which the app's send() waits.", minimum=1024, group="limits"
    )

    # --- timeouts --------------------------------------------------------------------------
    timeout_keep_alive: float = option(
        5.0, "Close idle keep-alive connections after this many seconds.", minimum=0, group="timeouts"
    )
    timeout_request_header: float = option(
        10.0,
        "Seconds from the first byte of a request to the end of its head (408 and close beyond; "
        "against slowloris); 0 waits forever.",
        minimum=0,
        group="timeouts",
    )
    timeout_request_body: float = option(
        30.0,
        "Seconds the client may stay silent while the app waits for request body bytes (408 and "
        "close beyond); 0 waits forever.",
        minimum=0,
        group="timeouts",
    )
    timeout_graceful_shutdown: float = option(
        30.0,
        "Seconds to let in-flight requests finish on shutdown before cancelling them.",
        minimum=0,
        group="timeouts",
    )

    # --- response headers ------------------------------------------------------------------
    server_header: bool = option(True, "Send a 'server: polycorn' header.", kind="bool", group="headers")
    date_header: bool = option(True, "Send a 'date' header.", kind="bool", group="headers")
    headers: tuple[tuple[str, str], ...] = option(
        (),
        "Default response header 'Name:Value' (repeatable).",
        flag="--header",
        kind="multi",
        metavar="NAME:VALUE",
        group="headers",
    )

    def __post_init__(self) -> None:
        if isinstance(self.log_level, str):
            object.__setattr__(self, "log_level", self.log_level.lower())
        for f in dataclasses.fields(self):
            meta = f.metadata
            value = getattr(self, f.name)
            flag = cli_flag(f)
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{flag}: {value!r} is not one of {', '.join(meta['choices'])}")
            minimum = meta.get("minimum")
            if minimum is not None and value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{flag}: expected a number, got {value!r}")
                if value < minimum:
                    raise ConfigError(f"{flag}: must be at least {minimum}, got {value}")
        workers = self.workers
        if isinstance(workers, str) and workers != "auto":
            if not workers.isdigit():
                raise ConfigError(f"--workers: expected a number or 'auto', got {workers!r}")
            workers = int(workers)
        if isinstance(workers, bool) or (isinstance(workers, int) and workers < 1):
            raise ConfigError(f"--workers: must be at least 1, got {workers!r}")
        object.__setattr__(self, "workers", workers)
        if (self.reload_dirs or self.reload_includes or self.reload_excludes) and not self.reload:
            raise ConfigError("--reload-dir/--reload-include/--reload-exclude need --reload")
        for name in ("reload_dirs", "reload_includes", "reload_excludes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.port > 65535:
            raise ConfigError(f"--port: must be at most 65535, got {self.port}")
        if self.uds is not None and self.fd is not None:
            raise ConfigError("--uds and --fd cannot be used together")
        if not (isinstance(self.app, str) or callable(self.app)):
            raise ConfigError("app must be an import string 'module:attribute' or an ASGI callable")
        object.__setattr__(self, "headers", tuple(_parse_header(h) for h in self.headers))
        _ = self.forwarded_networks  # validate eagerly
        _ = self.uds_mode
        if self.access_log_format is not None:
            compile_access_format(self.access_log_format)  # a bad format fails here, before anything starts
        if self.metrics_port is not None and self.metrics_port > 65535:
            raise ConfigError(f"--metrics-port: must be at most 65535, got {self.metrics_port}")
        if self.root_path and not self.root_path.startswith("/"):
            raise ConfigError(f"--root-path: must start with '/', got {self.root_path!r}")
        _check_tls(self)

    def replace(self, **changes: Any) -> Config:
        """A new validated Config with some options changed."""
        return dataclasses.replace(self, **changes)

    @property
    def forwarded_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
        """Trusted proxy networks; ``None`` means every peer is trusted ('*')."""
        items = [s.strip() for s in self.forwarded_allow_ips.split(",") if s.strip()]
        if "*" in items:
            return None
        nets = []
        for item in items:
            if item.lower() == "unix":
                continue  # see forwarded_unix
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(
                    f"--forwarded-allow-ips: {item!r} is not an IP address or network, 'unix' or '*'"
                ) from None
        return tuple(nets)

    @property
    def uds_mode(self) -> int | None:
        """--uds-perms as a mode number (the flag is octal text, as chmod takes it)."""
        perms = self.uds_perms
        if perms is None:
            return None
        if isinstance(perms, int) and not isinstance(perms, bool):
            perms = format(perms, "o")
        text = str(perms).strip()
        if text[:2].lower() == "0o":
            text = text[2:]
        if not text or any(c not in "01234567" for c in text) or int(text, 8) > 0o777:
            raise ConfigError(f"--uds-perms: expected octal permissions such as 660, got {self.uds_perms!r}")
        if self.uds is None:
            raise ConfigError("--uds-perms: only used with --uds")
        return int(text, 8)

    @property
    def forwarded_unix(self) -> bool:
        """Whether peers on a UNIX domain socket are trusted ('unix' or '*'): they have no address."""
        items = {s.strip().lower() for s in self.forwarded_allow_ips.split(",")}
        return "unix" in items or "*" in items

    @property
    def head_limit_h11(self) -> int:
        return self.h11_max_incomplete_event_size or self.limit_request_head


#: --ssl-cert-reqs spellings: the names, and uvicorn's numbers (ssl.CERT_NONE, _OPTIONAL, _REQUIRED).
_CERT_REQS = {
    "none": "none",
    "optional": "optional",
    "required": "required",
    "0": "none",
    "1": "optional",
    "2": "required",
}


def _check_tls(config: Config) -> None:
    """TLS options need --ssl-certfile, their files must exist, and client checks need a CA."""
    reqs: Any = config.ssl_cert_reqs
    key = str(int(reqs)) if isinstance(reqs, int) and not isinstance(reqs, bool) else str(reqs).strip().lower()
    if key not in _CERT_REQS:
        raise ConfigError(f"--ssl-cert-reqs: expected none, optional or required (or 0, 1, 2), got {reqs!r}")
    object.__setattr__(config, "ssl_cert_reqs", _CERT_REQS[key])
    if config.ssl_certfile is None:
        given = [
            cli_flag(f)
            for f in option_fields()
            if f.metadata["group"] == "tls" and getattr(config, f.name) != f.default
        ]
        if given:
            raise ConfigError(f"{', '.join(given)}: only used with --ssl-certfile")
        return
    for flag, path in (("--ssl-certfile", config.ssl_certfile), ("--ssl-keyfile", config.ssl_keyfile)):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{flag}: no such file {path!r}")
    if config.ssl_ca_certs is not None and not os.path.exists(config.ssl_ca_certs):
        raise ConfigError(f"--ssl-ca-certs: no such file or directory {config.ssl_ca_certs!r}")
    if config.ssl_cert_reqs != "none" and config.ssl_ca_certs is None:
        raise ConfigError(
            f"--ssl-cert-reqs {config.ssl_cert_reqs}: needs --ssl-ca-certs, the CAs that sign client certificates"
        )
    if config.ssl_ca_certs is not None and config.ssl_cert_reqs == "none":
        # Not silently ignored: whoever gives a CA expects client certificates to be checked.
        raise ConfigError(
            "--ssl-ca-certs: client certificates are only checked with --ssl-cert-reqs optional or required"
        )


def _parse_header(item: Any) -> tuple[str, str]:
    if isinstance(item, str):
        name, sep, value = item.partition(":")
        if not sep:
            raise ConfigError(f"--header: expected 'Name:Value', got {item!r}")
    else:
        name, value = item
    name, value = name.strip(), value.strip()
    if not _HEADER_NAME.match(name):
        raise ConfigError(f"--header: {name!r} is not a valid header name")
    if _HEADER_VALUE_BAD.search(value):
        raise ConfigError(f"--header: the value of {name!r} contains control characters")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(f"--header: the value of {name!r} is not latin-1 text") from None
    return name, value


def cli_flag(f: dataclasses.Field[Any]) -> str:
    """The long CLI flag of an option field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def envvar_name(field_name: str) -> str:
    """The environment variable every option reads: ``POLYCORN_`` and the keyword in capitals."""
    return "POLYCORN_" + field_name.upper()


def envvars(f: dataclasses.Field[Any]) -> list[str]:
    """An option's environment variables, in the order click tries them (the first set one wins)."""
    names = [envvar_name(f.name)]
    extra = f.metadata.get("envvar")
    if extra and extra not in names:
        names.append(extra)
    return names


def option_fields() -> list[dataclasses.Field[Any]]:
    """The option fields in declaration order (``app`` excluded)."""
    return [f for f in dataclasses.fields(Config) if f.metadata.get("kind") != "app"]
