"""Transparent huge pages, turned off for the processes that stream Parquet through new memory.

A CPU actor is a new process for every job, and its first file's batches land in memory the
process has never touched. Where the kernel backs that memory with transparent huge pages
(pyarrow's allocator, mimalloc, asks for them), each first touch zeroes 2 MiB at once, and on a
virtual machine the host backs it too: on the development machine an actor's first 1M-row file
spent 0.33-0.43 s in the kernel with huge pages against 0.06-0.10 s without, and a job's two
actors 0.9-1.0 s against 0.4-0.5 s over all their files (four paired runs, docs/benchmark.md).
Once memory is reused, huge pages read about 3% faster, which does not pay for the first touch
over the 5 to 20 files an actor reads in a run.

``prctl(PR_SET_THP_DISABLE)`` is Linux's per-process switch (since 3.15): it applies to every
later page fault of the process, and children inherit it. Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

PR_SET_THP_DISABLE = 41  # <linux/prctl.h>


def turn_off() -> bool:
    """Stop this process's later page faults from taking transparent huge pages; whether it did."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        done = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    except (OSError, AttributeError) as e:  # no libc to load, or one without prctl
        log.debug("transparent huge pages stay as the kernel sets them: %s", e)
        return False
    if not done:
        log.debug("transparent huge pages stay as the kernel sets them: prctl errno %d", ctypes.get_errno())
    return done


def turned_off() -> bool:
    """Whether this process has transparent huge pages turned off (``THP_enabled: 0`` in
    ``/proc/self/status``; False where the kernel does not say)."""
    try:
        with open("/proc/self/status") as f:
            return any(line.split() == ["THP_enabled:", "0"] for line in f)
    except OSError:
        return False
