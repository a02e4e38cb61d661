"""Listening sockets: TCP or UNIX domain ones bound here, and checks for ones handed over.

Sockets handed over by file descriptor (--fd, systemd socket activation) are chosen by
:func:`polycorn.loops.activation.inherited`, which every server asks before binding.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from polycorn.config import Config
from polycorn.errors import BindError, PolycornError

_SERVED_FAMILIES = {socket.AF_INET, socket.AF_INET6} | ({socket.AF_UNIX} if hasattr(socket, "AF_UNIX") else set())


def bind(config: Config) -> socket.socket:
    """Create the listening socket --uds or --host/--port asks for, or raise BindError."""
    if config.uds is not None:
        return _bind_unix(config.uds, config.backlog, config.uds_mode)
    return _bind_tcp(config.host, config.port, config.backlog)


def adopt(fd: int, label: str, error: type[PolycornError]) -> socket.socket:
    """A socket object for a descriptor someone else opened, which must be a listening stream socket.

    Checked here, at start-up, so that a wrong descriptor is one clear line (``error``, led by
    ``label``) instead of a failure on the first accept.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise error(f"{label}: not a usable socket ({exc.strerror or exc})") from None
    problem = _not_listening(sock)
    if problem is not None:
        sock.detach()  # the descriptor is not ours to close
        raise error(f"{label}: {problem}")
    sock.setblocking(False)
    return sock


def _not_listening(sock: socket.socket) -> str | None:
    """Why an adopted socket cannot be served, or None."""
    if sock.family not in _SERVED_FAMILIES:
        return f"a socket of family {sock.family!r}; polycorn serves TCP and UNIX domain sockets"
    if sock.type != socket.SOCK_STREAM:
        kind = getattr(sock.type, "name", sock.type)
        return f"a {kind} socket, not a stream (TCP or UNIX stream) socket"
    accepting = getattr(socket, "SO_ACCEPTCONN", None)
    if accepting is not None:
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, accepting)
        except OSError:
            return None  # cannot tell on this platform: accept() will
        if not listening:
            return "not a listening socket (listen() was not called on it, or it is a connection)"
    return None


def _bind_tcp(host: str, port: int, backlog: int, *, reuse_port: bool = False) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise BindError(f"cannot listen on {shown}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _bind_unix(path: str, backlog: int, mode: int | None = None) -> socket.socket:
    """Bind and listen on ``path``; with ``mode`` (--uds-perms), the file has it before anyone can connect.

    The file is created under a umask at least as tight as both the process's and ``mode``, so it
    is never more open than asked, even for an instant, then chmod-ed to exactly ``mode`` (which
    also overrides a directory's default ACL), and only then does listen() let clients in.
    """
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        if mode is None:
            sock.bind(path)
        else:
            tight = 0o777 & ~mode
            umask = os.umask(tight)  # the only way to read it is to set it
            try:
                if umask | tight != tight:
                    os.umask(umask | tight)
                sock.bind(path)
            finally:
                os.umask(umask)
        bound = True
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise BindError(f"cannot listen on unix socket {path!r}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def describe(sock: socket.socket, config: Config | None = None) -> str:
    """The address users can connect to, with the real port when port 0 was asked for."""
    if sock.family == getattr(socket, "AF_UNIX", None):
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    scheme = "https" if config is not None and config.ssl_certfile is not None else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def bind_reuseport(host: str, port: int, backlog: int) -> socket.socket:
    """One of several listening sockets on the same address: the kernel spreads connections."""
    return _bind_tcp(host, port, backlog, reuse_port=True)
