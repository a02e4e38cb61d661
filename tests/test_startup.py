"""The start-up block: real ``polycorn`` processes, with accelerators hidden where a test needs them gone."""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from polycorn import connection as request_path
from polycorn.version import __version__
from tests.fixture_apps.process import Child, polycorn

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _stopped(child: Child) -> str:
    assert child.stop(signal.SIGINT) == 0, child.output
    return child.output


def _block(output: str) -> list[str]:
    """The start-up record: its title line and the indented lines under it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if f"Polycorn {__version__} on " in line)
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line.strip())
    return block


def _hide(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment where importing ``modules`` fails, as where they are not installed."""
    for name in modules:
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def test_the_block_names_what_serves_and_the_limits() -> None:
    child = polycorn(
        "polycorn.demo:app",
        "--port",
        "0",
        "--limit-concurrency",
        "77",
        "--timeout-keep-alive",
        "9",
        "--limit-request-fields",
        "55",
    )
    try:
        assert httpx.get(child.url() + "/", timeout=10).status_code == 200
    finally:
        output = _stopped(child)
    block = _block(output)
    title = block[0]
    assert f"{sys.implementation.name.replace('cpython', 'CPython')} " in title
    assert f"pid {child.proc.pid}" in title
    assert ("GIL off" in title) == (FREE_THREADED and not getattr(sys, "_is_gil_enabled", lambda: True)()), title
    body = "\n".join(block[1:])
    assert f"event loop   uvloop {metadata.version('uvloop')}" in body
    assert f"HTTP parser  httptools {metadata.version('httptools')} (llhttp)" in body
    assert f"WebSocket    websockets {metadata.version('websockets')}, permessage-deflate offered" in body
    # The compiled build (setup.py's POLYCORN_COMPILE) has its request path as extension modules.
    compiled = not request_path.__file__.endswith(".py")
    assert ("build        request path compiled (mypyc)" if compiled else "build        interpreted") in body
    assert "workers      1, in this process" in body
    assert "concurrency 77 in flight (queue)" in body
    assert "55 fields" in body
    assert "keep-alive 9s" in body
    assert "WARNING" not in output  # everything asked for was found


def test_the_block_names_the_worker_mode_and_sockets() -> None:
    child = polycorn("polycorn.demo:app", "--port", "0", "--workers", "2", "--worker-mode", "process", "--ws", "none")
    try:
        child.wait_for("all 2 workers ready")
        assert httpx.get(child.url() + "/", timeout=10).status_code == 200
    finally:
        output = _stopped(child)
    body = "\n".join(_block(output))
    assert "workers      2 process workers, one SO_REUSEPORT socket each" in body
    assert "WebSocket    off (--ws none)" in body


def test_missing_accelerators_are_warned_about_when_auto_fell_back(tmp_path: Path) -> None:
    child = polycorn("polycorn.demo:app", "--port", "0", env=_hide(tmp_path, "uvloop", "httptools"))
    try:
        assert httpx.get(child.url() + "/json", timeout=10).status_code == 200
    finally:
        output = _stopped(child)
    body = "\n".join(_block(output))
    assert "event loop   asyncio" in body
    assert f"HTTP parser  h11 {metadata.version('h11')}" in body
    assert "WARNING  polycorn.error: uvloop is not installed: the slower asyncio loop serves" in output
    assert "WARNING  polycorn.error: httptools is not installed: the slower h11 parser serves" in output


def test_no_warning_when_the_pure_python_stack_is_asked_for(tmp_path: Path) -> None:
    child = polycorn(
        "polycorn.demo:app",
        "--port",
        "0",
        "--loop",
        "asyncio",
        "--http",
        "h11",
        env=_hide(tmp_path, "uvloop", "httptools"),
    )
    try:
        assert httpx.get(child.url() + "/", timeout=10).status_code == 200
    finally:
        output = _stopped(child)
    assert "event loop   asyncio" in output
    assert "WARNING" not in output


@pytest.mark.skipif(not FREE_THREADED, reason="the GIL can only be re-enabled on a free-threaded CPython build")
def test_a_gil_turned_back_on_is_warned_about() -> None:
    child = polycorn("polycorn.demo:app", "--port", "0", env={"PYTHON_GIL": "1"})
    try:
        assert httpx.get(child.url() + "/", timeout=10).status_code == 200
    finally:
        output = _stopped(child)
    assert "free-threaded build, GIL on" in _block(output)[0]
    assert "the GIL is on (PYTHON_GIL=1 or -X gil=1)" in output
    assert "thread workers" not in output  # one loop, in the main thread: nothing runs in parallel anyway


@pytest.mark.skipif(not FREE_THREADED, reason="the GIL can only be re-enabled on a free-threaded CPython build")
def test_a_gil_turned_back_on_is_warned_about_with_thread_workers() -> None:
    child = polycorn(
        "polycorn.demo:app", "--port", "0", "--workers", "2", "--worker-mode", "thread", env={"PYTHON_GIL": "1"}
    )
    try:
        child.wait_for("all 2 workers ready")
        assert httpx.get(child.url() + "/", timeout=10).status_code == 200
    finally:
        output = _stopped(child)
    assert "the GIL is on (PYTHON_GIL=1 or -X gil=1): thread workers will not run in parallel" in output
