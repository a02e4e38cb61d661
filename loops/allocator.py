"""The C allocator's trimming, tuned once per process at start-up.

glibc returns the top of its heap to the OS as soon as more than 128 KiB of it is free, and gets
it back (page faults, zeroed pages) with the next large allocation. A server that reads a 64 KiB
body per request frees and reallocates that much many thousand times a second: measured on
``POST /upload`` (64 KiB), the churn took about half of the worker's time. Keeping a few MiB
for reuse removes it; the peak footprint is unchanged, since only memory that was in use is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger("polycorn.error")

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses a larger mmap threshold on 64-bit systems.
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def tune_malloc(trim_threshold: int) -> bool:
    """Keep up to ``trim_threshold`` free bytes at the heap top; True if glibc took the setting.

    Setting a threshold turns off glibc's own adjustment of when blocks get their own mapping,
    so that threshold is set too, to a quarter of the trim threshold: blocks up to that size come
    from the heap and are reused instead of being mapped and unmapped each time.
    """
    if not trim_threshold or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    mmap_threshold = min(max(trim_threshold // 4, 128 * 1024), _MMAP_THRESHOLD_MAX)
    ok: bool = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    if not ok:
        logger.debug("mallopt refused --malloc-trim-threshold %d", trim_threshold)
    return ok
