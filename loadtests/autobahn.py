#!/usr/bin/env python3
"""WebSocket protocol conformance of Polycorn (or uvicorn), checked with the Autobahn|Testsuite.

The Autobahn|Testsuite's fuzzing client runs some 500 cases (framing, pings, reserved bits,
opcodes, fragmentation, UTF-8, close handshake, limits, permessage-deflate) against a server and
grades each one; it is the reference test that WebSocket servers publish. This script starts the
server on a free loopback port with the benchmark app (``loadtests/bench_app.py``: its WebSocket
route echoes), runs ``wstest -m fuzzingclient`` against it, summarises ``OUTDIR/index.json`` and
exits 0 only when every case's ``behavior`` and ``behaviorClose`` is OK, NON-STRICT or
INFORMATIONAL::

    python loadtests/autobahn.py --quick                   # Polycorn, ~30 s: no 9.*, few 12.*/13.*
    python loadtests/autobahn.py --server uvicorn --json uvicorn.json
    python loadtests/autobahn.py --markdown                # the tables in docs/websockets.md

The testsuite is Python 2 only, so it lives in its own virtualenv outside the repository (see
``INSTALL``). ``OUTDIR/index.html`` holds the suite's own report, with a wire log per case.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APP = "bench_app:app"
DEFAULT_WSTEST = Path("/work/autobahn-venv/bin/wstest")

INSTALL = """\
The Autobahn|Testsuite (wstest) runs on Python 2.7 only. Install it in its own virtualenv, e.g.:

    PYENV_VERSION=2.7.18 python2.7 -m pip install virtualenv
    PYENV_VERSION=2.7.18 python2.7 -m virtualenv /work/autobahn-venv
    /work/autobahn-venv/bin/pip install autobahntestsuite

then pass --wstest /work/autobahn-venv/bin/wstest (the default) or put wstest on PATH."""

#: Results that count as a pass, for both ``behavior`` and ``behaviorClose``.
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")

#: ``--quick`` leaves out the performance cases (9.*, minutes of large messages) and keeps, of the
#: permessage-deflate cases (12.*, 13.*), the first group only, and in it the cases with messages of at most
#: 16 KiB (x.1.1-x.1.7 whole, x.1.11-x.1.12 in 256-byte frames): the larger ones take most of a minute each group.
QUICK_EXCLUDE = [
    "9.*",
    *(f"12.{g}.*" for g in range(2, 6)),
    *(f"13.{g}.*" for g in range(2, 8)),
    *(f"{s}.1.{c}" for s in (12, 13) for c in (8, 9, 10, 13, 14, 15, 16, 17, 18)),
]

#: Autobahn's section titles, for the per-section table.
SECTIONS: dict[str, str] = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "permessage-deflate (payloads)",
    "13": "permessage-deflate (parameters)",
}


@dataclass
class CaseResult:
    id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    description: str = ""

    @property
    def passed(self) -> bool:
        return self.behavior in PASSING and self.behavior_close in PASSING


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_wstest(option: str | None) -> str | None:
    if option:
        # Absolute: wstest runs in the report directory.
        return str(Path(option).resolve()) if Path(option).is_file() and os.access(option, os.X_OK) else None
    if DEFAULT_WSTEST.is_file():
        return str(DEFAULT_WSTEST)
    return shutil.which("wstest")


def server_command(server: str, port: int, http: str | None) -> list[str]:
    if server == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", APP, "--app-dir", str(HERE), "--port", str(port)]
        cmd += ["--log-level", "warning", "--ws", "websockets"]
    else:
        cmd = [sys.executable, "-m", "polycorn", APP, "--app-dir", str(HERE), "--port", str(port)]
        cmd += ["--no-access-log", "--log-level", "warning"]
        # The Autobahn 9.* cases send messages of up to 16 MiB.
        cmd += ["--ws-max-size", str(16 * 1024 * 1024)]
    if http:
        cmd += ["--http", http]
    return cmd


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not listening on port {port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGINT (a Ctrl-C), then SIGKILL to the whole process group if it has not exited in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"server ignored SIGINT for {timeout:.0f} s: killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # also any worker left behind
    proc.wait()


@contextlib.contextmanager
def running_server(cmd: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError:
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
            raise
        yield proc
    finally:
        stop(proc)


def run_wstest(wstest: str, spec: Path, log: Path, verbose: bool) -> int:
    cmd = [wstest, "-m", "fuzzingclient", "-s", str(spec)]
    with log.open("w") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # progress lines as they come, not per 4 KiB
        proc = subprocess.Popen(
            cmd, cwd=spec.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        done = 0
        for line in proc.stdout:
            out.write(line)
            out.flush()
            if verbose:
                sys.stdout.write(line)
            elif "Running test case ID" in line:
                done += 1
                if sys.stderr.isatty():
                    sys.stderr.write(f"\r{done} cases: {line.split('Running test case ID')[1].split()[0]}   ")
                    sys.stderr.flush()
        if done and not verbose and sys.stderr.isatty():
            sys.stderr.write("\n")
        return proc.wait()


def load_results(outdir: Path, agent: str) -> list[CaseResult]:
    index = json.loads((outdir / "index.json").read_text())
    results = []
    for case_id, entry in index.get(agent, {}).items():
        result = CaseResult(
            id=case_id,
            behavior=entry["behavior"],
            behavior_close=entry["behaviorClose"],
            remote_close_code=entry.get("remoteCloseCode"),
            duration_ms=entry.get("duration", 0),
        )
        if not result.passed:
            with contextlib.suppress(OSError, ValueError, KeyError):
                report = json.loads((outdir / entry["reportfile"]).read_text())
                # As the suite's own report does: the text before the first HTML tag.
                result.description = " ".join(report["description"].split("<")[0].split())
        results.append(result)
    return sorted(results, key=lambda r: case_key(r.id))


def summarise(results: list[CaseResult]) -> dict[str, Any]:
    sections: dict[str, Counter[str]] = {}
    for r in results:
        counter = sections.setdefault(r.id.split(".")[0], Counter())
        counter["cases"] += 1
        counter["passed" if r.passed else "failed"] += 1
    return {
        "cases": len(results),
        "passed": sum(r.passed for r in results),
        "behavior": dict(Counter(r.behavior for r in results).most_common()),
        "behaviorClose": dict(Counter(r.behavior_close for r in results).most_common()),
        "sections": {s: dict(c) for s, c in sorted(sections.items(), key=lambda kv: int(kv[0]))},
        "failures": [asdict(r) for r in results if not r.passed],
    }


def _table(rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def render(summary: dict[str, Any], title: str, markdown: bool) -> str:
    out = [f"## {title}" if markdown else title, ""]
    results = sorted(
        set(summary["behavior"]) | set(summary["behaviorClose"]),
        key=lambda k: (PASSING.index(k) if k in PASSING else len(PASSING), k),
    )
    rows = [["Result", "behavior", "behaviorClose"]]
    rows += [[k, str(summary["behavior"].get(k, 0)), str(summary["behaviorClose"].get(k, 0))] for k in results]
    out += [_table(rows, markdown), ""]
    rows = [["Section", "Cases", "Passed", "Failed"]]
    for section, counts in summary["sections"].items():
        name = f"{section} {SECTIONS.get(section, '')}".strip()
        rows.append([name, str(counts.get("cases", 0)), str(counts.get("passed", 0)), str(counts.get("failed", 0))])
    out += [_table(rows, markdown), ""]
    failures = summary["failures"]
    out.append(f"{summary['passed']}/{summary['cases']} cases pass; {len(failures)} fail" + (":" if failures else "."))
    if failures:
        rows = [["Case", "behavior", "behaviorClose", "Close code", "Description"]]
        for f in failures:
            code = "" if f["remote_close_code"] is None else str(f["remote_close_code"])
            rows.append([f["id"], f["behavior"], f["behavior_close"], code, f["description"]])
        out += ["", _table(rows, markdown)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--wstest", help=f"wstest executable (default {DEFAULT_WSTEST}, else wstest on PATH)")
    parser.add_argument("--server", choices=["polycorn", "uvicorn"], default="polycorn")
    parser.add_argument("--http", choices=["httptools", "h11"], help="HTTP/1.1 parser (default: the server's own)")
    parser.add_argument("--cases", default="*", help="comma-separated case patterns, e.g. '1.*,2.*' (default '*')")
    parser.add_argument("--exclude", default="", help="comma-separated case patterns to leave out")
    parser.add_argument("--quick", action="store_true", help="leave out 9.* and most of 12.*/13.* (about 30 s)")
    parser.add_argument("--out", type=Path, help="report directory (default: a new temporary directory, kept)")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    parser.add_argument("--markdown", action="store_true", help="print the summary as Markdown tables")
    parser.add_argument("--verbose", action="store_true", help="show wstest's output as it runs")
    args = parser.parse_args(argv)

    wstest = find_wstest(args.wstest)
    if wstest is None:
        print(f"wstest not found{f' at {args.wstest}' if args.wstest else ''}.\n\n{INSTALL}", file=sys.stderr)
        return 2

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    exclude = [c.strip() for c in args.exclude.split(",") if c.strip()]
    if args.quick:
        exclude += [c for c in QUICK_EXCLUDE if c not in exclude]
    outdir = (args.out or Path(tempfile.mkdtemp(prefix="autobahn-"))).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "index.json").unlink(missing_ok=True)

    port = free_port()
    agent = args.server
    spec = outdir / "fuzzingclient.json"
    spec.write_text(
        json.dumps(
            {
                "outdir": str(outdir),
                "servers": [{"agent": agent, "url": f"ws://127.0.0.1:{port}"}],
                "cases": cases,
                "exclude-cases": exclude,
                "exclude-agent-cases": {},
            },
            indent=2,
        )
    )
    cmd = server_command(args.server, port, args.http)
    print(f"server: {' '.join(cmd)}\nreports: {outdir}", file=sys.stderr)

    started = time.monotonic()
    with running_server(cmd, port, outdir / "server.log") as proc:
        status = run_wstest(wstest, spec, outdir / "wstest.log", args.verbose)
        crashed = proc.poll()
    elapsed = time.monotonic() - started
    if status != 0 or not (outdir / "index.json").is_file():
        print(f"wstest exited with status {status}; see {outdir / 'wstest.log'}", file=sys.stderr)
        return 1
    if crashed is not None:
        print(f"server exited with status {crashed} during the run; see {outdir / 'server.log'}", file=sys.stderr)

    results = load_results(outdir, agent)
    summary = summarise(results)
    summary.update(server=args.server, http=args.http, cases_spec=cases, exclude=exclude, seconds=round(elapsed, 1))
    summary.update(outdir=str(outdir))
    title = f"Autobahn|Testsuite: {args.server}" + (f" --http {args.http}" if args.http else "") + f" ({elapsed:.0f} s)"
    print(render(summary, title, args.markdown))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nreport: {outdir / 'index.html'}", file=sys.stderr)
    return 0 if results and summary["passed"] == len(results) and crashed is None else 1


if __name__ == "__main__":
    sys.exit(main())
