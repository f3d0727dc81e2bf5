"""Process-level tuning shared by every long-running Vigil entry point (CLI commands, daemon, workers).

Vigil allocates many short-lived, acyclic objects per event (decoded records, events, actors). CPython's
default collector runs a young-generation pass every 700 net allocations and, every so often, a full pass over
every live object; with large batches in flight that full pass dominates the cost of a record and stalls
the loop (reference/performance.md §4: the 94 ms p99 of a naive prototype was the collector). So we move
everything alive after start-up out of the collector's sight (``gc.freeze``) and make young passes rarer.
Reference cycles are still collected, only less often.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from typing import Final

#: ``VIGIL_PURE_PYTHON=1``: run the pure-Python versions of the compiled modules
#: (``vigil.detectors._windows``, ``vigil.events._ids``), to compare them or to rule them out in a hunt
PURE_PYTHON: Final = os.environ.get("VIGIL_PURE_PYTHON", "") in ("1", "true", "yes")

GEN0_THRESHOLD: Final = 20_000
OLDER_THRESHOLD: Final = 20
#: seconds a thread waiting for the GIL waits before it asks the holder to drop it (CPython's default: 5 ms)
SWITCH_INTERVAL: Final = 0.001

#: glibc malloc: allocations up to this size come from the heap, not from a fresh mapping of their own
MMAP_THRESHOLD: Final = 16 << 20
#: glibc malloc: free memory at the top of the heap kept for reuse, not given back to the system
TRIM_THRESHOLD: Final = 64 << 20
_M_TRIM_THRESHOLD: Final = -1  # (mallopt's parameter numbers, malloc.h)
_M_MMAP_THRESHOLD: Final = -3

_tuned = False


def tune_gc() -> None:
    """Freeze start-up objects and raise the collection thresholds; idempotent."""
    global _tuned  # noqa: PLW0603 - a process-wide, once-only switch
    if _tuned:
        return
    _tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)


def tune_threads() -> None:
    """Hand the GIL over sooner (the daemon's switch interval: :data:`SWITCH_INTERVAL`).

    The daemon's store work runs in worker threads that drop the GIL for every SQLite call and need it back
    afterwards; while the event loop runs detection (pure Python), each of those takes up to the switch
    interval. With the default 5 ms a 500-event commit of 3 statements waited about 15 ms for the GIL; at
    1 ms the store's share of a busy run here fell from about 57 to 27 µs per event (vigil/store/bulk.py
    has the measurement). The loop's own cost: a forced switch at most every millisecond, when a thread
    waits at all.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


def tune_allocator() -> bool:
    """Keep the daemon's large buffers in the heap (glibc; elsewhere a no-op): whether it was applied.

    Every ingestion request body (750 KB for 500 Activity records) is joined into one buffer and freed a
    moment later. glibc's malloc serves such sizes from fresh mappings, or trims the heap top they leave,
    so each new body faulted in its pages again: joining one took 0.6 ms instead of 0.1 on this machine's
    VM, on the event loop. A 16 MiB mapping threshold (the default body cap) and 64 MiB of free heap kept
    for reuse end that; the cost is at most that much memory held while idle.
    """
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # (not glibc)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
