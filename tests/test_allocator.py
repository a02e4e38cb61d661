"""``--malloc-trim-threshold``: the worker keeps freed heap memory for reuse instead of trimming it.

Checked end to end, inside the serving process: with the default, 3 MiB of 64 KiB blocks freed in
a request stay with the process; with ``0`` (glibc's own setting) most of it is returned at once,
which is the shrink-and-grow churn the option removes. Free-threaded CPython allocates Python
objects with its own mimalloc, never glibc's heap, so there both runs keep the memory.
"""

from __future__ import annotations

import platform
import signal
import sysconfig

import httpx
import pytest

from polycorn.loops.allocator import tune_malloc
from tests.fixture_apps.process import FIXTURE_DIR, polycorn

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

pytestmark = pytest.mark.skipif(not GLIBC, reason="the option tunes glibc's malloc; this system has another libc")


def released_kib(*options: str) -> int:
    child = polycorn("heap_app:app", "--app-dir", FIXTURE_DIR, "--port", "0", "--log-level", "info", *options)
    try:
        url = child.url()
        return int(httpx.get(url, timeout=10).text)
    finally:
        child.send_signal(signal.SIGINT)
        assert child.wait() == 0, child.output


def test_default_threshold_keeps_freed_memory_for_reuse() -> None:
    assert released_kib() < 512


def test_zero_leaves_glibc_trimming_as_it_was() -> None:
    released = released_kib("--malloc-trim-threshold", "0")
    if FREE_THREADED:
        assert released < 512  # Python objects live in mimalloc there, not in glibc's heap
    else:
        assert released > 1024


def test_tune_malloc_reports_what_glibc_took() -> None:
    assert tune_malloc(0) is False  # 0: nothing set
    assert tune_malloc(1024**3) is True  # the mmap threshold is capped where glibc would refuse it
    assert tune_malloc(4 * 1024 * 1024) is True  # (the default again, for the rest of this process)
