"""Logs users can ship: --access-log-format, --log-format json, colours, --log-config precedence,
and an app crash logged once with its traceback and request line.

In-process servers (``serve``) with the records captured, and the ``polycorn`` command in a child
process, on a pseudo-terminal where colours depend on one.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from polycorn.log_format import ACCESS_FIELDS, JsonFormatter
from tests.conftest import run_cli
from tests.fixture_apps.process import Child, polycorn
from tests.http_apps import capture_polycorn_logs, exchange, open_conn, read_rest, responder, wait_for
from tests.ws_apps import RawClient

ANSI = re.compile(r"\x1b\[[0-9;]*m")
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

#: Every field, separated by '|': one line shows each value.
EVERY_FIELD = "|".join(f"{{{name}}}" for name in ACCESS_FIELDS)


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], list[str]]:
    """``access_lines(n)``: wait for n access records of the in-process server, return their messages."""
    capture_polycorn_logs(caplog, monkeypatch)

    def lines(n: int) -> list[str]:
        def found() -> list[str]:
            got = [r.getMessage() for r in caplog.records if r.name == "polycorn.access"]
            return got if len(got) >= n else []

        return wait_for(found)

    return lines


# -- --access-log-format ---------------------------------------------------------------------------


def test_default_access_line_is_unchanged(serve: Any, access_lines: Callable[[int], list[str]]) -> None:
    srv = serve(responder(body=b"hello"))
    with open_conn(srv.port) as sock:
        sock.sendall(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_rest(sock).startswith(b"HTTP/1.1 200 ")
        port = sock.getsockname()[1]
    (line,) = access_lines(1)
    assert re.fullmatch(rf'127\.0\.0\.1:{port} - "GET /a/b\?x=1&y=%20 HTTP/1\.1" 200 5 \d+\.\d\dms', line), line


def test_every_field(serve: Any, stack: dict[str, str], access_lines: Callable[[int], list[str]]) -> None:
    srv = serve(responder(status=201, body=b"created!"), access_log_format=EVERY_FIELD, **stack)
    with open_conn(srv.port) as sock:
        sock.sendall(
            b"POST /items%2Fx?id=7&q=a+b HTTP/1.1\r\nHost: x\r\nUser-Agent: tester/1.0 (linux)\r\n"
            b"Referer: http://example.com/from\r\nX-Request-ID: req-42\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert read_rest(sock).startswith(b"HTTP/1.1 201 ")
        port = sock.getsockname()[1]
    (line,) = access_lines(1)
    values = dict(zip(ACCESS_FIELDS, line.split("|"), strict=True))
    duration = values.pop("duration_ms")
    assert values == {
        "client": f"127.0.0.1:{port}",
        "method": "POST",
        "target": "/items/x?id=7&q=a+b",  # the path as the app sees it (decoded), the query as sent
        "http_version": "1.1",
        "status": "201",
        "bytes": "8",
        "path": "/items/x",
        "query": "id=7&q=a+b",
        "user_agent": "tester/1.0 (linux)",
        "referer": "http://example.com/from",
        "request_id": "req-42",
        "worker_id": "0",  # a lone in-process server is worker 0
    }
    assert re.fullmatch(r"\d+\.\d\d", duration), duration  # two decimals, as in the default line


def test_absent_fields_head_and_http_10(serve: Any, access_lines: Callable[[int], list[str]]) -> None:
    srv = serve(
        responder(body=b"hello"),
        access_log_format="{target}|{query}|{user_agent}|{referer}|{request_id}|{bytes}|{http_version}",
    )
    assert exchange(srv.port, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert exchange(srv.port, b"GET /g HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert access_lines(2) == [
        "/h||-|-|-|0|1.1",  # a HEAD response sends no body bytes
        "/g||-|-|-|5|1.0",
    ]


def test_format_specs_literal_braces_and_percent(serve: Any, access_lines: Callable[[int], list[str]]) -> None:
    fmt = "{{{status:>5}}} {method!r} {duration_ms:.0f}ms 100% {bytes:04d}"
    srv = serve(responder(status=404, body=b"nope"), access_log_format=fmt)
    assert exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 404")
    (line,) = access_lines(1)
    assert re.fullmatch(r"\{  404\} 'GET' \d+ms 100% 0004", line), line


def test_fields_in_any_order_and_repeated(serve: Any, access_lines: Callable[[int], list[str]]) -> None:
    srv = serve(responder(), access_log_format="{status} {request_id} {method} {status} %s")
    exchange(
        srv.port, b"PUT / HTTP/1.1\r\nHost: x\r\nX-Request-ID: r9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert access_lines(1) == ["200 r9 PUT 200 %s"]


def test_request_text_in_fields_is_escaped(
    serve: Any, stack: dict[str, str], access_lines: Callable[[int], list[str]]
) -> None:
    srv = serve(responder(), access_log_format="{path}|{query}|{user_agent}|{referer}|{request_id}", **stack)
    request = (
        b"GET /x%1b%c2%9b%0aFORGED?q=%85 HTTP/1.1\r\nHost: x\r\nUser-Agent: a\x9bb\x85c\xe9\r\n"
        b"Referer: r\x90\r\nX-Request-ID: id\xc2\x9b\r\nConnection: close\r\n\r\n"
    )
    assert exchange(srv.port, request).startswith(b"HTTP/1.1 200")
    (line,) = access_lines(1)
    # Control bytes (C0, C1) become \xNN; printable latin-1 text stays.
    assert line == "/x\\x1b\\x9b\\x0aFORGED|q=%85|a\\x9bb\\x85c\u00e9|r\\x90|id\u00c2\\x9b", line


def test_status_colour_by_class(serve: Any, access_lines: Callable[[int], list[str]]) -> None:
    statuses = [200, 301, 404, 503]
    apps = {f"/{s}": responder(status=s) for s in statuses}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await apps[scope["path"]](scope, receive, send)

    srv = serve(app, use_colors=True, access_log_format="{method} {status}")
    for s in statuses:
        exchange(srv.port, b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % s)
    assert access_lines(4) == [
        "GET \x1b[32m200\x1b[0m",
        "GET \x1b[36m301\x1b[0m",
        "GET \x1b[33m404\x1b[0m",
        "GET \x1b[31m503\x1b[0m",
    ]


def test_no_colours_unless_asked(serve: Any, access_lines: Callable[[int], list[str]]) -> None:
    srv = serve(responder(), use_colors=False)
    exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (line,) = access_lines(1)
    assert "\x1b" not in line and '" 200 5 ' in line


# -- JSON records, in process ----------------------------------------------------------------------


@pytest.fixture
def json_records() -> Iterator[Callable[[int], list[dict[str, Any]]]]:
    """The polycorn loggers write JSON lines (the real formatter) into a buffer the test reads."""
    buffer = io.StringIO()
    lock = threading.Lock()

    class Handler(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            with lock:
                super().emit(record)

    handler = Handler(buffer)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(name) for name in ("polycorn", "polycorn.error", "polycorn.access")]
    saved = [(lg.handlers, lg.level, lg.propagate, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler] if lg.name != "polycorn.error" else []
        lg.propagate = lg.name == "polycorn.error"
        lg.disabled = False
        lg.setLevel(logging.INFO)

    def records(n: int) -> list[dict[str, Any]]:
        def parsed() -> list[dict[str, Any]]:
            with lock:
                text = buffer.getvalue()
            lines = [json.loads(line) for line in text.splitlines()]
            access = [r for r in lines if r["logger"] == "polycorn.access"]
            return access if len(access) >= n else []

        return wait_for(parsed)

    yield records
    for lg, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        lg.handlers, lg.propagate, lg.disabled = handlers, propagate, disabled
        lg.setLevel(level)


def test_json_access_record_has_every_field(serve: Any, json_records: Callable[[int], list[dict[str, Any]]]) -> None:
    srv = serve(responder(body=b"hello"), log_format="json")
    with open_conn(srv.port) as sock:
        sock.sendall(
            b"GET /j?k=v HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\x85\r\nX-Request-ID: abc\r\nConnection: close\r\n\r\n"
        )
        assert read_rest(sock).startswith(b"HTTP/1.1 200")
        port = sock.getsockname()[1]
    (record,) = json_records(1)
    assert ISO_UTC_MS.fullmatch(record.pop("time"))
    duration = record.pop("duration_ms")
    assert isinstance(duration, float) and duration >= 0
    message = record.pop("message")
    assert re.fullmatch(rf'127\.0\.0\.1:{port} - "GET /j\?k=v HTTP/1\.1" 200 5 \d+\.\d\dms', message)
    assert record == {
        "level": "info",
        "logger": "polycorn.access",
        "client": f"127.0.0.1:{port}",
        "method": "GET",
        "target": "/j?k=v",
        "http_version": "1.1",
        "status": 200,
        "bytes": 5,
        "path": "/j",
        "query": "k=v",
        "user_agent": "ua\\x85",
        "referer": "-",
        "request_id": "abc",
        "worker_id": 0,
    }


# -- the command: bad formats, JSON, workers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "reason"),
    [
        ("{nope}", "unknown field 'nope'; fields: client, method, target"),
        ("{status", "expected '}' before end of string"),
        ("{client:d}", "Unknown format code 'd'"),
        ("{}", "a field name is missing"),
        ("{status:{width}}", "nested fields"),
        ("", "empty format"),
    ],
    ids=["unknown-field", "unclosed", "bad-spec", "positional", "nested", "empty"],
)
def test_bad_access_log_format_exits_2(fmt: str, reason: str) -> None:
    result = run_cli("polycorn.demo:app", "--port", "0", "--access-log-format", fmt)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: --access-log-format: ") and reason in lines[0], lines[0]


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line is one JSON object (a line that is not fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_end_to_end() -> None:
    child = polycorn("polycorn.demo:app", "--port", "0", "--log-format", "json")
    try:
        url = child.url()
        headers = {"User-Agent": "shipper/2", "Referer": "http://r/", "X-Request-ID": "e2e-1"}
        assert httpx.get(url + "/stream?n=1", headers=headers, timeout=10).status_code == 200
        child.wait_for('"request_id":"e2e-1"')
    finally:
        assert child.stop() == 0, child.output
    errors = _json_lines(child.stderr)
    (access,) = _json_lines(child.stdout)
    messages = [r["message"] for r in errors]
    assert any(m.startswith("listening on http://127.0.0.1:") for m in messages), messages
    assert "shutting down" in messages
    for record in [*errors, access]:
        assert ISO_UTC_MS.fullmatch(record["time"]), record
        stamp = datetime.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc
        )
        assert abs(datetime.datetime.now(datetime.timezone.utc) - stamp) < datetime.timedelta(minutes=10)  # UTC
        assert record["level"] == "info"
        assert "\x1b" not in json.dumps(record)
    assert {r["logger"] for r in errors} == {"polycorn.error"}
    assert access["logger"] == "polycorn.access"
    assert access["status"] == 200 and access["bytes"] == 80  # ten "chunk N\n" parts, framing not counted
    assert isinstance(access["duration_ms"], float)
    assert (access["method"], access["path"], access["query"], access["target"]) == (
        "GET",
        "/stream",
        "n=1",
        "/stream?n=1",
    )
    assert (access["user_agent"], access["referer"], access["request_id"]) == ("shipper/2", "http://r/", "e2e-1")
    assert access["client"].startswith("127.0.0.1:") and access["worker_id"] == 0
    assert access["message"].startswith(access["client"] + ' - "GET /stream?n=1 HTTP/1.1" 200 80 ')


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_json_logs_and_worker_ids_in_workers(mode: str) -> None:
    child = polycorn(
        "polycorn.demo:app", "--port", "0", "--workers", "2", "--worker-mode", mode, "--log-format", "json",
        "--access-log-format", "{worker_id} {status}",
    )  # fmt: skip
    seen: set[int] = set()
    try:
        url = child.url(timeout=60)
        child.wait_for('"worker 0 ready', timeout=60)
        child.wait_for('"worker 1 ready', timeout=60)
        # One connection per request: SO_REUSEPORT spreads connections over both workers' sockets.
        deadline = time.monotonic() + 60
        while seen != {0, 1} and time.monotonic() < deadline:
            for _ in range(10):
                with httpx.Client(timeout=10) as client:
                    assert client.get(url + "/").status_code == 200
            time.sleep(0.2)
            seen = {r["worker_id"] for r in _json_lines(child.stdout)}
    finally:
        assert child.stop() == 0, child.output
    access = _json_lines(child.stdout)
    assert seen == {0, 1}, access
    for record in access:
        assert record["message"] == f"{record['worker_id']} 200"
    for record in _json_lines(child.stderr):  # the supervisor's lines and each worker's
        assert ISO_UTC_MS.fullmatch(record["time"]) and record["logger"].startswith("polycorn")


def test_json_encoder_choice_keeps_the_gil_off() -> None:
    """orjson only where the GIL is on anyway; never imported by a free-threaded run without it."""
    code = (
        "import importlib.util, json, sys\n"
        "from polycorn.log_format import json_dumps\n"
        "gil = getattr(sys, '_is_gil_enabled', lambda: True)\n"
        "before = gil()\n"
        "dumps = json_dumps()\n"
        "assert json.loads(dumps({'a': 1, 'b': 'x\\x85'})) == {'a': 1, 'b': 'x\\x85'}\n"
        "print(json.dumps([before, gil(), 'orjson' in sys.modules, importlib.util.find_spec('orjson') is not None]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    gil_before, gil_after, imported, installed = json.loads(result.stdout)
    assert gil_after == gil_before
    if gil_before:
        assert imported == installed
    else:
        assert not imported


# -- an app crash is logged once ----------------------------------------------------------------------

CRASH_APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    if scope["type"] == "websocket":
        await receive()
        if path == "/ws-before":
            raise RuntimeError("crash in ws before accept")
        await send({"type": "websocket.accept"})
        raise RuntimeError("crash in ws after accept")
    if path == "/before":
        raise RuntimeError("crash before start")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if path == "/after":
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("crash after start")
    await send({"type": "http.response.body", "body": b"ok"})
"""

#: path -> the exception message its crash logs.
CRASHES = {
    "/before": "crash before start",
    "/after": "crash after start",
    "/ws-before": "crash in ws before accept",
    "/ws-after": "crash in ws after accept",
}


def _crash_everything(port: int) -> None:
    close = b"Host: x\r\nConnection: close\r\n\r\n"
    assert exchange(port, b"GET /before?x=1 HTTP/1.1\r\n" + close).startswith(b"HTTP/1.1 500 ")
    after = exchange(port, b"GET /after?x=1 HTTP/1.1\r\n" + close)
    assert after.startswith(b"HTTP/1.1 200 ") and b"partial" in after  # then the connection closes
    denied = RawClient(port, "/ws-before?x=1")
    assert denied.status == 500
    denied.close()
    accepted = RawClient(port, "/ws-after?x=1")
    assert accepted.status == 101
    opcode, payload = accepted.recv_frame()
    assert opcode == 8 and accepted.close_code(payload) == 1011
    accepted.close()
    assert exchange(port, b"GET /ok HTTP/1.1\r\n" + close).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_app_crash_logged_once_with_traceback(tmp_path: Path, log_format: str) -> None:
    (tmp_path / "crash_app.py").write_text(CRASH_APP)
    child = polycorn("crash_app:app", "--app-dir", str(tmp_path), "--port", "0", "--log-format", log_format)
    try:
        port = int(child.url().rsplit(":", 1)[1])
        _crash_everything(port)
        child.wait_for("GET /ok HTTP/1.1")  # the last request's access line: every crash is logged by now
    finally:
        assert child.stop() == 0, child.output
    err = child.stderr
    if log_format == "json":
        records = _json_lines(err)
        crashes = [r for r in records if r["level"] == "error"]
        assert len(crashes) == len(CRASHES), crashes
        for path, text in CRASHES.items():
            (record,) = [r for r in crashes if f" {path}?x=1 " in r["message"]]
            assert record["logger"] == "polycorn.error"
            assert re.fullmatch(
                rf'exception in ASGI app while serving "GET {re.escape(path)}\?x=1 HTTP/1\.1" from 127\.0\.0\.1:\d+',
                record["message"],
            ), record["message"]
            assert record["exc_info"].startswith("Traceback (most recent call last):")
            assert record["exc_info"].endswith(f"RuntimeError: {text}")
        assert not [r for r in records if r["level"] in ("warning", "critical")], records
        access = {r["target"]: r for r in _json_lines(child.stdout) if r["logger"] == "polycorn.access"}
        for refused in ("/before?x=1", "/ws-before?x=1"):  # the server's own 500: its body counts
            assert (access[refused]["status"], access[refused]["bytes"]) == (500, len("Internal Server Error"))
    else:
        assert err.count("Traceback (most recent call last):") == len(CRASHES), err
        assert err.count(" ERROR    polycorn.error: exception in ASGI app while serving ") == len(CRASHES), err
        for path, text in CRASHES.items():
            line = re.search(
                rf'ERROR    polycorn.error: .* "GET {re.escape(path)}\?x=1 HTTP/1\.1" from 127\.0\.0\.1:\d+\n', err
            )
            assert line, err
            assert err.count(f"RuntimeError: {text}\n") == 1, err  # the traceback's last line, once
            assert err.index(f"RuntimeError: {text}\n") > line.start()


# -- colours on a terminal ----------------------------------------------------------------------------


class TerminalChild:
    """``polycorn`` with stdout on a pseudo-terminal (a TTY) and stderr on a pipe (not one)."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self._master = master
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polycorn", *args],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=env,
        )
        os.close(slave)
        self._out = b""
        self._err = b""
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read_tty, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_tty(self) -> None:
        while True:
            ready, _, _ = select.select([self._master], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            with self._lock:
                self._out += chunk

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
                with self._lock:
                    self._err += chunk

    @property
    def stdout(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace").replace("\r\n", "\n")

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._err.decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.stderr) or re.search(pattern, self.stdout)
            if match:
                return match
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {pattern!r} in:\n{self.stderr}\n{self.stdout}")
            time.sleep(0.02)

    def stop(self) -> int:
        try:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            for t in self._threads:
                t.join(5)
            os.close(self._master)


def _serve_one_request(child: TerminalChild | Child) -> None:
    if isinstance(child, TerminalChild):
        port = child.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1)
        url = f"http://127.0.0.1:{port}"
    else:
        url = child.url()
    assert httpx.get(url + "/missing", timeout=10).status_code == 404
    child.wait_for("/missing HTTP/1.1")


@pytest.mark.parametrize(
    ("flags", "stdout_tty", "access_coloured", "error_coloured"),
    [
        ((), True, True, False),  # auto: the access log is on the terminal, the error log on a pipe
        (("--no-use-colors",), True, False, False),
        (("--use-colors",), False, True, True),
        ((), False, False, False),
        (("--log-format", "json", "--use-colors"), True, False, False),  # JSON never has colour
    ],
    ids=["auto-tty", "no-use-colors-tty", "use-colors-pipe", "auto-pipe", "json-use-colors-tty"],
)
def test_colours(flags: tuple[str, ...], stdout_tty: bool, access_coloured: bool, error_coloured: bool) -> None:
    args = ("polycorn.demo:app", "--port", "0", *flags)
    child: TerminalChild | Child = TerminalChild(*args) if stdout_tty else polycorn(*args)
    try:
        _serve_one_request(child)
    finally:
        rc = child.stop()
    assert rc == 0, child.stderr + child.stdout
    out, err = child.stdout, child.stderr
    (access,) = [line for line in out.splitlines() if "/missing" in line]
    if access_coloured:
        assert "\x1b[32mINFO    \x1b[0m polycorn.access: " in access, repr(access)
        assert '"GET /missing HTTP/1.1" \x1b[33m404\x1b[0m 9 ' in access, repr(access)
    else:
        assert not ANSI.search(out), repr(out)
    if error_coloured:
        assert "\x1b[32mINFO    \x1b[0m polycorn.error: listening on " in err, repr(err)
    else:
        assert not ANSI.search(err), repr(err)
    if "json" in flags:
        assert _json_lines(out)[0]["status"] == 404
        assert _json_lines(err)


# -- --log-config wins --------------------------------------------------------------------------------

YAML_CONFIG = """
version: 1
disable_existing_loggers: false
formatters:
  plain:
    format: "YAMLFMT %(levelname)s %(name)s: %(message)s"
  access:
    format: "YAMLACCESS status=%(status)s bytes=%(bytes)s ua=%(user_agent)s rid=%(request_id)s worker=%(worker_id)s"
handlers:
  err:
    class: logging.StreamHandler
    formatter: plain
    stream: ext://sys.stderr
  out:
    class: logging.StreamHandler
    formatter: access
    stream: ext://sys.stdout
loggers:
  polycorn:
    handlers: [err]
    level: INFO
    propagate: false
  polycorn.access:
    handlers: [out]
    level: INFO
    propagate: false
"""


def test_log_config_yaml_wins_over_log_format_and_colours(tmp_path: Path) -> None:
    path = tmp_path / "logging.yaml"
    path.write_text(YAML_CONFIG)
    child = TerminalChild(
        "polycorn.demo:app", "--port", "0", "--log-config", str(path), "--log-format", "json", "--use-colors"
    )
    try:
        port = child.wait_for(r"listening on http://127\.0\.0\.1:(\d+)").group(1)
        headers = {"User-Agent": "yaml-agent", "X-Request-ID": "y-1"}
        assert httpx.get(f"http://127.0.0.1:{port}/", headers=headers, timeout=10).status_code == 200
        child.wait_for("YAMLACCESS")
    finally:
        assert child.stop() == 0, child.stderr
    # The user's formatters, fed every access field as a record attribute; no JSON, no colour.
    assert "YAMLACCESS status=200 bytes=13 ua=yaml-agent rid=y-1 worker=0" in child.stdout
    assert "YAMLFMT INFO polycorn.error: listening on http://127.0.0.1:" in child.stderr
    assert (
        "YAMLFMT WARNING polycorn.error: --log-config decides the log format: --log-format and --use-colors are ignored"
        in child.stderr
    )
    assert not ANSI.search(child.stdout + child.stderr)
    assert not [line for line in (child.stdout + child.stderr).splitlines() if line.startswith("{")]


# -- responses the server writes itself --------------------------------------------------------------


def test_bytes_count_the_body_of_error_responses_the_server_writes(
    serve: Any, access_lines: Callable[[int], list[str]]
) -> None:
    release = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/crash":
            raise RuntimeError("crash before start")
        while not release.is_set():  # holds the one --limit-concurrency slot
            await asyncio.sleep(0.005)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    srv = serve(
        app, access_log_format="{target} {status} {bytes}", limit_concurrency=1, limit_concurrency_mode="reject"
    )
    crash = exchange(srv.port, b"GET /crash HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert crash.startswith(b"HTTP/1.1 500 ") and crash.endswith(b"\r\n\r\nInternal Server Error")
    holder = open_conn(srv.port)
    holder.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    wait_for(lambda: srv.server.service is not None and srv.server.service.inflight == 1)
    rejected = exchange(srv.port, b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert rejected.startswith(b"HTTP/1.1 503 ") and rejected.endswith(b"\r\n\r\nService Unavailable")
    release.set()
    assert read_rest(holder).endswith(b"ok")
    holder.close()
    lines = access_lines(3)
    assert lines[:2] == ["/crash 500 21", "/second 503 19"]  # len("Internal Server Error"), len("Service Unavailable")
    assert lines[2] == "/hold 200 2"
