"""Which of lakecast's errors a retry can fix, and the exit status that says so.

Airflow retries a failed task (the job file's ``airflow.retries``, ``retry_delay_minutes`` apart).
That helps when storage, the cluster or another run was in the way, or the partition had not
landed yet. It only delays the failure, and scores the partition again each time, when the job
file, the registry's aliases, the partition's rows or the model must change first: such a task
fails at once. ``lakecast`` says which with its exit status, which is also how a task that
follows a Ray job on a cluster learns it from the job's driver.
"""

from __future__ import annotations

import os
import re
import sys

from jobs.yamlconf import ConfigError

EXIT_FIX_FIRST = 2  # the sentence names what to change; running again gives the same error
EXIT_TRY_AGAIN = 75  # EX_TEMPFAIL (sysexits.h): storage, the cluster or another run; a retry may pass


class JobError(RuntimeError):
    """The job cannot run or its output is wrong; nothing was committed."""


def user_errors() -> tuple[type[Exception], ...]:
    """Every error that ``lakecast`` prints as one sentence: the user's to act on, not a bug."""
    from jobs.commit import CommitConflict
    from jobs.lake import LakeError
    from jobs.ray_errors import ActorsDied
    from jobs.ray_runtime import RayUnreachable
    from jobs.submit import SubmitError
    from jobs.tracking import TrackingUnreachable
    from models.predictor import ModelFailed

    # these carry their verdict on a retry (retry_cannot_fix)
    verdicts = (SubmitError, ModelFailed, ActorsDied)
    return (*fix_first(), LakeError, CommitConflict, TrackingUnreachable, RayUnreachable, *verdicts)


def fix_first() -> tuple[type[Exception], ...]:
    """The errors a retry cannot fix."""
    from jobs.commit import DamagedLock
    from jobs.lake import DamagedManifest, DayElsewhere, EmptyPartition, LakeAccessError
    from jobs.pieces import NamesClash
    from jobs.promotion import PromotionRefused
    from jobs.ray_errors import ActorsOutOfMemory
    from jobs.validation import InvalidInput
    from models.predictor import ModelInputError, ModelOutputError
    from models.registry import ModelLoadError, RegistryError

    return (
        ConfigError,
        RegistryError,
        ModelLoadError,
        InvalidInput,
        ModelInputError,
        ModelOutputError,
        JobError,
        PromotionRefused,
        ActorsOutOfMemory,
        LakeAccessError,
        DamagedManifest,
        NamesClash,
        DamagedLock,
        EmptyPartition,
        DayElsewhere,
    )


def retry_cannot_fix(e: BaseException) -> bool:
    """Whether ``e`` fails the same way on every try. A Ray job that failed on a cluster carries
    its driver's verdict (:class:`jobs.submit.SubmitError`)."""
    verdict = getattr(e, "fix_first", None)
    if verdict is not None:
        return verdict
    if isinstance(e, fix_first()):
        return True
    mlflow = mlflow_failure(e)
    return mlflow is not None and mlflow[1] == EXIT_FIX_FIRST


def exit_status(e: BaseException) -> int:
    return EXIT_FIX_FIRST if retry_cannot_fix(e) else EXIT_TRY_AGAIN


def mlflow_failure(e: BaseException) -> tuple[str, int] | None:
    """MLflow's client giving up on its server, as a sentence and an exit status; None for any
    other error.

    MLflow raises the same ``MlflowException`` for a server that is down as for a bug in the
    request, with the URL of the call and urllib3's retry state in one long line. A server out of
    reach or answering 5xx may come back (75); one that refuses the credentials will not (2).
    """
    if "mlflow" not in sys.modules:  # only an MLflow that was imported raised one; importing it takes 2 s
        return None
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return None
    message = e.message
    if e.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return f"MLflow refused the request: {message}", EXIT_FIX_FIRST
    transport = e.__cause__ or e.__context__
    if transport is None or type(transport).__module__.split(".")[0] not in ("requests", "urllib3"):
        return None
    server = re.search(r"API request to (\w+://[^/\s]+)", message)
    where = server.group(1) if server else "its tracking server"
    reason = re.search(r"Read timed out|too many \d+ error responses", message)
    why = os_reason(message) or (reason.group(0) if reason else type(transport).__name__)
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    return f"MLflow at {where} stopped answering ({why}; retried {retries} times)", EXIT_TRY_AGAIN


def os_reason(text: str) -> str | None:
    """The operating system's words in a network library's long message: "Connection refused"
    out of urllib3's "...NewConnectionError(...: [Errno 111] Connection refused)"."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return found.group(1).strip() if found else None
