"""Polycorn behind a real nginx (the Debian package), configured as docs/deploy/nginx.md advises.

Each test writes its own nginx.conf into tmp_path and runs nginx in the foreground on loopback, as
whoever runs the tests (pid file, logs and temp directories all under tmp_path: nothing in /etc or
/var is touched). Skipped where nginx is not installed; .ci/run installs it where it can.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from polycorn.connection import HttpConnection
from tests.conftest import RunningServer, free_port


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


NGINX = _find_nginx()
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it where it can)",
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what it was told about the request: client, scheme, host, body size."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message["body"])
        if not message["more_body"]:
            break
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    body = json.dumps(
        {
            "client": scope["client"],
            "scheme": scope["scheme"],
            "host": headers.get("host"),
            "path": scope["path"],
            "method": scope["method"],
            "received": size,
        }
    ).encode()
    response_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def upstream_connections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The peer port of every connection Polycorn accepts (nginx's side of each upstream connection)."""
    ports: list[int] = []
    original = HttpConnection.connection_made

    def connection_made(self: HttpConnection, transport: Any) -> None:
        ports.append(transport.get_extra_info("peername")[1])
        original(self, transport)

    monkeypatch.setattr(HttpConnection, "connection_made", connection_made)
    return ports


#: An nginx in the foreground, with every file it writes in {tmp}; ``{http}``: the http block's body.
NGINX_MAIN = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http}
}}
"""

NGINX_HTTP = """
    upstream polycorn {{
        server 127.0.0.1:{upstream};
        keepalive 16;
        keepalive_timeout {keepalive_timeout};
    }}

    server {{
        listen 127.0.0.1:{port}{ssl};
        {certificates}
        location / {{
            proxy_pass http://polycorn;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # No second try on another connection: a request lost on a reused upstream
            # connection shows as a 502 here, instead of being retried quietly.
            proxy_next_upstream off;
        }}
    }}
"""


class Nginx:
    def __init__(self, tmp: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.tmp = tmp
        self.port = port
        self.proc = proc

    @property
    def error_log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def run_nginx(tmp: Path, port: int, http: str, timeout: float = 10.0) -> Nginx:
    """Start nginx with ``http`` as its http block's body and wait until it accepts on ``port``."""
    assert NGINX is not None
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(tmp=tmp, http=http), encoding="utf-8")
    # -e: the error log before the configuration is read (else nginx tries /var/log/nginx).
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Nginx(tmp, port, proc)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"nginx did not start (exit {proc.poll()}):\n{server.error_log}") from None
            time.sleep(0.02)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[..., Nginx]]:
    """``nginx(upstream_port, keepalive_timeout="500ms", tls=False)`` starts nginx in front of Polycorn."""
    started: list[Nginx] = []

    def start(upstream: int, keepalive_timeout: str = "60s", tls: bool = False) -> Nginx:
        assert NGINX is not None
        tmp = tmp_path / f"nginx{len(started)}"
        tmp.mkdir()
        certificates = ""
        if tls:
            if OPENSSL is None:
                pytest.skip("openssl is not installed: no certificate for nginx's TLS listener")
            key, cert = str(tmp / "key.pem"), str(tmp / "cert.pem")
            subject = ["-subj", "/CN=localhost", "-days", "1"]
            subprocess.run(
                [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", *subject, "-keyout", key, "-out", cert],
                check=True,
                capture_output=True,
                timeout=60,
            )
            certificates = f"ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;"
        port = free_port()
        http = NGINX_HTTP.format(
            upstream=upstream,
            keepalive_timeout=keepalive_timeout,
            port=port,
            ssl=" ssl" if tls else "",
            certificates=certificates,
        )
        server = run_nginx(tmp, port, http)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def polycorn_server(serve: Callable[..., RunningServer]) -> Callable[..., RunningServer]:
    """conftest's ``serve`` with the fixture app, trusting nginx's address (127.0.0.1)."""

    def start(**options: Any) -> RunningServer:
        options.setdefault("log_level", "warning")
        options.setdefault("forwarded_allow_ips", "127.0.0.1")
        return serve(app, **options)

    return start


def client_from(address: str, tls: bool = False) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (any 127.x.y.z is loopback on Linux)."""
    transport = httpx.HTTPTransport(local_address=address, verify=False, retries=0)
    return httpx.Client(transport=transport, timeout=10, trust_env=False)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_client_address_and_scheme_reach_the_app(
    tls: bool, nginx: Callable[..., Nginx], polycorn_server: Callable[..., RunningServer]
) -> None:
    srv = polycorn_server()
    proxy = nginx(srv.port, tls=tls)
    scheme = "https" if tls else "http"
    # Not 127.0.0.1: the address nginx connects to Polycorn from must not pass for the client's.
    with client_from("127.0.0.2") as client:
        response = client.post(f"{scheme}://localhost:{proxy.port}/where?x=1", content=b"abc")
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["client"] == ["127.0.0.2", 0]  # from X-Forwarded-For, trusted from nginx's 127.0.0.1
    assert seen["scheme"] == scheme  # from X-Forwarded-Proto
    assert seen["host"] == "localhost"
    assert (seen["method"], seen["path"], seen["received"]) == ("POST", "/where", 3)


def test_upstream_keep_alive_reuses_connections(
    nginx: Callable[..., Nginx], polycorn_server: Callable[..., RunningServer], upstream_connections: list[int]
) -> None:
    srv = polycorn_server(timeout_keep_alive=65)
    proxy = nginx(srv.port)
    with client_from("127.0.0.3") as client:
        for i in range(40):
            response = client.get(f"http://127.0.0.1:{proxy.port}/seq/{i}")
            assert response.status_code == 200 and response.json()["path"] == f"/seq/{i}"
        sequential = len(upstream_connections)
        statuses: list[int] = []
        lock = threading.Lock()

        def burst(n: int) -> None:
            # A client per thread: httpcore's pool is not safe to share across threads with the
            # GIL off (its keep-alive expiry check raced on 3.13t). The upstream side is measured.
            with client_from("127.0.0.3") as own:
                for j in range(10):
                    status = own.post(f"http://127.0.0.1:{proxy.port}/burst/{n}/{j}", content=b"x" * 1000).status_code
                    with lock:
                        statuses.append(status)

        threads = [threading.Thread(target=burst, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert statuses == [200] * 60
    # 40 requests one after another share one upstream connection; 60 from 6 threads need at
    # most 6 (nginx keeps up to 16 idle ones).
    assert sequential == 1, upstream_connections
    assert len(upstream_connections) <= 1 + 6, upstream_connections


def test_no_502_when_nginx_reuses_idle_connections_near_the_keep_alive_timeout(
    nginx: Callable[..., Nginx], polycorn_server: Callable[..., RunningServer], upstream_connections: list[int]
) -> None:
    """The documented advice: nginx gives up an idle upstream connection (keepalive_timeout 500ms)
    before Polycorn would close it (--timeout-keep-alive 1). Requests come after pauses on both
    sides of both timeouts; none may fail. POST, which nginx would not retry anyway."""
    srv = polycorn_server(timeout_keep_alive=1.0)
    proxy = nginx(srv.port, keepalive_timeout="500ms")
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        pauses = [0.3, 0.45, 0.5, 0.55, 0.7, 0.95, 1.0, 1.05]
        random.Random(seed).shuffle(pauses)
        with client_from("127.0.0.4") as http:
            for pause in pauses:
                time.sleep(pause)
                try:
                    status = http.post(f"http://127.0.0.1:{proxy.port}/pause/{pause}", content=b"payload").status_code
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert statuses == {200: 32}, statuses
    log = nginx_errors(proxy)
    assert log == [], log
    # Pauses under 500 ms reused a connection: fewer connections than requests.
    assert len(upstream_connections) < 32, upstream_connections


def nginx_errors(proxy: Nginx) -> list[str]:
    """Error-log lines about the upstream (a reset, a premature close, a failed connect)."""
    return [line for line in proxy.error_log.splitlines() if "upstream" in line and "[info]" not in line]
