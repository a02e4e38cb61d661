"""Multi-worker servers, for real: ``python -m polycorn ... --workers 2`` in a subprocess.

The fixture app (``tests/fixture_apps/workers_app.py``) answers with its worker's identity, the
pair (pid, native thread id): distinct per process worker and per thread worker alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import connect, free_port, is_closed, read_response
from tests.fixture_apps.process import FIXTURE_DIR, Child, polycorn

MODES = ["process", "thread"]
Ident = tuple[int, int]


# -- helpers ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(
    *extra: str,
    mode: str = "process",
    workers: int = 2,
    app: str = "workers_app:app",
    env: dict[str, str] | None = None,
    port: str = "0",
    wait_ready: bool = True,
) -> Iterator[tuple[Child, str]]:
    """A supervised server on 127.0.0.1 (``--port 0``: the real address is yielded), stopped
    after the block whatever happened."""
    child = polycorn(
        app,
        "--app-dir",
        FIXTURE_DIR,
        "--workers",
        str(workers),
        "--worker-mode",
        mode,
        "--port",
        port,
        "--no-access-log",
        *extra,
        env=env,
    )
    try:
        url = child.url() if "--uds" not in extra else ""
        if wait_ready:
            child.wait_for(f"all {workers} workers ready")
        yield child, url
    finally:
        stop(child)


def stop(child: Child) -> None:
    """SIGTERM, so that the supervisor stops its workers (and they close the output pipes)."""
    if child.proc.poll() is None:
        child.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            child.proc.wait(15)
    child.kill()


def ident(response: httpx.Response) -> Ident:
    assert response.status_code == 200, response.text
    data = response.json()
    return int(data["pid"]), int(data["tid"])


def fresh_client(**kwargs: Any) -> httpx.Client:
    """Every request on a new connection (``Connection: close``, nothing kept in the pool)."""
    return httpx.Client(
        timeout=10,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"connection": "close"},
        verify=False,  # plain HTTP: no CA bundle to load (slow, and it holds the GIL)
        **kwargs,
    )


def fresh_identities(url: str, n: int = 200) -> Counter[Ident]:
    with fresh_client() as client:
        return Counter(ident(client.get(url + "/")) for _ in range(n))


def wait_count(child: Child, text: str, count: int, timeout: float = 15.0) -> None:
    """Wait until ``text`` appears ``count`` times in the child's output."""
    deadline = time.monotonic() + timeout
    while child.output.count(text) < count:
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not seen {count} times (rc {child.proc.poll()}):\n{child.output}")
        time.sleep(0.01)


def ready_line(worker_id: int) -> str:
    return f": worker {worker_id} ready"


class Load:
    """Client threads making requests until stopped; they record identities and failures."""

    def __init__(self, url: str, threads: int = 1, keep_alive: int = 0) -> None:
        self.url = url
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.served: list[Ident] = []
        self.kept: list[Ident] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._fresh, daemon=True) for _ in range(threads)]
        self.threads += [threading.Thread(target=self._keep_alive, daemon=True) for _ in range(keep_alive)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(20)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"

    def _loop(self, client: httpx.Client, into: list[Ident], kind: str) -> None:
        while not self.stop_event.is_set():
            try:
                who = ident(client.get(self.url + "/"))
            except Exception as exc:  # any failure is a test failure
                with self.lock:
                    self.errors.append(f"{kind} {time.monotonic():.3f}: {type(exc).__name__}: {exc}")
                time.sleep(0.01)
            else:
                with self.lock:
                    into.append(who)

    def _fresh(self) -> None:
        with fresh_client() as client:
            self._loop(client, self.served, "fresh")

    def _keep_alive(self) -> None:
        with httpx.Client(timeout=10, verify=False) as client:
            self._loop(client, self.kept, "keep-alive")


def wait_rolling_restart(child: Child, workers: int = 2) -> None:
    """After a SIGHUP on a fresh server: every replacement ready and every old worker finished."""
    child.wait_for(f"rolling restart of {workers} workers")
    for worker_id in range(workers, 2 * workers):
        child.wait_for(ready_line(worker_id))
    wait_count(child, "finished server process", workers)


def get_in_thread(url: str, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def go() -> None:
        started = time.monotonic()
        try:
            with fresh_client(**kwargs) as client:
                result["response"] = client.get(url, timeout=30)
        except Exception as exc:
            result["error"] = exc
        result["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


# -- 1, 10: both loops serve --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_both_workers_serve_fresh_connections(mode: str) -> None:
    port = free_port()
    with server(mode=mode, port=str(port)) as (child, url):
        assert url == f"http://127.0.0.1:{port}"
        seen = fresh_identities(url, 200)
        assert len(seen) == 2, seen
        assert sum(seen.values()) == 200
        if mode == "process":
            assert len({pid for pid, _ in seen}) == 2  # two processes
            assert os.getpid() not in {pid for pid, _ in seen}
            assert child.proc.pid not in {pid for pid, _ in seen}  # not the supervisor
        else:
            assert {pid for pid, _ in seen} == {child.proc.pid}  # two threads of the supervisor
        assert "Traceback" not in child.output


def test_port_0_resolves_one_port_that_every_worker_serves() -> None:
    with server() as (child, url):
        lines = re.findall(r"listening on (\S+)", child.output)
        assert lines == [url], child.output  # one address, printed once
        port = int(url.rsplit(":", 1)[1])
        assert port != 0
        assert len(fresh_identities(url, 200)) == 2


# -- 2: a killed worker is replaced -----------------------------------------------------------------


def test_kill_9_of_a_worker_starts_a_replacement() -> None:
    with server() as (child, url):
        before = fresh_identities(url, 100)
        pids = {pid for pid, _ in before}
        assert len(pids) == 2
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        child.wait_for(f"(pid {victim}) died (exit code -9); starting a replacement")
        # The victim's listening socket stays open in the supervisor: connections wait in its
        # backlog for the replacement, none is refused.
        after = fresh_identities(url, 200)
        child.wait_for(ready_line(2))
        new_pids = {pid for pid, _ in after}
        assert victim not in new_pids
        assert len(new_pids) == 2, after
        assert new_pids - pids, "no new worker pid served"
        assert child.proc.poll() is None


# -- 3: graceful stop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_lets_a_slow_request_finish(mode: str) -> None:
    with server(mode=mode) as (child, url):
        thread, result = get_in_thread(url + "/sleep/1")
        child.wait_for("MARK started /sleep/1")
        child.send_signal(signal.SIGTERM)
        child.wait_for("shutting down 2 workers")
        rc = child.wait(15)
        thread.join(15)
    assert "error" not in result, result
    response = result["response"]
    assert response.status_code == 200
    assert "pid" in response.json()
    assert result["elapsed"] >= 0.9
    assert rc == 0, child.output
    assert "Traceback" not in child.output
    assert f"supervisor {child.proc.pid} finished" in child.output


# -- 4, 11: rolling restart -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sighup_rolling_restart_under_load_loses_nothing(mode: str) -> None:
    with server(mode=mode) as (child, url):
        before = set(fresh_identities(url, 100))
        assert len(before) == 2
        with Load(url, threads=1, keep_alive=1) as load:
            time.sleep(0.5)
            child.send_signal(signal.SIGHUP)
            wait_rolling_restart(child)
            time.sleep(0.5)
        after = set(fresh_identities(url, 100))
        assert load.errors == [], load.errors[:5]
        assert len(load.served) > 50 and len(load.kept) > 50, (len(load.served), len(load.kept))
        assert len(after) == 2
        assert not after & before, "an old worker still serves after the rolling restart"
        assert load.kept[-1] in after  # the keep-alive client moved on to a new worker
        assert set(load.served) & before and set(load.served) & after  # the load spanned the restart
        assert child.proc.poll() is None


@pytest.mark.parametrize("mode", MODES)
def test_restart_burst_of_fresh_connections_all_succeed(mode: str) -> None:
    with server(mode=mode) as (child, url):
        before = set(fresh_identities(url, 20))
        with Load(url, threads=50) as load:
            time.sleep(0.3)
            child.send_signal(signal.SIGHUP)
            wait_rolling_restart(child)
            time.sleep(0.3)
        assert load.errors == [], (len(load.errors), load.errors[:5])
        assert len(load.served) > 100
        assert set(load.served) & before and set(load.served) - before


def test_a_request_racing_the_stop_on_an_idle_keep_alive_connection_is_answered() -> None:
    """A stopping worker keeps idle connections open a moment (``SHUTDOWN_LINGER``): the next
    request of a keep-alive client, already on its way, is answered with ``connection: close``
    instead of being lost to a close that crosses it."""
    with server() as (child, url):
        port = int(url.rsplit(":", 1)[1])
        first = int(re.search(r": worker 0 ready: pid (\d+)", child.output).group(1))  # type: ignore[union-attr]
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        sockets: list[Any] = []
        try:
            for _ in range(100):  # an idle keep-alive connection to worker 0, the first replaced
                sock = connect(port)
                sock.sendall(request)
                status, _, body = read_response(sock)
                assert status == 200
                if json.loads(body)["pid"] == first:
                    break
                sockets.append(sock)
            else:
                raise AssertionError("no connection reached worker 0")
            sockets.append(sock)
            child.send_signal(signal.SIGHUP)
            wait_count(child, "polycorn.error: shutting down\n", 1)  # worker 0 stops
            sock.sendall(request)
            status, headers, body = read_response(sock)
            assert status == 200
            assert json.loads(body)["pid"] == first  # answered by the stopping worker
            assert headers.get("connection") == "close"
            assert is_closed(sock, timeout=2)
        finally:
            for s in sockets:
                s.close()


# -- 5: scaling -------------------------------------------------------------------------------------------

_STATS = re.compile(r"worker (\d+): (\d+) in flight, (\d+) connections, (\d+) served")


def marked_identity(child: Child, path: str, count: int) -> Ident:
    """The worker that printed the ``count``-th ``MARK started PATH`` line."""
    wait_count(child, f"MARK started {path} in ", count)
    found = re.findall(rf"MARK started {re.escape(path)} in (\d+):(\d+)", child.output)
    return int(found[count - 1][0]), int(found[count - 1][1])


@pytest.mark.parametrize("mode", MODES)
def test_sigttin_adds_a_worker_and_sigttou_removes_it(mode: str) -> None:
    with server(mode=mode) as (child, url):
        two = set(fresh_identities(url, 100))
        assert len(two) == 2
        child.send_signal(signal.SIGTTIN)
        child.wait_for("SIGTTIN: adding worker 2")
        child.wait_for(ready_line(2))
        three = set(fresh_identities(url, 300))
        assert len(three) == 3, three
        assert two < three
        (added,) = three - two

        # Give the worker about to be removed a slow request, so that it drains for a while.
        slow = []
        for attempt in range(1, 40):
            slow.append(get_in_thread(url + "/sleep/2"))
            if marked_identity(child, "/sleep/2", attempt) == added:
                break
        else:
            raise AssertionError("no /sleep/2 request reached the added worker")
        child.send_signal(signal.SIGTTOU)
        child.wait_for("SIGTTOU: stopping worker 2")
        child.wait_for("stopped accepting: its listening socket is closed")
        # While it drains, its socket takes no new connections: the two others serve them all,
        # at once (they used to wait in the removed socket's backlog, then be reset).
        started = time.monotonic()
        again = set(fresh_identities(url, 200))
        assert again == two
        assert time.monotonic() - started < 1.5
        for thread, result in slow:
            thread.join(10)
            assert "error" not in result, result
            assert result["response"].status_code == 200
        wait_count(child, "finished server process", 1)

        # Once it has exited, the supervisor's stats (SIGUSR1) list the two live workers.
        deadline = time.monotonic() + 10
        while True:
            mark = len(child.output)
            child.send_signal(signal.SIGUSR1)
            time.sleep(0.3)
            rows = [int(row[0]) for row in _STATS.findall(child.output[mark:])]
            if sorted(rows) == [0, 1] or time.monotonic() > deadline:
                break
        assert sorted(rows) == [0, 1], child.output[mark:]


def test_workers_exit_when_the_supervisor_is_killed() -> None:
    with server() as (child, url):
        pids = {pid for pid, _ in fresh_identities(url, 100)}
        assert len(pids) == 2
        os.kill(child.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_running(pid) for pid in pids), "orphaned workers go on serving"
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=2)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- 6: --limit-max-requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_limit_max_requests_recycles_workers_without_failures(mode: str) -> None:
    with server("--limit-max-requests", "20", "--limit-max-requests-jitter", "5", mode=mode) as (child, url):
        seen: list[Ident] = []
        with fresh_client() as client:
            for _ in range(100):
                seen.append(ident(client.get(url + "/")))
                time.sleep(0.02)
        assert len(set(seen)) >= 3, Counter(seen)
        assert "reached --limit-max-requests: recycling it" in child.output
        assert "finished server process" in child.output  # a recycled worker stopped
        assert "died" not in child.output  # ... on request, it did not crash
        assert child.proc.poll() is None


# -- 7: the global concurrency limit ---------------------------------------------------------------------------


_GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"


def _get_raw(sock: socket.socket, path: str) -> tuple[int, dict[str, Any]]:
    sock.sendall(_GET % path.encode())
    status, _, body = read_response(sock)
    return status, (json.loads(body) if status == 200 else {})


def _sockets_per_worker(port: int, per_worker: int, workers: int = 2) -> list[socket.socket]:
    """Keep-alive connections, ``per_worker`` to each worker (the kernel picks at random)."""
    by_worker: dict[Ident, list[socket.socket]] = {}
    for _ in range(200):
        sock = connect(port, timeout=30)
        status, data = _get_raw(sock, "/")
        assert status == 200
        group = by_worker.setdefault((data["pid"], data["tid"]), [])
        if len(group) < per_worker:
            group.append(sock)
        else:
            sock.close()
        if len(by_worker) == workers and all(len(g) == per_worker for g in by_worker.values()):
            return [sock for pair in zip(*by_worker.values(), strict=True) for sock in pair]  # alternating
    for group in by_worker.values():
        for sock in group:
            sock.close()
    raise AssertionError(f"could not connect {per_worker} clients to each worker: {by_worker}")


def _paced_concurrency_requests(
    port: int, count: int, gap: float, sockets: list[socket.socket] | None = None
) -> tuple[list[tuple[int, dict[str, Any]]], float]:
    """``count`` requests to /concurrency, sent from this one thread at least ``gap`` seconds
    apart (requests from several client threads can bunch up), on the given keep-alive
    ``sockets`` or on fresh connections; then every answer is read."""
    used: list[socket.socket] = []
    started = time.monotonic()
    try:
        for i in range(count):
            sock = sockets[i] if sockets is not None else connect(port, timeout=30)
            used.append(sock)
            sock.sendall(_GET % b"/concurrency")
            time.sleep(gap)
        results = []
        for sock in used:
            status, _, body = read_response(sock)
            results.append((status, json.loads(body) if status == 200 else {}))
        return results, time.monotonic() - started
    finally:
        if sockets is None:
            for sock in used:
                sock.close()


@pytest.mark.parametrize("mode", MODES)
def test_global_limit_concurrency_queues_across_workers(mode: str, tmp_path: Path) -> None:
    env = {"WORKERS_MARKER_DIR": str(tmp_path)}
    with server("--limit-concurrency", "2", mode=mode, env=env) as (child, url):
        # Four connections on each worker, made beforehand, so each waiting request is queued in
        # its own loop; the requests are sent more than the 5 ms publication cadence apart, so
        # every loop knows the others' admissions in time: the limit then holds exactly.
        # (Requests arriving on two loops within one cadence can overshoot it, the bound that
        # loops/coordination.py documents: so can requests on fresh connections that wait in the
        # kernel backlog while their loop has paused accepting, as a freed slot is then claimed
        # by both loops.)
        sockets = _sockets_per_worker(int(url.rsplit(":", 1)[1]), 4)
        try:
            results, elapsed = _paced_concurrency_requests(0, 8, gap=0.025, sockets=sockets)
        finally:
            for sock in sockets:
                sock.close()
        assert [status for status, _ in results] == [200] * 8
        observed = [data["observed"] for _, data in results]
        assert max(observed) == 2, observed  # at the limit, never above it
        assert elapsed >= 1.5, elapsed  # 8 x 0.5 s, two at a time: queued, not all in parallel
        assert elapsed < 3.5, elapsed  # ... but two at a time, not one
        assert len({(data["pid"], data["tid"]) for _, data in results}) == 2  # both workers served
        assert child.proc.poll() is None


@pytest.mark.parametrize("mode", MODES)
def test_global_limit_concurrency_reject_mode_answers_503(mode: str, tmp_path: Path) -> None:
    env = {"WORKERS_MARKER_DIR": str(tmp_path)}
    extra = ("--limit-concurrency", "2", "--limit-concurrency-mode", "reject")
    with server(*extra, mode=mode, env=env) as (child, url):
        results, elapsed = _paced_concurrency_requests(int(url.rsplit(":", 1)[1]), 8, gap=0.025)
        assert child.proc.poll() is None
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] >= 4, statuses
    assert statuses[200] >= 2, statuses
    assert max(data["observed"] for status, data in results if status == 200) <= 2
    assert elapsed < 1.5, elapsed  # nothing waited


# -- 8: start-up failures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("app", "code", "message"),
    [
        ("broken_import:app", 4, "Error: error while importing 'broken_import': RuntimeError: kaboom at import time"),
        ("lifespan_apps:failing_startup", 3, "Error: application start-up failed: database unreachable"),
    ],
    ids=["import-error", "lifespan-failure"],
)
def test_startup_failure_stops_the_server_with_its_exit_code(mode: str, app: str, code: int, message: str) -> None:
    started = time.monotonic()
    with server(app=app, mode=mode, wait_ready=False) as (child, _url):
        rc = child.wait(15)
    elapsed = time.monotonic() - started
    assert rc == code, child.output
    errors = [line for line in child.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [message], child.output
    assert "Traceback" not in child.output
    assert "replacement" not in child.output  # no respawn
    assert len(re.findall(r"worker \d+ .*failed", child.output)) <= 2  # one start per worker, no loop
    assert elapsed < 10, elapsed


# -- 9: health check ------------------------------------------------------------------------------------------------


def test_blocked_worker_is_replaced_while_still_blocked() -> None:
    with server("--timeout-worker-healthcheck", "1") as (child, url):
        pids = {pid for pid, _ in fresh_identities(url, 100)}
        assert len(pids) == 2
        started = time.monotonic()
        thread, blocked = get_in_thread(url + "/block/4")
        victim, _ = marked_identity(child, "/block/4", 1)
        assert victim in pids
        child.wait_for("event loop blocked for")
        assert f"(pid {victim}): event loop blocked" in child.output
        # Other requests are served meanwhile, and the victim's seat by a new process.
        served: set[int] = set()
        with fresh_client() as client:
            while not (served - pids) and time.monotonic() - started < 3.5:
                served.add(ident(client.get(url + "/"))[0])
        assert served - pids, "no replacement served before the blocked worker would have woken up"
        assert time.monotonic() - started < 3.8
        assert victim not in served
        thread.join(10)
        # The blocked worker was killed, not waited for: its client lost the connection early.
        assert "error" in blocked, blocked
        assert blocked["elapsed"] < 3.9, blocked
        assert child.proc.poll() is None


# -- 12: --reload ------------------------------------------------------------------------------------------------------

_RELOAD_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{text}"}})
"""


def test_reload_serves_new_code_and_survives_a_syntax_error(tmp_path: Path) -> None:
    module = tmp_path / "reload_app.py"
    module.write_text(_RELOAD_APP.format(text="first version"))
    child = polycorn(
        "reload_app:app",
        "--port",
        "0",
        "--app-dir",
        str(tmp_path),
        "--reload",
        "--reload-dir",
        str(tmp_path),
        "--no-access-log",
        env={"PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        url = child.url()
        child.wait_for("all 1 workers ready")

        def text() -> str:
            return httpx.get(url, timeout=10).text

        def served_eventually(expected: str) -> None:
            deadline = time.monotonic() + 15
            while (got := text()) != expected:
                assert time.monotonic() < deadline, (got, child.output)
                time.sleep(0.05)

        assert text() == "first version"
        time.sleep(0.3)  # let the watcher settle
        module.write_text(_RELOAD_APP.format(text="second version!"))
        wait_count(child, "reloading: ", 1)
        served_eventually("second version!")

        module.write_text(_RELOAD_APP.format(text="broken") + "\n    def (:\n")
        wait_count(child, "reloading: ", 2)
        child.wait_for("did not start; keeping it")
        assert "SyntaxError" in child.output
        assert text() == "second version!"  # the old worker still serves
        assert child.proc.poll() is None

        module.write_text(_RELOAD_APP.format(text="third version, fixed"))
        wait_count(child, "reloading: ", 3)
        served_eventually("third version, fixed")
        assert child.proc.poll() is None
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == 0, child.output
    finally:
        stop(child)


# -- 13: one shared socket ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["no-reuse-port", "uds"])
def test_shared_socket_is_served_by_both_workers(mode: str, kind: str, tmp_path: Path) -> None:
    if kind == "uds":
        path = str(tmp_path / "polycorn.sock")
        extra: tuple[str, ...] = ("--uds", path)
        transport: dict[str, Any] = {"transport": httpx.HTTPTransport(uds=path)}
        base = "http://localhost"
    else:
        extra = ("--no-reuse-port",)
        transport = {}
    with server(*extra, mode=mode) as (child, url):
        assert "one shared socket" in child.output
        if kind == "uds":
            assert f"listening on unix:{path}" in child.output
        else:
            base = url
        # Worker A is blocked in a request: the next connection can only be taken by worker B.
        thread, first = get_in_thread(base + "/block/0.6", **transport)
        child.wait_for("MARK started /block/0.6")
        with fresh_client(**({"transport": httpx.HTTPTransport(uds=path)} if kind == "uds" else {})) as client:
            second = ident(client.get(base + "/"))
        thread.join(10)
        assert "error" not in first, first
        assert ident(first["response"]) != second
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == 0
    if kind == "uds":
        assert not os.path.exists(path)  # the supervisor removed its socket file
