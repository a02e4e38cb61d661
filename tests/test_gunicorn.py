"""gunicorn's arbiter running Polycorn's worker classes: a real ``gunicorn`` in a subprocess.

The fixture app (``tests/fixture_apps/gunicorn_app.py``) answers with the pid of the worker that
served it and marks lifespan and request progress on stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

gunicorn_config = pytest.importorskip(
    "gunicorn.config", reason="gunicorn is not installed (it is in the test extras: pip install '.[test]')"
)

from polycorn.loops.gunicorn import drain_seconds, polycorn_options  # noqa: E402
from polycorn.workers import PolycornWorker  # noqa: E402
from tests.conftest import connect, free_port, is_closed, read_response  # noqa: E402
from tests.fixture_apps.process import Child  # noqa: E402
from tests.http_apps import wait_for  # noqa: E402

ROOT = str(Path(__file__).resolve().parent.parent)
APP = "tests.fixture_apps.gunicorn_app:app"
WORKER = "polycorn.workers.PolycornWorker"
H11_WORKER = "polycorn.workers.PolycornH11Worker"
_READY = re.compile(r"worker \d+ ready: pid (\d+), (\w+), (\w+) parser")


def _extra_flags() -> list[str]:
    """gunicorn 25.1+ opens a control socket at a fixed path: tests running side by side would share it."""
    known = {s.name for s in gunicorn_config.KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in known else []


class Gunicorn:
    """A running ``gunicorn`` arbiter and what it said."""

    def __init__(self, child: Child, port: int) -> None:
        self.child = child
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def ready_pids(self) -> list[int]:
        """Pids of the workers that became ready, in order."""
        return [int(m.group(1)) for m in _READY.finditer(self.child.output)]

    def wait_ready(self, count: int, timeout: float = 30.0) -> list[int]:
        """Wait until ``count`` workers in all have become ready."""
        deadline = time.monotonic() + timeout
        while len(self.ready_pids()) < count:
            if self.child.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited ({self.child.proc.returncode}):\n{self.child.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} workers not ready:\n{self.child.output}")
            time.sleep(0.05)
        return self.ready_pids()

    def get(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        """One request on a connection of its own (keep-alive plays no part in which worker answers)."""
        kwargs.setdefault("timeout", 30)
        return httpx.get(self.url + path, **kwargs)

    def served_by(self, path: str = "/") -> int:
        response = self.get(path)
        assert response.status_code == 200, response.text
        return int(response.json()["pid"])

    def signal(self, sig: int) -> None:
        self.child.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.child.wait(timeout)


@contextlib.contextmanager
def gunicorn(
    *flags: str, worker: str = WORKER, app: str = APP, workers: int = 1, ready: bool = True
) -> Iterator[Gunicorn]:
    """``python -m gunicorn -k WORKER`` on a free port of 127.0.0.1, killed after the block if still running."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-k", worker, "-b", f"127.0.0.1:{port}", "--workers", str(workers)]
    child = Child([*argv, *_extra_flags(), *flags, app], cwd=ROOT)
    try:
        server = Gunicorn(child, port)
        if ready:
            server.wait_ready(workers)
        yield server
    finally:
        if child.proc.poll() is None:
            child.send_signal(signal.SIGQUIT)  # quick exit; SIGKILL if that did not work
            try:
                child.wait(30)
            except Exception:
                pass
        child.kill()


def in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``call()`` in a thread; its result or exception lands in the dict."""
    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["response"] = call()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


# -- serving ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker", "stack"), [(WORKER, None), (H11_WORKER, ("asyncio", "h11"))], ids=["default", "h11"]
)
def test_http_websocket_and_lifespan(worker: str, stack: tuple[str, str] | None) -> None:
    from websockets.sync.client import connect as ws_connect

    with gunicorn("--access-logfile", "-", worker=worker) as g:
        (pid,) = g.ready_pids()
        ready = _READY.search(g.child.output)
        assert ready is not None
        if stack is not None:
            assert (ready.group(2), ready.group(3)) == stack
        response = g.get("/hello")
        assert response.status_code == 200
        assert response.headers["server"] == "polycorn"
        data = response.json()
        assert data["pid"] == pid
        assert data["started_by"] == pid  # the lifespan start-up ran in this worker and filled the state
        # gunicorn's default --forwarded-allow-ips trusts 127.0.0.1: its proxy headers are believed.
        proxied = g.get("/", headers={"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}).json()
        assert proxied["client"][0] == "203.0.113.7"
        assert proxied["scheme"] == "https"
        with ws_connect(f"ws://127.0.0.1:{g.port}/ws", open_timeout=30) as ws:
            ws.send("ping")
            assert ws.recv(timeout=30) == f"{pid}:ping"
        g.child.wait_for('"GET /hello HTTP/1.1" 200')  # the access log, on gunicorn's --access-logfile
        g.signal(signal.SIGTERM)
        rc = g.wait()
    out = g.child.output
    assert rc == 0, out
    assert f"MARK lifespan startup pid={pid}" in out
    assert f"MARK lifespan shutdown pid={pid}" in out
    assert f"Worker (pid:{pid}) was sent" not in out  # it exited by itself, not killed by a signal
    assert "Traceback" not in out


def test_unix_socket_and_forwarded_allow_ips(tmp_path: Path) -> None:
    """Both kinds of gunicorn listener; like gunicorn, Polycorn trusts the proxy headers of UNIX
    socket peers whatever --forwarded-allow-ips says."""
    path = str(tmp_path / "g.sock")
    headers = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
    with gunicorn("-b", f"unix:{path}", "--forwarded-allow-ips", "10.1.2.3") as g:
        over_tcp = g.get("/", headers=headers).json()
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=30) as client:
            over_unix = client.get("http://localhost/", headers=headers).json()
    assert over_tcp["client"][0] == "127.0.0.1"  # not a trusted proxy: its headers are ignored
    assert over_tcp["scheme"] == "http"
    assert over_unix["scheme"] == "https"
    assert over_unix["pid"] == over_tcp["pid"]


def test_gunicorn_settings_and_config_kwargs_reach_polycorn() -> None:
    flags = ("--keep-alive", "0", "--limit-request-line", "200", "--limit-request-fields", "5", "--root-path", "/api")
    with gunicorn(*flags, worker="tests.fixture_apps.gunicorn_app.HeaderWorker") as g:
        response = g.get("/")
        assert response.json()["root_path"] == "/api"
        assert response.headers["x-served-by"] == "polycorn-subclass"  # the subclass's CONFIG_KWARGS
        # --keep-alive 0: one request per connection.
        with connect(g.port, timeout=30) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            status, head, _ = read_response(sock)
            assert status == 200
            assert head["connection"] == "close"
            assert is_closed(sock, timeout=30)
        with connect(g.port, timeout=30) as sock:
            sock.sendall(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
            assert read_response(sock)[0] == 414
        with connect(g.port, timeout=30) as sock:
            fields = b"".join(b"x-%d: y\r\n" % i for i in range(10))
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n" + fields + b"\r\n")
            assert read_response(sock)[0] == 431


def test_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme has no free-threaded build (test extra only)")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    with gunicorn("--certfile", str(certfile), "--keyfile", str(keyfile)) as g:
        verify = ssl.create_default_context(cafile=str(cafile))
        response = httpx.get(f"https://127.0.0.1:{g.port}/", verify=verify, timeout=30)
    assert response.status_code == 200
    assert response.json()["scheme"] == "https"


def test_two_workers_both_serve() -> None:
    with gunicorn(workers=2) as g:
        pids = set(g.ready_pids())
        assert len(pids) == 2
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while seen != pids:
            assert time.monotonic() < deadline, f"only {seen} of {pids} served"
            # While one worker's loop is blocked, only the other can accept.
            thread, _ = in_thread(lambda: g.get("/block?s=0.5"))
            for _ in range(5):
                seen.add(g.served_by())
            thread.join(30)
    for pid in pids:
        assert f"MARK lifespan startup pid={pid}" in g.child.output


# -- the arbiter's controls ------------------------------------------------------------------------


def test_max_requests_recycles_the_worker() -> None:
    with gunicorn("--max-requests", "5") as g:
        (first,) = g.ready_pids()
        served = [g.served_by(f"/n{i}") for i in range(15)]  # served_by asserts each is a 200
        out = g.child.output
    assert served[:5] == [first] * 5
    assert len(set(served)) >= 2, served
    assert "served 5 requests" in out
    assert f"MARK lifespan shutdown pid={first}" in out  # the old worker stopped gracefully


def test_sigterm_lets_the_in_flight_request_finish() -> None:
    with gunicorn("--graceful-timeout", "30") as g:
        thread, result = in_thread(lambda: g.get("/sleep?s=2"))
        g.child.wait_for("MARK sleep start 2", timeout=30)
        g.signal(signal.SIGTERM)
        thread.join(60)
        rc = g.wait()
    out = g.child.output
    assert "error" not in result, result
    assert result["response"].status_code == 200
    assert result["response"].headers["connection"] == "close"
    assert rc == 0, out
    assert "MARK sleep cancelled" not in out
    assert out.index("MARK sleep start") < out.index("MARK lifespan shutdown")


def test_sigquit_is_a_quick_exit() -> None:
    with gunicorn("--graceful-timeout", "120") as g:
        thread, result = in_thread(lambda: g.get("/sleep?s=120", timeout=120))
        g.child.wait_for("MARK sleep start 120", timeout=30)
        g.signal(signal.SIGQUIT)
        rc = g.wait(60)  # far less than the 120 s the request and the grace period would take
        thread.join(30)
    out = g.child.output
    assert rc == 0, out
    assert "MARK sleep cancelled" in out
    assert "error" in result or result["response"].status_code != 200
    assert "MARK lifespan shutdown" not in out  # a quick exit skips the lifespan shutdown


def test_timeout_replaces_a_blocked_worker_only() -> None:
    with gunicorn("--timeout", "4", "--graceful-timeout", "5") as g:
        (first,) = g.ready_pids()
        # The heartbeat comes from the event loop: a loop that waits (2.5 x --timeout) is alive.
        assert g.served_by("/sleep?s=10") == first
        thread, result = in_thread(lambda: g.get("/block?s=300", timeout=300))
        g.child.wait_for(f"WORKER TIMEOUT (pid:{first})", timeout=60)
        second = g.wait_ready(2, timeout=60)[1]
        assert second != first
        assert g.served_by() == second
        thread.join(60)
    assert "error" in result or result["response"].status_code != 200


def test_sighup_reload_keeps_serving() -> None:
    with gunicorn("--graceful-timeout", "10") as g:
        (first,) = g.ready_pids()
        g.signal(signal.SIGHUP)
        failures: list[Any] = []

        def replaced() -> bool:
            try:
                response = g.get("/")
            except httpx.TransportError as exc:
                failures.append(exc)
                return False
            if response.status_code != 200:
                failures.append(response)
            return response.status_code == 200 and response.json()["pid"] != first

        wait_for(replaced, timeout=60, what="a new worker to answer after SIGHUP")
        g.child.wait_for(f"MARK lifespan shutdown pid={first}", timeout=30)
        assert g.child.proc.poll() is None  # the arbiter serves on
        assert g.served_by() != first
    assert failures == []


def test_usr1_reopens_log_files_and_winch_is_ignored(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with gunicorn("--access-logfile", str(log), "--log-level", "debug") as g:
        (pid,) = g.ready_pids()
        g.served_by("/before")
        wait_for(lambda: log.exists() and "/before" in log.read_text(), timeout=30, what="the first access line")
        os.rename(log, tmp_path / "access.log.1")  # what logrotate does before it sends SIGUSR1
        g.signal(signal.SIGUSR1)  # the arbiter reopens its files and passes the signal on to the workers

        def logged_in_new_file() -> bool:
            g.served_by("/after")
            return log.exists() and "/after" in log.read_text()

        wait_for(logged_in_new_file, interval=0.2, timeout=30, what="an access line in the reopened file")
        os.kill(pid, signal.SIGWINCH)
        g.child.wait_for("SIGWINCH ignored", timeout=30)
        assert g.served_by() == pid  # neither signal stopped the worker


def test_reload_replaces_the_worker_when_code_changes(tmp_path: Path) -> None:
    """gunicorn's --reload ends the worker through its ``alive`` flag, which the heartbeat watches."""
    module = tmp_path / "reload_app.py"
    module.write_text("from tests.fixture_apps.gunicorn_app import app\n")
    flags = ("--reload", "--reload-engine", "poll", "--chdir", str(tmp_path), "--pythonpath", ROOT)
    with gunicorn(*flags, app="reload_app:app") as g:
        (first,) = g.ready_pids()
        stat = module.stat()
        os.utime(module, (stat.st_atime, stat.st_mtime + 10))  # a change the poll reloader sees for sure
        second = g.wait_ready(2, timeout=60)[1]
        assert g.served_by() == second != first
        g.child.wait_for(f"MARK lifespan shutdown pid={first}", timeout=30)


def test_worker_stops_when_the_arbiter_dies() -> None:
    """An orphaned worker must not go on serving with nobody to stop or replace it."""
    with gunicorn() as g:
        (pid,) = g.ready_pids()
        g.signal(signal.SIGKILL)
        g.child.proc.wait(30)  # (not g.wait(): the worker still holds the output pipes)
        try:
            # (Child.wait_for gives up once the arbiter is gone: the worker's output is polled here.)
            wait_for(lambda: "Parent changed, shutting down" in g.child.output, timeout=30, what="the worker to notice")
            wait_for(lambda: f"MARK lifespan shutdown pid={pid}" in g.child.output, timeout=30, what="a graceful stop")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # it is no child of ours: only its pid can stop it


# -- refusing to start --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker", "flags", "message"),
    [
        ("OwnedOptionWorker", (), "OwnedOptionWorker.CONFIG_KWARGS: 'workers' is gunicorn's to decide"),
        ("BadValueWorker", (), "--limit-request-head: must be at least 256, got 10"),
        ("PolycornWorker", ("--proxy-protocol", "v1"), "the PROXY protocol is not supported"),
        ("PolycornWorker", ("--certfile", __file__), "no PEM certificate in"),
    ],
    ids=["owned-option", "bad-value", "proxy-protocol", "not-a-certificate"],
)
def test_bad_settings_stop_gunicorn_with_one_line(worker: str, flags: tuple[str, ...], message: str) -> None:
    """Found by the arbiter before any worker boots: exit code 2, one line, no traceback."""
    module = "polycorn.workers" if worker == "PolycornWorker" else "tests.fixture_apps.gunicorn_app"
    with gunicorn(*flags, worker=f"{module}.{worker}", ready=False) as g:
        rc = g.wait(60)
    out = g.child.output
    assert rc == 2, out
    assert message in out
    assert "Traceback" not in out
    assert "Booting worker" not in out


@pytest.mark.parametrize(
    ("app", "code", "message"),
    [
        ("NotAsgi", 4, "is a class; ASGI 2"),
        ("failing_startup", 3, "application start-up failed: no database"),
    ],
)
def test_an_app_that_cannot_start_halts_gunicorn(app: str, code: int, message: str) -> None:
    """Instead of booting a replacement that fails the same way, again and again."""
    with gunicorn(app=f"tests.fixture_apps.gunicorn_app:{app}", ready=False) as g:
        rc = g.wait(60)
    out = g.child.output
    assert rc == code, out
    assert message in out
    assert out.count("Booting worker") == 1


# -- the settings mapping ------------------------------------------------------------------------------


def _cfg(**settings: Any) -> Any:
    cfg = gunicorn_config.Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def test_settings_mapping() -> None:
    options = polycorn_options(_cfg())
    assert options["timeout_keep_alive"] == 2.0  # gunicorn's default keepalive
    assert options["timeout_graceful_shutdown"] == 29.0
    assert options["limit_request_line"] == 4094
    assert options["forwarded_allow_ips"] == "127.0.0.1,::1,unix"
    assert options["proxy_headers"] is True
    assert options["access_log"] is False  # no --access-logfile
    assert "ssl_certfile" not in options

    options = polycorn_options(
        _cfg(
            keepalive=0,
            graceful_timeout=1,
            limit_request_line=0,
            limit_request_fields=0,
            forwarded_allow_ips="*",
            secure_scheme_headers={},
            accesslog="-",
            loglevel="WARNING",
        )
    )
    assert options["timeout_keep_alive"] == 0.0
    assert options["timeout_graceful_shutdown"] == 0.5
    assert options["limit_request_fields"] == 32768
    assert options["forwarded_allow_ips"] == "*,unix"
    assert options["proxy_headers"] is False  # no scheme header to believe: no proxy header at all
    assert options["access_log"] is True
    assert options["log_level"] == "warning"

    config = PolycornWorker.polycorn_config(_cfg(limit_request_line=0), app=lambda *a: None, max_requests=7)
    assert config.limit_request_line == config.limit_request_head  # "unlimited": the head bounds it
    assert config.limit_max_requests == 7
    assert config.workers == 1


def test_tls_settings_mapping(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("")
    cfg = _cfg(certfile=str(pem), ca_certs=str(pem), cert_reqs=0, ciphers="ECDHE+AESGCM")
    options = polycorn_options(cfg)
    assert options["ssl_certfile"] == str(pem)
    assert options["ssl_ciphers"] == "ECDHE+AESGCM"
    assert "ssl_ca_certs" not in options  # cert_reqs 0 checks no client certificate
    options = polycorn_options(_cfg(certfile=str(pem), ca_certs=str(pem), cert_reqs=2))
    assert (options["ssl_ca_certs"], options["ssl_cert_reqs"]) == (str(pem), 2)


def test_drain_ends_before_gunicorn_kills() -> None:
    assert drain_seconds(30) == 29.0
    assert drain_seconds(1) == 0.5
    assert drain_seconds(0) == 0.0
