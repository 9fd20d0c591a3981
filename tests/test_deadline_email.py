"""``airflow.deadline_minutes``: the mail of a night not finished in time, awaited as Airflow's
triggerer awaits it, with the context its scheduler builds, against a real SMTP server;
``tests/test_production.py`` has the real scheduler and triggerer send it."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from jobs.deadline_email import mail_missed_deadline
from tests.smtpserver import SmtpServer

QUEUED = dt.datetime(2026, 12, 6, 2, tzinfo=dt.UTC)


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch):
    with SmtpServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", server.airflow_connection)
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example.com:8080")
        yield server


def deadline_context(
    run_id: str, run_type: str, conf: dict, state: str = "running", queued: dt.datetime = QUEUED
) -> dict:
    """What the scheduler hands the callback when the deadline passes (``Deadline.handle_miss``):
    the run as the REST API shows it, and the deadline's time."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import DAGRunResponse
    from airflow.models import DagRun
    from airflow.models.dag import DagModel

    run = DagRun(
        dag_id="lakecast__churn",
        run_id=run_id,
        queued_at=queued + dt.timedelta(seconds=1),
        run_type=run_type,
        logical_date=queued,
        run_after=queued,
        conf=conf,
        state=state,
    )
    run.dag_model = DagModel(dag_id="lakecast__churn")
    deadline = {"id": "0199", "deadline_time": queued + dt.timedelta(minutes=240, seconds=1)}
    return {"dag_run": DAGRunResponse.model_validate(run).model_dump(mode="json"), "deadline": deadline}


def late(context: dict, **kwargs: str) -> None:
    asyncio.run(
        mail_missed_deadline(
            job="churn",
            job_file="conf/jobs/churn.yaml",
            to=["oncall@example.com"],
            minutes=240,
            context=context,
            **kwargs,
        )
    )


def test_a_scheduled_night_past_its_deadline_is_mailed_with_the_night_it_scores(smtp):
    late(deadline_context("scheduled__2026-12-06T02:00:00+00:00", "scheduled", {}))
    [(recipients, mail)] = smtp.inbox.mails
    assert recipients == ["oncall@example.com"]
    assert mail["Subject"] == "lakecast: churn for 2026-12-05 missed its deadline"
    body = mail.get_body(("html",)).get_content()
    assert (
        "had not published its predictions for 2026-12-05 by 2026-12-06 06:00:01 UTC, 240 minutes after its run "
        "was queued at 2026-12-06 02:00:01 UTC (airflow.deadline_minutes). The run's state then: running."
    ) in body
    link = "http://airflow.example.com:8080/dags/lakecast__churn/runs/scheduled__2026-12-06T02%3A00%3A00%2B00%3A00"
    assert f'<a href="{link}">' in body and "Job file: conf/jobs/churn.yaml" in body


def test_a_night_on_another_clock_is_mailed_with_its_day_and_times_there(smtp):
    """A job on Paris's clock (``timezone: Europe/Paris``, ``30 0 * * *``): its run at 00:30 on the
    6th there, 23:30 UTC on the 5th, scores the 5th, and the mail gives its times as Paris reads them."""
    queued = dt.datetime(2026, 12, 5, 23, 30, tzinfo=dt.UTC)
    late(
        deadline_context("scheduled__2026-12-05T23:30:00+00:00", "scheduled", {}, queued=queued),
        timezone="Europe/Paris",
    )
    [(_, mail)] = smtp.inbox.mails
    assert mail["Subject"] == "lakecast: churn for 2026-12-05 missed its deadline"
    assert (
        "had not published its predictions for 2026-12-05 by 2026-12-06 04:30:01 CET, 240 minutes after its run "
        "was queued at 2026-12-06 00:30:01 CET (airflow.deadline_minutes)."
    ) in mail.get_body(("html",)).get_content()


def test_a_triggered_night_that_failed_before_its_deadline_is_mailed_as_failed(smtp):
    """Airflow forgets the deadline of a run that succeeds, not of one that fails: that one has
    sent its failure mail, and this one says the night has no predictions and why."""
    late(deadline_context("manual__2026-12-06T02:00:00+00:00", "manual", {"date": "2026-11-30"}, state="failed"))
    [(_, mail)] = smtp.inbox.mails
    assert mail["Subject"] == "lakecast: churn for 2026-11-30 missed its deadline"
    body = mail.get_body(("html",)).get_content()
    assert "had not published its predictions for 2026-11-30" in body and "The run's state then: failed." in body
    assert "Run: manual__2026-12-06T02:00:00+00:00" in body


def test_a_mail_server_that_does_not_answer_fails_the_callback_for_airflow_to_log(monkeypatch):
    """The triggerer logs the error and Airflow marks the deadline's callback failed."""
    with SmtpServer() as server:
        connection = server.airflow_connection  # its port, closed once the server stops
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", connection)
    with pytest.raises(OSError):
        late(deadline_context("scheduled__2026-12-06T02:00:00+00:00", "scheduled", {}))
