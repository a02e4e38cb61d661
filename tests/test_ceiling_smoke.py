"""Smoke test: ``loadtests/ceiling.py``, the bare-protocol ceiling of the benchmarks, still serves.

Its figures back a claim in docs/benchmarks.md (what a uvloop + httptools server costs with no
ASGI at all), so the script must keep answering: keep-alive requests on one connection, and a
``Connection: close`` request closed after its answer.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_response, recv_all
from tests.http_apps import wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "loadtests" / "ceiling.py"
pytest.importorskip("uvloop")
pytest.importorskip("httptools")


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def test_ceiling_answers_keep_alive_and_close() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: _answers(port), timeout=20, what="ceiling.py listening")
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
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, out
