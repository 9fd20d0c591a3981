"""Cluster mode: run lakecast's entrypoints on a Ray cluster through the Ray Jobs API.

The job that runs on the cluster is the same command a user runs locally (``python -m jobs.cli
run ...``): the runtime environment ships this project's code and ``conf/``, and the settings
and credentials travel as environment variables, never inside the uploaded files.

Submission ids are derived from a caller's key (for Airflow: the DAG run, the task and the job)
plus an attempt number, so a caller that restarts finds the job it started and follows it
instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.failures import EXIT_FIX_FIRST
from jobs.settings import CONF_SHOWN, PROJECT_CONF, PROJECT_ROOT, Settings, conf_dir

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

log = logging.getLogger(__name__)

RESULT_MARKER = "LAKECAST_RESULT "
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

# What the job needs from the submitting side's environment. Credentials go here, not into the
# uploaded files. RAY_ADDRESS means something else there; the configuration folder travels with
# the code, as its conf/, so LAKECAST_CONF (a path on this machine) is not passed.
_FORWARDED = ("LAKECAST_PROFILE", "LAKECAST_LAKE_ROOT", "LAKECAST_HOME", "MLFLOW_", "AWS_")
_NOT_FORWARDED = ("LAKECAST_CONF",)
# Uploaded with the job: code and conf/, nothing of the local state, venv or tests.
_EXCLUDES = [".venv", ".lakecast", ".git", ".ci", "tests", "docs", "docker", "test-artifacts", "*.egg-info"]


AGENT_WAIT_S = 120.0  # how long a submission waits for the cluster's job agent to come up


class SubmitError(RuntimeError):
    """The Ray job could not be submitted, or it ended without success.

    ``fix_first``: the job's driver ended with lakecast's status for an error that a retry
    cannot fix (:mod:`jobs.failures`); None where it did not say."""

    def __init__(self, message: str, *, fix_first: bool | None = None):
        super().__init__(message)
        self.fix_first = fix_first


def is_jobs_api(address: str | None) -> bool:
    """A Ray Jobs API (dashboard) address, as opposed to a GCS address or none at all."""
    return bool(address) and address.startswith(("http://", "https://"))


def _auth_token() -> str | None:
    """The cluster's token from RAY_AUTH_TOKEN or the file RAY_AUTH_TOKEN_PATH names, if either is set."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    if path := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        try:
            return Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise SubmitError(f"cannot read the Ray auth token file RAY_AUTH_TOKEN_PATH={path}: {e}") from e
    return None


def client(address: str) -> JobSubmissionClient:
    """A Jobs API client that sends the token of the cluster it talks to.

    The token is read here and sent as our own Authorization header because Ray caches the first
    token it loads for the whole process: a worker that already ran a local Ray (tests, a triggerer
    that talked to another cluster) would otherwise keep sending a stale one.
    """
    from ray.job_submission import JobSubmissionClient

    token = _auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as e:  # ConnectionError, or a RuntimeError naming the address
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {e}") from e


@contextmanager
def working_dir() -> Iterator[Path]:
    """The folder to upload: the project itself, or a copy whose conf/ is ``LAKECAST_CONF``.

    A job submitted with ``LAKECAST_CONF=/etc/lakecast`` must run on the cluster with those job
    files, not with the project's own conf/. Ray uploads one folder, so when the two differ the
    code (a few hundred kB) and that configuration are staged together in a temporary folder.
    """
    conf = conf_dir()
    if conf == PROJECT_CONF:
        yield PROJECT_ROOT
        return
    with tempfile.TemporaryDirectory(prefix="lakecast-job-") as tmp:
        staged = Path(tmp) / "lakecast"
        skip = shutil.ignore_patterns(*_EXCLUDES, "__pycache__")
        shutil.copytree(PROJECT_ROOT, staged, ignore=lambda d, names: skip(d, names) | _top_conf(d, names))
        shutil.copytree(conf, staged / "conf", ignore=shutil.ignore_patterns("__pycache__"))
        yield staged


def _top_conf(folder: str, names: list[str]) -> set[str]:
    return {"conf"} if Path(folder) == PROJECT_ROOT and "conf" in names else set()


def runtime_env(settings: Settings, folder: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The project's code and conf/ in ``folder``, and the settings the job needs, as Ray's runtime_env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_FORWARDED) and k not in _NOT_FORWARDED and not k.startswith("MLFLOW_RUN")
    }
    env["LAKECAST_PROFILE"] = settings.profile
    env["MLFLOW_TRACKING_URI"] = settings.mlflow.tracking_uri
    if settings.mlflow.registry_uri:
        env["MLFLOW_REGISTRY_URI"] = settings.mlflow.registry_uri
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the Airflow task log as they happen
    if conf_dir() != PROJECT_CONF:
        # the job's errors name its file where the user edits it, not the uploaded copy (jobs.config)
        env[CONF_SHOWN] = str(conf_dir())
    return {"working_dir": str(folder), "excludes": _EXCLUDES, "env_vars": env}


def entrypoint(args: Sequence[str]) -> str:
    """The shell command of the job: lakecast's own CLI, with a result line to parse at the end."""
    return shlex.join(["python", "-m", "jobs.cli", *args, "--emit-result"])


def run_argv(job: str, ds: str, *, alias: str | None, version: int | None, dry_run: bool) -> list[str]:
    """``lakecast run``'s arguments for a job submitted to a cluster, from ``lakecast submit`` or
    the DAG's task alike. A version wins over an alias; an empty alias is the job file's."""
    argv = ["run", job, "--date", ds]
    if version is not None:
        argv += ["--version", str(version)]
    elif alias:
        argv += ["--alias", alias]
    return [*argv, "--dry-run"] if dry_run else argv


def submission_base(key: str, *, job: str, command: str, ds: str) -> str:
    """``lakecast-<job>-<command>-<date>-<hash of key>``: readable in the dashboard, stable per key."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9-]", "-", f"{job}-{command}-{ds}".lower())
    return f"lakecast-{slug}-{digest}"


@dataclass(frozen=True)
class Submission:
    address: str
    submission_id: str
    metadata: dict[str, str]

    @property
    def dashboard_url(self) -> str:
        return job_url(self.address, self.submission_id)


def job_url(dashboard: str, submission_id: str) -> str:
    return f"{dashboard.rstrip('/')}/#/jobs/{submission_id}"


def _attempts(address: str, key: str) -> list:
    return [j for j in client(address).list_jobs() if (j.metadata or {}).get("lakecast_key") == key]


def find_running(address: str, key: str) -> Submission | None:
    """The job an earlier attempt with this key started and that still runs, if any.

    A retry or restart of the Airflow task (its worker died, the scheduler was restarted) follows
    that job instead of starting a second one next to it.
    """
    for j in _attempts(address, key):
        if j.status.value not in TERMINAL:
            log.info("attaching to Ray job %s, still %s from an earlier attempt", j.submission_id, j.status.value)
            return Submission(address, j.submission_id, dict(j.metadata or {}))
    return None


def submit_new(
    address: str, *, key: str, base: str, args: Sequence[str], settings: Settings, metadata: dict[str, str]
) -> Submission:
    """Submit attempt n+1 of ``key``: Ray never reuses a submission id, even of a finished job."""
    submission_id = f"{base}-{len(_attempts(address, key)) + 1}"
    metadata = {**metadata, "lakecast_key": key}
    jobs = client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    with working_dir() as folder:
        while True:
            try:
                jobs.submit_job(
                    entrypoint=entrypoint(args),
                    submission_id=submission_id,
                    runtime_env=runtime_env(settings, folder),
                    metadata=metadata,
                )
                break
            except RuntimeError as e:
                # a cluster that just started (or lost the head's agent) asks to try again later
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise SubmitError(f"Ray did not accept job {submission_id} at {address}: {e}") from e
                log.info("the Ray cluster has no job agent ready yet; trying again in 2 s")
                time.sleep(2)
    log.info("submitted Ray job %s: %s", submission_id, " ".join(args))
    return Submission(address, submission_id, metadata)


def result_from_logs(logs: str) -> dict[str, Any] | None:
    """The JSON the entrypoint printed after its marker (the last one, if it printed several)."""
    for line in reversed(logs.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return None


def job_failed(
    address: str, submission_id: str, status: str, message: str, logs: str, exit_code: int | None
) -> SubmitError:
    """The error for a Ray job that ended without success: what the job printed as its error,
    where to see the rest, and whether a retry can fix it (its driver's exit status)."""
    errors = [line for line in logs.splitlines() if line.startswith("lakecast: ")]
    reason = errors[-1].removeprefix("lakecast: ") if errors else (message or "").strip() or "no message"
    tail = "\n".join(logs.splitlines()[-15:]) if not errors else ""
    text = f"Ray job {submission_id} {status.lower()}: {reason} (logs: {job_url(address, submission_id)})"
    verdict = None if exit_code is None else exit_code == EXIT_FIX_FIRST
    return SubmitError(f"{text}\n{tail}" if tail else text, fix_first=verdict)


def driver_exit_code(address: str, submission_id: str) -> int | None:
    """The exit status of an ended job's entrypoint (None where Ray did not record one)."""
    return client(address).get_job_info(submission_id).driver_exit_code


def follow(
    address: str,
    submission_id: str,
    *,
    timeout_s: float | None = None,
    on_line: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> tuple[str, str]:
    """Stream the job's log lines to ``on_line`` until it ends; stop it past ``timeout_s``.

    Returns (status, full logs). Polling the logs keeps this synchronous and simple: the
    deferrable Airflow path tails them asynchronously instead (jobs.airflow_ray).
    """
    jobs_api = client(address)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    shown = 0
    while True:
        status = jobs_api.get_job_status(submission_id).value
        logs = jobs_api.get_job_logs(submission_id)
        done = status in TERMINAL
        end = len(logs) if done else logs.rfind("\n") + 1  # whole lines only, until the end
        for line in logs[shown:end].splitlines():
            on_line(line)
        shown = max(shown, end)
        if done:
            return status, logs
        if deadline and time.monotonic() > deadline:
            jobs_api.stop_job(submission_id)
            raise SubmitError(f"Ray job {submission_id} ran past its timeout of {timeout_s:.0f} s and was stopped")
        time.sleep(poll_s)


def stop(address: str, submission_id: str) -> bool:
    """Ask Ray to stop the job (SIGTERM to the entrypoint, then SIGKILL); True if it was running."""
    stopped = client(address).stop_job(submission_id)
    log.info("stop requested for Ray job %s: %s", submission_id, "stopping" if stopped else "already ended")
    return stopped
