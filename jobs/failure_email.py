"""The mail a job's DAG sends when one of its tasks fails for good (``airflow.email_on_failure``).

A nightly job that fails at 02:00 is seen by nobody until its predictions are missed. Airflow 3
deprecates a task's ``email`` and ``email_on_failure`` for its SMTP provider's notifier; this is
that notifier as every task's ``on_failure_callback``, with a subject and body that say which
job failed, for which night, at which task and why: the job's own sentence, which names what to
fix, then the try and a link to the task's log.

Airflow calls it in the task's process once the task has failed past its retries (a retry mails
nothing), and from its DAG processor for a task that died without calling it (a lost worker).
The mail goes through Airflow's SMTP connection, ``smtp_default`` (or the one ``[email]
email_conn_id`` names), from ``[email] from_email`` where Airflow's configuration sets it, else
the connection's ``from_email``. A mail that cannot be sent is logged in the task's log; the
task stays failed either way.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# Rendered by the notifier with the task's context (Jinja): values go in as variables, never
# into the template's text, so an error message with braces in it is shown as it is.
SUBJECT = (
    "lakecast: {{ lakecast_job }} failed{% if lakecast_night %} for {{ lakecast_night }}{% endif %} at {{ ti.task_id }}"
)
BODY = """\
<p>The lakecast job <b>{{ lakecast_job }}</b> (DAG {{ ti.dag_id }}) failed at its task
<b>{{ ti.task_id }}</b>{% if lakecast_night %}, scoring {{ lakecast_night }}{% endif %}
{%- if ti.max_tries is defined and ti.try_number <= ti.max_tries + 1 -%}
, on try {{ ti.try_number }} of {{ ti.max_tries + 1 }}
{%- endif %}.</p>
{% if exception is defined and exception %}<pre>{{ exception | e }}</pre>
{% else %}<p>The task ended without an error of its own (its process was lost or killed): its log says more.</p>
{% endif -%}
<p>Run: {{ ti.run_id }}{% if ti.log_url is defined %}<br>
Log: <a href="{{ ti.log_url }}">{{ ti.log_url }}</a>{% endif %}<br>
Job file: {{ lakecast_job_file }}</p>
"""


class FailureEmail:
    """A task's ``on_failure_callback``: mails ``to`` about the failure in ``context``. Built each
    time Airflow parses the DAG file, so it imports nothing of Airflow's until a task fails."""

    def __init__(self, job: str, job_file: str, to: list[str]) -> None:
        self.job, self.job_file, self.to = job, job_file, list(to)

    def __call__(self, context: Any) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier
        from airflow.sdk.configuration import conf

        notifier = SmtpNotifier(
            to=self.to,
            from_email=conf.get("email", "from_email", fallback=None),  # None: the connection's
            subject=SUBJECT,
            html_content=BODY,
        )
        night = scored_night(context)
        notifier({**context, "lakecast_job": self.job, "lakecast_job_file": self.job_file, "lakecast_night": night})
        log.info("mailed %s: %s failed at %s", ", ".join(self.to), self.job, context["ti"].task_id)

    def __repr__(self) -> str:  # how Airflow's log names the callback when it fails
        return f"FailureEmail({self.job!r}, to={self.to!r})"


def scored_night(context: Any) -> str | None:
    """The day the failed run scores: as check_input found it, else as the run's ``date`` param
    asked for it; None where neither says (check_input itself failed on a scheduled run)."""
    try:
        checked = context["ti"].xcom_pull(task_ids="check_input")
    except Exception:  # the DAG processor's context, or an XCom backend that fails: the date is a nicety
        checked = None
    if isinstance(checked, dict) and checked.get("date"):
        return str(checked["date"])
    params = context.get("params") or {}
    return params.get("date") or None
