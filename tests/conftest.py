"""Shared fixtures: real Polycorn servers on 127.0.0.1:0, in a thread or a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polycorn import Config
from polycorn.loops import eventloop
from polycorn.loops.server import Server

#: (parser, loop) combinations every protocol test runs on.
STACKS = [("httptools", "uvloop"), ("httptools", "asyncio"), ("h11", "uvloop"), ("h11", "asyncio")]


class RunningServer:
    """A Server running on its own loop in a background thread."""

    def __init__(self, app: Any, **options: Any) -> None:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("log_level", "debug")
        options.setdefault("lifespan", "auto")
        self.config = Config(app=app, **options)
        self.server = Server(self.config)
        self.loop: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            import asyncio

            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        try:
            eventloop.run(main(), eventloop.loop_factory(self.config.loop))
        except BaseException as exc:  # surfaced by start()/stop()
            self.error = exc

    def start(self, timeout: float = 10.0) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.005)
        return self

    @property
    def port(self) -> int:
        return int(self.server.bound[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 15.0) -> None:
        if self._thread.is_alive() and self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.server.request_exit)
            except RuntimeError:  # the server finished on its own (a test asked it to exit) and closed its loop
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("server did not stop")
        if self.error is not None:
            raise self.error


@pytest.fixture(params=STACKS, ids=[f"{p}-{loop}" for p, loop in STACKS])
def stack(request: pytest.FixtureRequest) -> dict[str, str]:
    """Parser and loop options; a protocol test using it runs on all four stacks."""
    parser, loop = request.param
    return {"http": parser, "loop": loop}


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """``serve(app, **options)`` starts a server and stops it after the test."""
    servers: list[RunningServer] = []

    def start(app: Any, **options: Any) -> RunningServer:
        srv = RunningServer(app, **options).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    _pushback.pop(sock.fileno(), None)  # a reused descriptor must not inherit stale bytes
    return sock


def read_response(sock: socket.socket, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (content-length, chunked or close-delimited) from a raw socket."""
    buf = _pushback.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if head_only or status in (204, 304) or 100 <= status < 200:
        _pushback[sock.fileno()] = rest
        return status, headers, b""
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        _pushback[sock.fileno()] = rest[length:]
        return status, headers, rest[:length]
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += _recv(sock)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += _recv(sock)
            body += rest[:size]
            rest = rest[size + 2 :]
            if size == 0:
                _pushback[sock.fileno()] = rest
                return status, headers, body
    while True:  # close-delimited
        chunk = sock.recv(65536)
        if not chunk:
            return status, headers, rest
        rest += chunk


_pushback: dict[int, bytes] = {}


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("closed mid-chunked-body")
    return chunk


def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    data = _pushback.pop(sock.fileno(), b"")
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def is_closed(sock: socket.socket, timeout: float = 2.0) -> bool:
    """True if the server closed the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def run_cli(
    *args: str, timeout: float = 20.0, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m polycorn ARGS`` to completion."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "polycorn", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
