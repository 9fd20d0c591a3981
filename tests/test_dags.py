"""DAG integrity: the dags folder parses the way Airflow's dag-processor parses it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from jobs.airflow_env import airflow_env
from jobs.schedule import score_date

PROBE = Path(__file__).with_name("dagbag_probe.py")
CONF = Path(__file__).resolve().parents[1] / "conf"
CHURN = (CONF / "jobs" / "churn.yaml").read_text()


def conf_with(tmp_path: Path, **jobs: str) -> Path:
    """A configuration folder with the project's local profile and these job files (name → text)."""
    conf = tmp_path / "conf"
    (conf / "jobs").mkdir(parents=True)
    (conf / "profiles").mkdir()
    (conf / "profiles" / "local.yaml").write_text((CONF / "profiles" / "local.yaml").read_text())
    for name, text in jobs.items():
        (conf / "jobs" / f"{name}.yaml").write_text(text)
    return conf


def parse_dags(settings, **env) -> dict:
    proc = subprocess.run(
        [sys.executable, str(PROBE)], env={**airflow_env(settings), **env}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed(settings) -> dict:
    return parse_dags(settings)


def test_dags_folder_imports_without_errors(parsed):
    assert parsed["import_errors"] == {}
    assert "lakecast__churn" in parsed["dags"]


def test_parsing_imports_no_ray_torch_or_mlflow(parsed):
    assert parsed["heavy_modules"] == []


def test_churn_dag_shape(parsed):
    dag = parsed["dags"]["lakecast__churn"]
    # compare: the job file has an ab: section
    assert dag["tasks"] == ["check_input", "predict", "publish", "compare"]
    assert dag["upstream"] == {
        "check_input": [],
        "predict": ["check_input"],
        "publish": ["predict"],
        "compare": ["publish"],
    }
    assert set(dag["pools"].values()) == {"default_pool"}  # the job file names no pool
    assert dag["catchup"] is False
    assert "0 2 * * *" in dag["schedule"]
    assert dag["params"] == ["date", "dry_run", "model_alias", "model_version"]
    assert dag["retries"] == 2
    assert "churn-classifier" in dag["doc_md"] and "airflow dags trigger lakecast__churn" in dag["doc_md"]
    assert len(dag["outlets"]) == 1 and dag["outlets"][0].startswith("file://")
    assert dag["outlets"][0].endswith("/lake/predictions/churn")


def test_an_invalid_job_file_shows_as_a_failing_dag(settings, tmp_path):
    conf = conf_with(tmp_path, churn=CHURN, typo=CHURN + "shedule: daily\n")
    parsed = parse_dags(settings, LAKECAST_CONF=str(conf))
    assert parsed["import_errors"] == {}
    assert parsed["dags"]["lakecast__churn"]["tasks"] == ["check_input", "predict", "publish", "compare"]
    broken = parsed["dags"]["lakecast__typo"]
    assert broken["tasks"] == ["invalid_job_file"]
    assert "invalid-config" in broken["tags"]
    assert "shedule: unknown key" in broken["doc_md"]


def test_two_job_files_writing_one_table_both_stop_and_say_why(settings, tmp_path):
    """A copied job file that keeps its output.table would replace the other's predictions every
    night: neither runs until one moves, and a third job is left alone."""
    eu = CHURN.replace("predictions/churn", "predictions/churn_eu")
    conf = conf_with(tmp_path, churn=CHURN, churn_copy=CHURN, churn_eu=eu)
    parsed = parse_dags(settings, LAKECAST_CONF=str(conf))
    assert parsed["import_errors"] == {}
    for stem, other in (("churn", "churn_copy"), ("churn_copy", "churn")):
        broken = parsed["dags"][f"lakecast__{stem}"]
        assert broken["tasks"] == ["invalid_job_file"]
        assert (
            f"{conf / 'jobs' / stem}.yaml: output.table: 'predictions/churn' is where this job writes its "
            f"predictions, and {conf / 'jobs' / other}.yaml writes its predictions there too"
        ) in broken["doc_md"]
    assert parsed["dags"]["lakecast__churn_eu"]["tasks"] == ["check_input", "predict", "publish", "compare"]


def test_a_jobs_pool_holds_the_tasks_that_use_ray(settings, tmp_path):
    """Several jobs on one Ray cluster: an Airflow pool caps how many score or compare at once,
    while their input checks and publishing never wait for a slot."""
    pooled = CHURN.replace("  tags: [churn, demo]", "  tags: [churn, demo]\n  pool: ray_cluster")
    conf = conf_with(tmp_path, churn=pooled)
    dag = parse_dags(settings, LAKECAST_CONF=str(conf))["dags"]["lakecast__churn"]
    assert dag["pools"] == {
        "check_input": "default_pool",
        "predict": "ray_cluster",
        "publish": "default_pool",
        "compare": "ray_cluster",
    }
    assert "| Airflow pool | `ray_cluster` (predict, compare) |" in dag["doc_md"]


def test_the_dags_docs_say_what_the_score_column_holds(settings, parsed, tmp_path):
    """A probability cut into ``prediction``, a regression's predicted value alone, a multiclass
    model's class or an embedding's vector; the input's columns copied beside them."""
    doc = parsed["dags"]["lakecast__churn"]["doc_md"]
    assert "column `churn_probability` (a probability) and `prediction` (the score at or above the model's" in doc
    without_ab = CHURN.split("\nab:")[0] + "\ncompute:" + CHURN.split("\ncompute:")[1]
    regression = without_ab.replace("  alias: champion ", "  task: regression\n  alias: champion ").replace(
        "  score_column: churn_probability\n", "  score_column: churn_probability\n  passthrough: [region]\n"
    )
    multiclass = without_ab.replace(
        "  alias: champion ", "  task: multiclass\n  classes: [basic, plus, premium]\n  alias: champion "
    ).replace("table: predictions/churn", "table: predictions/plan\n  class_scores: true")
    embedding = without_ab.replace(
        "  alias: champion ", "  task: embedding\n  dimensions: 64\n  alias: champion "
    ).replace("table: predictions/churn", "table: predictions/vectors")
    conf = conf_with(tmp_path, churn=regression, plan=multiclass, vectors=embedding)
    dags = parse_dags(settings, LAKECAST_CONF=str(conf))["dags"]
    assert (
        "column `churn_probability` (the predicted value: a regression, model.task), the input's `region` "
        "(output.passthrough) plus lineage"
    ) in dags["lakecast__churn"]["doc_md"]
    assert (
        "column `churn_probability` (the probability of the predicted class) and `prediction` (one of basic, plus, "
        "premium), each class's probability (`churn_probability_basic`, `churn_probability_plus`, "
        "`churn_probability_premium`) plus lineage"
    ) in dags["lakecast__plan"]["doc_md"]
    assert (
        "column `churn_probability` (a vector of 64 float32 values a row: an embedding, model.task) plus lineage"
    ) in dags["lakecast__vectors"]["doc_md"]


def test_the_dags_docs_say_which_nodes_the_actors_run_on(settings, parsed, tmp_path):
    """A job file's label selector, and where Ray places the actors when no such node can hold
    them, in the DAG's docs, where a user opening it in the Airflow UI reads its settings."""
    assert (
        "| nodes | any node of the Ray cluster (compute.label_selector) |"
        in parsed["dags"]["lakecast__churn"]["doc_md"]
    )
    placed = CHURN.replace(
        "\ncompute:\n",
        "\ncompute:\n  label_selector: {ray.io/market-type: spot, zone: 'in(a, b)'}\n"
        "  fallback_strategy: [{label_selector: {ray.io/market-type: on-demand}}, {label_selector: {}}]\n",
    )
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=placed)))["dags"]["lakecast__churn"]
    assert (
        "| nodes | labelled `ray.io/market-type: spot, zone: in(a,b)`, else labelled `ray.io/market-type: on-demand`, "
        "else any node (compute.label_selector, compute.fallback_strategy) |"
    ) in dag["doc_md"]


def test_a_job_that_names_who_to_mail_mails_them_from_every_task(settings, parsed, tmp_path):
    """``airflow.email_on_failure``: each task calls the mail when it fails for good (which task
    fails is not known in advance); a job that names nobody has no callback at all."""
    assert set(map(tuple, parsed["dags"]["lakecast__churn"]["on_failure"].values())) == {()}
    mailed = CHURN.replace("  tags: [churn, demo]", "  tags: [churn, demo]\n  email_on_failure: oncall@example.com")
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=mailed)))["dags"]["lakecast__churn"]
    assert dag["on_failure"] == {
        task: ["FailureEmail('churn', to=['oncall@example.com'])"]
        for task in ("check_input", "predict", "publish", "compare")
    }
    assert "| failure mail | oncall@example.com |" in dag["doc_md"]


def test_a_job_with_a_deadline_mails_when_a_night_is_late(settings, parsed, tmp_path):
    """``airflow.deadline_minutes``: an Airflow Deadline Alert counted from when the run was
    queued, whose callback the triggerer imports by its path and awaits with what the DAG gave it."""
    from jobs.deadline_email import mail_missed_deadline

    assert parsed["dags"]["lakecast__churn"]["deadlines"] == []
    late = CHURN.replace(
        "  tags: [churn, demo]",
        "  tags: [churn, demo]\n  email_on_failure: oncall@example.com\n  deadline_minutes: 240",
    )
    conf = conf_with(tmp_path, churn=late)
    dag = parse_dags(settings, LAKECAST_CONF=str(conf))["dags"]["lakecast__churn"]
    [alert] = dag["deadlines"]
    assert alert == {
        "reference": "DagRunQueuedAtDeadline",
        "minutes": 240,
        "callback": "AsyncCallback",
        "path": "jobs.deadline_email.mail_missed_deadline",
        "kwargs": {
            "job": "churn",
            "job_file": str(conf / "jobs" / "churn.yaml"),
            "to": ["oncall@example.com"],
            "minutes": 240,
            "timezone": "UTC",
        },
    }
    module, name = alert["path"].rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[name]), name) is mail_missed_deadline
    assert (
        "| deadline | a run not finished 240 minutes after it was queued mails the failure mail's addresses |"
        in (dag["doc_md"])
    )


def test_a_job_in_another_time_zone_runs_on_its_clock(settings, parsed, tmp_path):
    """``timezone``: the cron's hours are the zone's, through daylight saving, as the scheduler
    reads the DAG: 00:30 in Paris is 23:30 UTC the day before in winter, 22:30 in summer."""
    assert parsed["dags"]["lakecast__churn"]["runs"] == {
        "2026-01-10T12:00:00+00:00": "2026-01-11T02:00:00+00:00",
        "2026-07-10T12:00:00+00:00": "2026-07-11T02:00:00+00:00",
    }
    paris = CHURN.replace('schedule: "0 2 * * *"', 'schedule: "30 0 * * *"\ntimezone: Europe/Paris')
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=paris)))["dags"]["lakecast__churn"]
    assert dag["runs"] == {
        "2026-01-10T12:00:00+00:00": "2026-01-10T23:30:00+00:00",
        "2026-07-10T12:00:00+00:00": "2026-07-10T22:30:00+00:00",
    }
    assert (
        "| schedule | `30 0 * * *` on the clock of Europe/Paris; a scheduled run scores the day before its date there |"
    ) in dag["doc_md"]


def test_a_job_that_catches_up_scores_each_missed_night_from_the_one_it_names(settings, parsed, tmp_path):
    """``airflow.catch_up_from``: the scheduler's first run is the one that scores the night named (at
    02:00 the day after, on the job's clock), and each night after it without a run follows, as many
    at once as ``airflow.max_active_runs`` says; a job without the key has no catchup."""
    churn = parsed["dags"]["lakecast__churn"]
    assert churn["catchup"] is False and "first" not in churn["runs"] and churn["max_active_runs"] == 1
    assert (
        "| catch-up | none: a scheduler back after a pause runs the latest night only (airflow.catch_up_from) |"
    ) in churn["doc_md"]
    text = CHURN.replace('schedule: "0 2 * * *"', 'schedule: "0 2 * * *"\ntimezone: Europe/Paris').replace(
        "  tags: [churn, demo]", "  tags: [churn, demo]\n  catch_up_from: 2026-11-01\n  max_active_runs: 3"
    )
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=text)))["dags"]["lakecast__churn"]
    assert dag["catchup"] is True and dag["max_active_runs"] == 3
    assert dag["runs"]["first"] == "2026-11-02T01:00:00+00:00"  # 02:00 in Paris
    assert score_date(None, dt.datetime.fromisoformat(dag["runs"]["first"]), ZoneInfo("Europe/Paris")) == dt.date(
        2026, 11, 1
    )
    assert (
        "| catch-up | every night from 2026-11-01 on that came after the DAG's last scheduled run, oldest first, "
        "3 at a time (airflow.max_active_runs) |"
    ) in dag["doc_md"]


def test_a_job_can_wait_for_a_late_partition(settings, parsed, tmp_path):
    """check_input waits as a sensor in reschedule mode, giving its worker slot back between looks:
    by default it looks once (the retries follow), with a wait it looks every few minutes."""
    assert parsed["dags"]["lakecast__churn"]["sensors"]["check_input"]["timeout_s"] == 0
    late = CHURN.replace("  key: customer_id\n", "  key: customer_id\n  ready_marker: _SUCCESS\n").replace(
        "  tags: [churn, demo]", "  tags: [churn, demo]\n  wait_for_input_minutes: 180"
    )
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=late)))["dags"]["lakecast__churn"]
    assert dag["sensors"] == {"check_input": {"mode": "reschedule", "timeout_s": 10800, "poke_interval_s": 300}}
    assert "| input wait | up to 180 minutes for the partition (whole once its `_SUCCESS` is there) |" in dag["doc_md"]


def test_a_job_on_input_runs_when_its_input_tables_asset_is_updated(settings, parsed, tmp_path):
    """``schedule: on_input``: the DAG is scheduled on the input table's Asset, named by its URI as
    the predictions' Asset is, so a lakecast job that reads another's predictions runs after its
    publish. Its docs say when it runs and which day it scores."""
    assert parsed["dags"]["lakecast__churn"]["schedule_assets"] == []
    chained = CHURN.replace('schedule: "0 2 * * *"', "schedule: on_input")
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=chained)))["dags"]["lakecast__churn"]
    assert dag["schedule_assets"] == [f"file://{settings.lake_root}/raw/customers"]
    assert dag["outlets"] == [f"file://{settings.lake_root}/predictions/churn"]  # the same naming
    assert (
        "| schedule | when `raw/customers`'s Asset is updated; a run scores the day its event names (`date` in its "
        "extra, as lakecast's publish sends it), else the day before it runs |"
    ) in dag["doc_md"]


def test_a_job_on_partitioned_input_events_is_a_partition_aware_dag(settings, tmp_path):
    """``airflow.partitioned_assets: true``: the DAG on its input's Asset is partition-aware, since
    Airflow starts only those on a partitioned event, and its docs say which day a run scores."""
    chained = CHURN.replace('schedule: "0 2 * * *"', "schedule: on_input").replace(
        "airflow:\n", "airflow:\n  partitioned_assets: true\n"
    )
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=chained)))["dags"]["lakecast__churn"]
    assert dag["timetable"] == "PartitionedAssetTimetable"
    assert dag["schedule_assets"] == [f"file://{settings.lake_root}/raw/customers"]
    assert (
        "| schedule | when `raw/customers`'s Asset gets a partitioned event; a run scores the day its partition key "
        "names (`2026-12-04`, `2026-12-04T00:00:00` or the day's folder) |"
    ) in dag["doc_md"]
    assert "| Asset events | partitioned: publish's carries the day as its key |" in dag["doc_md"]
    # as the scheduler reads it: each key its own run, an hour's too
    assert dag["partition_keys"] == {
        "mapper": "IdentityMapper",
        "run_key": "2026-12-04T13:00:00",
        "waits_for": ["2026-12-04T13:00:00"],
    }


def test_a_job_on_hourly_partitioned_events_runs_once_a_day_when_its_hours_are_in(settings, tmp_path):
    """``airflow.hourly_keys``: a producer that lands its table hour by hour sends an event an
    hour; the scheduler maps each hour's key to its day and starts that day's run once all 24
    have arrived (Airflow's ``RollupMapper``), the run keyed by the day it scores."""
    hourly = CHURN.replace('schedule: "0 2 * * *"', "schedule: on_input").replace(
        "airflow:\n", "airflow:\n  partitioned_assets: true\n  hourly_keys: '%Y-%m-%dT%H:%M:%S'\n"
    )
    dag = parse_dags(settings, LAKECAST_CONF=str(conf_with(tmp_path, churn=hourly)))["dags"]["lakecast__churn"]
    assert dag["timetable"] == "PartitionedAssetTimetable"
    assert dag["partition_keys"] == {
        "mapper": "RollupMapper",
        "run_key": "2026-12-04",
        "waits_for": [f"2026-12-04T{hour:02d}:00:00" for hour in range(24)],
    }
    assert (
        "| schedule | when `raw/customers`'s Asset has had partitioned events for all 24 hours of a day (keys "
        "`2026-12-04T13:00:00`); a run scores that day |"
    ) in dag["doc_md"]


@pytest.mark.parametrize(
    ("key", "layout"),
    [
        ("2026-12-04", "ds=%Y-%m-%d"),
        ("2026-12-04T00:00:00", "ds=%Y-%m-%d"),  # as Airflow's StartOfDayMapper takes them
        ("2026-12-04T23:30:00-05:00", "ds=%Y-%m-%d"),
        ("ds=2026-12-04", "ds=%Y-%m-%d"),
        ("dt=20261204", "dt=%Y%m%d"),
        ("year=2026/month=12/day=04", "year=%Y/month=%m/day=%d"),
    ],
)
def test_the_day_a_partition_key_names(key, layout):
    from jobs.schedule import partition_day

    assert partition_day(key, layout) == dt.date(2026, 12, 4)


def test_a_partition_key_at_an_hour_of_the_day_is_said(caplog):
    """A key of a time of day scores the whole day, and every key starts a run: the log says so."""
    from jobs.schedule import partition_day

    assert partition_day("2026-12-04T00:00:00", "ds=%Y-%m-%d") == dt.date(2026, 12, 4)
    assert "names a time of day" not in caplog.text
    assert partition_day("2026-12-04T13:00:00", "ds=%Y-%m-%d") == dt.date(2026, 12, 4)
    assert (
        "the partition key '2026-12-04T13:00:00' names a time of day (13:00:00 on 2026-12-04): the run scores the "
        "whole day's partition, and each key starts a run of its own"
    ) in caplog.text


def test_a_partition_key_that_names_no_day_is_refused():
    from jobs.schedule import partition_day
    from jobs.yamlconf import ConfigError

    with pytest.raises(ConfigError) as raised:
        partition_day("eu-west", "dt=%Y%m%d")
    assert str(raised.value) == (
        "the Asset event's partition key 'eu-west' names no day: lakecast takes the date (2026-12-04), a timestamp "
        "on it (2026-12-04T00:00:00) or the day's folder as input.partition names it (dt=20261204)"
    )


def test_score_date_rules():
    nightly = dt.datetime(2026, 11, 22, 2, 0, tzinfo=dt.UTC)
    assert score_date(None, nightly) == dt.date(2026, 11, 21)
    assert score_date("2026-11-01", nightly) == dt.date(2026, 11, 1)
    assert score_date("", dt.date(2026, 1, 1)) == dt.date(2025, 12, 31)
    # the day before the run's date on the job's clock: 00:30 in Paris on the 11th (22:30 UTC on the
    # 10th) scores the 10th; 21:00 in New York on the 10th (01:00 UTC on the 11th) scores the 9th
    paris, new_york = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")
    assert score_date(None, dt.datetime(2026, 7, 10, 22, 30, tzinfo=dt.UTC), paris) == dt.date(2026, 7, 10)
    assert score_date(None, dt.datetime(2026, 7, 11, 1, 0, tzinfo=dt.UTC), new_york) == dt.date(2026, 7, 9)
    assert score_date("2026-07-01", dt.datetime(2026, 7, 11, 1, 0, tzinfo=dt.UTC), new_york) == dt.date(2026, 7, 1)


def test_the_day_an_asset_event_names():
    """A run that Asset events triggered scores the day the newest names: ``date`` in its extra, as
    lakecast's publish sends it; the events are Airflow's own records of them, as the task's
    context holds them."""
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult

    from jobs.schedule import announced_dates
    from jobs.yamlconf import ConfigError

    def event(minute: int, extra: dict, dag: str | None = "lakecast__features"):
        return AssetEventDagRunReferenceResult(
            asset={"name": "features", "uri": "s3://lake/raw/features", "extra": {}},
            extra=extra,
            source_task_id="publish" if dag else None,
            source_dag_id=dag,
            source_run_id="r" if dag else None,
            source_map_index=-1,
            source_aliases=[],
            timestamp=dt.datetime(2026, 11, 22, 2, minute, tzinfo=dt.UTC),
        )

    assert announced_dates([]) == []
    assert announced_dates([event(1, {"rows": 5})]) == []  # names no day: the day before the run
    days = [event(1, {"date": "2026-11-20"}), event(9, {"date": "2026-11-21"}), event(5, {"date": "2026-11-20"})]
    assert announced_dates(days) == [dt.date(2026, 11, 21), dt.date(2026, 11, 20)]  # newest first, once each
    with pytest.raises(ConfigError) as raised:
        announced_dates([event(1, {"date": "yesterday"}, dag=None)])
    assert str(raised.value) == (
        "the Asset event of s3://lake/raw/features from the REST API names the day 'yesterday', not a date "
        "YYYY-MM-DD: lakecast scores no day it cannot tell"
    )


def test_airflow_commands_work_on_a_new_home(tmp_path):
    """``lakecast airflow tasks list`` as the first command on a new LAKECAST_HOME: Airflow refuses
    every command on a database it has not migrated, so lakecast creates it first, once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKECAST_", "AIRFLOW", "MLFLOW_", "RAY_"))}
    env["LAKECAST_HOME"] = str(tmp_path / "home")
    lakecast = str(Path(sys.executable).with_name("lakecast"))

    def tasks_list() -> subprocess.CompletedProcess:
        return subprocess.run(
            [lakecast, "airflow", "tasks", "list", "lakecast__churn"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = tasks_list()
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert "creating Airflow's database" in first.stderr
    assert first.stdout.split() == ["check_input", "compare", "predict", "publish"]
    again = tasks_list()
    assert again.returncode == 0 and "creating" not in again.stderr and again.stdout == first.stdout
