"""Commands lakecast runs in the foreground for the user (``lakecast airflow …``, ``lakecast
mlflow-ui``, the demo's ``airflow dags test``, the runs ``lakecast bench`` times), stopped whole
when lakecast is stopped.

A SIGTERM (``kill``, ``timeout``, systemd, a container's stop) used to end lakecast alone: the
command ran on without it, and ``airflow standalone`` kept its scheduler, API server and triggerer
running and its port taken, so that the next start failed on it. Airflow's standalone passes
neither a SIGTERM nor a SIGINT sent to it alone on to the components it started (a terminal's
Ctrl-C reaches them all only because it goes to the whole process group), and ``airflow dags
test`` waits out a retry's delay through a SIGTERM. So lakecast stops the command's processes
itself, as a supervisor would: SIGTERM to the command, for its own shutdown, then to each process
it had started, then SIGKILL to whatever is left; and exits as stopped (143 for SIGTERM, 130 for
Ctrl-C).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from jobs import stopping

log = logging.getLogger(__name__)

# the command's own shutdown first, which stops its children where it can; then every process of
# the tree. Together within a container's stop timeout (Kubernetes: 30 s), so that lakecast ends
# before its own SIGKILL.
COMMAND_GRACE_S = 5.0
TREE_GRACE_S = 10.0


def run(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` to its end and return its exit status; on SIGINT or SIGTERM, stop it and every
    process it started (:func:`stop_tree`), then raise :class:`jobs.stopping.Stopped`."""
    proc = subprocess.Popen(cmd, env=env)
    with stopped_with(proc):
        return proc.wait()


@contextlib.contextmanager
def stopped_with(proc: subprocess.Popen) -> Iterator[None]:
    """While the block waits on ``proc``, a SIGINT or SIGTERM stops ``proc`` and every process it
    started (:func:`stop_tree`), then raises :class:`jobs.stopping.Stopped`, which says so."""
    cmd = [str(a) for a in proc.args]
    # airflow standalone, airflow dags test, mlflow ui, lakecast run
    shown = " ".join([Path(cmd[0]).name, *itertools.takewhile(lambda a: not a.startswith("-"), cmd[1:3])])

    def said(stop: stopping.Stopped) -> str:
        return f"stopped by {stop.signal_name}; so were {shown} and the processes it started"

    try:
        with stopping.on_signals(said):
            yield
    except stopping.Stopped:
        stop_tree(proc)
        raise


def stop_tree(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and its descendants: SIGTERM to it, then to the rest, then SIGKILL.

    The descendants are listed before the first signal: a parent that exits leaves its children
    to init, where they are no longer found below it."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        below = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        proc.wait()
        return
    log.info("stopping %s (pid %d) and the %d processes it started", proc.args[0], proc.pid, len(below))
    _send([parent], signal.SIGTERM)
    _, alive = psutil.wait_procs([parent], timeout=COMMAND_GRACE_S)
    if alive:  # still running: whatever it started since counts too
        below += [p for p in _children(parent) if p not in below]
    rest = [p for p in [*alive, *below] if p.is_running()]
    _send(rest, signal.SIGTERM)
    _, left = psutil.wait_procs(rest, timeout=TREE_GRACE_S)
    if left:
        log.info("killed %d processes still running %g s after their SIGTERM", len(left), TREE_GRACE_S)
        _send(left, signal.SIGKILL)
        psutil.wait_procs(left, timeout=5)
    proc.wait()


def _children(parent) -> list:
    import psutil

    try:
        return parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _send(processes: list, signum: int) -> None:
    import psutil

    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signum)
