"""Smoke test: ``loadtests/ceiling.py``, the bare-protocol ceiling of the benchmarks, still serves.

Its figures back a claim in docs/benchmarks.md (what a uvloop + httptools server costs with no
ASGI at all), so the script must keep answering: keep-alive requests on one connection, and a
``Connection: close`` request closed after its answer.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, read_response, recv_all
from tests.fixture_apps.process import Child, wait_port

SCRIPT = Path(__file__).resolve().parent.parent / "loadtests" / "ceiling.py"
pytest.importorskip("uvloop")
pytest.importorskip("httptools")


def test_ceiling_answers_keep_alive_and_close() -> None:
    port = free_port()
    child = Child([sys.executable, str(SCRIPT), "--port", str(port)])
    try:
        wait_port(port, timeout=20, child=child)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for _ in range(3):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, body = read_response(sock)
                assert (status, body) == (200, b"Hello, world!")
            sock.sendall(b"GET /any HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest = recv_all(sock)
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in rest
        assert rest.endswith(b"\r\n\r\nHello, world!")  # and then the server closed
    finally:
        assert child.stop(signal.SIGTERM) == 0, child.output
