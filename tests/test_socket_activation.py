"""systemd socket activation and --fd, with this test playing systemd.

The test binds and listens itself, then starts polycorn through a tiny launcher that puts the
sockets at descriptors 3, 4, ..., sets ``LISTEN_PID`` to its own pid (which polycorn keeps: the
launcher execs it) and execs ``python -m polycorn``, as systemd does for a ``.socket`` unit.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from polycorn.loops.activation import passed_fds
from tests.conftest import read_response, recv_all
from tests.fixture_apps.process import Child

#: Moves the sockets it is given to 3, 4, ... (through high numbers, so none overwrites another),
#: sets LISTEN_PID to its own pid when asked ("self"), and execs polycorn with the other arguments.
_LAUNCHER = """
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
if sys.argv[2] == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "polycorn", *sys.argv[3:]])
"""

#: An app that shows which LISTEN_* variables it can see.
_ENV_APP = """
import json, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    seen = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
"""

_REQUEST = b"GET / HTTP/1.1\r\nHost: polycorn\r\nConnection: close\r\n\r\n"
_HELLO = b"Hello, world!"


def launch(socks: list[Any], *args: str, listen_pid: str = "self", env: dict[str, str] | None = None) -> Child:
    """Start polycorn with ``socks`` (sockets or descriptors) as fds 3, 4, ...

    ``listen_pid``: "self" sets LISTEN_FDS and LISTEN_PID as systemd does, "none" neither of them
    (for --fd), anything else is put in LISTEN_PID as it is.
    """
    fds = [s if isinstance(s, int) else s.fileno() for s in socks]
    full_env = {} if listen_pid == "none" else {"LISTEN_FDS": str(len(fds))}
    full_env.update(env or {})
    if listen_pid not in ("self", "none"):
        full_env["LISTEN_PID"] = listen_pid
    argv = [sys.executable, "-c", _LAUNCHER, ",".join(map(str, fds)), listen_pid, *args]
    return Child(argv, env=full_env, pass_fds=tuple(fds))


def tcp_listener(backlog: int = 128) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    return lines[0]


def wait_until(condition: Any, what: str, timeout: float = 60.0, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child is not None and child.proc.poll() is not None:
            raise AssertionError(f"polycorn exited ({child.proc.returncode}) before {what}:\n{child.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """A short directory (AF_UNIX paths are limited to 107 bytes) with the env app in it."""
    directory = Path(tempfile.mkdtemp(prefix="pc-act-"))
    (directory / "listen_env_app.py").write_text(_ENV_APP)
    yield directory
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


# -- zero-downtime restart ---------------------------------------------------------------------------


class Clients:
    """Threads that each send one request per new connection, as fast as they are answered."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.ok = 0
        self.errors: list[str] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        assert not any(t.is_alive() for t in self._threads), "a client is stuck"

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic() - self._started
            try:
                assert get(self.port) == _HELLO
            except Exception as exc:  # every failure is reported, whatever it is
                with self._lock:
                    self.errors.append(
                        f"request sent at {sent:.2f}s, failed at {time.monotonic() - self._started:.2f}s: {exc!r}"
                    )
                time.sleep(0.05)
                continue
            with self._lock:
                self.ok += 1


def send(port: int) -> socket.socket:
    """Connect and send a request; the answer is read later (``answer``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(_REQUEST)
    return sock


def answer(sock: socket.socket) -> bytes:
    with sock:
        reply = recv_all(sock, 60)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    return reply.partition(b"\r\n\r\n")[2]


def get(port: int) -> bytes:
    return answer(send(port))


@pytest.mark.parametrize(
    ("how", "workers"),
    [("activation", "1"), ("activation", "2"), ("fd", "2")],
    ids=["activation-1-worker", "activation-2-workers", "fd-2-workers"],
)
def test_restart_loses_no_request(how: str, workers: str) -> None:
    """The socket outlives the server: what arrives between two servers waits in the backlog."""
    listener = tcp_listener()
    port = listener.getsockname()[1]
    args = ["polycorn.demo:app", "--workers", workers, "--no-access-log", "--timeout-graceful-shutdown", "20"]
    listen_pid = "self"
    env = {"LISTEN_FDNAMES": "web"}
    if how == "fd":
        args += ["--fd", "3"]
        listen_pid, env = "none", {}
    children: list[Child] = []
    try:
        with Clients(port) as clients:
            first = launch([listener], *args, listen_pid=listen_pid, env=env)
            children.append(first)
            if how == "activation":
                first.wait_for("systemd socket activation: serving fd 3 (web), http://127.0.0.1:", 60)
            wait_until(lambda: clients.ok >= 20, "requests served by the first server", child=first)

            assert first.stop(timeout=60) == 0, first.output
            # No server process exists now: these wait in the kernel's backlog.
            queued = [send(port) for _ in range(8)]

            second = launch([listener], *args, listen_pid=listen_pid, env=env)
            children.append(second)
            assert [answer(sock) for sock in queued] == [_HELLO] * 8
            served = clients.ok
            wait_until(lambda: clients.ok >= served + 20, "requests served by the second server", child=second)
        assert clients.errors == [], clients.errors[:5]
        assert second.stop(timeout=60) == 0, second.output
        if how == "fd":
            assert "socket activation" not in first.output + second.output
    finally:
        for child in children:
            child.kill()
        listener.close()


# -- what is served --------------------------------------------------------------------------------


def test_unix_socket_activation(tmp_dir: Path) -> None:
    """systemd's UNIX socket is served, its file kept at exit; --uds/--uds-perms give way to it."""
    path = str(tmp_dir / "act.sock")
    ignored = str(tmp_dir / "ignored.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    try:
        child = launch(
            [listener],
            "listen_env_app:app",
            "--app-dir",
            str(tmp_dir),
            "--uds",
            ignored,
            "--uds-perms",
            "600",
            "--forwarded-allow-ips",
            "unix",
        )
        try:
            assert child.listening(60) == f"unix:{path}"
            out = child.output
            assert f"systemd socket activation: serving fd 3, unix:{path}" in out
            assert "--uds, --uds-perms (use SocketMode= in the socket unit) ignored" in out
            transport = httpx.HTTPTransport(uds=path)
            with httpx.Client(transport=transport, base_url="http://polycorn", timeout=30) as client:
                seen = client.get("/").json()
            assert seen == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
            assert not os.path.exists(ignored)
        finally:
            assert child.stop(timeout=60) == 0, child.output
        assert os.path.exists(path), "systemd's socket file is not polycorn's to remove"
        # Still listening (not shut down): a client is queued for the next server.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)
    finally:
        listener.close()


def test_several_sockets_with_workers(tmp_dir: Path) -> None:
    """Every passed socket is served, by every worker; --fd naming one of them is no conflict."""
    tcp = tcp_listener()
    path = str(tmp_dir / "second.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen(16)
    try:
        child = launch(
            [tcp, unix],
            "polycorn.demo:app",
            "--workers",
            "2",
            "--fd",
            "3",
            env={"LISTEN_FDNAMES": "http:local"},
        )
        try:
            child.wait_for("all 2 workers ready", 60)
            out = child.output
            port = tcp.getsockname()[1]
            assert f"serving fd 3 (http), http://127.0.0.1:{port}" in out
            assert f"serving fd 4 (local), unix:{path}" in out
            assert "ignored" not in out
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).content == _HELLO
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(30)
                client.connect(path)
                client.sendall(_REQUEST)
                assert read_response(client)[2] == _HELLO
        finally:
            assert child.stop(timeout=60) == 0, child.output
    finally:
        tcp.close()
        unix.close()


def test_ignored_host_and_port_are_named() -> None:
    listener = tcp_listener()
    try:
        child = launch([listener], "polycorn.demo:app", "--host", "127.0.0.2", "--port", "1")
        try:
            port = listener.getsockname()[1]
            assert child.url(60) == f"http://127.0.0.1:{port}"
            assert "systemd socket activation: --host, --port ignored" in child.output
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).content == _HELLO
        finally:
            assert child.stop(timeout=60) == 0, child.output
    finally:
        listener.close()


def test_listen_pid_of_another_process_is_ignored(tmp_dir: Path) -> None:
    """Variables meant for another process: polycorn binds as usual, and hides them from the app."""
    listener = tcp_listener()
    try:
        other = str(os.getpid())
        child = launch(
            [listener],
            "listen_env_app:app",
            "--app-dir",
            str(tmp_dir),
            "--port",
            "0",
            listen_pid=other,
            env={"LISTEN_FDNAMES": "web"},
        )
        try:
            url = child.url(60)
            assert url != f"http://127.0.0.1:{listener.getsockname()[1]}"
            assert f"LISTEN_PID={other} is another process" in child.output
            assert "serving fd" not in child.output
            seen = httpx.get(url, timeout=30).json()
            assert seen == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
        finally:
            assert child.stop(timeout=60) == 0, child.output
    finally:
        listener.close()


# -- what is refused -----------------------------------------------------------------------------------


def _start_and_fail(socks: list[Any], env: dict[str, str] | None = None, *args: str) -> str:
    child = launch(socks, "polycorn.demo:app", *args, env=env)
    try:
        rc = child.wait(60)
    finally:
        child.kill()
    assert rc == 2, child.output
    return one_error_line(child.stderr)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_listen_fds_on_a_file_exits_2(tmp_dir: Path, workers: str) -> None:
    with open(tmp_dir / "not-a-socket", "w") as f:
        line = _start_and_fail([f.fileno()], None, "--workers", workers)
    assert line == "Error: systemd socket activation: fd 3: not a usable socket (Socket operation on non-socket)"


def test_listen_fds_on_a_datagram_socket_exits_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        line = _start_and_fail([udp], {"LISTEN_FDNAMES": "dns"})
    assert line.startswith("Error: systemd socket activation: fd 3 (dns): a SOCK_DGRAM socket, not a stream")


def test_listen_fds_on_a_socket_that_does_not_listen_exits_2() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        line = _start_and_fail([sock])
    assert line == "Error: systemd socket activation: fd 3: not a listening socket " + (
        "(listen() was not called on it, or it is a connection)"
    )


def test_more_listen_fds_than_passed_exits_2() -> None:
    listener = tcp_listener()
    try:
        line = _start_and_fail([listener], {"LISTEN_FDS": "2"})
    finally:
        listener.close()
    # Whatever fd 4 is in the server (nothing, or one of its own descriptors), it is not systemd's.
    assert line.startswith("Error: systemd socket activation: fd 4: not a "), line


def test_listen_fds_that_is_not_a_number_exits_2() -> None:
    listener = tcp_listener()
    try:
        line = _start_and_fail([listener], {"LISTEN_FDS": "three"})
    finally:
        listener.close()
    assert line == "Error: LISTEN_FDS: expected a number of file descriptors, got 'three'"


def test_fd_that_does_not_listen_exits_1() -> None:
    """--fd gets the same check; its errors keep --fd's exit code (1, as for a closed descriptor)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        child = launch([sock], "polycorn.demo:app", "--fd", "3", listen_pid="none")
        try:
            rc = child.wait(60)
        finally:
            child.kill()
    assert rc == 1, child.output
    assert one_error_line(child.stderr).startswith("Error: --fd 3: not a listening socket")


# -- the environment protocol ----------------------------------------------------------------------------


def test_passed_fds_reads_and_removes_the_variables() -> None:
    pid = str(os.getpid())
    env = {"LISTEN_PID": pid, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert passed_fds(env) == [(3, "a"), (4, "b")]
    assert env == {"OTHER": "x"}
    env = {"LISTEN_PID": pid, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "only-one"}
    assert passed_fds(env) == [(3, ""), (4, "")]  # names that do not match the count are ignored
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert passed_fds(env) == [] and env == {}
    assert passed_fds({"LISTEN_FDS": "1"}) == []  # no LISTEN_PID: not for us
    assert passed_fds({"LISTEN_PID": pid, "LISTEN_FDS": "0"}) == []
    assert passed_fds({}) == []
