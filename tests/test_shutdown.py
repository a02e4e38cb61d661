"""Graceful shutdown of the ``polycorn`` process on SIGTERM / SIGINT."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

import httpx

from tests.conftest import connect, is_closed, read_response
from tests.fixture_apps.process import FIXTURE_DIR, Child, polycorn


def start_slow(*extra: str) -> tuple[Child, str]:
    child = polycorn("slow_app:app", "--port", "0", "--app-dir", FIXTURE_DIR, *extra)
    try:
        url = child.url()
    except BaseException:
        child.kill()
        raise
    return child, url


def request_in_thread(url: str) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["response"] = httpx.get(url, timeout=60)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


def test_sigterm_lets_the_in_flight_request_finish() -> None:
    child, url = start_slow()
    try:
        thread, result = request_in_thread(url + "/sleep/1")
        child.wait_for("MARK request started /sleep/1")
        child.send_signal(signal.SIGTERM)
        child.wait_for("shutting down")
        # New connections are refused once shutdown began.
        refused = False
        try:
            httpx.get(url + "/fast", timeout=2)
        except httpx.TransportError:
            refused = True
        assert refused, "a new connection was served during shutdown"
        thread.join(15)
        rc = child.wait(15)
    finally:
        child.kill()
    assert "error" not in result, result
    response = result["response"]
    assert response.status_code == 200
    assert response.content == b"slept 1" + b"." * 5000
    assert response.headers.get("connection") == "close"
    assert rc == 0, child.output
    out = child.stderr
    assert out.index("shutting down") < out.index("MARK lifespan shutdown") < out.index("finished server process")
    assert "MARK request cancelled" not in out
    assert "timed out" not in out


def test_graceful_timeout_cancels_slow_requests() -> None:
    child, url = start_slow("--timeout-graceful-shutdown", "0.5")
    try:
        thread, result = request_in_thread(url + "/sleep/30")
        child.wait_for("MARK request started /sleep/30")
        child.send_signal(signal.SIGTERM)
        rc = child.wait(10)  # far less than the 30 s the request wanted
        thread.join(10)
    finally:
        child.kill()
    out = child.stderr
    assert "graceful shutdown timed out after 0.5s: cancelling 1 request(s)" in out, out
    assert "MARK request cancelled" in out
    assert "MARK lifespan shutdown" in out  # lifespan shutdown still runs
    assert "Traceback" not in out
    assert rc == 0, out
    assert isinstance(result.get("error"), httpx.TransportError), result


def test_second_sigint_forces_exit() -> None:
    child, url = start_slow()  # default graceful timeout: 30 s
    try:
        thread, result = request_in_thread(url + "/sleep/30")
        child.wait_for("MARK request started /sleep/30")
        child.send_signal(signal.SIGINT)
        child.wait_for("shutting down")
        time.sleep(0.2)
        assert child.proc.poll() is None, "the first SIGINT must wait for the in-flight request"
        child.send_signal(signal.SIGINT)
        rc = child.wait(10)
        thread.join(10)
    finally:
        child.kill()
    out = child.stderr
    assert "second signal: forcing exit" in out, out
    assert "MARK request cancelled" in out
    assert "Traceback" not in out
    assert rc == 0, out
    assert isinstance(result.get("error"), httpx.TransportError), result


def test_idle_keep_alive_connections_are_closed_at_shutdown() -> None:
    child, url = start_slow("--timeout-keep-alive", "60")
    port = int(url.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    try:
        for _ in range(3):
            sock = connect(port)
            sock.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"fast")
            assert headers.get("connection") != "close"
            idle.append(sock)
        # Still open before the signal: the keep-alive timeout is long.
        assert not is_closed(idle[0], timeout=0.2)
        child.send_signal(signal.SIGTERM)
        for sock in idle:
            assert is_closed(sock, timeout=5), "idle keep-alive connection not closed at shutdown"
        rc = child.wait(10)
    finally:
        for sock in idle:
            sock.close()
        child.kill()
    assert rc == 0, child.output
    assert "timed out" not in child.stderr  # idle connections do not hold up the shutdown


def test_sigterm_with_nothing_in_flight_exits_quickly_and_runs_lifespan() -> None:
    child, url = start_slow()
    try:
        assert httpx.get(url + "/fast", timeout=10).text == "fast"
        child.send_signal(signal.SIGTERM)
        rc = child.wait(10)
    finally:
        child.kill()
    assert rc == 0
    out = child.stderr
    assert out.index("MARK lifespan startup") < out.index("listening on")
    assert out.index("shutting down") < out.index("MARK lifespan shutdown")
