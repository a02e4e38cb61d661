"""``--malloc-trim-threshold``: the worker keeps freed heap memory for reuse instead of trimming it.

Checked end to end, inside the serving process: with the default, 3 MiB of 64 KiB blocks freed in
a request stay with the process; with ``0`` (glibc's own setting) most of it is returned at once,
which is the shrink-and-grow churn the option removes. ``--malloc-trim-interval`` then returns
what stayed free, later. Free-threaded CPython allocates Python objects with its own mimalloc,
never glibc's heap, so there both runs keep the memory and no trim returns it.
"""

from __future__ import annotations

import asyncio
import platform
import signal
import sysconfig
import time

import httpx
import pytest

from polycorn.loops.allocator import HeapTrimmer, tune_malloc
from tests.fixture_apps.process import FIXTURE_DIR, polycorn

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

pytestmark = pytest.mark.skipif(not GLIBC, reason="the option tunes glibc's malloc; this system has another libc")


def heap_run(*options: str, watch: float = 0.0) -> tuple[int, int, int]:
    """One request to heap_app: KiB it released at once, resident KiB just after, and later.

    With ``watch``, resident memory is polled until it drops by more than 1 MiB or ``watch``
    seconds have passed: the trim runs on the server's timer, at no moment the test knows.
    """
    child = polycorn("heap_app:app", "--app-dir", FIXTURE_DIR, "--port", "0", "--log-level", "info", *options)
    try:
        url = child.url()
        released = int(httpx.get(url, timeout=10).text)
        after = later = int(httpx.get(url + "/rss", timeout=10).text)
        deadline = time.monotonic() + watch
        while after - later <= 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
            later = int(httpx.get(url + "/rss", timeout=10).text)
        return released, after, later
    finally:
        assert child.stop(signal.SIGINT) == 0, child.output


def test_default_threshold_keeps_freed_memory_for_reuse() -> None:
    assert heap_run()[0] < 512


def test_zero_leaves_glibc_trimming_as_it_was() -> None:
    released = heap_run("--malloc-trim-threshold", "0")[0]
    if FREE_THREADED:
        assert released < 512  # Python objects live in mimalloc there, not in glibc's heap
    else:
        assert released > 1024


@pytest.mark.skipif(FREE_THREADED, reason="Python objects live in mimalloc there: nothing freed is glibc's to return")
def test_the_interval_returns_what_the_threshold_kept() -> None:
    released, after, later = heap_run("--malloc-trim-interval", "0.2", watch=5.0)
    assert released < 512  # kept for reuse by the request...
    assert after - later > 1024  # ...and returned by the timer once it stayed free


@pytest.mark.skipif(FREE_THREADED, reason="Python objects live in mimalloc there: nothing freed is glibc's to return")
def test_interval_zero_keeps_it() -> None:
    released, after, later = heap_run("--malloc-trim-interval", "0", watch=1.0)  # five intervals of the test above
    assert released < 512
    assert after - later < 512


def test_only_one_loop_per_process_trims() -> None:
    """The loops of a threaded worker share one heap: one timer walks it; a later loop takes over."""
    loops = [asyncio.new_event_loop() for _ in range(3)]
    try:
        first, second, third = (HeapTrimmer(loop, 1.0) for loop in loops)
        assert first.start() is True
        assert second.start() is False
        first.stop()
        assert third.start() is True
        third.stop()
        assert HeapTrimmer(loops[0], 0).start() is False  # 0: never
    finally:
        for loop in loops:
            loop.close()


def test_tune_malloc_reports_what_glibc_took() -> None:
    assert tune_malloc(0) is False  # 0: nothing set
    assert tune_malloc(1024**3) is True  # the mmap threshold is capped where glibc would refuse it
    assert tune_malloc(4 * 1024 * 1024) is True  # (the default again, for the rest of this process)
