"""How an error raised inside Ray reaches the user: as lakecast's own sentence, said once.

An actor's exception crosses Ray and Ray Data on its way to the driver, and each adds to it:

- Ray wraps it: ``RayTaskError(InvalidInput)`` is an ``InvalidInput`` too, but its text is the
  worker's traceback;
- Ray Data appends its retry advice to the message ("Failed to apply UDF transform after 1/1
  attempts ... configure `ray.data.DataContext.get_current()`");
- Ray Data logs it twice on the console with tracebacks, the second time as an error "in Ray Data
  or Ray Core internal code" with a request to open an issue on Ray's GitHub.

For lakecast's own errors (a bad row, a model's bad output, a lake that cannot be read) none of
that helps: the user needs the sentence, which names the file, the column and the setting. So the
driver finds the error in the chain, strips Ray Data's note from it, and keeps those console
records back; Ray Data's log file under the Ray session keeps them in full. Any other exception is
left exactly as Ray reports it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
from types import FrameType

from jobs.stopping import stop_in

# Ray Data appends this, on a new line, to the message of an exception that ran out of retries
RETRY_NOTE = "\nFailed to apply UDF transform after "


class ActorsOutOfMemory(RuntimeError):
    """Ray's memory monitor killed an actor on its first try and on each restart
    (:data:`jobs.ray_runtime.ACTOR_RESTARTS`): running again the same way fails the same way."""


class ActorsDied(RuntimeError):
    """An actor's process ended from outside Python on its first try and on each restart: a
    crash in native code, the kernel's OOM killer, its node lost. ``fix_first`` (read by
    :func:`jobs.failures.retry_cannot_fix`): false where Ray says that the node died, which a
    later try on other nodes may not meet."""

    def __init__(self, message: str, fix_first: bool = True) -> None:
        super().__init__(message)
        self.fix_first = fix_first


def find_ours(e: BaseException) -> BaseException | None:
    """Our error (:func:`jobs.failures.user_errors`) in the chain of ``e``, its message as we
    wrote it; or Ray's for an actor that died on every try, said as what to look at or change."""
    from ray.exceptions import ActorDiedError, OutOfMemoryError, RayError

    from jobs.failures import user_errors

    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, user_errors()) and not isinstance(seen, RayError):
            return _without_retry_note(seen)
        if isinstance(seen, OutOfMemoryError):
            return ActorsOutOfMemory(out_of_memory(str(seen)))
        if isinstance(seen, ActorDiedError) and not seen.actor_init_failed:
            return actors_died(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def out_of_memory(ray_says: str) -> str:
    """The sentence for Ray's ``OutOfMemoryError``, with the node and its memory as Ray gives them
    (``Memory on the node (IP: 10.0.0.5, ID: …) was 22.45GB used / 23.54GB limit``)."""
    from jobs.ray_runtime import ACTOR_RESTARTS

    memory = r"Memory on the node \(IP: ([^,]+),.*?\) was ([\d.]+\s*\w+) used / ([\d.]+\s*\w+) limit"
    found = re.search(memory, ray_says)
    where = f" on node {found[1]} ({found[2]} used of {found[3]})" if found else ""
    return (
        f"Ray killed the actor scoring the rows for lack of memory{where}, on its first try and on each of its "
        f"{_restarts(ACTOR_RESTARTS)}: score in smaller batches (compute.batch_size), or fewer at once on a node "
        "(compute.max_actors, compute.cpus_per_actor), or on nodes with more memory"
    )


def actors_died(e: BaseException) -> ActorsDied:
    """The sentence for Ray's ``ActorDiedError`` once the restarts are spent, with where the
    actor's last words are: a segfault's report, or nothing for a SIGKILL, in its stderr file."""
    from jobs.ray_runtime import ACTOR_RESTARTS

    ray_says = str(e)
    pid, ip = (re.search(rf"^\s*{key}: (\S+)$", ray_says, re.MULTILINE) for key in ("pid", "ip"))
    node_lost = "its node has died" in ray_says or bool(getattr(e, "preempted", False))
    which = f" (pid {pid[1]}{f' on node {ip[1]}' if ip else ''})" if pid else ""
    cause = (
        "its node was lost"
        if node_lost
        else "a crash in native code (a model's SIGSEGV), the kernel's OOM killer, or `ray stop`"
    )
    return ActorsDied(
        f"the actor scoring the rows died on its first try and on each of its {_restarts(ACTOR_RESTARTS)}, its "
        f"process ended from outside Python{which}: {cause}; {_last_words(pid[1] if pid else None, e)}",
        fix_first=not node_lost,
    )


def _restarts(n: int) -> str:
    return f"{n} restart{'' if n == 1 else 's'}"


def _last_words(pid: str | None, e: BaseException) -> str:
    """Where the dead actor's stderr is: its file on this machine (a local Ray's session), or the
    command that fetches it from a cluster."""
    import glob

    try:
        from ray._private import worker  # the session folder has no public accessor in Ray 2.60

        session = worker._global_node.get_session_dir_path() if worker._global_node else None
    except Exception:
        session = None
    if session and pid:
        found = sorted(glob.glob(os.path.join(session, "logs", f"worker-*-{pid}.err")))
        if found:
            return f"what it wrote last is in {found[-1]}"
    actor = getattr(e, "actor_id", None)
    return f"what it wrote last: `ray logs actor --id {actor} --err`" if actor else "see the Ray session's worker logs"


def raise_ours(e: BaseException) -> None:
    """Raise our error from the chain of ``e`` without Ray's wrapping; return where there is none
    or ``e`` is ours itself, for the caller to re-raise ``e`` as it is.

    Either way, the failed pipeline's actors are let go first (:func:`let_go`)."""
    let_go(e)
    ours = find_ours(e)
    if ours is not None and ours is not e:
        raise ours from None


def let_go(e: BaseException) -> None:
    """Free what the failed pipeline behind ``e`` still holds: its actors, and their CPUs and GPUs.

    Ray Data shuts its executor down when a run fails, but leaves the actors to be killed once
    their handles are unreferenced, and the traceback's frames still reference them, in cycles
    with the executor that only Python's cyclic collector frees. In a process that lives on after
    the error (a notebook, ``airflow dags test``, a service calling :func:`jobs.predict.run_job`)
    the actors held their CPUs for as long as the caller kept the error, or until the collector
    happened to run: a next run on the same Ray waited for them. So the frames' variables are
    cleared (the traceback still prints in full) and the cycles collected now."""
    todo, seen = [e], set()
    while todo and len(seen) < 64:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            _clear_frames(tb.tb_frame)
            tb = tb.tb_next
        # both links: Ray's error has a cause, and in its context the StopIteration that the
        # executor's thread was handling, whose traceback holds that thread's frames
        todo += [x for x in (exc.__cause__, exc.__context__) if x is not None]
    gc.collect()


def _clear_frames(frame: FrameType | None) -> None:
    """Clear ``frame`` and its callers: an exception caught in Ray Data's executor thread keeps,
    through its frames' callers, that thread's loop and the executor it ran."""
    while frame is not None:
        # a frame still running (this thread's callers) stays; a generator's is closed, and one
        # whose cleanup fails must not hide the error the user is about to get
        with contextlib.suppress(Exception):
            frame.clear()
        frame = frame.f_back


def _without_retry_note(e: BaseException) -> BaseException:
    if e.args and isinstance(e.args[0], str) and RETRY_NOTE in e.args[0]:
        e.args = (e.args[0].split(RETRY_NOTE, 1)[0], *e.args[1:])
    return e


class QuietForOurErrors(logging.Filter):
    """Keeps Ray Data's console records of one of our errors back, which the driver says as a
    sentence (its log file still has them), and those of a run stopped from outside, which says
    so itself (:mod:`jobs.stopping`).

    Ray Data logs them while it handles the exception: the record carries it, or the handler runs
    inside the ``except`` block, where ``sys.exc_info()`` holds it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "ray" and not record.name.startswith("ray."):
            # lakecast's own, where the handler also takes them (Airflow's task logging, a test's
            # capture): a warning logged while one of our errors is handled is the point of it
            return True
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        # StopIteration: every dataset ends inside the handler of its iterator's, and its executor
        # logs that it finished from there. Never ours, and looking for ours in it imported our
        # error classes (jobs.submit and the rest) at the end of the run's steady window: the
        # driver's logging call took 15 ms between the actors' last file and the commit.
        if exc is None or isinstance(exc, StopIteration):
            return True
        if stop_in(exc) is not None:  # Ctrl-C or SIGTERM: the run says it was stopped, and how it left things
            return False
        try:
            return find_ours(exc) is None
        except ImportError:
            # a bare GPU machine running the image bench has Ray but not lakecast's config stack
            # (pydantic): none of our errors can be raised there. A filter that raised would break
            # Ray Data's logging call, and the run with it.
            return True


def report_our_errors() -> None:
    """Make Ray Data hand our errors to the driver as themselves, and say them once.

    ``raise_original_map_exception``: otherwise Ray Data raises a ``UserCodeException`` in the
    worker whose cause, our error, does not survive the trip to the driver. Called before each
    dataset is built; the console filter goes on once."""
    import ray

    ray.data.DataContext.get_current().raise_original_map_exception = True
    for handler in logging.getLogger("ray.data").handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, QuietForOurErrors) for f in handler.filters):
            handler.addFilter(QuietForOurErrors())
