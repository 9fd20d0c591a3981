"""The DAG's first task, check_input: the day's input partition is there, whole and readable,
before Ray starts.

A nightly input lands when its producer is done, and some nights that is late. With
``airflow.wait_for_input_minutes`` in the job file, the task waits for it as an Airflow sensor in
reschedule mode: it looks, and while the partition is not there (:class:`jobs.lake.NotLanded`) it
gives its worker slot back until the next look. When the wait runs out, the task fails without
retries, saying what it last saw. Without a wait it looks once, and a partition not there yet
fails the try like any other error a retry may fix.

Imported while DAGs are parsed, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from jobs.airflow_ray import failing_at_once

if TYPE_CHECKING:
    from airflow.sdk import Context

    from jobs.config import JobConfig
    from jobs.lake import NotLanded

log = logging.getLogger(__name__)

LONGEST_LOOK_APART = dt.timedelta(minutes=5)
SHORTEST_LOOK_APART = dt.timedelta(seconds=5)


def look_apart(wait: dt.timedelta) -> dt.timedelta:
    """Time between two looks: ten looks over a short wait, one every five minutes over a long one
    (each look costs the scheduler a reschedule and the store a listing)."""
    return max(SHORTEST_LOOK_APART, min(LONGEST_LOOK_APART, wait / 10))


class InputPartitionSensor(BaseSensorOperator):
    """Waits up to ``wait`` for the partition of ``job.input.table`` that the run scores (the
    ``date`` param, else the day before the run's date on the clock of the job's ``timezone``),
    then returns ``{"date", "files", "rows"}`` for the tasks after it."""

    def __init__(self, *, job: JobConfig, job_file: Path, wait: dt.timedelta, **kwargs: Any) -> None:
        super().__init__(timeout=wait.total_seconds(), poke_interval=look_apart(wait), mode="reschedule", **kwargs)
        self.table, self.partition, self.job_file = job.input.table, job.input.partition, str(job_file)
        self.ready_marker, self.timezone = job.input.ready_marker, job.timezone
        self.not_landed: NotLanded | None = None

    def execute(self, context: Context) -> Any:
        with failing_at_once():  # a partition not there yet is waited for or retried; a refused key is not
            if not self.timeout:
                return self.check(context)
            try:
                return super().execute(context)
            except AirflowSensorTimeout:
                raise AirflowSensorTimeout(
                    f"{self.not_landed}; waited {_span(self.timeout)} for it (airflow.wait_for_input_minutes "
                    f"in {self.job_file}), not retried"
                ) from None

    def poke(self, context: Context) -> bool | PokeReturnValue:
        from jobs.lake import NotLanded

        try:
            return PokeReturnValue(is_done=True, xcom_value=self.check(context))
        except NotLanded as e:
            self.not_landed = e
            log.info("%s; looking again in %s", e, _span(self.poke_interval))
            return False

    def check(self, context: Context) -> dict[str, Any]:
        """The partition's summary; raises :class:`jobs.lake.NotLanded` while it is not whole."""
        from jobs import day_folders
        from jobs.config import zone_info
        from jobs.lake import Lake
        from jobs.schedule import score_date
        from jobs.settings import load_settings

        dag_run = context["dag_run"]
        ds = score_date(
            context["params"].get("date") or self._announced(context),
            dag_run.logical_date or dag_run.run_after,
            zone_info(self.timezone),
        )
        lake = Lake(load_settings().lake_root)
        files, footers = lake.input_footers(self.table, ds, ready_marker=self.ready_marker, layout=self.partition)
        rows = sum(footer.num_rows for footer in footers)
        log.info("%s/%s: %d files, %d rows", self.table, day_folders.folder(self.partition, ds), len(files), rows)
        return {"date": ds.isoformat(), "files": len(files), "rows": rows}

    def _announced(self, context: Context) -> str | None:
        """The day the Asset events that triggered this run say was written (``schedule:
        on_input``), the newest; None for a run no event triggered. A partition-aware DAG's run
        (``airflow.partitioned_assets``) has one partition key, which names it. Airflow folds the
        plain events that came while the DAG waited into one run, which scores the newest day: the
        others are named in the log, to be triggered by date."""
        from jobs.schedule import announced_dates, partition_day

        if key := context.get("partition_key"):
            day = partition_day(key, self.partition)
            log.info("this run's partition key %r names %s", key, day)
            return day.isoformat()
        triggering = context.get("triggering_asset_events") or {}
        days = announced_dates(event for asset in triggering for event in triggering[asset])
        if not days:
            if triggering:
                log.warning("the Asset events that triggered this run name no day: it scores the day before it runs")
            return None
        if len(days) > 1:
            log.warning(
                "Asset events for %s triggered this run, which scores the newest; trigger a run for each of the "
                "others with its date (the date param)",
                ", ".join(map(str, days)),
            )
        return days[0].isoformat()


def _span(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} minutes"
