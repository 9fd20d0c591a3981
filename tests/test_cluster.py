"""Cluster mode against a real Ray head: the Jobs API runs lakecast's entrypoint, the trigger the
DAG defers to follows it, failures carry the job's error, and a stop or a timeout stops the job."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time

import pyarrow.dataset as pads
import pytest

from jobs import demo_data, submit
from jobs.airflow_ray import RayJobTrigger
from jobs.lake import Lake
from tests.conftest import DAY, LABELED_ROWS, ROWS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster_lake(tmp_path_factory, registered) -> Lake:
    """A lake of its own, so the cluster's jobs never race the local tests' partitions."""
    lake = Lake(str(tmp_path_factory.mktemp("cluster-lake")))
    demo_data.build_demo_lake(lake, DAY, rows=ROWS, labeled_rows=LABELED_ROWS)
    return lake


@pytest.fixture
def cluster(ray_head, cluster_lake, settings, monkeypatch):
    """This process as a user's terminal or Airflow worker in cluster mode, with the cluster's token.

    Ray's client keeps the authentication mode and token it first read for the rest of the
    process: after the test they are read again from the environment as it was, or a private Ray
    that a later module starts in this process sends the head's token mode to a Ray that has none,
    and its actors are cancelled before they run. A private Ray that an earlier module left running
    in this process is stopped first: its driver's log thread, polling that Ray all along, would
    send it the head's token once the token is read again, and fail on it."""
    from jobs.ray_runtime import stop_ray

    stop_ray()
    for key, value in ray_head.auth_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", cluster_lake.root)
    from jobs.settings import load_settings

    yield load_settings()
    from ray._private.authentication_test_utils import reset_auth_token_state

    monkeypatch.undo()
    reset_auth_token_state()


def _wait_status(address: str, sid: str, wanted: set[str], timeout: float = 90) -> str:
    jobs_api = submit.client(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs_api.get_job_status(sid).value
        if status in wanted:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{sid} never reached {wanted}; last status {status}")


def _follow(trigger: RayJobTrigger) -> dict:
    async def first_event() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(first_event())


def test_the_dags_trigger_follows_a_submitted_job_to_success(cluster, cluster_lake, capfd):
    key = "lakecast__churn/manual__test/predict/churn"
    args = ["run", "churn", "--date", DAY.isoformat()]
    base = submit.submission_base(key, job="churn", command="run", ds=DAY.isoformat())
    sub = submit.submit_new(cluster.ray.address, key=key, base=base, args=args, settings=cluster, metadata={})
    assert sub.submission_id == f"{base}-1"
    # a restarted Airflow task finds the running job instead of starting a second one
    assert submit.find_running(cluster.ray.address, key).submission_id == sub.submission_id

    trigger = RayJobTrigger(cluster.ray.address, sub.submission_id, deadline_unix=time.time() + 300, poll_s=1)
    capfd.readouterr()
    event = _follow(trigger)

    assert event["status"] == "SUCCEEDED", submit.client(cluster.ray.address).get_job_logs(sub.submission_id)
    streamed = "".join(capfd.readouterr())  # the trigger logs through Airflow's structlog
    assert submit.RESULT_MARKER in streamed  # the job's own output reached the task log, line by line
    result = submit.result_from_logs(submit.client(cluster.ray.address).get_job_logs(sub.submission_id))
    assert result["rows"] == ROWS and result["committed"]
    table = pads.dataset(cluster_lake.partition_path("predictions/churn", DAY), format="parquet").to_table()
    assert table.num_rows == ROWS
    assert set(table.column("scoring_run_id").to_pylist()) == {result["run_id"]}
    # finished: the next attempt of the same task submits anew, with the next attempt number
    assert submit.find_running(cluster.ray.address, key) is None


def test_a_failed_job_says_whether_a_retry_can_fix_it(cluster, capsys):
    """`lakecast submit` ends with the job's error sentence and its driver's verdict: a partition
    that is not there yet may land before the next try; an unknown alias fails the same way every
    time, so the DAG's task, following the job through its trigger, fails without its retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.airflow_ray import LakecastJobOperator
    from jobs.cli import main
    from jobs.failures import EXIT_FIX_FIRST, EXIT_TRY_AGAIN

    missing = dt.date(2020, 1, 1)
    assert main(["submit", "churn", "--date", missing.isoformat()]) == EXIT_TRY_AGAIN
    out, err = capsys.readouterr()
    assert "Running entrypoint" in out  # the job's log was followed live
    last = err.strip().splitlines()[-1]
    assert last.startswith("lakecast: Ray job lakecast-churn-run-2020-01-01-")  # one sentence, no traceback
    assert "failed" in last and f"no data for raw/customers on {missing}" in last
    assert cluster.ray.address in last  # where to read the whole log

    assert main(["submit", "churn", "--date", DAY.isoformat(), "--alias", "no-such-alias"]) == EXIT_FIX_FIRST
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has no alias 'no-such-alias'" in last, last
    sid = re.search(r"Ray job (\S+) failed", last).group(1)
    event = _follow(RayJobTrigger(cluster.ray.address, sid, deadline_unix=time.time() + 60, poll_s=0.5))
    assert event["status"] == "FAILED" and event["exit_code"] == EXIT_FIX_FIRST
    task = LakecastJobOperator(
        task_id="predict", job_name="churn", command="run", checked={"date": DAY.isoformat()}, timeout=dt.timedelta(1)
    )
    with pytest.raises(AirflowFailException, match=r"has no alias 'no-such-alias'.*not retried"):
        task.execute_complete(context={}, event=event)


@pytest.mark.parametrize(
    ("params", "override", "flags"),
    [
        ({}, (None, None), []),
        ({"model_alias": "", "model_version": None}, (None, None), []),  # a field emptied in the trigger form
        ({"model_alias": "challenger"}, ("challenger", None), ["--alias", "challenger"]),
        ({"model_alias": "challenger", "model_version": 3}, (None, 3), ["--version", "3"]),
    ],
)
def test_a_triggers_model_override_is_the_same_here_and_on_a_cluster(home, params, override, flags):
    """The DAG's model_alias and model_version params: what the task runs here (run_job's
    arguments) and what it submits to a cluster (lakecast run's flags) say the same."""
    from jobs.airflow_ray import LakecastJobOperator, model_override
    from jobs.config import load_job

    task = LakecastJobOperator(
        task_id="predict", job_name="churn", command="run", checked={"date": DAY.isoformat()}, timeout=dt.timedelta(1)
    )
    assert model_override(params) == override
    assert task._args(load_job("churn"), DAY, params) == ["run", "churn", "--date", DAY.isoformat(), *flags]


def _sleeper(address: str, seconds: int = 120) -> str:
    return submit.client(address).submit_job(entrypoint=f"python -c 'import time; time.sleep({seconds})'")


def test_a_stop_from_airflow_stops_the_ray_job(cluster):
    sid = _sleeper(cluster.ray.address)
    _wait_status(cluster.ray.address, sid, {"RUNNING"})
    trigger = RayJobTrigger(cluster.ray.address, sid, deadline_unix=time.time() + 300)
    asyncio.run(trigger.on_kill())  # what the triggerer calls when the task is marked failed or cleared
    assert _wait_status(cluster.ray.address, sid, {"STOPPED", "FAILED", "SUCCEEDED"}, timeout=30) == "STOPPED"


def test_the_job_files_timeout_stops_the_ray_job(cluster):
    sid = _sleeper(cluster.ray.address)
    _wait_status(cluster.ray.address, sid, {"RUNNING"})
    event = _follow(RayJobTrigger(cluster.ray.address, sid, deadline_unix=time.time() + 2, poll_s=0.5))
    assert event == {"status": "TIMEOUT", "submission_id": sid, "message": ""}
    assert _wait_status(cluster.ray.address, sid, {"STOPPED", "FAILED", "SUCCEEDED"}, timeout=30) == "STOPPED"


def test_the_runtime_env_carries_settings_not_local_state(cluster, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    env = submit.runtime_env(cluster)
    assert env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "from-the-environment"
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == cluster.mlflow.tracking_uri
    assert "RAY_ADDRESS" not in env["env_vars"]
    assert {".venv", ".lakecast", ".git"} <= set(env["excludes"])
    assert json.dumps(env)  # plain values: Ray sends it as JSON


def test_a_conf_folder_of_its_own_travels_as_the_jobs_conf(tmp_path, monkeypatch):
    """LAKECAST_CONF is a path on the submitting machine: the job on the cluster gets its files."""
    conf = tmp_path / "site-conf"
    (conf / "jobs").mkdir(parents=True)
    (conf / "jobs" / "nightly.yaml").write_text("name: nightly\n")
    monkeypatch.delenv("LAKECAST_CONF", raising=False)
    with submit.working_dir() as folder:
        assert (folder / "conf" / "jobs" / "churn.yaml").is_file()  # the project itself, uploaded as is
    monkeypatch.setenv("LAKECAST_CONF", str(conf))
    with submit.working_dir() as folder:
        assert sorted(p.name for p in (folder / "conf" / "jobs").iterdir()) == ["nightly.yaml"]
        assert (folder / "jobs" / "predict.py").is_file() and (folder / "models").is_dir()
        assert not (folder / "tests").exists() and not (folder / ".venv").exists()
        staged = folder
    assert not staged.exists()  # removed once Ray has uploaded it


def test_a_job_from_a_conf_folder_of_its_own_names_that_file_on_the_cluster(cluster, tmp_path, monkeypatch):
    """On the cluster the job runs on the uploaded copy of LAKECAST_CONF, as the project's conf/:
    its errors name the file the user edits on the submitting machine, not conf/jobs/<job>.yaml."""
    from jobs.config import load_job, load_job_file
    from jobs.settings import PROJECT_ROOT

    conf = tmp_path / "site-conf"
    monkeypatch.delenv("LAKECAST_CONF", raising=False)
    assert "LAKECAST_CONF_SHOWN" not in submit.runtime_env(cluster)["env_vars"]
    assert load_job("churn").file == "conf/jobs/churn.yaml"
    monkeypatch.setenv("LAKECAST_CONF", str(conf))
    shown = submit.runtime_env(cluster)["env_vars"]["LAKECAST_CONF_SHOWN"]
    assert shown == str(conf.resolve())
    # the cluster's side: the copy is the project's conf/, the variable as the runtime env sets it
    monkeypatch.delenv("LAKECAST_CONF")
    monkeypatch.setenv("LAKECAST_CONF_SHOWN", shown)
    assert load_job_file(PROJECT_ROOT / "conf" / "jobs" / "churn.yaml").file == f"{conf.resolve()}/jobs/churn.yaml"
