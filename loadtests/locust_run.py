#!/usr/bin/env python3
"""Run the Locust mixed-traffic load test headless and print failures and p50/p95/p99 per endpoint.

Against a server that is already running ``loadtests/locust_app.py`` (any ASGI server)::

    python loadtests/locust_run.py --host http://127.0.0.1:8000 --users 20 --spawn-rate 10 --run-time 30s

Or let it start the server itself on a free port (and stop it afterwards)::

    python loadtests/locust_run.py --server polycorn --users 20 --spawn-rate 10 --run-time 30s
    python loadtests/locust_run.py --server uvicorn --users 20 --spawn-rate 10 --run-time 30s
    python loadtests/locust_run.py --server polycorn --server-args "--workers 2" --json /tmp/locust.json

``--server polycorn`` runs ``python -m polycorn locust_app:app --app-dir loadtests --port N
--no-access-log`` with this interpreter, ``--server uvicorn`` the same with ``-m uvicorn``; the
server's output goes to a log file, shown if it fails to start, and the run fails if the server
logged a traceback (an exception in the app or the server, which a client may not see).

Locust (``pip install locust``; it needs gevent) runs as ``python -m locust`` in a subprocess with
``loadtests/locustfile.py``, ``--headless`` and ``--csv``; this script reads the CSV files and
prints one row per endpoint (requests, failures, requests/s, p50/p95/p99/max in ms) and the
distinct failures. ``--json PATH`` also writes that summary as JSON. Locust's own output is shown
with ``--verbose``, or when it fails.

Exit status: 0 when every request succeeded; 1 when any request failed, no request was made, a
task raised an exception (a bug in the locustfile), or the server logged a traceback; 2 when the server or Locust could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
SERVERS = ("polycorn", "uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(server: str, port: int, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        server,
        "locust_app:app",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        *extra,
    ]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def running_server(server: str, extra: Sequence[str], log_path: Path) -> Iterator[str]:
    """Start ``server`` serving locust_app on a free port; yield its base URL; stop it."""
    port = free_port()
    cmd = server_command(server, port, extra)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_ready(url, proc, timeout=30):
            sys.stderr.write(f"{server} did not start: {shlex.join(cmd)}\n{log_path.read_text(errors='replace')}\n")
            raise SystemExit(2)
        print(f"server: {shlex.join(cmd)}", flush=True)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_locust(args: argparse.Namespace, host: str, prefix: Path, log_path: Path) -> int:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(args.locustfile),
        "--headless",
        "--host",
        host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.run_time,
        "--csv",
        str(prefix),
        "--only-summary",
        "--stop-timeout",
        "5",
    ]
    print(f"locust: {shlex.join(cmd)}", flush=True)
    if args.verbose:
        return subprocess.call(cmd)
    with log_path.open("wb") as log:
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:  # "N/A" when an endpoint has no requests
        return None


def read_summary(prefix: Path) -> dict[str, Any]:
    """Locust's ``{prefix}_stats.csv`` and ``{prefix}_failures.csv`` as one dict."""
    endpoints, total = [], None
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            entry = {
                "type": row["Type"],
                "name": row["Name"],
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": _num(row["Requests/s"]),
                "p50": _num(row["50%"]),
                "p95": _num(row["95%"]),
                "p99": _num(row["99%"]),
                "max": _num(row["Max Response Time"]),
            }
            if row["Name"] == "Aggregated":
                total = entry
            else:
                endpoints.append(entry)
    with open(f"{prefix}_failures.csv", newline="") as f:
        failures = [
            {"type": r["Method"], "name": r["Name"], "error": r["Error"], "occurrences": int(r["Occurrences"])}
            for r in csv.DictReader(f)
        ]
    exceptions = []  # exceptions raised in the locustfile's tasks (bugs there), not request failures
    with contextlib.suppress(FileNotFoundError), open(f"{prefix}_exceptions.csv", newline="") as f:
        exceptions = [{"count": int(r["Count"]), "message": r["Message"]} for r in csv.DictReader(f)]
    return {"endpoints": endpoints, "total": total, "failures": failures, "exceptions": exceptions}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_summary(summary: dict[str, Any]) -> str:
    rows = [("type", "endpoint", "requests", "fails", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms")]
    total = summary["total"] or {"requests": 0, "failures": 0, "rps": None, "p50": None, "p95": None, "p99": None}
    for e in [*summary["endpoints"], {**total, "type": "", "name": "total"}]:
        rps = "-" if e["rps"] is None else f"{e['rps']:.1f}"
        row = (e["type"], e["name"], str(e["requests"]), str(e["failures"]), rps)
        rows.append((*row, _ms(e["p50"]), _ms(e["p95"]), _ms(e["p99"]), _ms(e.get("max"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
        for r in rows
    ]
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    if summary["failures"]:
        lines.append("\nfailures:")
        lines += [f"  {f['occurrences']:>6} × {f['type']} {f['name']}: {f['error']}" for f in summary["failures"]]
    if summary["exceptions"]:
        lines.append("\nexceptions in the locustfile's tasks:")
        lines += [f"  {e['count']:>6} × {e['message']}" for e in summary["exceptions"]]
    return "\n".join(lines)


def server_tracebacks(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if "Traceback" in line]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="base URL of a server running locust_app, e.g. http://127.0.0.1:8000")
    where.add_argument("--server", choices=SERVERS, help="start this server on a free port with locust_app")
    parser.add_argument("--server-args", default="", help="extra server arguments, e.g. '--workers 2'")
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default: 20)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per second (default: 10)")
    parser.add_argument("--run-time", default="30s", help="e.g. 30s, 2m (default: 30s)")
    parser.add_argument("--locustfile", type=Path, default=LOCUSTFILE, help="default: loadtests/locustfile.py")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument("--verbose", action="store_true", help="show Locust's own output")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="locust-run-") as tmp:
        workdir = Path(tmp)
        prefix, locust_log, server_log = workdir / "locust", workdir / "locust.log", workdir / "server.log"
        with contextlib.ExitStack() as stack:
            if args.server:
                host = stack.enter_context(running_server(args.server, shlex.split(args.server_args), server_log))
            else:
                host = args.host.rstrip("/")
            rc = run_locust(args, host, prefix, locust_log)
        if rc not in (0, 1) or not Path(f"{prefix}_stats.csv").exists():
            log = locust_log.read_text(errors="replace") if locust_log.exists() else ""
            sys.stderr.write(f"locust failed (exit {rc})\n{log[-5000:]}\n")
            return 2
        summary = read_summary(prefix)
        summary.update(host=host, server=args.server, users=args.users, run_time=args.run_time)
        tracebacks = server_tracebacks(server_log)
        summary["server_tracebacks"] = len(tracebacks)
        print(format_summary(summary))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")

        total = summary["total"] or {"requests": 0, "failures": 0}
        problems = []
        if total["failures"]:
            problems.append(f"{total['failures']} of {total['requests']} requests failed")
        if summary["exceptions"]:
            problems.append(f"{sum(e['count'] for e in summary['exceptions'])} exception(s) in the locustfile's tasks")
        if not total["requests"]:
            problems.append("no requests were made")
        if tracebacks:
            log = server_log.read_text(errors="replace")
            problems.append(f"the server logged {len(tracebacks)} traceback(s):\n{log[-5000:]}")
        if rc == 1 and not problems:
            log = locust_log.read_text(errors="replace") if locust_log.exists() else ""
            problems.append(f"locust exited 1:\n{log[-5000:]}")
    if problems:
        print("\nFAILED: " + "; ".join(problems))
        return 1
    print("\nOK: no failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
