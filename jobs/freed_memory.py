"""glibc's malloc told to keep the memory a batch frees, for the next batch to reuse.

A CPU actor allocates and frees the same few large buffers for every batch it scores: the
numbers' block, the network's activations (8 MiB a layer for a 128-unit layer at 16,384 rows).
By default glibc gives such memory back to the kernel as soon as it is freed: a buffer larger
than its mmap threshold is unmapped on ``free``, and the top of the heap is trimmed once more
than twice that threshold is free there. The next batch then faults the same memory back in, a
page at a time, each page zeroed by the kernel. On the development machine an actor scoring on
its main thread (one CPU per actor, the default) faulted 700-800k pages over a 10M-row run of
the wide challenger model and spent 1.7-2.1 s of its 10 s in the kernel.

With the memory kept (three paired runs of the actor's code, docs/benchmark.md): 0.13-0.17M
faults and 0.6-0.7 s in the kernel; 1.12-1.22M rows/s against 0.92-1.07M for the challenger
at 16,384 rows a batch, and 2.78-2.97M against 2.32-2.55M for the churn job's champion at
65,536, on one core. An actor that scores on threads (two CPUs or more) allocates in glibc's
per-thread arenas, which already kept most of it: there, the same within the noise.

What it costs is memory the actor does not give back between batches: the most its batches
held at once, which it holds again for the next batch anyway. Allocations above
:data:`MMAP_THRESHOLD` are still mapped and unmapped, and free memory above
:data:`TRIM_THRESHOLD` at the heap's top is still returned. pyarrow allocates with its own
allocator (mimalloc), which this leaves alone.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters, <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): a request below it comes
# from the heap and its memory is reused. Setting the thresholds turns off glibc's own
# adjustment of them, which would otherwise raise the mmap threshold to this, and no further.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 512 << 20


def keep() -> bool:
    """Have this process's glibc malloc keep freed memory for reuse; whether it did (False off
    Linux or with another C library)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as e:  # no C library to load, or one without mallopt (musl)
        log.debug("malloc returns freed memory as its C library does: %s", e)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.debug("malloc returns freed memory as its C library does: mallopt refused")
    return done
