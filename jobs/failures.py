"""Which of lakecast's errors a retry can fix, and the exit status that says so.

Airflow retries a failed task (the job file's ``airflow.retries``, ``retry_delay_minutes`` apart).
That helps when storage, the cluster or another run was in the way, or the partition had not
landed yet. It only delays the failure, and scores the partition again each time, when the job
file, the registry's aliases, the partition's rows or the model must change first: such a task
fails at once. ``lakecast`` says which with its exit status, which is also how a task that
follows a Ray job on a cluster learns it from the job's driver.
"""

from __future__ import annotations

from jobs.yamlconf import ConfigError

EXIT_FIX_FIRST = 2  # the sentence names what to change; running again gives the same error
EXIT_TRY_AGAIN = 75  # EX_TEMPFAIL (sysexits.h): storage, the cluster or another run; a retry may pass


class JobError(RuntimeError):
    """The job cannot run or its output is wrong; nothing was committed."""


def user_errors() -> tuple[type[Exception], ...]:
    """Every error that ``lakecast`` prints as one sentence: the user's to act on, not a bug."""
    from jobs.commit import CommitConflict
    from jobs.lake import LakeError
    from jobs.submit import SubmitError

    return (*fix_first(), LakeError, CommitConflict, SubmitError)


def fix_first() -> tuple[type[Exception], ...]:
    """The errors a retry cannot fix."""
    from jobs.promotion import PromotionRefused
    from jobs.validation import InvalidInput
    from models.predictor import ModelInputError, ModelOutputError
    from models.registry import RegistryError

    return ConfigError, RegistryError, InvalidInput, ModelInputError, ModelOutputError, JobError, PromotionRefused


def retry_cannot_fix(e: BaseException) -> bool:
    """Whether ``e`` fails the same way on every try. A Ray job that failed on a cluster carries
    its driver's verdict (:class:`jobs.submit.SubmitError`)."""
    verdict = getattr(e, "fix_first", None)
    return verdict if verdict is not None else isinstance(e, fix_first())


def exit_status(e: BaseException) -> int:
    return EXIT_FIX_FIRST if retry_cannot_fix(e) else EXIT_TRY_AGAIN
