"""The supervisor's crash-loop guard, and the GIL as thread workers see it."""

from __future__ import annotations

import signal
import sysconfig
import time

import httpx
import pytest

from tests.fixture_apps.process import polycorn

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_workers_that_keep_crashing_stop_the_server() -> None:
    """Replacements come back after each crash, until 5 crashes within a minute stop everything."""
    child = polycorn(
        "tests.fixture_apps.guard_app:app",
        "--port",
        "0",
        "--workers",
        "2",
        "--worker-mode",
        "process",
        "--no-access-log",
    )
    try:
        url = child.url()
        child.wait_for("all 2 workers ready")
        crashes = 0
        deadline = time.monotonic() + 60
        while child.proc.poll() is None and time.monotonic() < deadline:
            try:
                with httpx.Client(timeout=5) as client:
                    client.get(url + "/die")
            except httpx.HTTPError:
                crashes += 1  # the worker died mid-request: the client sees the connection drop
            time.sleep(0.3)  # let the back-off pass and a replacement start
        assert child.wait(30) == 1, child.output
        output = child.output
        assert output.count("starting a replacement") >= 3, output  # it did restart before giving up
        assert "crashed 5 times" in output, output
        assert crashes >= 5
        assert "Traceback" not in output
    finally:
        child.kill()


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_gil_state_inside_workers(mode: str) -> None:
    """On a free-threaded build the GIL stays off inside thread workers; elsewhere it is on."""
    child = polycorn(
        "tests.fixture_apps.guard_app:app", "--port", "0", "--workers", "2", "--worker-mode", mode, "--no-access-log"
    )
    try:
        url = child.url()
        child.wait_for("all 2 workers ready")
        with httpx.Client() as client:
            info = client.get(url + "/").json()
        assert info["gil"] is (not FREE_THREADED)
        if FREE_THREADED:
            assert "GIL enabled" not in child.output  # no warning: the GIL really is off
        elif mode == "thread":
            assert "with the GIL enabled" in child.output  # the start-up warning says what to expect
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0, child.output
