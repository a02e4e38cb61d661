"""Listening sockets handed over by whoever started the server: systemd socket activation, or --fd.

With socket activation (a ``.socket`` unit) systemd creates and listens on the sockets itself and
starts the service with them as file descriptors 3, 4, ... and ``LISTEN_PID``, ``LISTEN_FDS``
and ``LISTEN_FDNAMES`` in its environment (the protocol of sd_listen_fds(3)). Such sockets
belong to the one who handed them over and outlive this process: polycorn never shuts them down
or removes their file, so connections that arrive while no server runs (a restart) wait in the
kernel's backlog for the next one instead of being refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import MutableMapping

from polycorn.config import Config
from polycorn.errors import BindError, ConfigError
from polycorn.loops import sockets

logger = logging.getLogger("polycorn.error")

#: The first descriptor systemd passes (SD_LISTEN_FDS_START): after stdin, stdout and stderr.
LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def inherited(config: Config) -> list[socket.socket] | None:
    """The sockets to serve on that this process was given, or None if it must bind its own.

    systemd's sockets win over --host/--port/--uds/--fd (a warning names the ignored flags): the
    socket unit is where the deployment says where to listen. --backlog applies to them too. Call
    once per server, in the process systemd started (the supervisor, or the lone server): it
    consumes the environment variables.
    """
    passed = passed_fds()
    if passed:
        handed = _activated(config, passed)
    elif config.fd is not None:
        handed = [sockets.adopt(config.fd, f"--fd {config.fd}", BindError)]
    else:
        return None
    for sock in handed:
        # uvloop's listener calls listen(--backlog) on the socket anyway: the same on every loop.
        sock.listen(config.backlog)
    return handed


def passed_fds(environ: MutableMapping[str, str] | None = None) -> list[tuple[int, str]]:
    """``(fd, name)`` of each socket systemd passed to this very process; empty when none were.

    The variables are removed whatever they hold, as sd_listen_fds(3) does, so that neither the
    app nor a process it starts (which inherits the environment) takes them as its own.
    """
    env = os.environ if environ is None else environ
    pid_text, count_text, names_text = (env.pop(name, None) for name in _VARIABLES)
    if pid_text is None or count_text is None:
        return []
    try:
        pid = int(pid_text)
    except ValueError:
        logger.warning("ignoring LISTEN_PID=%r: not a process id; binding as usual", pid_text)
        return []
    if pid != os.getpid():
        logger.warning(
            "ignoring LISTEN_FDS: LISTEN_PID=%d is another process (a wrapper that forks instead of "
            "exec-ing polycorn?); binding as usual",
            pid,
        )
        return []
    try:
        count = int(count_text)
    except ValueError:
        count = -1
    if count < 0:
        raise ConfigError(f"LISTEN_FDS: expected a number of file descriptors, got {count_text!r}")
    names = names_text.split(":") if names_text else []
    if len(names) != count:
        names = [""] * count  # sd_listen_fds_with_names() ignores names that do not match either
    return [(LISTEN_FDS_START + i, names[i]) for i in range(count)]


def _activated(config: Config, passed: list[tuple[int, str]]) -> list[socket.socket]:
    adopted: list[socket.socket] = []
    try:
        for fd, name in passed:
            label = f"systemd socket activation: fd {fd}" + (f" ({name})" if name else "")
            sock = sockets.adopt(fd, label, ConfigError)
            os.set_inheritable(fd, False)  # a process the app starts must not hold our listener open
            adopted.append(sock)
    except ConfigError:
        for sock in adopted:
            sock.detach()
        raise
    ignored = _ignored_flags(config, {fd for fd, _ in passed})
    if ignored:
        logger.warning("systemd socket activation: %s ignored; serving the sockets systemd passed", ", ".join(ignored))
    for sock, (fd, name) in zip(adopted, passed, strict=True):
        logger.info(
            "systemd socket activation: serving fd %d%s, %s",
            fd,
            f" ({name})" if name else "",
            sockets.describe(sock, config),
        )
    return adopted


def _ignored_flags(config: Config, fds: set[int]) -> list[str]:
    """The socket flags given with activation; ``--fd`` naming a passed descriptor agrees with it."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    ignored = [f"--{name}" for name in ("host", "port") if getattr(config, name) != defaults[name]]
    if config.uds is not None:
        ignored.append("--uds")
    if config.uds_perms is not None:
        ignored.append("--uds-perms (use SocketMode= in the socket unit)")
    if config.fd is not None and config.fd not in fds:
        ignored.append("--fd")
    return ignored
