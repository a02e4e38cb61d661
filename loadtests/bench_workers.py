#!/usr/bin/env python3
"""How Polycorn scales from one worker to two, next to ``uvicorn --workers``, measured with wrk.

One command::

    python loadtests/bench_workers.py --rounds 3 --json loadtests/results/bench_workers.json

For each *variant* (a server and a worker count: ``polycorn:1``, ``polycorn:2``, ``uvicorn:1``,
``uvicorn:2`` by default) it starts the server on the benchmark app (``loadtests/bench_app.py``)
and runs ``wrk -t2 -c64 -d5s`` against two routes:

* ``get``: ``GET /``, a 13-byte answer, where nearly all the CPU goes to the server itself;
* ``cpu``: ``GET /cpu``, a handler that computes for about 1 ms in pure Python, where most of the
  CPU goes to the application.

Nothing is pinned by default: the server is meant to use every core, so the server and wrk share
the machine's CPUs, and on a small machine wrk takes a good part of them (its CPU use is shown).
``--pin`` adds the variant ``polycorn:2:pin`` (``--pin-cpus``: worker *i* on CPU *i*).

Process workers are measured everywhere; ``polycorn:2:thread`` (``--worker-mode thread``) is added
when the interpreter that runs the servers (``--python``, default: this one) is a free-threaded
build with the GIL off. ``--variants`` names the variants explicitly, thread mode under a GIL
included (the threads then take turns on one core).

Variants are interleaved: each round runs every variant once, in an order that rotates from round
to round, and each is started fresh. The summary shows medians over rounds, the ratio of N workers
to one worker of the same server, and how requests were spread over the workers, measured twice:

* under wrk (keep-alive connections): from the supervisor's per-worker ``served`` counters, which
  ``SIGUSR1`` makes it log (Polycorn with a supervisor only: a single Polycorn worker, like
  uvicorn, does not handle SIGUSR1);
* on fresh connections: ``--sample`` requests to ``GET /worker``, each on its own connection, each
  answer naming its process and thread in an ``x-worker`` header (every server).

Linux only (wrk, /proc). Needs wrk: ``apt-get install wrk``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The sibling script, importable once its folder is on sys.path.
from bench import (
    ServerProbe,
    add_round_options,
    fmt,
    free_port,
    loadavg,
    parse_wrk,
    run_wrk,
    stop,
    wait_until_quiet,
    write_json,
)

HERE = Path(__file__).resolve().parent
APP = "bench_app:app"

#: scenario name -> request path (routes of loadtests/bench_app.py).
SCENARIOS: dict[str, str] = {"get": "/", "cpu": "/cpu"}

#: The supervisor's answer to SIGUSR1, one line per worker (loops/supervisor.py, log_stats()).
STATS_LINE = re.compile(r"worker (\d+): (\d+) in flight, (\d+) connections, (\d+) served")

#: Workers publish their counters once a second without a concurrency limit
#: (loops/coordination.py, STATS_CADENCE): wait a little longer before asking for them.
STATS_SETTLE = 1.2

#: What the interpreter running the servers is: build, GIL at start-up, versions.
_PROBE = """
import importlib.metadata as m, json, platform, sys, sysconfig
versions = {}
for dist in ("polycorn", "uvicorn", "uvloop", "httptools"):
    try:
        versions[dist] = m.version(dist)
    except m.PackageNotFoundError:
        pass
print(json.dumps({
    "python": f"{platform.python_implementation()} {platform.python_version()}",
    "free_threaded_build": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    "gil_enabled": bool(getattr(sys, "_is_gil_enabled", lambda: True)()),
    "versions": versions,
}))
"""


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    server: str  # polycorn | uvicorn
    workers: int
    mode: str = "process"  # process | thread (polycorn only)
    pin: bool = False  # polycorn --pin-cpus
    shared: bool = False  # polycorn --no-reuse-port: one listening socket for all workers

    @property
    def name(self) -> str:
        extra = [self.mode] if self.mode != "process" else []
        extra += ["pin"] * self.pin + ["shared"] * self.shared
        return ":".join([self.server, str(self.workers), *extra])

    @property
    def supervised(self) -> bool:
        """Whether Polycorn runs a supervisor (which answers SIGUSR1 with per-worker stats)."""
        return self.server == "polycorn" and self.workers > 1

    def argv(self, python: str, port: int) -> list[str]:
        common = ["--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        if self.server == "uvicorn":
            return [
                python, "-m", "uvicorn", APP, *common, "--workers", str(self.workers),
                "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
            ]  # fmt: skip
        argv = [
            python, "-m", "polycorn", APP, *common, "--workers", str(self.workers),
            "--worker-mode", self.mode, "--log-level", "info",  # info: the SIGUSR1 stats are info lines
        ]  # fmt: skip
        if self.pin:
            argv.append("--pin-cpus")
        if self.shared:
            argv.append("--no-reuse-port")
        return argv


def parse_variant(text: str) -> Variant:
    parts = text.strip().split(":")
    if len(parts) < 2 or parts[0] not in ("polycorn", "uvicorn") or not parts[1].isdigit() or int(parts[1]) < 1:
        raise argparse.ArgumentTypeError(f"expected SERVER:N[:thread][:pin][:shared], got {text!r}")
    extra = set(parts[2:])
    unknown = extra - {"thread", "pin", "shared"}
    if unknown or (extra and parts[0] != "polycorn"):
        raise argparse.ArgumentTypeError(f"{text!r}: thread, pin and shared apply to polycorn only")
    return Variant(
        parts[0], int(parts[1]), "thread" if "thread" in extra else "process", "pin" in extra, "shared" in extra
    )


# --------------------------------------------------------------------------------------------
# A running server
# --------------------------------------------------------------------------------------------
class RunningServer:
    def __init__(self, variant: Variant, proc: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        self.variant = variant
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def worker_stats(self, timeout: float = 3.0) -> dict[int, int] | None:
        """Per-worker ``served`` counters, from the supervisor's answer to SIGUSR1."""
        if not self.variant.supervised:
            return None
        start = len(self.log())
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = STATS_LINE.findall(self.log()[start:])
            if len(rows) >= self.variant.workers:
                time.sleep(0.05)  # let the last lines of the same answer arrive
                rows = STATS_LINE.findall(self.log()[start:])
                return {int(w): int(served) for w, _inflight, _conns, served in rows}
            time.sleep(0.05)
        return None


def _request(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    """One request on a fresh connection: (status, lower-cased headers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1]) if head and len(head[0].split()) > 1 else 0
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def sample_workers(port: int, count: int) -> tuple[Counter[str], int]:
    """``count`` requests to /worker, each on a fresh connection: answers per worker, failures."""
    seen: Counter[str] = Counter()
    failed = 0
    for _ in range(count):
        try:
            status, headers = _request(port, "/worker")
        except OSError:
            failed += 1
            continue
        if status == 200 and "x-worker" in headers:
            seen[headers["x-worker"]] += 1
        else:
            failed += 1
    return seen, failed


@contextlib.contextmanager
def running(variant: Variant, python: str) -> Iterator[RunningServer]:
    port = free_port()
    argv = variant.argv(python, port)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    env.pop("WEB_CONCURRENCY", None)  # both servers read it as --workers
    with tempfile.NamedTemporaryFile(prefix="bench-workers-", suffix=".log") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE, start_new_session=True)
        server = RunningServer(variant, proc, port, log.name)
        try:
            deadline = time.monotonic() + 60
            ready = f"all {variant.workers} workers ready"

            def started() -> bool:
                if variant.supervised and ready not in server.log():
                    return False
                with contextlib.suppress(OSError):
                    return _request(port, "/", timeout=1)[0] == 200
                return False

            while not started():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{variant.name} did not start ({' '.join(argv)}):\n{server.log()[-3000:]}")
                time.sleep(0.1)
            if variant.server == "uvicorn" and variant.workers > 1:
                time.sleep(1.0)  # uvicorn says nothing when its workers are up: give them a moment
            yield server
        finally:
            stop(proc)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    round: int
    variant: str
    scenario: str
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    socket_errors: int
    non_2xx: int
    wrk_cpu_pct: float
    server_cpu_pct: float | None
    #: CPU that other processes used during the run (% of one core): the machine's busy time
    #: less the server's and wrk's
    others_cpu_pct: float | None
    #: CPU left idle on the machine during the run (% of one core)
    idle_cpu_pct: float | None
    idle_busy_pct: float | None
    loadavg_before: float
    loadavg_after: float
    wrk_exit: int
    #: requests each worker served during the measurement (SIGUSR1 counters), by worker id
    per_worker: dict[str, int] | None = None
    #: which attempt this is (--retry-noisy repeats runs disturbed by other processes)
    attempt: int = 1


@dataclass
class VariantRound:
    round: int
    variant: str
    peak_rss_mib: float | None
    runs: list[Run] = field(default_factory=list)
    #: fresh-connection sample: answers per x-worker identity, and failed requests
    sample: dict[str, int] = field(default_factory=dict)
    sample_failed: int = 0
    warnings: list[str] = field(default_factory=list)


def _shares(counts: dict[str, int] | Counter[str] | None) -> str:
    """'52/48' : each worker's share in percent, largest first."""
    if not counts:
        return "-"
    total = sum(counts.values())
    if total <= 0:
        return "-"
    return "/".join(f"{100 * v / total:.0f}" for v in sorted(counts.values(), reverse=True))


def _cpu_jiffies() -> tuple[int, int, int] | None:
    """(all, busy, idle) CPU time of the whole machine so far, from /proc/stat, in clock ticks.

    Busy is user + nice + system time: the interrupt and softirq columns are left out, since on
    loopback they are mostly the benchmark's own network traffic, charged to no process.
    """
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is within user)
    return total, fields[0] + fields[1] + fields[2], fields[3] + fields[4]


def measure_once(args: argparse.Namespace, rnd: int, server: RunningServer, probe: ServerProbe, scenario: str) -> Run:
    variant = server.variant
    url = f"http://127.0.0.1:{server.port}{SCENARIOS[scenario]}"
    if args.warmup > 0:
        run_wrk(url, args.connections, args.warmup, None, threads=args.wrk_threads)
    time.sleep(args.cooldown)
    idle_busy = wait_until_quiet(args.wait_quiet)
    before = None
    if variant.supervised:
        time.sleep(STATS_SETTLE)
        before = server.worker_stats()
    load_before = loadavg()
    cpu_before = probe.cpu_seconds()
    machine_before = _cpu_jiffies()
    started = time.monotonic()
    output, code, wrk_cpu = run_wrk(url, args.connections, args.duration, None, threads=args.wrk_threads)
    wall = time.monotonic() - started
    machine_after = _cpu_jiffies()
    cpu_after = probe.cpu_seconds()
    load_after = loadavg()
    per_worker = None
    if before is not None:
        time.sleep(STATS_SETTLE)
        after = server.worker_stats()
        if after is not None:
            per_worker = {str(w): after[w] - before.get(w, 0) for w in sorted(after)}
    server_cpu = None
    if cpu_before is not None and cpu_after is not None and wall > 0:
        server_cpu = 100.0 * (cpu_after - cpu_before) / wall
    others_cpu = idle_cpu = None
    if machine_before and machine_after and server_cpu is not None:
        total, busy, idle = (a - b for a, b in zip(machine_after, machine_before, strict=True))
        if total > 0:
            # Everything busy on the machine, as % of one core, less the server and wrk.
            cores = 100.0 * (os.cpu_count() or 1)
            others_cpu = max(0.0, cores * busy / total - server_cpu - wrk_cpu)
            idle_cpu = cores * idle / total
    parsed = parse_wrk(output)
    if code != 0 or not parsed["requests_per_s"]:
        print(f"  wrk failed (exit {code}):\n{output}", file=sys.stderr)
    run = Run(
        round=rnd,
        variant=variant.name,
        scenario=scenario,
        wrk_cpu_pct=wrk_cpu,
        server_cpu_pct=server_cpu,
        others_cpu_pct=others_cpu,
        idle_cpu_pct=idle_cpu,
        idle_busy_pct=idle_busy,
        loadavg_before=load_before,
        loadavg_after=load_after,
        wrk_exit=code,
        per_worker=per_worker,
        **parsed,
    )
    served = f"  per worker {_shares(per_worker)} % of {sum(per_worker.values())}" if per_worker else ""
    print(
        f"  round {rnd + 1}  {variant.name:<18} {scenario:<4} {run.requests_per_s:>9,.0f} req/s"
        f"  p50 {fmt(run.p50_ms, '.2f')} ms  p99 {fmt(run.p99_ms, '.2f')} ms"
        f"  errors {run.socket_errors}/{run.non_2xx}  server cpu {fmt(server_cpu, '.0f')}%"
        f"  wrk cpu {wrk_cpu:.0f}%  others {fmt(others_cpu, '.0f')}%  idle {fmt(idle_cpu, '.0f')}%"
        f"  busy before {fmt(idle_busy, '.0f')}%"
        f"  load {load_before:.2f}->{load_after:.2f}{served}",
        flush=True,
    )
    return run


def noisy(run: Run, threshold: float) -> bool:
    """Other processes took CPU during the run *and* the machine had none to spare.

    Other processes on a core the server could not have used anyway (one worker on two cores)
    do not count: they took nothing from it.
    """
    if run.others_cpu_pct is None or run.others_cpu_pct <= threshold:
        return False
    return run.idle_cpu_pct is None or run.idle_cpu_pct < 20


def measure(args: argparse.Namespace, rnd: int, variant: Variant) -> VariantRound:
    with running(variant, args.python) as server:
        probe = ServerProbe(server.proc.pid)
        result = VariantRound(round=rnd, variant=variant.name, peak_rss_mib=None)
        for scenario in args.scenarios:
            # On a shared machine, repeat a run that other processes took CPU from; keep the
            # cleanest attempt.
            attempts: list[Run] = []
            for attempt in range(1 + args.retry_noisy):
                run = measure_once(args, rnd, server, probe, scenario)
                run.attempt = attempt + 1
                attempts.append(run)
                if not noisy(run, args.noisy_threshold):
                    break
                if attempt < args.retry_noisy:
                    print(f"    other processes used {run.others_cpu_pct:.0f} % of a core: repeating", flush=True)
            result.runs.append(min(attempts, key=lambda r: (noisy(r, args.noisy_threshold), r.others_cpu_pct or 0.0)))
        if args.sample > 0:
            seen, failed = sample_workers(server.port, args.sample)
            result.sample, result.sample_failed = dict(seen), failed
            print(
                f"  round {rnd + 1}  {variant.name:<18} fresh connections: {len(seen)} worker(s), "
                f"{_shares(seen)} % of {sum(seen.values())}" + (f", {failed} failed" if failed else ""),
                flush=True,
            )
        result.peak_rss_mib = probe.finish()
        result.warnings = [line for line in server.log().splitlines() if "WARNING" in line or "ERROR" in line]
    return result


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def summarize(results: list[VariantRound], variants: list[Variant], scenarios: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        medians: dict[str, float] = {}
        per_round: dict[tuple[str, int], float] = {}
        for variant in variants:
            runs = [r for vr in results if vr.variant == variant.name for r in vr.runs if r.scenario == scenario]
            if not runs:
                continue
            rps = [r.requests_per_s for r in runs]
            medians[variant.name] = statistics.median(rps)
            for r in runs:
                per_round[variant.name, r.round] = r.requests_per_s
            p50 = [r.p50_ms for r in runs if r.p50_ms is not None]
            p99 = [r.p99_ms for r in runs if r.p99_ms is not None]
            cpu = [r.server_cpu_pct for r in runs if r.server_cpu_pct is not None]
            others = [r.others_cpu_pct for r in runs if r.others_cpu_pct is not None]
            rss = [vr.peak_rss_mib for vr in results if vr.variant == variant.name and vr.peak_rss_mib is not None]
            served = [r.per_worker for r in runs if r.per_worker]
            rows.append(
                {
                    "scenario": scenario,
                    "variant": variant.name,
                    "server": variant.server,
                    "workers": variant.workers,
                    "rounds": len(runs),
                    "requests_per_s": statistics.median(rps),
                    "requests_per_s_min": min(rps),
                    "requests_per_s_max": max(rps),
                    "p50_ms": statistics.median(p50) if p50 else None,
                    "p99_ms": statistics.median(p99) if p99 else None,
                    "server_cpu_pct": statistics.median(cpu) if cpu else None,
                    "wrk_cpu_pct": statistics.median(r.wrk_cpu_pct for r in runs),
                    "others_cpu_pct": statistics.median(others) if others else None,
                    "peak_rss_mib": max(rss) if rss else None,
                    "errors": sum(r.socket_errors + r.non_2xx for r in runs),
                    "per_worker_shares": [_shares(s) for s in served],
                }
            )
        for row in rows:
            if row["scenario"] != scenario:
                continue
            # vs one worker of the same server: ratio of the medians, and the median of the ratios
            # within each round (both measured minutes apart, so less exposed to a drifting machine).
            one = next((v for v in variants if v.server == row["server"] and v.workers == 1), None)
            row["vs_1_worker"] = row["requests_per_s"] / medians[one.name] if one and one.name in medians else None
            paired = [
                per_round[row["variant"], rnd] / per_round[one.name, rnd]
                for rnd in {r for (_, r) in per_round}
                if one and (row["variant"], rnd) in per_round and (one.name, rnd) in per_round
            ]
            row["vs_1_worker_paired"] = statistics.median(paired) if paired else None
            uvi = f"uvicorn:{row['workers']}"
            row["vs_uvicorn"] = row["requests_per_s"] / medians[uvi] if uvi in medians else None
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| scenario | variant | req/s (median) | min–max | vs 1 worker | vs uvicorn (same N) | p50 ms | p99 ms "
        "| server CPU | wrk CPU | others' CPU | peak RSS MiB | requests per worker (wrk) | errors |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        ratio, paired = row["vs_1_worker"], row["vs_1_worker_paired"]
        vs1 = "-" if ratio is None else f"{ratio:.2f}×" + (f" ({paired:.2f}×)" if paired is not None else "")
        uvi = "-" if row["vs_uvicorn"] is None else f"{row['vs_uvicorn']:.2f}×"
        shares = ", ".join(row["per_worker_shares"]) or "-"
        lines.append(
            f"| {row['scenario']} | {row['variant']} | {row['requests_per_s']:,.0f} "
            f"| {row['requests_per_s_min']:,.0f}–{row['requests_per_s_max']:,.0f} | {vs1} | {uvi} "
            f"| {fmt(row['p50_ms'], '.2f')} | {fmt(row['p99_ms'], '.2f')} "
            f"| {fmt(row['server_cpu_pct'], '.0f')} % | {row['wrk_cpu_pct']:.0f} % "
            f"| {fmt(row['others_cpu_pct'], '.0f')} % | {fmt(row['peak_rss_mib'], '.1f')} | {shares} | {row['errors']} |"
        )
    return "\n".join(lines)


def render_samples(results: list[VariantRound], variants: list[Variant]) -> str:
    lines = [
        "| variant | workers seen | answers per worker, per round (% of each sample) | failed |",
        "|---|---|---|---|",
    ]
    for variant in variants:
        rounds = [vr for vr in results if vr.variant == variant.name and vr.sample]
        if not rounds:
            continue
        seen = max(len(vr.sample) for vr in rounds)
        shares = ", ".join(_shares(vr.sample) for vr in rounds)
        failed = sum(vr.sample_failed for vr in rounds)
        lines.append(f"| {variant.name} | {seen} | {shares} | {failed} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def interpreter(python: str) -> dict[str, Any]:
    out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)
    return info


def machine(python: dict[str, Any]) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (wrk.stdout + wrk.stderr).split("\n", 1)[0]
    versions = dict(python["versions"], wrk=first.removeprefix("wrk ").split(" Copyright")[0].strip())
    git = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return {
        "polycorn_source": git.stdout.strip() or None,
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "system": " ".join(os.uname()[i] for i in (0, 2)),
        "python": python["python"] + (" (free-threaded)" if python["free_threaded_build"] else ""),
        "versions": versions,
    }


def default_variants(args: argparse.Namespace, info: dict[str, Any], uvicorn: bool) -> list[Variant]:
    variants = [Variant("polycorn", 1), Variant("polycorn", 2)]
    if info["free_threaded_build"] and not info["gil_enabled"]:
        variants.append(Variant("polycorn", 2, mode="thread"))
    if args.pin:
        variants.append(Variant("polycorn", 2, pin=True))
    if uvicorn:
        variants += [Variant("uvicorn", 1), Variant("uvicorn", 2)]
    return variants


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Polycorn with 1 and 2 workers (and uvicorn --workers) under wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the servers")
    add_round_options(parser, rounds_per="variant and scenario", duration=5, measured="wrk measurement")
    parser.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        help="repeat a measurement up to this many times while other processes took more than "
        "--noisy-threshold %% of a core during it and left less than 20 %% idle (the cleanest attempt is kept)",
    )
    parser.add_argument(
        "--noisy-threshold", type=float, default=15, help="%% of one core that other processes may use during a run"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (-c)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (-t)")
    parser.add_argument(
        "--scenarios",
        type=lambda s: [x for x in s.split(",") if x],
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--variants",
        type=lambda s: [parse_variant(x) for x in s.split(",") if x],
        help="comma-separated SERVER:N[:thread][:pin][:shared], e.g. polycorn:1,polycorn:2,uvicorn:2 "
        "(default: polycorn 1 and 2 workers, thread workers on a free-threaded Python, uvicorn 1 and 2)",
    )
    parser.add_argument("--pin", action="store_true", help="also measure polycorn:2:pin (--pin-cpus)")
    parser.add_argument("--no-uvicorn", action="store_true", help="leave uvicorn out of the default variants")
    parser.add_argument("--sample", type=int, default=2000, help="requests on fresh connections to see the spread")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu), `dnf install wrk`, `brew install wrk`.")
        return 2
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        print(f"--scenarios: choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    info = interpreter(args.python)
    if "polycorn" not in info["versions"]:
        print(f"polycorn is not installed for {args.python}", file=sys.stderr)
        return 2
    has_uvicorn = "uvicorn" in info["versions"]
    variants: list[Variant] = args.variants or default_variants(args, info, has_uvicorn and not args.no_uvicorn)
    if not has_uvicorn and any(v.server == "uvicorn" for v in variants):
        print(f"skipping uvicorn: not installed for {args.python}", file=sys.stderr)
        variants = [v for v in variants if v.server != "uvicorn"]
    if not info["free_threaded_build"] and any(v.mode == "thread" for v in variants):
        print("note: thread workers under a GIL take turns on one core", file=sys.stderr)

    host = machine(info)
    print(
        f"{host['cpus']} CPUs ({host['cpu_model']}), {host['system']}, {host['python']}"
        f"{'' if info['gil_enabled'] else ', GIL off'}; " + ", ".join(f"{k} {v}" for k, v in host["versions"].items()),
        flush=True,
    )
    print(
        f"{args.rounds} rounds x {len(variants)} variants ({', '.join(v.name for v in variants)}) x "
        f"{len(args.scenarios)} scenarios, wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s, unpinned",
        flush=True,
    )
    results: list[VariantRound] = []
    for rnd in range(args.rounds):
        shift = rnd % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            try:
                results.append(measure(args, rnd, variant))
            except RuntimeError as exc:  # a server that did not start: say so, go on with the others
                print(f"  round {rnd + 1}  {variant.name}: {exc}", file=sys.stderr, flush=True)

    rows = summarize(results, variants, args.scenarios)
    print()
    print(render_table(rows))
    if args.sample > 0:
        print(f"\nFresh connections ({args.sample} sequential requests to /worker, one connection each):\n")
        print(render_samples(results, variants))
    warnings = sorted({w.split(": ", 1)[-1] for vr in results for w in vr.warnings})
    if warnings:
        print("\nwarnings and errors the servers logged:\n  " + "\n  ".join(warnings))
    disturbed = [
        f"round {r.round + 1} {r.variant}/{r.scenario} ({fmt(r.others_cpu_pct, '.0f')} %)"
        for vr in results
        for r in vr.runs
        if noisy(r, args.noisy_threshold)
    ]
    if disturbed:
        print(
            "\nnote: other processes took CPU during "
            + ", ".join(disturbed)
            + " while the machine had no idle CPU (even after repeating): those runs shared the"
            " machine; the medians damp them."
        )
    if args.json:
        payload = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
            "machine": host,
            "interpreter": info,
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "wrk_threads": args.wrk_threads,
                "retry_noisy": args.retry_noisy,
                "noisy_threshold_pct": args.noisy_threshold,
                "sample": args.sample,
                "variants": [v.name for v in variants],
            },
            "summary": rows,
            "runs": [asdict(vr) for vr in results],
        }
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
