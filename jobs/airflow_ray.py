"""The Airflow operator behind the predict and compare tasks, on a local Ray or a Ray cluster.

Embedded (no Jobs API address): the task runs the job in its own process, as ``lakecast run``.
Cluster mode (``ray.address`` is ``http://head:8265``): the task submits the same entrypoint
through the Ray Jobs API and defers; the triggerer follows the job, streams its log lines into
the task log and stops it past the job file's timeout. The worker slot is free meanwhile: a
nightly job of an hour costs the worker pool a few seconds.

Imported while DAGs are parsed, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator, BaseOperatorLink, BaseXCom
from airflow.triggers.base import BaseTrigger, TriggerEvent

from jobs import submit

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from jobs.config import JobConfig
    from jobs.settings import Settings

Command = Literal["run", "compare"]


@contextlib.contextmanager
def failing_at_once() -> Iterator[None]:
    """An error that a retry cannot fix (:mod:`jobs.failures`: the job file, the registry, the
    partition's rows or the model must change first) fails the task without its retries."""
    from jobs.failures import retry_cannot_fix

    try:
        yield
    except Exception as e:
        if retry_cannot_fix(e):
            from airflow.sdk.exceptions import AirflowFailException

            # after the sentence, before what follows it (a model's traceback)
            sentence, *rest = str(e).split("\n", 1)
            said = "\n".join([f"{sentence} (not retried: a retry fails the same way)", *rest])
            raise AirflowFailException(said) from e
        raise


class _StoredLink(BaseOperatorLink):
    """A link whose URL the task stored in XCom when it knew it (the Airflow 3 way)."""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return BaseXCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""

    @classmethod
    def store(cls, context: Context, url: str) -> None:
        context["ti"].xcom_push(key=cls().xcom_key, value=url)


class MlflowRunLink(_StoredLink):
    name = "MLflow run"


class RayJobLink(_StoredLink):
    name = "Ray job"


class RayJobTrigger(BaseTrigger):
    """Follows one Ray job to its end: log lines into the task log, a stop past the deadline."""

    def __init__(self, address: str, submission_id: str, deadline_unix: float, poll_s: float = 2.0):
        super().__init__()
        self.address = address
        self.submission_id = submission_id
        self.deadline_unix = deadline_unix
        self.poll_s = poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "address": self.address,
                "submission_id": self.submission_id,
                "deadline_unix": self.deadline_unix,
                "poll_s": self.poll_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        jobs_api = await asyncio.to_thread(submit.client, self.address)
        tail = asyncio.create_task(self._tail(jobs_api))
        try:
            while True:
                info = await asyncio.to_thread(jobs_api.get_job_info, self.submission_id)
                if info.status.value in submit.TERMINAL:
                    break
                if time.time() > self.deadline_unix:
                    self.log.error("Ray job %s ran past its deadline: stopping it", self.submission_id)
                    await asyncio.to_thread(jobs_api.stop_job, self.submission_id)
                    yield TriggerEvent({"status": "TIMEOUT", "submission_id": self.submission_id, "message": ""})
                    return
                await asyncio.sleep(self.poll_s)
            with contextlib.suppress(TimeoutError):  # the last lines are on their way: let the tail print them
                await asyncio.wait_for(asyncio.shield(tail), timeout=10)
        finally:
            tail.cancel()
        yield TriggerEvent(
            {
                "status": info.status.value,
                "submission_id": self.submission_id,
                "message": info.message or "",
                "exit_code": info.driver_exit_code,
            }
        )

    async def _tail(self, jobs_api) -> None:
        try:
            async for chunk in jobs_api.tail_job_logs(self.submission_id):
                for line in chunk.splitlines():
                    self.log.info("%s", line)
        except Exception as e:  # the log stream is a convenience: the job's status decides
            self.log.warning("log stream of Ray job %s ended: %s", self.submission_id, e)

    async def on_kill(self) -> None:
        """The task was marked failed, cleared or marked success in the UI: stop the Ray job."""
        await asyncio.to_thread(submit.stop, self.address, self.submission_id)


def model_override(params: dict) -> tuple[str | None, int | None]:
    """The trigger's ``(model_alias, model_version)``, each None where left empty: the job file's
    model then, here and on a cluster alike. A version wins over an alias given beside it."""
    version = params.get("model_version") or None
    alias = None if version is not None else (params.get("model_alias") or None)
    return alias, version


class LakecastJobOperator(BaseOperator):
    """Runs ``lakecast run`` (command ``run``) or ``lakecast compare`` for the checked date.

    Args:
        job_name: the job file's name; the file is read again when the task runs.
        command: ``run`` scores the partition, ``compare`` runs the A/B comparison.
        checked: the upstream task's summary; only its ``date`` is used.
        timeout: the job file's timeout: the Ray job is stopped past it.
    """

    template_fields = ("checked",)
    operator_extra_links = (MlflowRunLink(), RayJobLink())
    ui_color = "#dbeafe"

    def __init__(
        self, *, job_name: str, command: Command, checked: Any, timeout: dt.timedelta, poll_s: float = 2.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.job_name = job_name
        self.command = command
        self.checked = checked
        self.timeout = timeout
        self.poll_s = poll_s

    # -- both modes -------------------------------------------------------------------------

    def execute(self, context: Context) -> dict:
        from jobs.config import load_job, parse_date
        from jobs.settings import load_settings

        with failing_at_once():
            settings = load_settings()
            job = load_job(self.job_name)  # re-read: the file may have changed since parsing
            ds = parse_date(self.checked["date"])
            if self.command == "compare" and job.ab is not None:
                # the night's outcomes are not known yet: compare on the day whose outcomes are
                ds -= dt.timedelta(days=job.ab.label_delay_days)
                self._skip_without_a_challenger(context, settings, job)
            params = context["params"]
            if not submit.is_jobs_api(settings.ray.address):
                return self._run_here(context, settings, job, ds, params)
            return self._submit(context, settings, job, ds, params)

    @staticmethod
    def _skip_without_a_challenger(context: Context, settings: Settings, job: JobConfig) -> None:
        """After a promotion both aliases name one version until a new challenger is registered:
        the night's comparison is skipped (in the grid, with the reason in its log), where it would
        score every labeled row twice, here or as a Ray job, to find no difference."""
        from airflow.sdk.exceptions import AirflowSkipException

        from jobs import tracking
        from jobs.ab import NothingToCompare, versions_to_compare

        try:
            versions_to_compare(tracking.configure(settings), job)
        except NothingToCompare as e:
            # no MLflow run and no Ray job: empty links, since Airflow logs a link's missing XCom as an error
            MlflowRunLink.store(context, "")
            RayJobLink.store(context, "")
            raise AirflowSkipException(str(e)) from None

    def execute_complete(self, context: Context, event: dict, mlflow_run_id: str | None = None) -> dict:
        """Back from the triggerer: the Ray job ended. Its result line is the task's result."""
        with failing_at_once():
            return self._completed(context, event, mlflow_run_id)

    def _completed(self, context: Context, event: dict, mlflow_run_id: str | None) -> dict:
        from jobs import tracking
        from jobs.config import load_job
        from jobs.settings import load_settings

        settings = load_settings()
        address, sid, status = settings.ray.address, event["submission_id"], event["status"]
        logs = submit.client(address).get_job_logs(sid)
        if status != "SUCCEEDED":
            if mlflow_run_id:
                tracking.fail_run_if_open(settings, mlflow_run_id)
            if status == "TIMEOUT":
                raise submit.SubmitError(
                    f"Ray job {sid} ran past the job file's timeout of {self.timeout} and was stopped"
                )
            raise submit.job_failed(address, sid, status, event.get("message", ""), logs, event.get("exit_code"))
        result = submit.result_from_logs(logs)
        if result is None:
            raise submit.SubmitError(f"Ray job {sid} succeeded but printed no result line; see its logs")
        return self._finish(context, settings, load_job(self.job_name), result)

    def _args(self, job: JobConfig, ds: dt.date, params: dict) -> list[str]:
        if self.command != "run":
            return [self.command, job.name, "--date", ds.isoformat()]
        alias, version = model_override(params)
        return submit.run_argv(
            job.name, ds.isoformat(), alias=alias, version=version, dry_run=bool(params.get("dry_run"))
        )

    def _new_mlflow_run(self, context: Context, settings: Settings, job: JobConfig, ds: dt.date) -> str:
        from jobs import tracking

        ti = context["ti"]
        tags = {"airflow.dag_id": ti.dag_id, "airflow.run_id": ti.run_id, "airflow.try_number": str(ti.try_number)}
        experiment, run_id = tracking.create_scoring_run(settings, job.name, ds, tags=tags)
        MlflowRunLink.store(context, tracking.run_url(settings, experiment, run_id))
        return run_id

    def _finish(self, context: Context, settings: Settings, job: JobConfig, result: dict) -> dict:
        if self.command == "run":
            return result
        from jobs import tracking

        client = tracking.configure(settings)
        run = client.get_run(result["mlflow_run_id"])
        MlflowRunLink.store(context, tracking.run_url(settings, run.info.experiment_id, run.info.run_id))
        summary = {k: result[k] for k in ("date", "verdict", "reasons", "lake_path", "mlflow_run_id")}
        if result["verdict"] == "promote" and job.ab and job.ab.auto_promote:
            from jobs.promotion import promote

            summary["promotion"] = promote(job, reason="auto_promote: verdict promote")
        return summary

    # -- embedded: in this process ----------------------------------------------------------

    def _run_here(self, context: Context, settings: Settings, job: JobConfig, ds: dt.date, params: dict) -> dict:
        from jobs import tracking

        # no Ray job here: store an empty link, since Airflow logs a link's missing XCom as an error
        RayJobLink.store(context, "")
        if self.command == "compare":
            from jobs.ab import run_compare

            return self._finish(context, settings, job, run_compare(job, ds, settings=settings))
        from jobs.predict import run_job
        from jobs.stopping import Stopped

        run_id = self._new_mlflow_run(context, settings, job, ds)
        alias, version = model_override(params)
        try:
            result = run_job(
                job,
                ds,
                settings=settings,
                model_alias=alias,
                model_version=version,
                dry_run=bool(params.get("dry_run")),
                mlflow_run_id=run_id,
            )
        except BaseException as e:
            # stopped: marked failed or cleared in the UI (SIGTERM from Airflow's supervisor)
            tracking.fail_run_if_open(settings, run_id, "KILLED" if isinstance(e, Stopped) else "FAILED")
            raise
        return result.as_dict()

    # -- cluster mode: the Ray Jobs API -----------------------------------------------------

    def _submit(self, context: Context, settings: Settings, job: JobConfig, ds: dt.date, params: dict) -> dict:
        ti = context["ti"]
        address = settings.ray.address
        key = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{job.name}"
        running = submit.find_running(address, key)
        if running is not None:
            sub, mlflow_run_id = running, running.metadata.get("mlflow_run_id")
        else:
            args = self._args(job, ds, params)
            mlflow_run_id = self._new_mlflow_run(context, settings, job, ds) if self.command == "run" else None
            if mlflow_run_id:
                args += ["--mlflow-run-id", mlflow_run_id]
            metadata = {"job": job.name, "date": ds.isoformat(), "airflow_dag_id": ti.dag_id}
            metadata["airflow_run_id"] = ti.run_id
            if mlflow_run_id:
                metadata["mlflow_run_id"] = mlflow_run_id
            sub = submit.submit_new(
                address,
                key=key,
                base=submit.submission_base(key, job=job.name, command=self.command, ds=ds.isoformat()),
                args=args,
                settings=settings,
                metadata=metadata,
            )
        RayJobLink.store(context, submit.job_url(settings.ray.dashboard_url or address, sub.submission_id))
        self.log.info("following Ray job %s: %s", sub.submission_id, sub.dashboard_url)
        self.defer(
            trigger=RayJobTrigger(
                address=address,
                submission_id=sub.submission_id,
                deadline_unix=time.time() + self.timeout.total_seconds(),
                poll_s=self.poll_s,
            ),
            method_name="execute_complete",
            kwargs={"mlflow_run_id": mlflow_run_id},
            timeout=self.timeout + dt.timedelta(minutes=5),  # a backstop: the trigger stops the job first
        )
