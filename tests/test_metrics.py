"""--metrics-port: the whole server's Prometheus metrics, scraped from a real supervised server.

Each test runs ``python -m polycorn`` with the fixture app ``tests/fixture_apps/metrics_app.py``,
drives known traffic with real clients (httpx, raw sockets, the websockets client) and parses the
scrapes with prometheus-client's own parser. Workers publish their counters on a timer (1 s, or
5 ms with --limit-concurrency), so every check polls the endpoint until the numbers are reached,
with a generous deadline, and fails with the last scrape shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from polycorn import Config
from polycorn.loops.coordination import DURATION_BOUNDS, LoopCounters
from polycorn.loops.supervisor import supervised
from tests.conftest import RunningServer, connect, free_port, read_response, run_cli
from tests.fixture_apps.metrics_app import app as metrics_app
from tests.fixture_apps.process import FIXTURE_DIR, Child, polycorn
from tests.test_workers import server as workers_server

APP = "metrics_app:app"
DEADLINE = 30.0
#: Counter samples (and histogram parts): each must never decrease from one scrape to the next.
MONOTONIC = re.compile(r"_total$|_bucket$|_count$|_sum$")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- helpers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(*extra: str, workers: int = 2, mode: str = "process") -> Iterator[tuple[Child, str, str]]:
    """A supervised server with metrics on a free port: (child, app url, metrics url)."""
    with workers_server("--metrics-port", "0", *extra, workers=workers, mode=mode, app=APP, wait_ready=False) as (
        child,
        url,
    ):
        child.wait_for(f"all {workers} workers ready", timeout=DEADLINE)
        match = re.search(r"metrics on (http://\S+)", child.output)
        assert match, child.output
        yield child, url, match.group(1)


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def served(samples: Samples) -> dict[str, float]:
    """Per-worker requests served, by worker label."""
    return {
        dict(labels)["worker"]: value
        for (name, labels), value in samples.items()
        if name == "polycorn_worker_requests_served_total"
    }


class Scraper:
    """Scrapes until a condition holds, checking on every scrape that no counter went back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last: Samples = {}
        self.seen: Samples = {}
        self.scrapes = 0

    def once(self) -> Samples:
        samples = scrape(self.url)
        self.scrapes += 1
        for key, value in samples.items():
            if MONOTONIC.search(key[0]):
                before = self.seen.get(key, 0.0)
                assert value >= before, f"{key} went back from {before} to {value}"
                self.seen[key] = value
        self.last = samples
        return samples

    def until(self, condition: Callable[[Samples], bool], what: str, timeout: float = DEADLINE) -> Samples:
        deadline = time.monotonic() + timeout
        while True:
            samples = self.once()
            try:
                if condition(samples):
                    return samples
            except KeyError:
                pass
            if time.monotonic() > deadline:
                shown = "\n".join(f"{k[0]}{dict(k[1])} {v}" for k, v in sorted(samples.items()))
                raise AssertionError(f"not reached within {timeout}s: {what}\n{shown}")
            time.sleep(0.1)


def fresh_client() -> httpx.Client:
    """One new connection per request (Connection: close): every request is one accepted connection."""
    return httpx.Client(
        timeout=15, limits=httpx.Limits(max_keepalive_connections=0), headers={"connection": "close"}, verify=False
    )


def hold(url: str, release: Path) -> socket.socket:
    """A request that stays in flight until ``release`` exists; its answer is read later."""
    port = int(url.rsplit(":", 1)[1])
    sock = connect(port, timeout=DEADLINE)
    target = "/hold?path=" + quote(str(release))
    sock.sendall(b"GET %s HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % target.encode())
    return sock


def open_websocket(stack: contextlib.ExitStack, url: str) -> ClientConnection:
    """An open, echoing WebSocket, closed when ``stack`` exits if not before."""
    uri = url.replace("http://", "ws://") + "/ws"
    ws = stack.enter_context(ws_connect(uri, open_timeout=DEADLINE, close_timeout=10))
    ws.send("ping")
    assert ws.recv(timeout=DEADLINE) == "ping"
    return ws


def bad_request(url: str) -> int:
    """Two Host headers: the server itself answers 400."""
    port = int(url.rsplit(":", 1)[1])
    with connect(port, timeout=DEADLINE) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
        return read_response(sock)[0]


class Load:
    """A client thread making fresh-connection requests to /ok until stopped, counting them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with fresh_client() as client:
            while not self._stop.is_set():
                try:
                    status = client.get(self.url + "/ok").status_code
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    return
                if status == 200:
                    self.count += 1
                else:
                    self.failures.append(str(status))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        assert not self._thread.is_alive()
        assert self.failures == []


def worker_pid(child: Child, worker_id: int) -> int:
    # The worker logs this line just after telling the supervisor it is ready: wait for it.
    output = child.wait_for(f"worker {worker_id} ready: pid", timeout=DEADLINE)
    match = re.search(rf"worker {worker_id} ready: pid (\d+)", output)
    assert match, child.output
    return int(match.group(1))


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, from /proc: its socket inodes in /proc/net/tcp*."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# -- the whole server --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_counts_while_traffic_flows_and_after(mode: str, tmp_path: Path) -> None:
    n_ok, n_missing, held, n_ws = 20, 5, 3, 2
    release = tmp_path / "release"
    with server(mode=mode) as (child, url, metrics_url):
        scraper = Scraper(metrics_url)
        first = scraper.once()
        assert get(first, "polycorn_workers") == 2
        assert served(first) == {"0": 0, "1": 0}
        assert get(first, "polycorn_requests_total", status_class="2xx") == 0
        assert get(first, "polycorn_request_duration_seconds_count") == 0

        with contextlib.ExitStack() as stack:
            holders = [stack.enter_context(hold(url, release)) for _ in range(held)]
            stack.callback(release.touch)  # whatever happens, before the sockets close
            sockets = [open_websocket(stack, url) for _ in range(n_ws)]
            with Load(url) as load, fresh_client() as client:
                for _ in range(n_ok):
                    assert client.get(url + "/ok").status_code == 200
                    scraper.once()  # scraped while the load runs: nothing may go back
                for _ in range(n_missing):
                    assert client.get(url + "/missing").status_code == 404
                assert client.get(url + "/boom").status_code == 500
                assert bad_request(url) == 400
                while scraper.scrapes < 25:
                    scraper.once()
            ok = n_ok + load.count
            connections = held + n_ws + ok + n_missing + 1 + 1
            app_requests = ok + n_missing + 1  # the 400 never reached the app
            during = scraper.until(
                lambda s: (
                    get(s, "polycorn_requests_total", status_class="2xx") == ok
                    and get(s, "polycorn_requests_total", status_class="4xx") == n_missing + 1
                    and get(s, "polycorn_requests_total", status_class="5xx") == 1
                    and get(s, "polycorn_requests_total", status_class="1xx") == n_ws
                    and get(s, "polycorn_requests_in_flight") == held + n_ws
                    and get(s, "polycorn_open_connections", protocol="websocket") == n_ws
                    and get(s, "polycorn_open_connections", protocol="http") == held
                    and get(s, "polycorn_connections_accepted_total") == connections
                    and get(s, "polycorn_request_duration_seconds_count") == app_requests + n_ws
                    and sum(served(s).values()) == app_requests
                ),
                "the traffic so far, with requests and WebSockets held open",
            )
            assert get(during, "polycorn_requests_total", status_class="3xx") == 0
            assert get(during, "polycorn_requests_rejected_total") == 0
            assert get(during, "polycorn_requests_queued") == 0
            assert get(during, "polycorn_connections_queued") == 0
            time.sleep(0.3)  # the held requests have now lasted 0.3 s at least
            release.touch()
            for ws in sockets:
                ws.close()
            for sock in holders:
                assert read_response(sock)[0] == 200

        total = app_requests + held
        after = scraper.until(
            lambda s: (
                get(s, "polycorn_requests_total", status_class="2xx") == ok + held
                and get(s, "polycorn_requests_in_flight") == 0
                and get(s, "polycorn_open_connections", protocol="websocket") == 0
                and get(s, "polycorn_open_connections", protocol="http") == 0
                and sum(served(s).values()) == total + n_ws
                and get(s, "polycorn_request_duration_seconds_count") == total + n_ws
            ),
            "everything released and closed",
        )
        count = get(after, "polycorn_request_duration_seconds_count")
        assert get(after, "polycorn_request_duration_seconds_bucket", le="+Inf") == count
        # The held requests lasted longer than 0.25 s: above that bucket, and in the sum.
        assert get(after, "polycorn_request_duration_seconds_bucket", le="0.25") <= count - held
        assert get(after, "polycorn_request_duration_seconds_sum") >= 0.3 * held
        assert get(after, "polycorn_connections_accepted_total") == connections
        restarts = {dict(k[1])["reason"]: v for k, v in after.items() if k[0] == "polycorn_worker_restarts_total"}
        assert restarts == {"crashed": 0, "recycled": 0, "blocked": 0, "rolling": 0}

        if mode == "thread":
            return  # a thread cannot be killed: replacements are tested with --limit-max-requests

        # SIGKILL a worker: a replacement starts and the server-wide totals stay where they were.
        victim = worker_pid(child, 0)
        os.kill(victim, signal.SIGKILL)
        replaced = scraper.until(
            lambda s: (
                get(s, "polycorn_worker_restarts_total", reason="crashed") == 1
                and get(s, "polycorn_workers") == 2
                and set(served(s)) == {"1", "2"}
            ),
            "worker 0 replaced by worker 2",
        )
        for key, value in after.items():
            if key[0].startswith("polycorn_requests_total") or key[0].startswith("polycorn_request_duration"):
                assert replaced[key] == pytest.approx(value), key  # exact but for the float sum
        assert get(replaced, "polycorn_connections_accepted_total") == connections
        assert served(replaced)["2"] == 0
        with fresh_client() as client:
            for _ in range(10):
                assert client.get(url + "/ok").status_code == 200
        scraper.until(
            lambda s: (
                get(s, "polycorn_requests_total", status_class="2xx") == ok + held + 10
                and get(s, "polycorn_request_duration_seconds_count") == total + n_ws + 10
                and get(s, "polycorn_connections_accepted_total") == connections + 10
            ),
            "ten more requests after the replacement",
        )


def test_recycled_workers_keep_the_totals() -> None:
    """Thread workers replaced at --limit-max-requests: restarts counted, no request lost."""
    requests = 23
    with server("--limit-max-requests", "5", workers=1, mode="thread") as (child, url, metrics_url):
        scraper = Scraper(metrics_url)
        with fresh_client() as client:
            for _ in range(requests):
                assert client.get(url + "/ok").status_code == 200
                scraper.once()

        def recycles() -> int:
            return child.output.count("reached --limit-max-requests: recycling it")

        last = scraper.until(
            lambda s: (
                get(s, "polycorn_requests_total", status_class="2xx") == requests
                and get(s, "polycorn_request_duration_seconds_count") == requests
                and get(s, "polycorn_connections_accepted_total") == requests
                and get(s, "polycorn_worker_restarts_total", reason="recycled") == recycles()
                and get(s, "polycorn_workers") == 1
            ),
            "every request counted across the recycles",
        )
        assert recycles() >= 2  # 23 requests at 5 per worker
        assert get(last, "polycorn_worker_restarts_total", reason="crashed") == 0


def test_server_written_errors_and_refused_websockets() -> None:
    """A 408 and a 400 the server answers itself count by status but have no duration; a refused
    WebSocket handshake counts by its status, with a duration, and never as a WebSocket."""
    with server("--timeout-request-header", "0.5", workers=1) as (_child, url, metrics_url):
        port = int(url.rsplit(":", 1)[1])
        with connect(port, timeout=DEADLINE) as sock:
            sock.sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\n")  # the head never ends
            assert read_response(sock)[0] == 408
        assert bad_request(url) == 400
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url.replace("http://", "ws://") + "/deny", open_timeout=DEADLINE)
        assert refused.value.response.status_code == 403
        with fresh_client() as client:
            assert client.get(url + "/ok").status_code == 200
        Scraper(metrics_url).until(
            lambda s: (
                get(s, "polycorn_requests_total", status_class="4xx") == 3
                and get(s, "polycorn_requests_total", status_class="2xx") == 1
                and get(s, "polycorn_requests_total", status_class="1xx") == 0
                and get(s, "polycorn_request_duration_seconds_count") == 2
                and sum(served(s).values()) == 2
                and get(s, "polycorn_connections_accepted_total") == 4
                and get(s, "polycorn_open_connections", protocol="websocket") == 0
            ),
            "two server-written errors, a refused handshake and one request",
        )


# -- --limit-concurrency ----------------------------------------------------------------------------------


def test_rejected_requests(tmp_path: Path) -> None:
    release = tmp_path / "release"
    extra = ("--limit-concurrency", "1", "--limit-concurrency-mode", "reject")
    with server(*extra) as (_child, url, metrics_url):
        scraper = Scraper(metrics_url)
        holder = hold(url, release)
        scraper.until(lambda s: get(s, "polycorn_requests_in_flight") == 1, "the held request in flight")
        with fresh_client() as client:
            for _ in range(4):
                assert client.get(url + "/ok").status_code == 503
        scraper.until(
            lambda s: (
                get(s, "polycorn_requests_rejected_total") == 4
                and get(s, "polycorn_requests_total", status_class="5xx") == 4
                and get(s, "polycorn_requests_total", status_class="2xx") == 0
            ),
            "four rejections",
        )
        release.touch()
        with holder:
            assert read_response(holder)[0] == 200
        scraper.until(
            lambda s: (
                get(s, "polycorn_requests_total", status_class="2xx") == 1
                and get(s, "polycorn_requests_in_flight") == 0
                and get(s, "polycorn_requests_rejected_total") == 4
            ),
            "the held request answered",
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the accept-queue length is read on Linux")
def test_queued_requests_and_connections(tmp_path: Path) -> None:
    """Every client is in flight, queued in a loop, or waiting in a kernel accept queue."""
    release = tmp_path / "release"
    clients = 5
    with server("--limit-concurrency", "1") as (_child, url, metrics_url):
        scraper = Scraper(metrics_url)
        holder = hold(url, release)
        scraper.until(lambda s: get(s, "polycorn_requests_in_flight") == 1, "the held request in flight")
        port = int(url.rsplit(":", 1)[1])
        waiting = []
        try:
            for _ in range(clients):
                sock = connect(port, timeout=DEADLINE)
                waiting.append(sock)
                sock.sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            queued = scraper.until(
                lambda s: (
                    get(s, "polycorn_requests_in_flight") == 1
                    and get(s, "polycorn_requests_queued") >= 1
                    and get(s, "polycorn_requests_queued") + get(s, "polycorn_connections_queued") == clients
                ),
                "every client accounted for",
            )
            assert get(queued, "polycorn_requests_total", status_class="2xx") == 0
        finally:
            release.touch()
        with holder:
            assert read_response(holder)[0] == 200
        for sock in waiting:
            with sock:
                sock.settimeout(DEADLINE)
                assert read_response(sock)[0] == 200
        scraper.until(
            lambda s: (
                get(s, "polycorn_requests_total", status_class="2xx") == clients + 1
                and get(s, "polycorn_requests_queued") == 0
                and get(s, "polycorn_connections_queued") == 0
                and get(s, "polycorn_requests_in_flight") == 0
                and get(s, "polycorn_connections_accepted_total") == clients + 1
            ),
            "every queued request served",
        )


# -- the endpoint, and metrics off ----------------------------------------------------------------------------


def test_one_worker_is_supervised_and_the_endpoint_serves_only_metrics() -> None:
    assert supervised(Config(metrics_port=9100))
    assert not supervised(Config())
    with server(workers=1) as (child, url, metrics_url):
        assert "worker 0 ready" in child.output  # a supervised worker
        app_port = int(url.rsplit(":", 1)[1])
        metrics_port = int(metrics_url.rsplit(":", 1)[1].split("/")[0])
        assert listening_ports(child.proc.pid) == {app_port, metrics_port}
        base = metrics_url.removesuffix("/metrics")
        assert httpx.get(base + "/", timeout=10).status_code == 404
        assert httpx.get(base + "/metrics/x", timeout=10).status_code == 404
        post = httpx.post(metrics_url, timeout=10)
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
        head = httpx.head(metrics_url, timeout=10)
        assert head.status_code == 200
        assert head.content == b""
        # Scrapes are not the application's requests.
        for _ in range(3):
            scrape(metrics_url)
        samples = scrape(metrics_url)
        assert get(samples, "polycorn_connections_accepted_total") == 0
        assert get(samples, "polycorn_request_duration_seconds_count") == 0
        assert get(samples, "polycorn_workers") == 1


def test_metrics_off_nothing_listens() -> None:
    child = polycorn(APP, "--app-dir", FIXTURE_DIR, "--workers", "2", "--port", "0", "--no-access-log")
    try:
        child.wait_for("all 2 workers ready", timeout=DEADLINE)
        app_port = int(child.url().rsplit(":", 1)[1])
        assert listening_ports(child.proc.pid) == {app_port}
        assert "metrics on" not in child.output
    finally:
        child.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            child.proc.wait(20)
        child.kill()


def test_metrics_off_counts_nothing_on_the_request_path() -> None:
    """Without --metrics-port the service has no counters and, without an access log, no clock."""
    srv = RunningServer(metrics_app, access_log=False).start()
    try:
        with httpx.Client(timeout=10) as client:
            assert client.get(srv.url + "/ok").status_code == 200
        service = srv.server.service
        assert service is not None
        assert service.metrics is None
        assert service.timed is False
    finally:
        srv.stop()


def test_loop_counters_buckets() -> None:
    """Each observation lands in the first bucket whose bound it does not exceed (Prometheus' le)."""
    counters = LoopCounters()
    for seconds in (0.0, 0.001, 0.0011, 10.0, 10.5):
        counters.request(200, seconds)
    counters.error(400)
    counters.request(599, 0.2)
    counters.request(999, 0.2)
    assert counters.buckets[0] == 2  # 0 and exactly 1 ms
    assert counters.buckets[1] == 1
    assert counters.buckets[len(DURATION_BOUNDS) - 1] == 1  # exactly 10 s
    assert counters.buckets[-1] == 1  # +Inf
    assert counters.statuses[2] == 5
    assert counters.statuses[4] == 1
    assert counters.statuses[5] == 1
    assert counters.statuses[9] == 1
    assert sum(counters.buckets) == 7


# -- bad input ------------------------------------------------------------------------------------------------


def test_missing_prometheus_client_is_a_usage_error(tmp_path: Path) -> None:
    shadow = tmp_path / "prometheus_client"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named prometheus_client (simulated)')\n")
    result = run_cli(
        APP,
        "--app-dir",
        FIXTURE_DIR,
        "--port",
        "0",
        "--metrics-port",
        str(free_port()),
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "Error: --metrics-port needs prometheus-client (pip install 'polycorn[metrics]')"
    assert "Traceback" not in result.stdout + result.stderr


def test_metrics_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(APP, "--app-dir", FIXTURE_DIR, "--workers", "2", "--port", "0", "--metrics-port", str(port))
    assert result.returncode == 1, result.stderr
    assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "worker 0 ready" not in result.stderr  # no worker was started
