"""The README's main command as a user runs it: ``lakecast demo`` in a fresh LAKECAST_HOME,
which drives the churn DAG through Airflow (``airflow dags test``) on SQLite; then the command it
prints to open the Airflow UI on the same state."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import DAY
from tests.jobfiles import conf_with_job
from tests.s3server import free_ports
from tests.stack import Service, cmdline, wait_until

pytestmark = pytest.mark.slow
LAKECAST = str(Path(sys.executable).with_name("lakecast"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    """The demo in a fresh folder, with none of our variables set: (its folder, its env, the run)."""
    cwd = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKECAST_", "AIRFLOW", "MLFLOW_", "RAY_"))}
    env["LAKECAST_HOME"] = str(cwd / "home")
    proc = subprocess.run(
        [LAKECAST, "demo", "--rows", "4000", "--labeled-rows", "3000", "--date", "2026-11-21"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return cwd, env, proc


def test_demo_runs_the_dag_through_airflow(demo):
    cwd, _, proc = demo
    home = cwd / "home"
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
    # the run's duration, as the Airflow UI shows it, is the run's own: `dags test` starts the run
    # at its logical date, which for a scheduled run's date of 2026-11-22 would be days ago
    duration = float(re.search(r"DagRun Finished: dag_id=lakecast__churn.*?run_duration=([\d.]+)", log)[1])
    assert 0 < duration < 600, duration
    # lakecast's own steps warn of nothing: neither Ray's token authentication default nor its
    # deprecated actor options are said, nor MLflow's warning at the log of a pickled model (the
    # demo logs its model as code), nor Airflow's at its CLI's import without graphviz (installed
    # with Airflow's extra: `dags show` prints the DAG's graph), nor Starlette's at Airflow's
    # import of its test client
    for said in ("RAY_AUTH_MODE", "ray_remote_args", "CloudPickle", "graphviz", "starlette.testclient"):
        assert said not in log, said
    logged = {p.name for p in (home / "mlartifacts").rglob("*") if p.is_file()}
    assert "tabular_model_code.py" in logged and "python_model.pkl" not in logged
    # nothing outside LAKECAST_HOME
    assert sorted(p.name for p in cwd.iterdir()) == ["home"]
    assert {"lake", "mlflow.db", "airflow", "mlartifacts"} <= {p.name for p in home.iterdir()}


def test_the_printed_airflow_command_starts_every_component(demo, tmp_path):
    """``lakecast airflow standalone``, as the demo prints it, from a shell whose PATH does not hold
    the venv: standalone starts its scheduler, API server, dag processor and triggerer as
    ``airflow …`` looked up on PATH. On another port than 8080, as the demo's summary says, a
    triggered run goes through the scheduler to success: its tasks report to the API server where
    it listens."""
    from jobs import demo_data

    cwd, env, proc = demo
    assert proc.returncode == 0
    assert ".venv/bin/lakecast airflow standalone" in proc.stdout
    assert "Airflow on another port: AIRFLOW__API__PORT=8081 before its command" in proc.stdout
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != venv_bin)
    # a job for triggered runs only: no scheduled run of the demo's date comes first
    conf = conf_with_job(tmp_path / "conf", "ondemand", ab=None)
    job_file = conf / "jobs" / "ondemand.yaml"
    job_file.write_text(yaml.safe_dump(yaml.safe_load(job_file.read_text()) | {"schedule": None}))
    partition = cwd / "home" / "lake" / "raw" / "ondemand" / f"ds={DAY}"
    partition.mkdir(parents=True)
    pq.write_table(demo_data.generate(500, DAY), partition / "part-0.parquet")
    env = env | {"PATH": path, "LAKECAST_CONF": str(conf)}
    (port,) = free_ports(1, start=26000, paired=False)
    standalone = Service(
        "standalone", [LAKECAST, "airflow", "standalone"], env=env | {"AIRFLOW__API__PORT": str(port)}, logdir=tmp_path
    )

    def api(path: str) -> dict:
        # the local profile's UI and API need no login (simple_auth_manager_all_admins)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2{path}", timeout=10) as r:
            return json.load(r)

    def health() -> dict:
        return api("/monitor/health")

    def all_healthy() -> bool:
        return all(part["status"] == "healthy" for part in health().values())

    def airflow(*args: str) -> str:
        run = subprocess.run([LAKECAST, "airflow", *args], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        return run.stdout

    def finished() -> str | None:
        # through the API, as the UI follows a run: each `airflow` command costs seconds of CPU
        # that the run's own tasks need on a small machine
        state = api("/dags/lakecast__ondemand/dagRuns/from-the-cli")["state"]
        return state if state in ("success", "failed") else None

    try:
        wait_until(all_healthy, timeout=180, what="every component of airflow standalone", service=standalone)
        log = standalone.log_tail(20000)
        assert "No such file or directory: 'airflow'" not in log
        state = health()
        assert set(state) == {"metadatabase", "scheduler", "triggerer", "dag_processor"}, log[-4000:]
        assert all(part["status"] == "healthy" for part in state.values()), state
        wait_until(
            lambda: api("/dags/lakecast__ondemand")["dag_id"] == "lakecast__ondemand",  # 404 until it is parsed
            timeout=120,
            what="the job's DAG",
            service=standalone,
        )
        airflow(
            "dags",
            "trigger",
            "lakecast__ondemand",
            "--run-id",
            "from-the-cli",
            "--conf",
            json.dumps({"date": str(DAY)}),
        )
        wait_until(finished, timeout=300, what="the triggered run", service=standalone)
        assert finished() == "success", standalone.log_tail(6000)
        # once the API server listens, no task reports to another port; before, a task the scheduler
        # starts first (the demo's own DAG has a run due) may find it not up yet, and Airflow
        # retries it: seen where the API server took 14 s to listen on a loaded machine
        log = standalone.log_path.read_text(errors="replace")
        listening = log.split(f"Uvicorn running on http://0.0.0.0:{port}", 1)
        assert len(listening) == 2 and "Connection refused" not in listening[1], listening[-1][-4000:]

        # stopped as systemd or `kill` stops it, lakecast's process alone: so is all of Airflow
        started = psutil.Process(standalone.proc.pid).children(recursive=True)
        assert len(started) > 4  # standalone, its scheduler, API server, dag processor, triggerer
        # the scheduler's LocalExecutor forked a worker for each task that may run at once: 4 on
        # the embedded default, where each predict starts a Ray of its own (Airflow's default, 32)
        workers = [p for p in started if "LocalExecutor" in " ".join(cmdline(p))]
        assert len(workers) == 4, [cmdline(p) for p in started]
        standalone.proc.send_signal(signal.SIGTERM)
        assert standalone.proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert "lakecast: stopped by SIGTERM; so were airflow standalone and the processes it started" in (
            standalone.log_tail()
        )
        assert [p.cmdline() for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
        with socket.create_server(("0.0.0.0", port)):  # the next start can take the port
            pass
    finally:
        standalone.stop()
    scored = pads.dataset(str(cwd / "home" / "lake" / "predictions" / "ondemand" / f"ds={DAY}"), format="parquet")
    assert scored.count_rows() == 500


def test_the_readmes_backfill_scores_the_nights_it_names(demo):
    """The README's backfill command, as printed there, with ``--dry-run`` (which lists the runs
    and starts none) on the demo's home: its window holds the runs of the three nights it names,
    ds=2026-11-19 to 2026-11-21, each run scoring the day before its logical date; the same
    window ending at midnight, as the README warns, leaves out the last."""
    import shlex

    from jobs.schedule import score_date

    cwd, env, proc = demo
    assert proc.returncode == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    said = re.search(r"^(lakecast airflow backfill create .*?)\n```", readme, re.S | re.M)[1]
    command = shlex.split(said.replace("\\\n", " "))

    def nights(args: list[str]) -> list[str]:
        run = subprocess.run(
            [LAKECAST, *args[1:], "--dry-run"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        logical = re.findall(r"^\| (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00) ", run.stdout, re.M)
        return [str(score_date(None, dt.datetime.fromisoformat(t))) for t in logical]

    assert "ds=2026-11-19` to `ds=2026-11-21" in readme
    assert nights(command) == ["2026-11-19", "2026-11-20", "2026-11-21"]
    to = command.index("--to-date") + 1
    assert nights([*command[:to], "2026-11-22", *command[to + 1 :]]) == ["2026-11-19", "2026-11-20"]


def test_a_partition_that_fails_validation_fails_its_task_without_retries_and_mails_once(demo, tmp_path):
    """Airflow retries a failed task, but rows that break the job's validation fail the same way on
    every try: the predict task fails on its first try with the job's sentence, not after the job
    file's retries have scored the partition again. The job file's ``airflow.email_on_failure``
    gets one mail, through a real SMTP server set up as Airflow's ``smtp_default`` connection,
    that names the job, the night, the task and the job's sentence."""
    from jobs import demo_data
    from tests.smtpserver import SmtpServer

    cwd, env, proc = demo
    assert proc.returncode == 0
    conf = conf_with_job(
        tmp_path / "conf",
        "strict",
        validation={"on_invalid_rows": "fail"},
        airflow={"retries": 2, "retry_delay_minutes": 0, "email_on_failure": ["oncall@example.com"]},
        ab=None,
    )
    rows = demo_data.generate(1000, DAY)
    column = rows.schema.get_field_index("contract_type")
    rows = rows.set_column(column, "contract_type", pa.nulls(rows.num_rows, pa.string()))
    partition = cwd / "home" / "lake" / "raw" / "strict" / f"ds={DAY}"
    partition.mkdir(parents=True)
    pq.write_table(rows, partition / "part-0.parquet")

    with SmtpServer() as smtp:
        run = subprocess.run(
            [LAKECAST, "airflow", "dags", "test", "lakecast__strict", "--conf", json.dumps({"date": DAY.isoformat()})],
            env=env | {"LAKECAST_CONF": str(conf), "AIRFLOW_CONN_SMTP_DEFAULT": smtp.airflow_connection},
            capture_output=True,
            text=True,
            timeout=300,
        )
    log = run.stdout + run.stderr
    assert run.returncode != 0 and "DagRun failed" in log, log[-4000:]
    assert log.count("[DAG TEST] running task <TaskInstance: lakecast__strict.predict") == 1, log[-4000:]
    sentence = "contract_type: null (validation.on_invalid_rows is 'fail'"
    assert sentence in log
    assert "not retried: a retry fails the same way" in log

    # one mail: the failed task's; the tasks after it never ran and send none
    assert len(smtp.inbox.mails) == 1, (smtp.inbox.mails, log[-4000:])
    recipients, mail = smtp.inbox.mails[0]
    assert recipients == ["oncall@example.com"] and mail["From"] == "lakecast@example.com"
    assert mail["Subject"] == f"lakecast: strict failed for {DAY} at predict"
    body = mail.get_body(("html",)).get_content()
    assert sentence.replace("'", "&#39;") in body, body
    assert "on try 1 of 3" in body and "/dags/lakecast__strict/runs/" in body
    assert f"Job file: {conf / 'jobs' / 'strict.yaml'}" in body


def test_the_nightly_comparison_waits_the_days_its_labels_take(demo, tmp_path):
    """A night's outcomes are known days later (a customer churns, or not, within the month): with
    ``ab.label_delay_days: 2`` the DAG scores the night's partition and compares the versions on
    the labeled partition of two days before, the one whose outcomes have landed."""
    from jobs import demo_data

    cwd, env, proc = demo
    assert proc.returncode == 0
    conf = conf_with_job(
        tmp_path / "conf", "lagged", ab={"labeled_table": "labeled/lagged", "label_delay_days": 2, "bootstrap": 100}
    )
    lake = cwd / "home" / "lake"
    labeled_day = DAY - dt.timedelta(days=2)
    for table, day, data in (
        ("raw/lagged", DAY, demo_data.generate(1000, DAY)),
        ("labeled/lagged", labeled_day, demo_data.generate(1000, labeled_day, with_label=True)),
    ):
        partition = lake / table / f"ds={day}"
        partition.mkdir(parents=True)
        pq.write_table(data, partition / "part-0.parquet")

    run = dags_test(env, conf, "lakecast__lagged")
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0 and "DagRun Finished" in log and "state=success" in log, log[-4000:]
    assert (lake / "predictions" / "lagged" / f"ds={DAY}" / "_manifest.json").is_file()
    report = json.loads((lake / "ab" / "lagged" / f"ds={labeled_day}" / "report.json").read_text())
    assert report["date"] == labeled_day.isoformat() and report["rows"] > 0
    assert not (lake / "ab" / "lagged" / f"ds={DAY}").exists()


def test_after_a_promotion_the_nightly_comparison_is_skipped_saying_why(demo, tmp_path):
    """A promotion leaves champion and challenger on one version until a new challenger is
    registered. The night's run still scores and publishes; its compare task is skipped with the
    reason in its log, where it would score the labeled rows twice to find no difference and write
    an inconclusive report."""
    import mlflow

    from jobs import demo_data

    cwd, env, proc = demo
    assert proc.returncode == 0
    conf = conf_with_job(tmp_path / "conf", "promoted", ab={"labeled_table": "labeled/promoted", "bootstrap": 100})
    lake = cwd / "home" / "lake"
    partition = lake / "raw" / "promoted" / f"ds={DAY}"
    partition.mkdir(parents=True)
    pq.write_table(demo_data.generate(1000, DAY), partition / "part-0.parquet")
    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'home' / 'mlflow.db'}")
    before = client.get_registered_model("churn-classifier").aliases
    client.set_registered_model_alias("churn-classifier", "challenger", before["champion"])
    try:
        run = dags_test(env, conf, "lakecast__promoted")
        log = run.communicate(timeout=300)[0]
    finally:
        client.set_registered_model_alias("churn-classifier", "challenger", before["challenger"])
    assert run.returncode == 0 and "state=success" in log, log[-4000:]
    assert (lake / "predictions" / "promoted" / f"ds={DAY}" / "_manifest.json").is_file()
    assert (
        f"champion and challenger are both version {before['champion']} of churn-classifier: nothing to compare, "
        "and no report was written"
    ) in log, log[-4000:]
    compare = log[log.index("[DAG TEST] starting task_id=compare") : log.index("[DAG TEST] end task task_id=compare")]
    assert "Skipping task." in compare and "new_state=skipped" in compare, compare
    assert "XCom not found" not in compare, compare  # the task's links are stored, empty
    assert not (lake / "ab" / "promoted").exists()


def dags_test(env: dict[str, str], conf: Path, dag_id: str) -> subprocess.Popen:
    """``lakecast airflow dags test`` of ``dag_id`` for DAY, its output merged into one stream."""
    return subprocess.Popen(
        [LAKECAST, "airflow", "dags", "test", dag_id, "--conf", json.dumps({"date": DAY.isoformat()})],
        env=env | {"LAKECAST_CONF": str(conf)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_late_partition_is_waited_for_then_scored_and_so_on_s3_after_the_lake_moved(demo, tmp_path, request):
    """The night's input comes late and file by file, its producer writing ``_SUCCESS`` last:
    check_input keeps looking until the marker is there, and the run then scores every row,
    not the part that had landed when it first looked. The producer names its days
    ``dt=YYYYMMDD`` (``input.partition``): the sensor and the run look there.

    Then the lake moves to S3 and the same night comes as late there. Under ``dags test`` every
    look is in one process: each must list the partition afresh, not s3fs's listing of the look
    before. And publish's Asset is the table's URI, so on S3 it is another Asset, not one left
    inactive until a scheduler's cleanup (which ``dags test`` never runs) gives its name over."""
    from jobs.lake import Lake
    from tests.conftest import S3_BUCKET

    cwd, env, proc = demo
    assert proc.returncode == 0
    conf = conf_with_job(
        tmp_path / "conf",
        "late",
        input={"ready_marker": "_SUCCESS", "partition": "dt=%Y%m%d"},
        airflow={"wait_for_input_minutes": 1},
        ab=None,
    )
    _lands_late_and_is_scored(env, conf, Lake(str(cwd / "home" / "lake")))
    root = f"s3://{S3_BUCKET}/moved-{os.getpid()}"
    env = env | request.getfixturevalue("s3_env").env | {"LAKECAST_LAKE_ROOT": root}
    _lands_late_and_is_scored(env, conf, Lake(root))


def _lands_late_and_is_scored(env: dict[str, str], conf: Path, lake) -> None:
    from jobs import demo_data

    partition = lake.partition_path("raw/late", DAY, "dt=%Y%m%d")
    lake.make_dirs(partition)
    pq.write_table(demo_data.generate(600, DAY), f"{partition}/part-0.parquet", filesystem=lake.fs)
    run = dags_test(env, conf, "lakecast__late")
    lines = []
    for line in run.stdout:  # the task log streams through: finish the day once a look missed it
        lines.append(line)
        if "has no _SUCCESS yet" in line and not lake.exists(f"{partition}/_SUCCESS"):
            rest = demo_data.generate(400, DAY, seed=1, first_id=7_000_600)
            pq.write_table(rest, f"{partition}/part-1.parquet", filesystem=lake.fs)
            with lake.fs.open_output_stream(f"{partition}/_SUCCESS"):
                pass
    log = "".join(lines)
    assert run.wait(timeout=300) == 0 and "state=success" in log, log[-4000:]
    assert "the 1 Parquet file(s) there may be only part of the day; looking again in 6 s" in log
    assert "raw/late/dt=20261121: 2 files, 1000 rows" in log
    scored = [f.path for f in lake.data_files("predictions/late", DAY)]
    assert pads.dataset(scored, filesystem=lake.fs, format="parquet").count_rows() == 1000


def test_a_partition_that_never_lands_fails_after_the_wait(demo, tmp_path):
    """Past the job file's wait, check_input fails with what it last saw, without retries (it has
    waited), and nothing after it runs."""
    cwd, env, proc = demo
    assert proc.returncode == 0
    conf = conf_with_job(tmp_path / "conf", "never", airflow={"wait_for_input_minutes": 0.1, "retries": 2}, ab=None)
    run = dags_test(env, conf, "lakecast__never")
    log = run.communicate(timeout=300)[0]
    assert run.returncode != 0 and "DagRun failed" in log, log[-4000:]
    partition = cwd / "home" / "lake" / "raw" / "never" / f"ds={DAY}"
    assert (
        f"partition {partition} does not exist: no data for raw/never on {DAY}; waited 6 s for it "
        f"(airflow.wait_for_input_minutes in {conf / 'jobs' / 'never.yaml'}), not retried"
    ) in log
    assert log.count("looking again in 5 s") >= 1
    assert "[DAG TEST] running task <TaskInstance: lakecast__never.predict" not in log


def test_a_night_on_another_clock_looks_for_the_day_before_its_date_there(demo, tmp_path):
    """``timezone: Europe/Paris``: the run Airflow starts at 00:30 in Paris on 2026-07-11 (its
    logical date 22:30 UTC on the 10th) scores the 10th, the day before Paris's date, where UTC's
    would have it score the 9th: check_input looks there."""
    cwd, env, proc = demo
    assert proc.returncode == 0
    conf = conf_with_job(
        tmp_path / "conf", "paris", schedule="30 0 * * *", timezone="Europe/Paris", airflow={"retries": 0}, ab=None
    )
    run = subprocess.run(
        [LAKECAST, "airflow", "dags", "test", "lakecast__paris", "2026-07-10T22:30:00+00:00"],
        env=env | {"LAKECAST_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = run.stdout + run.stderr
    assert run.returncode != 0 and "DagRun failed" in log, log[-4000:]
    partition = cwd / "home" / "lake" / "raw" / "paris" / "ds=2026-07-10"
    assert f"partition {partition} does not exist: no data for raw/paris on 2026-07-10" in log, log[-4000:]


def test_a_task_that_is_retried_mails_once_when_its_last_try_fails(demo, tmp_path):
    """``airflow.email_on_failure`` is for a night that has failed, not for each try: a partition
    that is not there fails check_input's first try, which is retried and mails nobody, then its
    last, which mails once, naming the try."""
    from tests.smtpserver import SmtpServer

    _, env, proc = demo
    assert proc.returncode == 0
    airflow = {"retries": 1, "retry_delay_minutes": 0, "email_on_failure": "oncall@example.com, ml@example.com"}
    conf = conf_with_job(tmp_path / "conf", "absent", airflow=airflow, ab=None)
    with SmtpServer() as smtp:
        run = dags_test(env | {"AIRFLOW_CONN_SMTP_DEFAULT": smtp.airflow_connection}, conf, "lakecast__absent")
        log = run.communicate(timeout=300)[0]
    assert run.returncode != 0 and "DagRun failed" in log, log[-4000:]
    assert log.count("[DAG TEST] running task <TaskInstance: lakecast__absent.check_input") == 2, log[-4000:]
    assert len(smtp.inbox.mails) == 1, (smtp.inbox.mails, log[-4000:])
    recipients, mail = smtp.inbox.mails[0]
    assert recipients == ["oncall@example.com", "ml@example.com"]
    assert mail["Subject"] == f"lakecast: absent failed for {DAY} at check_input"
    body = mail.get_body(("html",)).get_content()
    assert "on try 2 of 2" in body and f"no data for raw/absent on {DAY}" in body, body
