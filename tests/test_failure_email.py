"""``airflow.email_on_failure`` in the two contexts Airflow calls it with, against a real SMTP
server; ``tests/test_demo.py`` runs it end to end through ``airflow dags test``."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from jobs.failure_email import FailureEmail
from tests.smtpserver import SmtpServer


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch):
    with SmtpServer() as server:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", server.airflow_connection)
        yield server


def processor_context() -> dict:
    """The context Airflow's DAG processor calls a task's failure callback with, built as it
    builds it (``_execute_task_callbacks``) for a task whose worker was lost: the task instance
    without the server's context, and no exception."""
    from airflow.sdk import DAG
    from airflow.sdk.bases.operator import BaseOperator
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    with DAG("lakecast__churn", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)):
        task = BaseOperator(task_id="predict")
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(),
        task_id="predict",
        dag_id="lakecast__churn",
        run_id="scheduled__2026-12-05T02:00:00+00:00",
        try_number=3,
        map_index=-1,
        dag_version_id=uuid.uuid4(),
        task=task,
    )
    return ti.get_template_context()


def test_a_task_whose_worker_was_lost_is_mailed_without_an_error(smtp):
    """The DAG processor's call renders, saying what it cannot know rather than failing on it."""
    FailureEmail("churn", "conf/jobs/churn.yaml", ["oncall@example.com"])(processor_context())
    [(recipients, mail)] = smtp.inbox.mails
    assert recipients == ["oncall@example.com"]
    # no check_input result to read the night from, and no date param: the subject says none
    assert mail["Subject"] == "lakecast: churn failed at predict"
    body = mail.get_body(("html",)).get_content()
    assert "failed at its task\n<b>predict</b>" in body
    assert "ended without an error of its own (its process was lost or killed)" in body
    assert "Run: scheduled__2026-12-05T02:00:00+00:00" in body and "Job file: conf/jobs/churn.yaml" in body


def test_an_error_is_mailed_as_it_reads(smtp):
    """The error goes into the mail as a value, never as template text or markup: braces and
    angle brackets in it (a column's name, a path) come out as the user would read them."""
    context = processor_context() | {"exception": ValueError("column {{ds}} <b>x</b>: null")}
    context["params"] = {"date": "2026-12-04"}  # a triggered run's date param
    FailureEmail("churn", "conf/jobs/churn.yaml", ["a@example.com", "b@example.com"])(context)
    [(recipients, mail)] = smtp.inbox.mails
    assert recipients == ["a@example.com", "b@example.com"]
    assert mail["Subject"] == "lakecast: churn failed for 2026-12-04 at predict"
    body = mail.get_body(("html",)).get_content()
    assert "<pre>column {{ds}} &lt;b&gt;x&lt;/b&gt;: null</pre>" in body, body
    assert "on try" not in body  # its retries are the server's to say, which this context lacks


def test_a_mail_that_cannot_be_sent_raises_for_airflow_to_log(monkeypatch):
    """Airflow logs a callback's error in the task's log and keeps the task failed; the callback
    must not swallow it, or a mail that never left would leave no trace anywhere."""
    with SmtpServer() as gone:
        connection = gone.airflow_connection
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", connection)  # its server stopped: nothing listens there
    with pytest.raises(Exception, match=r"Connection refused|Unable to connect"):
        FailureEmail("churn", "conf/jobs/churn.yaml", ["oncall@example.com"])(processor_context())
