"""The README's main command as a user runs it: ``lakecast demo`` in a fresh LAKECAST_HOME,
which drives the churn DAG through Airflow (``airflow dags test``) on SQLite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_dag_through_airflow(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKECAST_", "AIRFLOW", "MLFLOW_", "RAY_"))}
    env["LAKECAST_HOME"] = str(home)
    lakecast = str(Path(sys.executable).with_name("lakecast"))
    proc = subprocess.run(
        [lakecast, "demo", "--rows", "4000", "--labeled-rows", "3000", "--date", "2026-11-21"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    out = proc.stdout
    summary = r"scored 4,000 rows for 2026-11-21 in [\d.]+ s \([\d,]+ rows/s\) with models:/churn-classifier/1"
    assert re.search(summary, out), out
    partition = home / "lake" / "predictions" / "churn" / "ds=2026-11-21"
    assert f"predictions  {partition}" in out
    assert pads.dataset(str(partition), format="parquet").count_rows() == 4000
    # the task log shows Ray Data's progress and the task states of a real Airflow run
    log = proc.stdout + proc.stderr
    assert "MapBatches(ScoreAndWrite)" in log  # CPU actors read, score and write in one process
    assert "DagRun Finished: dag_id=lakecast__churn" in log and "state=success" in log
    # nothing outside LAKECAST_HOME
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    assert {"lake", "mlflow.db", "airflow", "mlartifacts"} <= {p.name for p in home.iterdir()}
