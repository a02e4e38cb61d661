#!/usr/bin/env python3
"""Throughput and latency of Polycorn next to uvicorn, granian and hypercorn, measured with wrk.

One command::

    python loadtests/bench.py --rounds 3 --duration 8 --connections 64 \\
        --scenarios get,json,big,upload,stream,close --servers polycorn,uvicorn,granian,hypercorn --json out.json

Scenarios (routes of ``loadtests/bench_app.py``): ``get`` (``GET /``, 13 bytes), ``json`` (``GET
/json``, a small object), ``big`` (``GET /big``, 100 KiB), ``upload`` (``POST /upload``, a 64 KiB
body the app reads fully; wrk posts it from a generated Lua script), ``stream`` (``GET /stream``,
10 chunks of 1 KiB sent with ``more_body=True``, chunked encoding) and ``close`` (``GET /`` with
``Connection: close``: a new TCP connection per request). Servers that are not installed are skipped.

Every server runs the same raw-ASGI app with one worker and no access log, pinned to one CPU
(``taskset -c 0``); wrk runs pinned to another (``taskset -c 1``) with one thread. Servers are
interleaved over the rounds (the order rotates every round) so that a slow drift of the machine
does not favour whichever server runs first. Each measurement is preceded by a short unrecorded
warm-up.

Per run it records req/s, p50 and p99 latency, wrk's socket errors (by kind) and non-2xx answers,
the CPU the server and wrk used during the run (wrk near 100 % of its core means the *load
generator* is the bottleneck and the numbers understate the server), the server's peak RSS during
the run (process tree) and the 1-minute load average before and after. The summary shows medians
over rounds, each server's ratio to uvicorn (uvicorn-h11 for the -h11 rows), and flags rows with errors. See docs/benchmarks.md for
how to read the numbers.

The helpers are public for the sibling scripts (bench_ws.py, bench_workers.py): the command
builders ``polycorn_command`` & co. (``extra`` arguments appended), ``running_server`` (any command
builder), ``stop``, ``run_wrk``, ``parse_wrk``, ``ServerProbe``, ``fmt``, ``loadavg``, ``machine``
(wrk optional).

Linux only (wrk, taskset, /proc). Needs wrk: ``apt-get install wrk`` (Debian/Ubuntu),
``dnf install wrk`` (Fedora) or ``brew install wrk``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
APP = "bench_app:app"

#: The server every other one is compared with.
BASELINE = "uvicorn"

#: A command line for a port: what ``running_server`` starts.
CommandBuilder = Callable[[int], list[str]]


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """One kind of request, all routes of loadtests/bench_app.py.

    ``wrk_args`` are added to wrk's command line; ``lua``, when set, is a wrk script (``-s``),
    written to a temporary file by ``wrk_arguments``.
    """

    path: str
    description: str
    wrk_args: tuple[str, ...] = ()
    lua: str | None = None


#: wrk sends GET without a body; a script makes it POST 64 KiB.
UPLOAD_LUA = """\
wrk.method = "POST"
wrk.body = string.rep("x", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
"""

#: scenario name -> what to request.
SCENARIOS: dict[str, Scenario] = {
    "get": Scenario("/", "GET /, 13-byte text body, keep-alive"),
    "json": Scenario("/json", "GET /json, small JSON object serialised per request"),
    "big": Scenario("/big", "GET /big, 100 KiB body with Content-Length"),
    "upload": Scenario("/upload", "POST /upload, 64 KiB body the app reads fully", lua=UPLOAD_LUA),
    "stream": Scenario("/stream", "GET /stream, 10 x 1 KiB chunks (more_body=True), chunked encoding"),
    "close": Scenario("/", "GET / with Connection: close, a new connection per request", ("-H", "Connection: close")),
}

#: The scenarios run when --scenarios is not given.
DEFAULT_SCENARIOS = list(SCENARIOS)


def wrk_arguments(scenario: Scenario, workdir: Path) -> list[str]:
    """wrk options for ``scenario``; a Lua script, if any, is written under ``workdir``."""
    argv = list(scenario.wrk_args)
    if scenario.lua is not None:
        script = workdir / f"scenario-{hashlib.sha1(scenario.lua.encode()).hexdigest()[:12]}.lua"
        if not script.exists():
            script.write_text(scenario.lua)
        argv += ["-s", str(script)]
    return argv


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------
def polycorn_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    """``python -m polycorn`` on ``bench_app:app``, one worker, no access log; ``extra`` appended."""
    return [
        sys.executable, "-m", "polycorn", APP, "--app-dir", str(HERE),
        "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", *extra,
    ]  # fmt: skip


def uvicorn_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    """uvicorn, one worker, uvloop and httptools, no access log; ``extra`` appended."""
    return [
        sys.executable, "-m", "uvicorn", APP, "--app-dir", str(HERE),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", *extra,
    ]  # fmt: skip


def granian_command(port: int, extra: Sequence[str] = (), *, websockets: bool = False) -> list[str]:
    """granian ASGI, one worker, no access log, WebSocket off unless ``websockets``; ``extra`` before the app."""
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--working-dir", str(HERE),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--ws" if websockets else "--no-ws",
        "--no-access-log", "--log-level", "warning", *extra, APP,
    ]  # fmt: skip


def hypercorn_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    """hypercorn, one worker on uvloop (no access log unless asked for); ``extra`` before the app."""
    return [
        sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
        "--worker-class", "uvloop", "--log-level", "warning", *extra, APP,
    ]  # fmt: skip


class ServerSpec(NamedTuple):
    """A server: the module that must be importable for it to run, and its command line for a port."""

    module: str
    command: CommandBuilder


#: server name -> how to start it (bench_app:app, one worker, no access log).
def polycorn_h11_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    """Polycorn's pure-Python fallback: asyncio and h11."""
    return polycorn_command(port, ["--loop", "asyncio", "--http", "h11", *extra])


def uvicorn_h11_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    """uvicorn on asyncio and h11 (its own pure-Python mode): the fallback's yardstick."""
    command = uvicorn_command(port, extra)
    command[command.index("uvloop")] = "asyncio"
    command[command.index("httptools")] = "h11"
    return command


def ceiling_command(port: int, extra: Sequence[str] = ()) -> list[str]:
    """loadtests/ceiling.py: a bare uvloop + httptools protocol, no ASGI (``get`` and ``close`` only)."""
    return [sys.executable, str(HERE / "ceiling.py"), "--host", "127.0.0.1", "--port", str(port), *extra]


SERVERS: dict[str, ServerSpec] = {
    "polycorn": ServerSpec("polycorn", polycorn_command),
    "uvicorn": ServerSpec("uvicorn", uvicorn_command),
    "granian": ServerSpec("granian", granian_command),
    "hypercorn": ServerSpec("hypercorn", hypercorn_command),
    "polycorn-h11": ServerSpec("h11", polycorn_h11_command),
    "uvicorn-h11": ServerSpec("uvicorn", uvicorn_h11_command),
    # Asked for by name only, and only meaningful for get and close (it answers 13 bytes to all).
    "ceiling": ServerSpec("uvloop", ceiling_command),
}
#: Run unless --servers names others: the h11 pair is asked for by name.
DEFAULT_SERVERS = ["polycorn", "uvicorn", "granian", "hypercorn"]


def baseline(name: str) -> str:
    """The server a row's ratio is taken against: uvicorn in the same parser mode."""
    return "uvicorn-h11" if name.endswith("-h11") else BASELINE


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    round: int
    server: str
    scenario: str
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    socket_errors: int
    non_2xx: int
    #: socket errors by kind, as wrk reports them: connect, read, write, timeout.
    error_kinds: dict[str, int]
    wrk_cpu_pct: float
    server_cpu_pct: float | None
    loadavg_before: float
    idle_busy_pct: float | None
    loadavg_after: float
    wrk_exit: int
    #: the server's peak RSS during this measurement (the high-water mark is reset before it).
    peak_rss_mib: float | None = None


@dataclass
class ServerRound:
    round: int
    server: str
    peak_rss_mib: float | None
    runs: list[Run] = field(default_factory=list)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _duration_ms(text: str) -> float | None:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        return None
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """req/s, p50, p99, request count, socket errors and non-2xx/3xx answers from wrk's output."""
    result: dict[str, Any] = {"requests_per_s": 0.0, "p50_ms": None, "p99_ms": None}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result["requests_per_s"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s+{pct}%\s+(\S+)\s*$", output, re.MULTILINE):
            result[key] = _duration_ms(m.group(1))
    m = re.search(r"(\d+) requests in", output)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(m.group(1)) if m else 0
    return result


def parse_wrk_errors(output: str) -> dict[str, int]:
    """wrk's socket errors by kind: ``{"connect": .., "read": .., "write": .., "timeout": ..}``.

    ``timeout`` counts requests that got no answer within wrk's timeout (2 s by default), not
    connections; ``read`` includes connections the server closed before a complete response.
    """
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    values = [int(g) for g in m.groups()] if m else [0, 0, 0, 0]
    return dict(zip(("connect", "read", "write", "timeout"), values, strict=True))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (granian runs its worker in a child process)."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, ()))
    return found


def _proc_cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _proc_hwm_mib(pids: list[int]) -> float | None:
    total_kib = 0
    seen = False
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if m := re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE):
            total_kib += int(m.group(1))
            seen = True
    return total_kib / 1024 if seen else None


class ServerProbe:
    """CPU time and peak RSS of a server's process tree.

    With psutil installed, RSS is sampled every 100 ms in a thread and the peak of the tree's sum
    kept; otherwise the kernel's own high-water mark (``VmHWM`` in /proc/PID/status) is summed
    over the tree, which catches even spikes between samples.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._psutil: Any = None
        with contextlib.suppress(ImportError):
            import psutil

            self._psutil = psutil
            self._thread = threading.Thread(target=self._sample_loop, daemon=True)
            self._thread.start()

    def _psutil_tree(self) -> list[Any]:
        root = self._psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def _sample_loop(self) -> None:
        psutil = self._psutil
        while not self._stop.wait(0.1):
            try:
                rss = sum(p.memory_info().rss for p in self._psutil_tree()) / 2**20
            except psutil.Error:
                continue
            self.peak_mib = max(self.peak_mib or 0.0, rss)

    def cpu_seconds(self) -> float | None:
        if self._psutil is not None:
            try:
                return sum(sum(p.cpu_times()[:2]) for p in self._psutil_tree())
            except self._psutil.Error:
                return None
        if not os.path.isdir("/proc"):
            return None
        return _proc_cpu_seconds(process_tree(self.pid))

    def reset_peak(self) -> None:
        """Start a new peak: the sampled one, or the kernel's VmHWM (``clear_refs``, Linux >= 4.0)."""
        if self._psutil is not None:
            self.peak_mib = None
            return
        for pid in process_tree(self.pid):
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5")

    def peak(self) -> float | None:
        """Peak RSS in MiB since the start or the last ``reset_peak``, the server still running."""
        if self._psutil is not None:
            return self.peak_mib
        if not os.path.isdir("/proc"):
            return None
        return _proc_hwm_mib(process_tree(self.pid))

    def finish(self) -> float | None:
        """Peak RSS in MiB; call while the server still runs."""
        if self._psutil is not None:
            self._stop.set()
            self._thread.join()
            return self.peak_mib
        if not os.path.isdir("/proc"):
            return None
        return _proc_hwm_mib(process_tree(self.pid))


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------
def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def server_env() -> dict[str, str]:
    """The environment servers run in: bench_app importable, no WEB_CONCURRENCY."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    env.pop("WEB_CONCURRENCY", None)  # uvicorn would read it as --workers
    return env


@contextlib.contextmanager
def running_server(
    name: str, cpu: str | None, command: CommandBuilder | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Start a server on a free port, wait until it answers ``GET /``, yield (process, port), stop it.

    ``command`` builds its command line for a port; without it, ``SERVERS[name].command``. ``name``
    only labels errors then. Pinned to ``cpu`` with taskset unless None. RuntimeError (with the
    server's output) if it does not answer within 30 s.
    """
    port = free_port()
    build = command if command is not None else SERVERS[name].command
    argv = pinned(cpu, build(port))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=server_env(), cwd=HERE, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 30
            while not _answers(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} did not start ({' '.join(argv)}):\n{tail}")
                time.sleep(0.1)
            yield proc, port
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, up to 15 s to exit, then SIGKILL to the process group (started with start_new_session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the server's session (workers)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def run_wrk(
    url: str, connections: int, duration: float, cpu: str | None, threads: int = 1, extra: Sequence[str] = ()
) -> tuple[str, int, float]:
    """Run wrk to completion: (output, exit code, wrk CPU % of one core over its run).

    ``extra``: more wrk options (``-H``, ``-s script.lua``; see ``wrk_arguments``).
    """
    argv = pinned(cpu, ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", *extra, url])
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        # wait4 returns the child's own rusage: wrk's CPU time, with no /proc polling race.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    cpu_pct = 100.0 * (usage.ru_utime + usage.ru_stime) / wall if wall > 0 else 0.0
    return output, proc.returncode, cpu_pct


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
def _cpu_busy_pct(interval: float = 0.5) -> float | None:
    """How busy all CPUs were over ``interval`` (from /proc/stat), or None off Linux."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 100.0 * (total - (idle1 - idle0)) / total if total > 0 else 0.0


def wait_until_quiet(limit: float, threshold: float = 10.0) -> float | None:
    """Wait up to ``limit`` seconds for the machine to be quiet before a measurement.

    Between runs nothing of the benchmark's own is busy (the server is idle, wrk not running), so
    CPU use above ``threshold`` % is someone else's and would distort the next measurement.
    Returns the busy percentage last seen.
    """
    deadline = time.monotonic() + limit
    while True:
        busy = _cpu_busy_pct()
        if busy is None or busy <= threshold or time.monotonic() >= deadline:
            return busy
        time.sleep(1)


def loadavg() -> float:
    """The 1-minute load average (NaN where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` for None."""
    return "-" if value is None else format(value, spec)


def run_errors(run: Run) -> int:
    """Socket errors plus non-2xx/3xx answers of one run."""
    return run.socket_errors + run.non_2xx


def error_rate_pct(errors: int, requests: int) -> float:
    """Errors as a share of all attempts: wrk's ``requests`` counts completed responses only (non-2xx
    included), socket errors are counted apart, so an attempt is a response or a socket error."""
    attempts = requests + errors
    return 100.0 * errors / attempts if attempts else 0.0


def measure(
    args: argparse.Namespace,
    rnd: int,
    name: str,
    server_cpu: str | None,
    wrk_cpu: str | None,
    workdir: Path,
    command: CommandBuilder | None = None,
) -> ServerRound:
    """One round of ``name``: start it, run every scenario of ``args.scenarios`` with wrk, stop it."""
    with running_server(name, server_cpu, command) as (proc, port):
        probe = ServerProbe(proc.pid)
        result = ServerRound(round=rnd, server=name, peak_rss_mib=None)
        for scenario in args.scenarios:
            url = f"http://127.0.0.1:{port}{SCENARIOS[scenario].path}"
            extra = wrk_arguments(SCENARIOS[scenario], workdir)
            if args.warmup > 0:
                run_wrk(url, args.connections, args.warmup, wrk_cpu, extra=extra)
            time.sleep(args.cooldown)
            idle_busy = wait_until_quiet(args.wait_quiet)
            load_before = loadavg()
            probe.reset_peak()
            cpu_before = probe.cpu_seconds()
            started = time.monotonic()
            output, code, wrk_cpu_pct = run_wrk(url, args.connections, args.duration, wrk_cpu, extra=extra)
            wall = time.monotonic() - started
            cpu_after = probe.cpu_seconds()
            server_cpu_pct = None
            if cpu_before is not None and cpu_after is not None and wall > 0:
                server_cpu_pct = 100.0 * (cpu_after - cpu_before) / wall
            parsed = parse_wrk(output)
            if code != 0 or not parsed["requests_per_s"]:
                print(f"  wrk failed (exit {code}):\n{output}", file=sys.stderr)
            run = Run(
                round=rnd,
                server=name,
                scenario=scenario,
                error_kinds=parse_wrk_errors(output),
                wrk_cpu_pct=wrk_cpu_pct,
                server_cpu_pct=server_cpu_pct,
                loadavg_before=load_before,
                idle_busy_pct=idle_busy,
                loadavg_after=loadavg(),
                wrk_exit=code,
                peak_rss_mib=probe.peak(),
                **parsed,
            )
            result.runs.append(run)
            kinds = ", ".join(f"{k} {v}" for k, v in run.error_kinds.items() if v)
            print(
                f"  round {rnd + 1}  {name:<9} {scenario:<6} {run.requests_per_s:>10,.0f} req/s"
                f"  p50 {fmt(run.p50_ms, '.2f')} ms  p99 {fmt(run.p99_ms, '.2f')} ms"
                f"  errors {run.socket_errors}/{run.non_2xx}{f' ({kinds})' if kinds else ''}"
                f"  wrk cpu {run.wrk_cpu_pct:.0f}%  server cpu {fmt(run.server_cpu_pct, '.0f')}%"
                f"  rss {fmt(run.peak_rss_mib, '.1f')} MiB"
                f"  load {run.loadavg_before:.2f}->{run.loadavg_after:.2f}"
                f"  busy before {fmt(run.idle_busy_pct, '.0f')}%",
                flush=True,
            )
        result.peak_rss_mib = probe.finish()
    return result


def summarize(results: list[ServerRound], servers: list[str], scenarios: list[str]) -> list[dict[str, Any]]:
    """One row per scenario and server: medians over rounds, peak RSS, errors, ratio to uvicorn."""
    rows = []
    for scenario in scenarios:
        medians: dict[str, float] = {}
        scenario_rows: list[dict[str, Any]] = []
        for name in servers:
            runs = [r for sr in results if sr.server == name for r in sr.runs if r.scenario == scenario]
            if not runs:
                continue
            rps = [r.requests_per_s for r in runs]
            p50 = [r.p50_ms for r in runs if r.p50_ms is not None]
            p99 = [r.p99_ms for r in runs if r.p99_ms is not None]
            server_cpu = [r.server_cpu_pct for r in runs if r.server_cpu_pct is not None]
            rss = [r.peak_rss_mib for r in runs if r.peak_rss_mib is not None]
            if not rss:  # no per-run peak (VmHWM could not be reset): the server's whole life
                rss = [sr.peak_rss_mib for sr in results if sr.server == name and sr.peak_rss_mib is not None]
            errors = sum(run_errors(r) for r in runs)
            requests = sum(r.requests for r in runs)
            kinds = {k: sum(r.error_kinds[k] for r in runs) for k in runs[0].error_kinds}
            kinds["non_2xx"] = sum(r.non_2xx for r in runs)
            medians[name] = statistics.median(rps)
            scenario_rows.append(
                {
                    "scenario": scenario,
                    "server": name,
                    "rounds": len(runs),
                    "requests_per_s": statistics.median(rps),
                    "requests_per_s_min": min(rps),
                    "requests_per_s_max": max(rps),
                    "p50_ms": statistics.median(p50) if p50 else None,
                    "p99_ms": statistics.median(p99) if p99 else None,
                    "peak_rss_mib": max(rss) if rss else None,
                    "wrk_cpu_pct": statistics.median(r.wrk_cpu_pct for r in runs),
                    "server_cpu_pct": statistics.median(server_cpu) if server_cpu else None,
                    "requests": requests,
                    "errors": errors,
                    "error_kinds": kinds,
                    "error_pct": error_rate_pct(errors, requests),
                    "failed": any(r.wrk_exit != 0 or not r.requests_per_s for r in runs),
                }
            )
        for row in scenario_rows:
            base = medians.get(baseline(row["server"]))
            row["vs_uvicorn"] = row["requests_per_s"] / base if base else None
        rows.extend(scenario_rows)
    return rows


def _errors_cell(row: dict[str, Any]) -> str:
    if row["failed"]:
        return f"**FAILED** {row['errors']:,}"
    if not row["errors"]:
        return "0"
    return f"⚠ {row['errors']:,} ({row['error_pct']:.1f} %)"


def render_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    header = (
        "| scenario | server | req/s (median) | min–max | p50 ms | p99 ms | vs uvicorn "
        "| peak RSS MiB | server CPU | wrk CPU | errors |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        ratio = row["vs_uvicorn"]
        lines.append(
            f"| {row['scenario']} | {row['server']} | {row['requests_per_s']:,.0f} "
            f"| {row['requests_per_s_min']:,.0f}–{row['requests_per_s_max']:,.0f} "
            f"| {fmt(row['p50_ms'], '.2f')} | {fmt(row['p99_ms'], '.2f')} "
            f"| {'-' if ratio is None else f'{ratio:.2f}×'} | {fmt(row['peak_rss_mib'], '.1f')} "
            f"| {fmt(row['server_cpu_pct'], '.0f')} % | {row['wrk_cpu_pct']:.0f} % | {_errors_cell(row)} |"
        )
    return "\n".join(lines)


def error_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per flagged row: errors by kind against the responses wrk counted."""
    notes = []
    for row in rows:
        if row["errors"] or row["failed"]:
            kinds = ", ".join(f"{k} {v:,}" for k, v in row["error_kinds"].items() if v) or "none counted"
            notes.append(
                f"{row['server']}/{row['scenario']}: {row['requests']:,} responses, {row['errors']:,} errors"
                f" ({kinds}){'; wrk failed or got no response' if row['failed'] else ''}"
            )
    return notes


def wrk_version() -> str | None:
    """wrk's version line, or None when wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (wrk.stdout + wrk.stderr).split("\n", 1)[0]
    return first.removeprefix("wrk ").split(" Copyright")[0].strip()


def machine(wrk: bool = True, dists: Sequence[str] = ()) -> dict[str, Any]:
    """CPUs, system, Python and the versions of the servers (plus ``dists``); wrk's too when ``wrk``
    and it is installed (a missing wrk is left out, not an error)."""
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("polycorn", "uvicorn", "granian", "hypercorn", "uvloop", "httptools", *dists):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    if wrk and (version := wrk_version()) is not None:
        versions["wrk"] = version
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "system": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "polycorn_build": polycorn_build(),
    }


def polycorn_build() -> str:
    """Which build of Polycorn this interpreter serves (polycorn.version.build)."""
    try:
        from polycorn.version import build
    except ImportError:
        return "not installed"
    return build()


def csv_choices(choices: dict[str, Any]) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated list of keys of ``choices``."""

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [s for s in items if s not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (got {text!r})")
        return items

    return parse


def add_round_options(parser: argparse.ArgumentParser, *, rounds_per: str, duration: float, measured: str) -> None:
    """The options every benchmark script shares: rounds, measurement window, warm-up, quiet wait, JSON."""
    parser.add_argument("--rounds", type=int, default=3, help=f"measurements per {rounds_per}")
    parser.add_argument("--duration", type=float, default=duration, help=f"seconds per {measured}")
    parser.add_argument("--warmup", type=float, default=1, help=f"unrecorded seconds before each {measured}")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=30,
        help="before each measurement, wait up to this many seconds for other processes' CPU use to drop below 10 %%",
    )
    parser.add_argument("--cooldown", type=float, default=0.5, help="seconds of rest before each measurement")
    parser.add_argument("--json", metavar="PATH", help="also write every run and the summary as JSON here")


def write_json(path: str, payload: dict[str, Any]) -> None:
    """The ``--json`` file every benchmark script writes: settings, summary and every run."""
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark Polycorn against uvicorn, granian and hypercorn with wrk.",
        epilog="scenarios: " + "; ".join(f"{k}: {v.description}" for k, v in SCENARIOS.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_round_options(parser, rounds_per="server and scenario", duration=8, measured="wrk measurement")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (-c)")
    parser.add_argument("--scenarios", type=csv_choices(SCENARIOS), default=DEFAULT_SCENARIOS, help="comma-separated")
    parser.add_argument(
        "--servers",
        type=csv_choices(SERVERS),
        default=DEFAULT_SERVERS,
        help="comma-separated; polycorn-h11 and uvicorn-h11 (asyncio + h11) compare the pure-Python modes",
    )
    parser.add_argument("--server-cpu", default="0", help="CPU list for the server (taskset -c)")
    parser.add_argument("--wrk-cpu", default="1", help="CPU list for wrk (taskset -c)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed. Install it with `apt-get install wrk` (Debian/Ubuntu),\n"
            "`dnf install wrk` (Fedora) or `brew install wrk` (macOS), or build it from\n"
            "https://github.com/wg/wrk, then run this again.",
            file=sys.stderr,
        )
        return 2
    servers = []
    for name in args.servers:
        if not installed(SERVERS[name].module):
            print(f"skipping {name}: not installed (pip install {name})", file=sys.stderr)
        else:
            servers.append(name)
    if not servers:
        print("no server to benchmark", file=sys.stderr)
        return 2
    server_cpu: str | None = args.server_cpu
    wrk_cpu: str | None = args.wrk_cpu
    if args.no_pin:
        server_cpu = wrk_cpu = None
    elif shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("warning: taskset missing or fewer than 2 CPUs: running unpinned", file=sys.stderr)
        server_cpu = wrk_cpu = None

    info = machine()
    print(
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['system']}, {info['python']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f"; polycorn build: {info['polycorn_build']}",
        flush=True,
    )
    print(
        f"{args.rounds} rounds x {len(servers)} servers x {len(args.scenarios)} scenarios, "
        f"{args.duration:g}s each, wrk -t1 -c{args.connections}; server on CPU {server_cpu}, wrk on CPU {wrk_cpu}",
        flush=True,
    )
    results: list[ServerRound] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        for rnd in range(args.rounds):
            shift = rnd % len(servers)
            for name in servers[shift:] + servers[:shift]:  # rotate the order every round
                try:
                    results.append(measure(args, rnd, name, server_cpu, wrk_cpu, Path(workdir)))
                except RuntimeError as exc:  # running_server: the server did not start
                    print(f"  round {rnd + 1}  {name:<9} {exc}", file=sys.stderr, flush=True)
                    failures.append(f"round {rnd + 1} {name}: did not start")

    rows = summarize(results, servers, args.scenarios)
    print()
    print(render_table(rows))
    notes = error_notes(rows)
    if notes or failures:
        print("\nerrors (wrk's socket errors by kind and non-2xx/3xx answers, against the responses it counted):")
        for line in notes + failures:
            print(f"  {line}")
    busy = [r for r in rows if r["wrk_cpu_pct"] >= 90]
    if busy:
        print(
            "\nnote: wrk used >= 90 % of its CPU for "
            + ", ".join(f"{r['server']}/{r['scenario']}" for r in busy)
            + ": the load generator may be the bottleneck there, so those figures are a lower bound"
            " (a server's share of its core, 'server CPU', still compares them)."
        )
    starved = [
        f"round {r.round + 1} {r.server}/{r.scenario} ({fmt(r.server_cpu_pct, '.0f')} %)"
        for sr in results
        for r in sr.runs
        if r.server_cpu_pct is not None and r.server_cpu_pct < 90 and r.wrk_cpu_pct < 90
    ]
    if starved:
        print(
            "\nnote: the server got < 90 % of its CPU while wrk was not saturated either in "
            + ", ".join(starved)
            + ": another process probably took CPU time during those runs (compare the load average);"
            " the medians above damp such outliers, a quiet machine avoids them."
        )
    if args.json:
        payload = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
            "machine": info,
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "scenarios": {name: asdict(SCENARIOS[name]) for name in args.scenarios},
                "server_cpu": server_cpu,
                "wrk_cpu": wrk_cpu,
            },
            "summary": rows,
            "runs": [asdict(sr) for sr in results],
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
