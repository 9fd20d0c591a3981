"""End to end, as a user of the production stack would see it.

PostgreSQL (Debian's package) holds Airflow's and MLflow's metadata; SeaweedFS is the S3 lake and
MLflow's artifact store; ``mlflow server``, a Ray head and Airflow's api-server, scheduler,
dag-processor and triggerer run as docker/compose.yaml runs them. The user seeds the demo
(``LAKECAST_LAKE_ROOT=s3://… lakecast demo --no-run``: the demo lake built on S3), runs
``airflow dags trigger``, follows the run through the REST API and the UI, and finds the
predictions in S3 and the run in MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from tests.conftest import DAY, LABELED_ROWS, ROWS, S3_BUCKET
from tests.s3server import free_ports
from tests.smtpserver import SmtpServer
from tests.stack import BIN, Airflow, Postgres, Service, http_ok, own_settings, wait_until

pytestmark = pytest.mark.slow

DAG_ID = "lakecast__churn"
# the first night the caught-up job scores: three nights ago, so that two runs are always due
CAUGHT_UP_FROM = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3)
PROJECT = Path(__file__).resolve().parent.parent
ARTIFACTS = PROJECT / "test-artifacts"


@pytest.fixture(scope="module")
def stack(s3_server, ray_head, tmp_path_factory):
    """Every service of the compose file, natively; all stopped at the end, also on failure."""
    work = tmp_path_factory.mktemp("production")
    logs = ARTIFACTS / "production-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    pg_port, mlflow_port, airflow_port = free_ports(3, start=24000, paired=False)
    prefix = f"s3://{S3_BUCKET}/e2e-{os.getpid()}"
    # the shipped job files, in a folder of the site's own (LAKECAST_CONF, which cluster jobs must
    # receive too), with the churn job triggered only: a scheduled run beside ours would double the work
    conf = work / "conf"
    shutil.copytree(PROJECT / "conf", conf)
    churn = conf / "jobs" / "churn.yaml"
    text = churn.read_text()
    assert 'schedule: "0 2 * * *"' in text
    churn.write_text(text.replace('schedule: "0 2 * * *"', "schedule: null"))
    # a job that runs when its input table's Asset is updated, by the DAG that writes the table
    chained = yaml.safe_load(churn.read_text())
    chained.pop("ab")
    chained |= {"schedule": "on_input", "output": chained["output"] | {"table": "predictions/churn_on_input"}}
    (conf / "jobs" / "churn_on_input.yaml").write_text(yaml.safe_dump(chained))
    # and one on the same Asset's partitioned events, which Airflow keeps apart from the plain ones
    chained["output"]["table"] = "predictions/churn_on_partitions"
    chained["airflow"]["partitioned_assets"] = True
    (conf / "jobs" / "churn_on_partitions.yaml").write_text(yaml.safe_dump(chained))
    # and one on a table that its producer lands hour by hour, with an event an hour
    chained["input"]["table"], chained["output"]["table"] = "raw/customers_hourly", "predictions/churn_on_hours"
    chained["airflow"]["hourly_keys"] = "%Y-%m-%dT%H:%M:%S"
    (conf / "jobs" / "churn_on_hours.yaml").write_text(yaml.safe_dump(chained))
    # and a triggered job on a table nobody writes, which mails its on-call when a night fails
    mailed = yaml.safe_load(churn.read_text())
    mailed.pop("ab")
    mailed["input"]["table"], mailed["output"]["table"] = "raw/never_written", "predictions/churn_mailed"
    mailed["airflow"] |= {"retries": 0, "email_on_failure": ["oncall@example.com"]}
    (conf / "jobs" / "churn_mailed.yaml").write_text(yaml.safe_dump(mailed))
    # and one whose input is late: its check_input waits a minute, past the night's 6 s deadline
    mailed["input"]["table"], mailed["output"]["table"] = "raw/never_landed", "predictions/churn_late"
    mailed["airflow"] |= {"email_on_failure": ["night-watch@example.com"], "deadline_minutes": 0.1}
    mailed["airflow"]["wait_for_input_minutes"] = 1
    (conf / "jobs" / "churn_late.yaml").write_text(yaml.safe_dump(mailed))
    # and a nightly job in Paris that catches up its last three nights, on a table nobody writes:
    # the scheduler runs them one after the other, as soon as the DAG is parsed
    caught_up = yaml.safe_load(churn.read_text())
    caught_up.pop("ab")
    caught_up |= {"schedule": "0 2 * * *", "timezone": "Europe/Paris"}
    caught_up["input"]["table"], caught_up["output"]["table"] = "raw/never_written", "predictions/churn_caught_up"
    caught_up["airflow"] |= {"retries": 0, "catch_up_from": CAUGHT_UP_FROM.isoformat()}
    (conf / "jobs" / "churn_caught_up.yaml").write_text(yaml.safe_dump(caught_up))
    smtp = SmtpServer().start()
    env = {
        **s3_server.env,
        **ray_head.auth_env,
        "LAKECAST_PROFILE": "production",
        "LAKECAST_LAKE_ROOT": f"{prefix}/lake",
        "LAKECAST_HOME": str(work / "home"),
        "LAKECAST_CONF": str(conf),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "RAY_ADDRESS": ray_head.address,
        "AIRFLOW_CONN_SMTP_DEFAULT": smtp.airflow_connection,  # as docker/.env sets it for the services
    }
    started: list = [smtp]
    try:
        postgres = Postgres(pg_port, logs).start()
        started.append(postgres)
        mlflow = Service(
            "mlflow",
            [
                *(str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
                *("--backend-store-uri", postgres.url("mlflow"), "--artifacts-destination", f"{prefix}/mlflow"),
                "--serve-artifacts",
            ],
            env={**os.environ, **env, **own_settings("mlflow")},  # as compose runs it: no job runner
            logdir=logs,
        )
        started.append(mlflow)
        airflow = Airflow(work / "airflow", port=airflow_port, db_url=postgres.url("airflow"), env=env, logdir=logs)
        started.append(airflow)
        # Airflow (its migration, then its four servers) starts while MLflow does and the user
        # seeds the stack: neither needs the other, and the fixture waits for both
        with ThreadPoolExecutor(1, thread_name_prefix="airflow-start") as pool:
            airflow_started = pool.submit(airflow.start)
            wait_until(
                lambda: http_ok(f"{env['MLFLOW_TRACKING_URI']}/health"), timeout=120, what="MLflow", service=mlflow
            )
            # the user seeds the stack with the demo lake and models (no DAG run: the scheduler does that)
            seed = subprocess.run(
                [
                    *(str(BIN / "lakecast"), "demo", "--no-run", "--date", DAY.isoformat()),
                    *("--rows", str(ROWS), "--labeled-rows", str(LABELED_ROWS)),
                ],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert seed.returncode == 0, seed.stdout[-3000:] + seed.stderr[-3000:]
            airflow_started.result()
        yield {"env": env, "airflow": airflow, "ray": ray_head, "prefix": prefix, "logs": logs, "smtp": smtp}
    finally:
        for service in reversed(started):
            service.stop()


@pytest.fixture(scope="module")
def dag_run(stack) -> dict:
    """``airflow dags trigger`` as the user types it, then the REST API until the run ends."""
    airflow: Airflow = stack["airflow"]
    token = airflow.token()
    wait_until(lambda: airflow.api(f"/dags/{DAG_ID}", token)["dag_id"] == DAG_ID, timeout=180, what="the DAG")
    run_id = f"e2e__{DAY.isoformat()}__{int(time.time())}"
    conf = json.dumps({"date": DAY.isoformat()})
    airflow.cli("dags", "trigger", DAG_ID, "--conf", conf, "--run-id", run_id)
    path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        run = airflow.api(path, token)
        if run["state"] in ("success", "failed"):
            break
        time.sleep(3)
    tasks = {t["task_id"]: t for t in airflow.api(f"{path}/taskInstances", token)["task_instances"]}
    return {"run": run, "path": path, "token": token, "tasks": tasks}


def _task_log(airflow: Airflow, dag_run: dict, task_id: str) -> str:
    ti = dag_run["tasks"][task_id]
    log = airflow.api(f"{dag_run['path']}/taskInstances/{task_id}/logs/{ti['try_number']}", dag_run["token"])
    return json.dumps(log) if isinstance(log, dict) else log


def test_triggered_run_scores_on_the_cluster_into_s3_and_mlflow(stack, dag_run, s3_env):
    airflow: Airflow = stack["airflow"]
    states = {t: ti["state"] for t, ti in dag_run["tasks"].items()}
    if dag_run["run"]["state"] != "success":
        logs = "\n".join(f"--- {t}\n{_task_log(airflow, dag_run, t)[-4000:]}" for t in states)
        pytest.fail(f"DAG run ended {dag_run['run']['state']}: {states}\n{logs}")
    assert states == {"check_input": "success", "predict": "success", "publish": "success", "compare": "success"}

    from jobs.lake import Lake

    lake = Lake(stack["env"]["LAKECAST_LAKE_ROOT"])
    manifest = lake.read_manifest("predictions/churn", DAY)
    assert manifest is not None and manifest["rows"] == ROWS
    run_id = manifest["scoring_run_id"]

    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=stack["env"]["MLFLOW_TRACKING_URI"])
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["rows"] == ROWS
    assert run.data.tags["airflow.dag_id"] == DAG_ID  # the run the task created and linked to

    # publish's Asset event carries the run's figures to the DAGs scheduled on the predictions
    events = airflow.api(f"/assets/events?source_dag_id={DAG_ID}", dag_run["token"])["asset_events"]
    extra = next(e["extra"] for e in events if e["source_run_id"] == dag_run["run"]["dag_run_id"])
    assert (extra["rows"], extra["run_id"], extra["date"]) == (ROWS, run_id, DAY.isoformat())
    assert extra["scores"]["mean"] == pytest.approx(run.data.metrics["score.mean"], rel=1e-5)
    assert extra["scores"] == pytest.approx(manifest["scores"], rel=1e-5)
    # and the inputs' share of nulls, as the run found it in the input's footers
    assert extra["input_nulls"] == manifest["input_nulls"]
    share = extra["input_nulls"]["satisfaction_score"]
    assert 0 < share < 0.5 and share == pytest.approx(run.data.metrics["input.null_share.satisfaction_score"])

    # the Ray job's output streamed into the predict task's log, through the triggerer
    predict_log = _task_log(airflow, dag_run, "predict")
    assert "Running entrypoint" in predict_log and "LAKECAST_RESULT" in predict_log

    links = airflow.api(f"{dag_run['path']}/taskInstances/predict/links", dag_run["token"])["extra_links"]
    assert run_id in links["MLflow run"]
    assert links["Ray job"].startswith(stack["ray"].address) and "lakecast-churn-run-" in links["Ray job"]

    with lake.fs.open_input_stream(f"{lake.partition_path('ab/churn', DAY)}/report.json") as f:
        assert json.load(f)["verdict"] in ("promote", "keep", "inconclusive")


def test_a_job_on_input_runs_for_the_day_its_producer_announces(stack, dag_run, s3_env):
    """``schedule: on_input``: the job's DAG runs when its input table's Asset is updated. Here the
    producer is a pipeline outside Airflow's DAGs, announcing the day it wrote through Airflow's
    REST API (a DAG with the table as an outlet does the same); the scheduler starts the run, which
    scores that day, not the day before it runs. A producer that keys its events by partition
    starts the partition-aware job only (``airflow.partitioned_assets``), which scores the day the
    key names and publishes its predictions' event under the same key; a plain event starts the
    other job only. A producer that lands its table hour by hour, in a folder an hour, and keys an
    event an hour starts the job on its hours (``airflow.hourly_keys``) once, when the 24th is in."""
    import pyarrow.parquet as pq

    from jobs.lake import Lake

    airflow: Airflow = stack["airflow"]
    token = dag_run["token"]
    lake = Lake(stack["env"]["LAKECAST_LAKE_ROOT"])
    plain, partitioned, hourly = "lakecast__churn_on_input", "lakecast__churn_on_partitions", "lakecast__churn_on_hours"

    def asset_id(table: str) -> int | None:
        uri = f"{stack['env']['LAKECAST_LAKE_ROOT']}/{table}"
        assets = airflow.api(f"/assets?uri_pattern={urllib.parse.quote(table)}", token)["assets"]
        return next((a["id"] for a in assets if a["uri"] == uri), None)

    def dag_runs(dag_id: str) -> list:
        return airflow.api(f"/dags/{dag_id}/dagRuns", token)["dag_runs"]

    wait_until(lambda: None not in (asset_id("raw/customers"), asset_id("raw/customers_hourly")), timeout=180,
               what="the input tables' Assets")  # fmt: skip
    assert airflow.api(f"/dags/{plain}", token)["timetable_summary"] == "Asset"
    assert airflow.api(f"/dags/{partitioned}", token)["timetable_summary"] == "Partitioned Asset"
    # the hourly producer's day, an hour a folder, and the events of its first 23 hours
    rows = pq.read_table(lake.partition_path("raw/customers", DAY), filesystem=lake.fs)
    hours = [f"{DAY.isoformat()}T{hour:02d}:00:00" for hour in range(24)]
    for hour in range(24):
        part = rows.slice(hour * -(-ROWS // 24), -(-ROWS // 24))
        pq.write_table(part, f"{lake.partition_path('raw/customers_hourly', DAY)}/hr={hour:02d}/part-0.parquet",
                       filesystem=lake.fs)  # fmt: skip
    for key in hours[:23]:
        airflow.post("/assets/events", token, {"asset_id": asset_id("raw/customers_hourly"), "partition_key": key})
    airflow.post("/assets/events", token, {"asset_id": asset_id("raw/customers"), "extra": {"date": DAY.isoformat()}})
    key = f"{DAY.isoformat()}T00:00:00"
    airflow.post("/assets/events", token, {"asset_id": asset_id("raw/customers"), "partition_key": key})

    # once the scheduler has started the others' runs, it has weighed the 23 hours too: no run yet
    wait_until(
        lambda: dag_runs(plain) and dag_runs(partitioned), timeout=300, what=f"{plain}'s and {partitioned}'s runs"
    )
    assert dag_runs(hourly) == []
    waiting = airflow.ui(f"/pending_partitioned_dag_run/{hourly}?partition_key={DAY.isoformat()}", token)
    assert (waiting["total_received"], waiting["total_required"]) == (23, 24), waiting
    airflow.post("/assets/events", token, {"asset_id": asset_id("raw/customers_hourly"), "partition_key": hours[23]})
    runs: dict[str, list] = {}

    def ended() -> bool:
        for dag_id in (plain, partitioned, hourly):
            runs[dag_id] = dag_runs(dag_id)
        return all(any(r["state"] in ("success", "failed") for r in rs) for rs in runs.values())

    wait_until(ended, timeout=600, what=f"{plain}'s, {partitioned}'s and {hourly}'s runs")
    tables = {
        plain: "predictions/churn_on_input",
        partitioned: "predictions/churn_on_partitions",
        hourly: "predictions/churn_on_hours",
    }
    for dag_id, table in tables.items():
        run = runs[dag_id][0]
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run['dag_run_id'])}"
        tasks = {t["task_id"]: t["state"] for t in airflow.api(f"{path}/taskInstances", token)["task_instances"]}
        assert (len(runs[dag_id]), run["run_type"], run["state"]) == (1, "asset_triggered", "success"), (runs, tasks)
        assert tasks == {"check_input": "success", "predict": "success", "publish": "success"}
        manifest = lake.read_manifest(table, DAY)
        assert manifest is not None and manifest["rows"] == ROWS and manifest["date"] == DAY.isoformat()
    assert runs[partitioned][0]["partition_key"] == f"{DAY.isoformat()}T00:00:00"
    assert runs[hourly][0]["partition_key"] == DAY.isoformat()  # the day, from its 24 hours
    assert len(lake.read_manifest("predictions/churn_on_hours", DAY)["input"]) == 24  # a file an hour

    # each publish: the partition-aware jobs' events carry the day as their key, the other's none
    for dag_id, key in ((plain, None), (partitioned, DAY.isoformat()), (hourly, DAY.isoformat())):
        events = airflow.api(f"/assets/events?source_dag_id={dag_id}", token)["asset_events"]
        assert [(e["partition_key"], e["extra"]["date"]) for e in events] == [(key, DAY.isoformat())], events


def test_a_night_that_fails_mails_the_job_files_addresses_through_the_scheduler(stack, dag_run):
    """``airflow.email_on_failure`` under the real scheduler: the worker that ran the failed task
    sends its mail through the SMTP connection the services were started with, and the mail's
    link opens the task's log in this Airflow's UI."""
    airflow: Airflow = stack["airflow"]
    token, smtp, dag_id = dag_run["token"], stack["smtp"], "lakecast__churn_mailed"
    wait_until(lambda: airflow.api(f"/dags/{dag_id}", token)["dag_id"] == dag_id, timeout=180, what="the DAG")
    run_id = f"mailed__{int(time.time())}"
    airflow.cli("dags", "trigger", dag_id, "--conf", json.dumps({"date": DAY.isoformat()}), "--run-id", run_id)
    path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}"
    wait_until(lambda: airflow.api(path, token)["state"] == "failed", timeout=300, what="the failing run")
    mailed = lambda: [mail for to, mail in smtp.inbox.mails if to == ["oncall@example.com"]]  # noqa: E731
    wait_until(mailed, timeout=60, what="the failure mail")
    [mail] = mailed()
    assert mail["Subject"] == f"lakecast: churn_mailed failed for {DAY} at check_input"
    body = mail.get_body(("html",)).get_content()
    assert f"no data for raw/never_written on {DAY}" in body, body
    assert f'href="{airflow.url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id)}/tasks/check_input' in body, body


def test_a_night_past_its_deadline_mails_through_the_scheduler_and_triggerer(stack, dag_run):
    """``airflow.deadline_minutes`` under the real scheduler: a run whose check_input still waits
    for its partition when the deadline passes is mailed about by the triggerer, which imports
    lakecast's callback by its path, while the run goes on."""
    airflow: Airflow = stack["airflow"]
    token, smtp, dag_id = dag_run["token"], stack["smtp"], "lakecast__churn_late"
    wait_until(lambda: airflow.api(f"/dags/{dag_id}", token)["dag_id"] == dag_id, timeout=180, what="the DAG")
    run_id = f"late__{int(time.time())}"
    airflow.cli("dags", "trigger", dag_id, "--conf", json.dumps({"date": DAY.isoformat()}), "--run-id", run_id)
    late = lambda: [mail for to, mail in smtp.inbox.mails if to == ["night-watch@example.com"]]  # noqa: E731
    wait_until(late, timeout=120, what="the deadline's mail")
    [mail] = late()
    assert mail["Subject"] == f"lakecast: churn_late for {DAY} missed its deadline"
    body = mail.get_body(("html",)).get_content()
    assert "0.1 minutes after its run was queued" in body and "The run's state then: running." in body, body
    assert f'href="{airflow.url}/dags/{dag_id}/runs/{urllib.parse.quote(run_id)}"' in body, body
    assert airflow.api(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}", token)["state"] == "running"


def test_a_job_that_catches_up_runs_each_missed_night_on_its_clock(stack, dag_run):
    """``airflow.catch_up_from`` and ``timezone`` under the real scheduler: a Paris job catching up
    from three nights ago gets a scheduled run for that night first, at 02:00 in Paris the day
    after, and then for the next night; each run's check_input looks for its own night."""
    airflow: Airflow = stack["airflow"]
    token, dag_id = dag_run["token"], "lakecast__churn_caught_up"
    wait_until(lambda: airflow.api(f"/dags/{dag_id}", token)["dag_id"] == dag_id, timeout=180, what="the DAG")

    def runs() -> list[dict]:
        found = airflow.api(f"/dags/{dag_id}/dagRuns", token)["dag_runs"]
        return sorted((r for r in found if r["run_type"] == "scheduled"), key=lambda r: r["logical_date"])

    wait_until(lambda: len(runs()) >= 2 and runs()[0]["state"] == "failed", timeout=180, what="two nights' runs")
    paris = ZoneInfo("Europe/Paris")
    first, second = (CAUGHT_UP_FROM + dt.timedelta(days=n) for n in (1, 2))
    at_two = [dt.datetime.combine(day, dt.time(2), tzinfo=paris) for day in (first, second)]
    assert [dt.datetime.fromisoformat(r["logical_date"]) for r in runs()[:2]] == at_two
    path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(runs()[0]['dag_run_id'])}"
    log = airflow.api(f"{path}/taskInstances/check_input/logs/1", token)
    assert f"no data for raw/never_written on {CAUGHT_UP_FROM}" in (json.dumps(log) if isinstance(log, dict) else log)


def test_a_run_from_a_laptop_against_the_teams_mlflow_prints_clean_json(stack, dag_run):
    """The local profile with the team's tracking server and S3 lake: ``--json`` stays JSON (MLflow
    writes "View run … at" to stdout as a run against a server ends)."""
    env = {k: v for k, v in stack["env"].items() if k not in ("RAY_ADDRESS", "LAKECAST_PROFILE")}
    done = subprocess.run(
        [str(BIN / "lakecast"), "run", "churn", "--date", DAY.isoformat(), "--dry-run", "--json"],
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env, "LAKECAST_PROFILE": "local"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["rows"] == ROWS and result["committed"] is False

    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_run(result["run_id"])
    assert run.info.status == "FINISHED"


def test_the_airflow_ui_shows_the_successful_run(stack, dag_run, tmp_path):
    """Headless Chromium (Debian's) logs in and looks at the DAG's grid; a screenshot is kept."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.fail("chromium and chromedriver are needed: apt-get install chromium chromium-driver (make test does)")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_bin), options=options)
    airflow: Airflow = stack["airflow"]
    try:
        # the DAG's page sends a new session on to the login form: a look at the page while it
        # navigates is refused ("aborted by navigation"), so the waits look again until they time out
        wait = WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,))
        browser.get(f"{airflow.url}/dags/{DAG_ID}")
        wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(airflow.password)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # logged in once the login form has sent us back to the DAG's page
        wait.until(lambda b: "/auth/login" not in b.current_url and DAG_ID in b.find_element(By.TAG_NAME, "body").text)
        run_id = dag_run["run"]["dag_run_id"]
        browser.get(f"{airflow.url}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id)}")
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), run_id))
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Success"))  # the run's state badge
        for task_id in ("check_input", "predict", "publish", "compare"):  # the grid's rows
            assert browser.find_element(By.XPATH, f"//*[text()='{task_id}']")
        time.sleep(2)  # let the grid paint before the picture
    finally:
        browser.save_screenshot(str(ARTIFACTS / "airflow-dag-run.png"))
        (ARTIFACTS / "airflow-dag-run.html").write_text(f"<!-- {browser.current_url} -->\n{browser.page_source}")
        browser.quit()
