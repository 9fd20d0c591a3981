"""Real faults, not simulated ones: a Ray worker killed mid-job, and the whole job killed
mid-run and then run again, as an Airflow retry does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
import yaml

from jobs import demo_data
from jobs.config import JobConfig
from jobs.lake import Lake
from jobs.predict import run_job
from jobs.settings import PROJECT_ROOT
from tests.conftest import DAY
from tests.stack import cmdline

pytestmark = pytest.mark.slow
ROWS = 200_000
FILES = 4
OUT = "predictions/churn"
# a piece of work (and an output file) per input file: the jobs are killed once the first is written
ROWS_PER_FILE = ROWS // FILES


def map_workers() -> list[psutil.Process]:
    """The scoring actors of this test's Ray: on CPU, each reads, validates, scores and writes its
    slices. Only this process's descendants: another pytest worker's jobs run beside it."""
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "MapWorker(MapBatches(ScoreAndWrite))" in " ".join(cmdline(p))
    ]


def staging(lake: Lake) -> Path:
    """Where the runs for DAY stage their output, a folder per run."""
    return Path(lake.staging_day(OUT, DAY))


def staged_predictions(lake: Lake) -> list[Path]:
    """The prediction files a running job has written into its staging folder so far. The folder
    may go while it is listed: a run starts by removing what earlier runs left there."""
    try:
        return [p for p in staging(lake).glob("*/*.parquet") if not p.parent.name.endswith("-telemetry")]
    except FileNotFoundError:
        return []


@pytest.fixture
def big_lake(settings, tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    demo_data.write_partition(lake, demo_data.RAW_TABLE, DAY, demo_data.generate(ROWS, DAY), files=FILES)
    return lake


@pytest.fixture
def file_per_piece(churn_job, tmp_path) -> tuple[JobConfig, Path]:
    """The churn job, and a conf/ folder for LAKECAST_CONF holding it, with output.rows_per_file
    at the input files' size: each file is a piece of its own (jobs.pieces.split_files)."""
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    churn = yaml.safe_load((conf / "jobs" / "churn.yaml").read_text())
    churn["output"]["rows_per_file"] = ROWS_PER_FILE
    (conf / "jobs" / "churn.yaml").write_text(yaml.safe_dump(churn))
    output = churn_job.output.model_copy(update={"rows_per_file": ROWS_PER_FILE})
    return churn_job.model_copy(update={"output": output}), conf


def test_killed_worker_still_writes_every_row_once(big_lake, settings, registered, ray_local, file_per_piece):
    # small batches and one actor: the run lasts long enough to kill its actor mid-way
    churn_job, _ = file_per_piece
    job = churn_job.model_copy(
        update={"compute": churn_job.compute.model_copy(update={"batch_size": 250, "min_actors": 1, "max_actors": 1})}
    )
    result: dict = {}
    run = threading.Thread(
        target=lambda: result.update(
            r=run_job(job, DAY, settings=settings.model_copy(update={"lake_root": big_lake.root}))
        )
    )
    run.start()
    # killed once it has written its first file of four: part of the data is scored, part is not
    # (a fixed delay raced the job, which on a fast day had ended by then)
    deadline = time.monotonic() + 120
    while not staged_predictions(big_lake) and run.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    victims = map_workers()
    assert victims and run.is_alive(), "the job ended before the worker could be killed"
    for p in victims:
        os.kill(p.pid, signal.SIGKILL)
    run.join(300)
    assert not run.is_alive()
    table = pads.dataset(big_lake.partition_path(OUT, DAY), format="parquet").to_table()
    assert result["r"].rows == ROWS
    assert table.num_rows == ROWS
    assert len(table["customer_id"].unique()) == ROWS  # every row exactly once


def test_killed_run_loses_nothing_and_the_retry_commits(
    big_lake, settings, registered, ray_local, file_per_piece, home
):
    churn_job, conf = file_per_piece
    lake = big_lake
    run_settings = settings.model_copy(update={"lake_root": lake.root})
    previous = run_job(churn_job, DAY, settings=run_settings)

    env = {**os.environ, "LAKECAST_HOME": str(home), "LAKECAST_LAKE_ROOT": lake.root, "LAKECAST_CONF": str(conf)}
    lakecast = str(Path(sys.executable).with_name("lakecast"))
    proc = subprocess.Popen(
        [lakecast, "run", "churn", "--date", DAY.isoformat(), "--alias", "challenger"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not staged_predictions(lake) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(30)

    # the committed partition is intact and readable; the dead run left staging behind
    assert lake.read_manifest(OUT, DAY)["scoring_run_id"] == previous.run_id
    table = pads.dataset(lake.partition_path(OUT, DAY), format="parquet").to_table()
    assert table.num_rows == ROWS and set(table["scoring_run_id"].to_pylist()) == {previous.run_id}

    retry = run_job(churn_job, DAY, settings=run_settings, model_alias="challenger")  # the lock died with it
    table = pads.dataset(lake.partition_path(OUT, DAY), format="parquet").to_table()
    assert table.num_rows == ROWS and len(table["customer_id"].unique()) == ROWS
    assert set(table["scoring_run_id"].to_pylist()) == {retry.run_id}
    assert not any(staging(lake).rglob("*.parquet"))  # the dead run's staging was cleaned up


def _running_mlflow_runs(settings, experiment: str) -> set[str]:
    """The ids of the experiment's RUNNING runs: a run killed outright (as above) stays RUNNING."""
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return set()
    return {r.info.run_id for r in client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'")}


def test_a_stopped_run_says_so_keeps_the_last_output_and_frees_its_partition(
    storage, registered, ray_local, churn_job, home, tmp_path
):
    """Stopped as production stops it on S3 (SIGTERM: Airflow's supervisor when a running task is
    cleared or marked failed, Ray when its job is stopped) and as a user does at a terminal on a
    local lake (Ctrl-C): one sentence and the shell's status, the MLflow run KILLED rather than
    FAILED, nothing staged left, and the partition free for the rerun at once (on S3 its lock is an
    object, which nothing but the run itself removes before the lease runs out)."""
    from mlflow import MlflowClient

    from jobs.commit import _lock_path

    sig = signal.SIGTERM if storage.lake_root.startswith("s3://") else signal.SIGINT
    lake = Lake(storage.lake_root)
    demo_data.write_partition(lake, demo_data.RAW_TABLE, DAY, demo_data.generate(ROWS, DAY), files=FILES)
    previous = run_job(churn_job, DAY, settings=storage)

    dead = _running_mlflow_runs(storage, "lakecast/churn")  # runs of other tests that were killed
    env = {**os.environ, "LAKECAST_HOME": str(home), "LAKECAST_LAKE_ROOT": storage.lake_root}
    lakecast = str(Path(sys.executable).with_name("lakecast"))
    stderr = tmp_path / "stderr.txt"
    proc = subprocess.Popen(
        [lakecast, "run", "churn", "--date", DAY.isoformat(), "--alias", "challenger"],
        env=env, stdout=subprocess.DEVNULL, stderr=stderr.open("w"), start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (running := _running_mlflow_runs(storage, "lakecast/churn") - dead):
        assert proc.poll() is None, f"the run ended before it could be stopped: {stderr.read_text()}"
        assert time.monotonic() < deadline, "the run never started its MLflow run"
        time.sleep(0.1)
    lock = _lock_path(lake, OUT, DAY)
    if lake.is_s3:  # the MLflow run starts with the partition's lock held, seconds before the commit
        assert lake.exists(lock)
    proc.send_signal(sig)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its private Ray too: nothing left running after the test
        pytest.fail(f"the stopped run did not end within 60 s: {stderr.read_text()[-3000:]}")
    err = stderr.read_text()

    assert proc.returncode == 128 + sig, err
    assert (
        f"lakecast: the run of churn for {DAY} was stopped by {sig.name} before its commit: nothing was "
        f"published, and {lake.uri(lake.partition_path(OUT, DAY))} holds what it held"
    ) in err.splitlines()
    assert "Traceback" not in err and "SIGTERM received" not in err  # nor Ray's stack dump
    (stopped,) = running
    assert MlflowClient(storage.mlflow.tracking_uri).get_run(stopped).info.status == "KILLED"
    assert lake.read_manifest(OUT, DAY)["scoring_run_id"] == previous.run_id
    if lake.is_s3:
        assert not lake.exists(lock)
    selector = pafs.FileSelector(f"{lake.base}/_staging", recursive=True, allow_not_found=True)
    assert not [i.path for i in lake.fs.get_file_info(selector) if i.type == pafs.FileType.File]

    rerun = run_job(churn_job, DAY, settings=storage, model_alias="challenger")  # no lock in its way
    assert lake.read_manifest(OUT, DAY)["scoring_run_id"] == rerun.run_id
