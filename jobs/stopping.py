"""A run stopped from outside, and what it leaves: nothing published, its lock free, its MLflow
run KILLED.

A run is stopped by Ctrl-C at a terminal, and by SIGTERM everywhere else: Airflow's task
supervisor sends it when a running task is marked failed or cleared in the UI, Ray's job
supervisor when a Ray job is stopped (``ray job stop``, the task's ``on_kill``), Kubernetes and
systemd when they stop a process. Before this module a run took either as a crash: Ctrl-C
printed a traceback and exited 1, SIGTERM (which ``ray.init`` turns into ``sys.exit(15)``) exited
15 with Ray's stack dump, and both left the MLflow run FAILED, the status of a bug.

While :func:`on_signals` is active, the first SIGINT or SIGTERM raises :class:`Stopped` in the
main thread (:func:`jobs.predict.run_job` runs under it from its first step, and
:func:`ray_starting` keeps it through Ray's start, which takes SIGTERM for itself). The run
unwinds as for any error (its staged files discarded, its partition lock released) and ends its
MLflow run as KILLED, MLflow's status for a run stopped from outside; the command says so in one
sentence and exits 128 + the signal's number, the shell's convention (130 for Ctrl-C, 143 for
SIGTERM). A second signal is not caught: it acts as it did before, for a user who will not wait
for the cleanup.

Once the run begins to commit, a stop waits for the run's end (:func:`finish_first`): the
commits and the bookkeeping after them take milliseconds, and a stop must not cut a commit in
two, leaving the predictions published and their quarantine not (each commit is safe alone:
:mod:`jobs.commit`). A stop that arrives while the run talks to MLflow waits for that call to
return (:func:`held`): raised inside SQLAlchemy, it can leave a query half read, whose SQLite lock
then outlives the query.
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """The process was asked to stop (``signum``). A BaseException, as KeyboardInterrupt is: no
    ``except Exception`` on the way out takes it for an error to handle and carry on."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = signum
        super().__init__(message or f"stopped by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        return 128 + self.signum


def stop_in(e: BaseException) -> Stopped | None:
    """The stop ``e`` is, or carries as its cause. Python 3.11 wraps what a ``__set_name__`` raises
    in a RuntimeError (``Error calling __set_name__``): a stop that lands while a module being
    imported defines a dataclass (Ray Data's, as the pipeline starts) arrives as that error, and
    was reported as a crash, exit 1 with a traceback."""
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None or isinstance(seen, Stopped):
            return seen
        seen = seen.__cause__
    return None


class _Guard:
    """The handler of one :func:`on_signals` block."""

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.holding = False
        self.held = 0  # depth of the held() blocks the main thread is in
        self.pending: int | None = None  # a stop that arrived inside them
        self.warned = False
        self.outer_hook = sys.unraisablehook

    def take(self) -> None:
        """Handle SIGINT and SIGTERM, keeping whatever handled them until now to hand them back."""
        for signum in SIGNALS:
            current = signal.getsignal(signum)
            if current is not self:
                self.previous[signum] = current
                signal.signal(signum, self)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.holding:
            if not self.warned:
                log.warning("%s received while committing: the run finishes first", _name(signum))
                self.warned = True
            return
        if _in_logging():
            # raised here, the stop could leave logging's lock held by this thread, and every other
            # thread then waits forever at its next log line: the cleanup, waiting on s3fs's
            # thread, hung (seen in the suite on a loaded machine). Sent again in 10 ms.
            _thread.start_new_thread(_send_again, (signum,))
            return
        self.restore()  # a second signal acts as it did before this block
        if self.held:
            log.warning("%s arrived during a call to MLflow: the run stops when the call returns", _name(signum))
            self.pending = signum
            return
        raise Stopped(signum)

    def swallowed(self, unraisable: Any) -> None:
        """``sys.unraisablehook`` while the block runs: a stop raised while a finalizer or a weakref
        callback ran (the garbage collector's, SQLAlchemy's among them) is printed and dropped by
        Python, and the run went on as if never stopped (seen in the suite, a run that then
        committed). The stop is sent again, to land once the finalizer has returned."""
        stop = unraisable.exc_value
        if not isinstance(stop, Stopped):
            self.outer_hook(unraisable)
            return
        self.take()  # the first raise handed the signals back; this one is still the first stop
        # from another thread, a moment later: sent from this one, or by anything that waits here
        # for a thread to start, Python would run the handler at once, still inside the finalizer
        _thread.start_new_thread(_send_again, (stop.signum,))


def _in_logging() -> bool:
    """Whether this thread holds the logging module's lock or a handler's: it has them only for
    the few lines of logging's own code that take and give them back."""
    handlers = (ref() for ref in list(getattr(logging, "_handlerList", [])))
    locks = [getattr(logging, "_lock", None), *(getattr(h, "lock", None) for h in handlers)]
    return any(_owned(lock) for lock in locks)


def _owned(lock: Any) -> bool:
    owned = getattr(lock, "_is_owned", None)  # an RLock's; where Python lacks it, nothing is deferred
    return bool(owned and owned())


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _send_again(signum: int) -> None:
    time.sleep(0.01)
    os.kill(os.getpid(), signum)


_active: _Guard | None = None


@contextmanager
def on_signals(said: Callable[[Stopped], str] | None = None) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Stopped` in the main thread.

    ``said``: the sentence for a stop of the block, given the stop (which names its signal).

    Off the main thread, where Python cannot take signals, nothing changes: the process's main
    thread decides how it stops (an Airflow task, a notebook)."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _Guard()
    outer, _active = _active, guard
    guard.take()
    sys.unraisablehook = guard.swallowed
    try:
        yield
    except BaseException as e:
        stop = stop_in(e)
        if stop is None or (stop is e and said is None):
            raise
        raise Stopped(stop.signum, said(stop) if said else None) from None
    finally:
        _active = outer
        sys.unraisablehook = guard.outer_hook
        guard.restore()


def finish_first() -> None:
    """From now on a stop waits until the :func:`on_signals` block ends: the run commits."""
    if _active is not None:
        _active.holding = True


@contextmanager
def held() -> Iterator[None]:
    """A stop that arrives inside the block is raised when the block ends, not where it landed.

    For calls into code that a stop raised midway leaves broken. MLflow's SQLite store is the case
    seen: a stop that lands between two rows of a registry query leaves the query open, and its
    read lock lives as long as the stop's traceback, so the write that ends the run KILLED waited
    20 s for it and failed, exiting 1 with a traceback. Those calls take milliseconds; a second
    signal does not wait."""
    guard = _active
    if guard is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    guard.held += 1
    try:
        yield
    finally:
        guard.held -= 1
        if not guard.held and guard.pending is not None and not guard.holding:
            signum, guard.pending = guard.pending, None
            raise Stopped(signum)


@contextmanager
def ray_starting() -> Iterator[None]:
    """Around ``ray.init`` inside an :func:`on_signals` block.

    ``ray.init`` first installs a SIGTERM handler of its own, ``sys.exit(15)``: a SIGTERM while Ray
    starts (2 to 4 s of a private Ray's start) arrives as that SystemExit, taken here for the stop
    it is, and once Ray is up SIGTERM is taken back. Ray's handler is the one restored when the
    block ends, as the process would have had it without lakecast's."""
    try:
        yield
    except SystemExit as e:
        if _active is not None and e.code == signal.SIGTERM:
            raise Stopped(signal.SIGTERM) from None
        raise
    if _active is not None and threading.current_thread() is threading.main_thread():
        _active.take()
