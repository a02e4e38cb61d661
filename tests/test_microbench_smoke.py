"""Smoke test: ``loadtests/microbench.py`` still drives the request path it measures.

The micro-benchmark is not part of the pass/fail run, so nothing else notices when a change to the
request path breaks it (it checks that every request got its response written). A few hundred
requests per stack, no timing assertion.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "loadtests" / "microbench.py"


@pytest.mark.timeout(60)
def test_microbench_runs_every_stack() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--requests", "300", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    stacks = re.findall(r"^\s*(\S+)\s+[\d.]+ µs/request", done.stdout, re.MULTILINE)
    assert stacks == ["httptools-uvloop", "httptools-asyncio", "h11-uvloop", "h11-asyncio"], done.stdout
