"""Airflow DAGs for lakecast: one DAG per job file in ``conf/jobs/``, id ``lakecast__<job>``.

Parsing stays light: this file reads YAML and builds DAG objects. Ray, torch and MLflow are
imported inside the tasks, when they run. A job file that does not validate still shows up, as
a DAG whose only task fails with the file's error, so a typo never hides a job silently and
never takes the other jobs down with it.
"""

from __future__ import annotations

import atexit
import datetime as dt
import gc
import logging
import re
from pathlib import Path

from airflow.sdk import (
    Asset,
    AsyncCallback,
    CronTriggerTimetable,
    DayWindow,
    DeadlineAlert,
    DeadlineReference,
    Param,
    PartitionedAssetTimetable,
    RollupMapper,
    StartOfDayMapper,
    dag,
    task,
)

from jobs import deadline_email, labels
from jobs.airflow_ray import LakecastJobOperator
from jobs.config import ON_INPUT, JobConfig, job_files, load_job_files, zone_info
from jobs.failure_email import FailureEmail
from jobs.input_sensor import InputPartitionSensor
from jobs.settings import load_settings
from jobs.yamlconf import ConfigError

log = logging.getLogger(__name__)

# A process that loads these DAGs and ends the usual way (`airflow dags test`, the demo's run)
# spent its last 3 s of a 25 s run in Python's teardown, collecting the objects Airflow, Ray,
# torch and MLflow keep until then. Frozen at exit (after the work, before the teardown), they
# are left to the OS, as Airflow's task processes leave theirs when they end with os._exit.
atexit.register(gc.freeze)

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

PARAMS = {
    "date": Param(
        None,
        type=["null", "string"],
        format="date",
        title="Date to score",
        description="Partition date YYYY-MM-DD. Empty: the day before the run's date.",
    ),
    "model_alias": Param(
        None,
        type=["null", "string"],
        title="Model alias",
        description="Score with this registry alias instead of the job file's (e.g. challenger).",
    ),
    "model_version": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Model version",
        description="Score with this fixed model version; wins over any alias.",
    ),
    "dry_run": Param(
        False,
        type="boolean",
        title="Dry run",
        description="Score into staging and check the output, but publish nothing.",
    ),
}


def _doc(job: JobConfig, table_uri: str) -> str:
    selector = f"version {job.model.version}" if job.model.version else f"alias `{job.model.alias}`"
    return f"""
# {job.name}

{job.description}

| | |
|---|---|
| input | `{job.input.table}` partition `{job.input.partition}`, key `{job.input.key}` |
| model | `{job.model.name}` {selector}, resolved to a version number at run time |
| output | `{table_uri}/ds=<date>/`, column `{job.output.score_column}` {_scores(job)}{_carried(job)} plus lineage |
| schedule | {_schedule(job)} |
| catch-up | {_catch_up(job)} |
| Asset events | {"partitioned: publish's carries the day as its key" if job.airflow.partitioned_assets else "plain"} |
| input wait | {_wait(job)} |
| actors | {job.compute.min_actors} to {job.compute.max_actors} |
| per actor | {job.compute.cpus_per_actor:g} CPU(s), GPUs: {job.compute.gpus_per_actor} |
| nodes | {_nodes(job)} |
| Airflow pool | {f"`{job.airflow.pool}` (predict, compare)" if job.airflow.pool else "the default pool"} |
| failure mail | {", ".join(job.airflow.email_on_failure) or "none (airflow.email_on_failure)"} |
| deadline | {_deadline_doc(job)} |

Trigger one date: `airflow dags trigger {job.dag_id} --conf '{{"date": "YYYY-MM-DD"}}'`.
Tasks: **check_input** (the partition exists, is whole and readable) → **predict** (Ray Data job,
logged to MLflow) → **publish** (Asset event with the row count and model version).
Configured in `conf/jobs/{job.name}.yaml`.
"""


def _scores(job: JobConfig) -> str:
    if job.classes:
        each = f", each class's probability (`{'`, `'.join(job.class_columns)}`)" if job.class_columns else ""
        return f"(the probability of the predicted class) and `prediction` (one of {', '.join(job.classes)}){each}"
    if job.model.dimensions:
        return f"(a vector of {job.model.dimensions} float32 values a row: an embedding, model.task)"
    if not job.classifies:
        return "(the predicted value: a regression, model.task)"
    cut = f"{job.output.threshold:g}" if job.output.threshold is not None else "the model's threshold"
    return f"(a probability) and `prediction` (the score at or above {cut})"


def _catch_up(job: JobConfig) -> str:
    first = job.airflow.catch_up_from
    if first is None:
        return "none: a scheduler back after a pause runs the latest night only (airflow.catch_up_from)"
    runs = job.airflow.max_active_runs
    at_once = "one at a time" if runs == 1 else f"{runs} at a time (airflow.max_active_runs)"
    return f"every night from {first} on that came after the DAG's last scheduled run, oldest first, {at_once}"


def _nodes(job: JobConfig) -> str:
    """The nodes the actors run on: those of the label selector, else each fallback's in turn."""
    compute = job.compute
    if not compute.label_selector:
        return "any node of the Ray cluster (compute.label_selector)"
    nodes = ", else ".join(f"labelled `{labels.shown(s)}`" if s else "any node" for s in compute.selectors.values())
    keys = (
        "compute.label_selector, compute.fallback_strategy" if compute.fallback_strategy else "compute.label_selector"
    )
    return f"{nodes} ({keys})"


def _deadline_doc(job: JobConfig) -> str:
    minutes = job.airflow.deadline_minutes
    if minutes is None:
        return "none (airflow.deadline_minutes)"
    return f"a run not finished {minutes:g} minutes after it was queued mails the failure mail's addresses"


def _carried(job: JobConfig) -> str:
    names = ", ".join(f"`{c}`" for c in job.output.passthrough)
    return f", the input's {names} (output.passthrough)" if names else ""


def _wait(job: JobConfig) -> str:
    marker = job.input.ready_marker
    whole = f" (whole once its `{marker}` is there)" if marker else ""
    if not job.airflow.wait_for_input_minutes:
        return f"none: a partition not there yet{whole} fails the try, and the retries follow"
    return f"up to {job.airflow.wait_for_input_minutes:g} minutes for the partition{whole}"


def _on_failure(job: JobConfig) -> dict:
    """Every task's mail on failing for good, where the job file names who gets it."""
    if not job.airflow.email_on_failure:
        return {}
    return {"on_failure_callback": FailureEmail(job.name, job.file, job.airflow.email_on_failure)}


def _deadline(job: JobConfig) -> DeadlineAlert | None:
    """The mail of a night not finished in time (``airflow.deadline_minutes``), counted from when its
    run was queued: a scheduled run's time, a triggered run's trigger, an Asset's event. Airflow's
    triggerer awaits the callback by its path, when the run is still going or has failed by then."""
    if job.airflow.deadline_minutes is None:
        return None
    to, minutes = list(job.airflow.email_on_failure), job.airflow.deadline_minutes
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(minutes=minutes),
        callback=AsyncCallback(
            deadline_email.CALLBACK,
            kwargs={"job": job.name, "job_file": job.file, "to": to, "minutes": minutes, "timezone": job.timezone},
        ),
        name="lakecast deadline",
    )


def table_asset(lake_root: str, table: str) -> Asset:
    """A lake table as an Airflow Asset, named by its URI, as Airflow names an Asset given one.

    Airflow keeps names and URIs unique among active assets: a downstream DAG's
    ``Asset("s3://…/predictions/churn")`` is then the one lakecast's publish updates, not a second
    name for its URI, and a lake that moves makes another asset, where a fixed name moved to a new
    URI stayed inactive, failing publish, until a scheduler's cleanup pass (which ``airflow dags
    test`` never runs). A job on ``schedule: on_input`` listens to its input table's Asset, the
    one the DAG that writes the table updates (another lakecast job's publish, say)."""
    uri = f"{lake_root.rstrip('/')}/{table}"
    return Asset(uri=uri if "://" in uri else f"file://{uri}")


def _on_partitions(job: JobConfig, source: Asset) -> PartitionedAssetTimetable:
    """A partition-aware DAG on its input's events: a run for each key, the day it names; with
    ``airflow.hourly_keys``, a run for each day once its 24 hours' keys have all arrived, keyed by
    the day (Airflow's ``RollupMapper``: each hour's key to its day, ``DayWindow``: the 24 hours a
    day waits for)."""
    if job.airflow.hourly_keys is None:
        return PartitionedAssetTimetable(assets=source)
    hours = StartOfDayMapper(input_format=job.airflow.hourly_keys)  # its keys: %Y-%m-%d, in UTC
    return PartitionedAssetTimetable(
        assets=source, default_partition_mapper=RollupMapper(upstream_mapper=hours, window=DayWindow())
    )


def _schedule(job: JobConfig) -> str:
    if job.schedule == ON_INPUT and job.airflow.hourly_keys:
        return (
            f"when `{job.input.table}`'s Asset has had partitioned events for all 24 hours of a day (keys "
            f"`{dt.datetime(2026, 12, 4, 13).strftime(job.airflow.hourly_keys)}`); a run scores that day"
        )
    if job.schedule == ON_INPUT and job.airflow.partitioned_assets:
        return (
            f"when `{job.input.table}`'s Asset gets a partitioned event; a run scores the day its partition key "
            "names (`2026-12-04`, `2026-12-04T00:00:00` or the day's folder)"
        )
    if job.schedule == ON_INPUT:
        return (
            f"when `{job.input.table}`'s Asset is updated; a run scores the day its event names (`date` in "
            "its extra, as lakecast's publish sends it), else the day before it runs"
        )
    if job.schedule is None:
        return (
            f"none (triggered runs only); a run scores its `date` param, else the day before its date in {job.timezone}"
        )
    if job.timezone == "UTC":
        return f"`{job.schedule}` (UTC); a scheduled run scores the day before its run date"
    return f"`{job.schedule}` on the clock of {job.timezone}; a scheduled run scores the day before its date there"


def _start(job: JobConfig) -> dt.datetime:
    """The DAG's start date. With ``airflow.catch_up_from``, midnight after that night on the job's
    clock: the first run after it (02:00 that day) scores the night before, the one named."""
    first = job.airflow.catch_up_from
    if first is None:
        return START
    return dt.datetime.combine(first + dt.timedelta(days=1), dt.time(0), tzinfo=zone_info(job.timezone))


def build_dag(job: JobConfig, job_file: Path, lake_root: str):
    table_uri = f"{lake_root.rstrip('/')}/{job.output.table}"
    predictions = table_asset(lake_root, job.output.table)
    schedule = None
    if job.schedule == ON_INPUT:
        source = table_asset(lake_root, job.input.table)
        schedule = _on_partitions(job, source) if job.airflow.partitioned_assets else [source]
    elif job.schedule is not None:
        # the cron's hours on the clock of the job's zone: 02:00 in Paris is 01:00 UTC in winter, 00:00 in summer
        schedule = CronTriggerTimetable(job.schedule, timezone=job.timezone)

    @dag(
        dag_id=job.dag_id,
        schedule=schedule,
        start_date=_start(job),
        catchup=job.airflow.catch_up_from is not None,
        max_active_runs=job.airflow.max_active_runs,
        doc_md=_doc(job, table_uri),
        deadline=_deadline(job),
        params=PARAMS,
        tags=["lakecast", *job.airflow.tags],
        default_args={
            "owner": job.airflow.owner,
            "retries": job.airflow.retries,
            "retry_delay": dt.timedelta(minutes=job.airflow.retry_delay_minutes),
            **_on_failure(job),
        },
    )
    def pipeline() -> None:
        check_input = InputPartitionSensor(
            task_id="check_input",
            doc_md="The partition exists, is whole and readable, before Ray starts; waits for it where the job "
            "file says so (airflow.wait_for_input_minutes).",
            job=job,
            job_file=job_file,
            wait=dt.timedelta(minutes=job.airflow.wait_for_input_minutes),
        )

        timeout = dt.timedelta(minutes=job.airflow.timeout_minutes)
        predict = LakecastJobOperator(
            task_id="predict",
            doc_md="Run the Ray Data job for the checked date: here, or on the Ray cluster of the profile.",
            job_name=job.name,
            command="run",
            checked=check_input.output,
            timeout=timeout,
            pool=job.airflow.pool,  # None: Airflow's default pool
        )

        @task(outlets=[predictions])
        def publish(result: dict, outlet_events=None) -> dict:
            """Announce the new partition to downstream DAGs scheduled on the predictions Asset."""
            if not result["committed"]:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException("dry run: nothing was published")
            keys = ("date", "rows", "model_name", "model_version", "run_id", "output", "scores", "input_nulls")
            # canary, shadow: the challenger's part in the run, where it had one
            outlet_events[predictions].extra = {k: result[k] for k in (*keys, "canary", "shadow") if k in result}
            if job.airflow.partitioned_assets:  # for partition-aware downstream DAGs (and only for them)
                outlet_events[predictions].add_partitions(result["date"])
            return result

        published = publish(predict.output)

        if job.ab is not None:
            delay = job.ab.label_delay_days
            labeled = f"{delay} day(s) before the night's date (ab.label_delay_days)" if delay else "the night's date"
            LakecastJobOperator(
                task_id="compare",
                doc_md=f"A/B: champion vs challenger on the labeled data of {labeled}; promote if the policy says so.",
                job_name=job.name,
                command="compare",
                checked=published,
                timeout=timeout,
                pool=job.airflow.pool,  # None: Airflow's default pool
            )

    return pipeline()


def build_broken_dag(path: Path, error: Exception):
    """Stand-in for a job file that does not validate: visible, documented, and failing."""
    message = str(error)

    @dag(
        dag_id="lakecast__" + re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem),
        schedule=None,
        start_date=START,
        catchup=False,
        tags=["lakecast", "invalid-config"],
        doc_md=f"# {path.stem}: invalid job file\n\n```\n{message}\n```\n\nFix `{path.name}`; "
        "`lakecast validate` checks every job file.",
    )
    def broken() -> None:
        @task
        def invalid_job_file() -> None:
            raise ConfigError(message)

        invalid_job_file()

    return broken()


def _build_all() -> None:
    lake_root = load_settings().lake_root
    # a file that does not validate, or writes a table another one writes, becomes a failing DAG
    jobs, errors = load_job_files(job_files())
    for path, error in errors.items():
        log.error("%s", error)
        broken = build_broken_dag(path, error)
        globals()[broken.dag_id] = broken
    for path, job in jobs.items():
        globals()[job.dag_id] = build_dag(job, path, lake_root)


_build_all()
