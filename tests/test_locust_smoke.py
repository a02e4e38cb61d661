"""Smoke test: a short Locust mixed-traffic run (``loadtests/locust_run.py``) against Polycorn, with no failures.

Locust and gevent run only in the child process: importing locust monkey-patches the whole process
with gevent (and may warn), which must not happen inside pytest. So this checks that locust is
installed without importing it, and skips where it is not (the free-threaded CI leg: gevent has no
CPython 3.13t wheels, so locust is only in the ``test`` extra, not ``test-ft``).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("locust") is None or importlib.util.find_spec("gevent") is None:
    pytest.skip("locust is not installed (it is in the `test` extra, not `test-ft`)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "loadtests" / "locust_run.py"

#: Every endpoint of loadtests/locust_app.py, as (Locust request type, name up to the first space).
ENDPOINTS = {
    ("GET", "/items/[id]"),
    ("GET", "/items?limit=[n]"),
    ("POST", "/items"),
    ("GET", "/stream?n=[n]"),
    ("POST", "/upload"),
    ("WS", "/ws"),
    ("WS", "/ws/chat"),
}


@pytest.mark.timeout(90)
def test_locust_mixed_traffic_against_polycorn(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    cmd = [sys.executable, str(RUNNER), "--server", "polycorn", "--users", "10", "--spawn-rate", "10"]
    cmd += ["--run-time", "4s", "--json", str(summary_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=80, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    summary = json.loads(summary_path.read_text())
    assert summary["total"]["requests"] > 0, output
    assert summary["total"]["failures"] == 0, output
    assert summary["failures"] == [], output
    assert summary["exceptions"] == [], output
    assert summary["server_tracebacks"] == 0, output

    requests: dict[tuple[str, str], int] = {}
    for e in summary["endpoints"]:
        key = (e["type"], e["name"].split(" ")[0])
        requests[key] = requests.get(key, 0) + e["requests"]
    missing = sorted(ENDPOINTS - {k for k, n in requests.items() if n > 0})
    assert missing == [], f"endpoints without requests: {missing}\n{output}"
    # Each WebSocket message exchange was reported, not only the connects.
    for name in ("/ws echo text", "/ws echo binary", "/ws/chat message"):
        assert any(e["name"] == name and e["requests"] > 0 for e in summary["endpoints"]), output
