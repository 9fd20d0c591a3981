"""Where the files of a model a user logs into the embedded default's MLflow go.

The README's "Your own model" tells a user to log into lakecast's store: the SQLite file under
``LAKECAST_HOME``, or the server ``lakecast mlflow-ui`` starts on it. Either way the model's files
must land under ``LAKECAST_HOME`` (so that deleting it starts over, and lakecast's jobs find
them), not in ``./mlruns`` of whatever directory the user's script ran in, which is where MLflow
puts them by default.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest

from tests.s3server import free_ports
from tests.stack import BIN, Service, http_ok, wait_until

# what any lakecast command does first
CONFIGURE = """
from jobs.settings import load_settings
from jobs.tracking import configure
configure(load_settings()).search_experiments()
"""

# a user's script: plain MLflow, no lakecast import; MLFLOW_TRACKING_URI says where it logs
USER_SCRIPT = """
import sys
import mlflow
import numpy as np
import pandas as pd

class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return 2 * model_input["x"].to_numpy()

experiment = sys.argv[1] if len(sys.argv) > 1 else None
if experiment:
    mlflow.set_experiment(experiment)
with mlflow.start_run():
    mlflow.pyfunc.log_model(
        name="model", python_model=Doubler(), input_example=pd.DataFrame({"x": [1.0]}), registered_model_name="doubler"
    )
mlflow.MlflowClient().set_registered_model_alias("doubler", "champion", "1")
"""


def run(argv: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture
def fresh(tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """A new LAKECAST_HOME, the empty folder the user's scripts run in, and their environment."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LAKECAST_"))}
    return home, work, env | {"LAKECAST_HOME": str(home)}


def model_files(home: Path) -> Path:
    """Where the registry says champion's files are, checked to hold the model."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    source = client.get_model_version_by_alias("doubler", "champion").source  # models:/<logged model id>
    location = Path(client.get_logged_model(source.removeprefix("models:/")).artifact_location.removeprefix("file://"))
    assert (location / "MLmodel").is_file(), location
    return location


def test_a_model_logged_as_mlflows_quickstart_does_stays_under_lakecast_home(fresh):
    home, work, env = fresh
    # any lakecast command creates the store (here: what each does first), then the user logs a
    # model into it from another folder, naming no experiment, as MLflow's quickstart does
    run([sys.executable, "-c", CONFIGURE], env=env | {"PYTHONPATH": str(Path(__file__).parents[1])}, cwd=work)
    run([sys.executable, "-c", USER_SCRIPT], env=env | {"MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}, cwd=work)
    assert model_files(home).is_relative_to(home / "mlartifacts" / "0")
    assert list(work.iterdir()) == []


def journal_mode(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_a_read_left_open_does_not_make_a_runs_writes_fail(fresh):
    """A stop cut a registry query between two rows in a suite run, and the query's SQLite read
    lock lived on with the stop's traceback: in MLflow's default journal mode the write that ended
    the run KILLED waited 20 s for it, then failed with "database is locked". A store in
    write-ahead-log mode lets a writer past its readers (`mlflow ui`'s, another run's): lakecast
    puts its store in that mode, a store an older lakecast made the first time a command opens it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    home, work, env = fresh
    db = home / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", str(home / "mlartifacts"))  # the store as MLflow makes it
    assert journal_mode(db) == "delete"
    run([sys.executable, "-c", CONFIGURE], env=env | {"PYTHONPATH": str(Path(__file__).parents[1])}, cwd=work)
    assert journal_mode(db) == "wal"

    reader = sqlite3.connect(db)
    tables = reader.execute("SELECT name FROM sqlite_master")
    tables.fetchone()  # left between two rows, its read lock held
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("written past an open read")
    assert client.get_experiment(experiment).name == "written past an open read"
    assert tables.fetchone() is not None  # the read went on all along
    reader.close()


@pytest.mark.slow
def test_a_model_logged_through_the_ui_server_into_its_own_experiment_stays_under_lakecast_home(fresh):
    home, work, env = fresh
    (port,) = free_ports(1, paired=False)
    ui = Service(
        "mlflow-ui",
        [str(BIN / "lakecast"), "mlflow-ui", "--port", str(port)],
        env=env,
        logdir=home.parent,
        cwd=work,
    )
    try:
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/health"), timeout=120, what="lakecast mlflow-ui", service=ui
        )
        # below `mlflow ui`, one server process: not MLflow's four workers and the seven consumers of
        # its GenAI jobs, 2.5 GiB in all
        (mlflow_ui,) = psutil.Process(ui.proc.pid).children()
        servers = [" ".join(p.cmdline()) for p in mlflow_ui.children(recursive=True)]
        assert len(servers) == 1 and "uvicorn" in servers[0], servers
        run(
            [sys.executable, "-c", USER_SCRIPT, "fraud"],
            env=env | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
            cwd=work,
        )
        # lakecast's process alone stopped, as `kill` or systemd stops it: the server goes with it
        started = [mlflow_ui, *mlflow_ui.children(recursive=True)]
        ui.proc.send_signal(signal.SIGTERM)
        assert ui.proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert [p.cmdline() for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        ui.stop()
    files = model_files(home)
    assert journal_mode(home / "mlflow.db") == "wal"  # the UI's reads never make a run's writes wait
    experiment = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db").get_experiment_by_name("fraud")
    assert files.is_relative_to(home / "mlartifacts" / experiment.experiment_id)
    # the server neither: no ./mlartifacts of its own beside the user's scripts
    assert list(work.iterdir()) == []


def lakecast(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``lakecast ARGV`` as a user runs it in ``cwd``, for a command that answers within a minute."""
    return subprocess.run([str(BIN / "lakecast"), *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_mlflow_ui_against_a_tracking_server_points_at_its_ui(fresh):
    home, work, env = fresh
    # the production profile's MLflow is a server, which serves its own UI (and `mlflow ui` would
    # end in MLflow's traceback, unable to take a server as its store)
    server = "http://127.0.0.1:5999"
    proc = lakecast(["mlflow-ui"], env | {"MLFLOW_TRACKING_URI": server}, work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"lakecast's MLflow is the tracking server {server}: open its UI at {server}"
    assert "Traceback" not in proc.stderr
    assert not home.exists()  # and no local store started beside the server


def test_a_ui_on_a_port_that_is_taken_says_so(fresh):
    """MLflow's server logs a taken port among its start-up lines and exits 0, as if it had served;
    Airflow's standalone runs on without its API server, where its tasks report."""
    import socket

    _, work, env = fresh
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        commands = {
            ("mlflow-ui", "--port", str(port)): (
                f"cannot serve the MLflow UI on 127.0.0.1:{port}: Address already in use (another server there?); "
                f"pass --port {port + 1}, or stop what listens there"
            ),
            ("airflow", "standalone"): (
                f"cannot serve Airflow's UI and API on 0.0.0.0:{port}: Address already in use (another server "
                f"there?); run it as AIRFLOW__API__PORT={port + 1} lakecast airflow standalone, or stop what "
                "listens there"
            ),
        }
        for argv, said in commands.items():
            proc = lakecast(list(argv), env | {"AIRFLOW__API__PORT": str(port)}, work)
            assert proc.returncode == 2, proc.stderr[-3000:]
            assert proc.stderr.strip() == f"lakecast: {said}"
