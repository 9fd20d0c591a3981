"""Run in a subprocess by test_dags.py, under lakecast's Airflow environment: parse the dags
folder the way the dag-processor does and report what a user would check, as JSON."""

from __future__ import annotations

import json
import sys
import time

t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag  # noqa: E402

bag = DagBag()
seconds = time.perf_counter() - t0
report = {
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "seconds": seconds,
    "heavy_modules": sorted(m for m in ("ray", "torch", "mlflow") if m in sys.modules),
    "dags": {},
}


def _listened(timetable) -> list:
    """An asset-triggered DAG's Assets: all of a list's, or the one a partition-aware DAG names."""
    condition = getattr(timetable, "asset_condition", None)
    return list(getattr(condition, "objects", [condition] if condition else []))


def _keys(dag) -> dict | None:
    """A partition-aware DAG as the scheduler sees it, from its serialized form: the run's key an
    hour's event of the input (2026-12-04T13:00:00) maps to, and the events that run waits for."""
    from airflow.partition_mappers.base import is_rollup
    from airflow.serialization.serialized_objects import DagSerialization

    timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    if not timetable.partitioned:
        return None
    [asset] = _listened(dag.timetable)
    mapper = timetable.get_partition_mapper(name=asset.name, uri=asset.uri)
    day = mapper.to_downstream("2026-12-04T13:00:00")
    return {
        "mapper": type(mapper).__name__,
        "run_key": day,
        "waits_for": sorted(mapper.to_upstream(day)) if is_rollup(mapper) else [day],
    }


def _runs(dag) -> dict:
    """When the scheduler starts the DAG's runs, from its serialized timetable (logical dates, which
    a run's day is counted from): the next run after a winter and a summer noon (UTC), and with
    catchup the first run of a DAG that has none. Empty for a DAG no clock starts."""
    import datetime as dt

    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import DataInterval, TimeRestriction

    timetable = DagSerialization.from_dict(DagSerialization.to_dict(dag)).timetable
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=True)
    runs = {}
    if dag.catchup and (
        first := timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    ):
        runs["first"] = first.logical_date.isoformat()
    for noon in (dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC), dt.datetime(2026, 7, 10, 12, tzinfo=dt.UTC)):
        last = pendulum.instance(noon)
        info = timetable.next_dagrun_info(
            last_automated_data_interval=DataInterval(last, last), restriction=restriction
        )
        if info is not None:
            runs[noon.isoformat()] = info.logical_date.isoformat()
    return runs


def _deadlines(dag) -> list:
    """The DAG's Deadline Alerts as its serialized form hands them to the scheduler: what they count
    from, the minutes, the callback's path and what it is given."""
    from airflow.serialization.serialized_objects import DagSerialization

    alerts = DagSerialization.to_dict(dag)["dag"].get("deadline") or []
    return [
        {
            "reference": alert["reference"]["reference_type"],
            "minutes": alert["interval"]["__data__"] / 60,
            "callback": alert["callback"]["__classname__"].rsplit(".", 1)[-1],
            "path": alert["callback"]["__data__"]["path"],
            "kwargs": alert["callback"]["__data__"]["kwargs"],
        }
        for alert in alerts
    ]


for dag_id, dag in bag.dags.items():
    report["dags"][dag_id] = {
        "tasks": [t.task_id for t in dag.tasks],
        "schedule": str(getattr(dag.timetable, "summary", dag.timetable)),
        # an asset-triggered DAG's: the Assets it listens to
        "schedule_assets": [a.uri for a in _listened(dag.timetable)],
        "timetable": type(dag.timetable).__name__,
        "partition_keys": _keys(dag),
        "runs": _runs(dag),
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "tags": sorted(dag.tags),
        "params": sorted(dag.params.keys()),
        "retries": dag.default_args.get("retries"),
        "doc_md": dag.doc_md or "",
        "outlets": [o.uri for t in dag.tasks for o in t.outlets],
        "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "pools": {t.task_id: t.pool for t in dag.tasks},
        "on_failure": {t.task_id: [repr(c) for c in t.on_failure_callback] for t in dag.tasks},
        "deadlines": _deadlines(dag),
        "sensors": {
            t.task_id: {"mode": t.mode, "timeout_s": t.timeout, "poke_interval_s": t.poke_interval}
            for t in dag.tasks
            if getattr(t, "_is_sensor", False)
        },
    }
json.dump(report, sys.stdout)
