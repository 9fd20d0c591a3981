"""The mail a job's DAG sends when a night has not finished by its deadline
(``airflow.deadline_minutes``).

A failure mails at once (:mod:`jobs.failure_email`), but a night can also be late without
failing: a partition that lands hours late while check_input waits for it, a cluster whose
autoscaler never brings the GPUs, a model that scores ten times slower than the night before.
Whoever reads the predictions at 06:00 wants to know at 06:00. Airflow 3 replaced SLAs with
Deadline Alerts: the DAG carries one, counted from when its run was queued (for a scheduled run,
its time: 02:00 plus 240 minutes is 06:00); Airflow forgets it when the run succeeds, and where
the run is still going or has failed past the deadline, its scheduler hands this callback to the
triggerer, which awaits it.

The triggerer imports it by its path, so it lives here, importable wherever lakecast is
installed, and takes only what a DAG can serialize (strings and numbers). Airflow gives it a
small context of its own: the run as its REST API shows it (``dag_run``) and the deadline's time.
The mail goes through the SMTP connection that the failure mail uses.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import urllib.parse
from typing import Any

from jobs.config import zone_info

log = logging.getLogger(__name__)

# where the DAG's Deadline Alert finds the callback (airflow.sdk.AsyncCallback takes a path)
CALLBACK = f"{__name__}.mail_missed_deadline"


async def mail_missed_deadline(
    *,
    job: str,
    job_file: str,
    to: list[str],
    minutes: float,
    timezone: str = "UTC",
    context: dict[str, Any] | None = None,
) -> None:
    """Mail ``to`` that the run in ``context`` missed the deadline of ``minutes`` after it was queued,
    its times and its night on the clock of the job's ``timezone``.

    Raises:
        Exception: the mail could not be sent (the triggerer logs it, and Airflow marks the
            deadline's callback failed).
    """
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier
    from airflow.sdk.configuration import conf

    base_url = conf.get("api", "base_url", fallback="")
    subject, body = message(job, job_file, minutes, context or {}, base_url, zone=zone_info(timezone))
    sender = conf.get("email", "from_email", fallback=None)  # None: the connection's
    # awaited as it is, not through the notifier's templating: the run's values stay text
    await SmtpNotifier(to=to, from_email=sender, subject=subject, html_content=body).async_notify({})
    log.info("mailed %s: %s missed its deadline", ", ".join(to), job)


def message(
    job: str, job_file: str, minutes: float, context: dict[str, Any], base_url: str, *, zone: dt.tzinfo = dt.UTC
) -> tuple[str, str]:
    """The mail's subject and HTML body, from Airflow's deadline context."""
    run = context.get("dag_run") or {}
    deadline = (context.get("deadline") or {}).get("deadline_time")
    night = _night(run, zone)
    when = f" for {night}" if night else ""
    # true of a run still going and of one that failed before the deadline (Airflow forgets the
    # deadline of a run that succeeds, not of one that fails)
    subject = f"lakecast: {job}{when} missed its deadline"
    dag_id, run_id = run.get("dag_id", f"lakecast__{job}"), run.get("dag_run_id")
    link = (
        f"{base_url.rstrip('/')}/dags/{urllib.parse.quote(dag_id)}/runs/{urllib.parse.quote(str(run_id))}"
        if base_url and run_id
        else None
    )
    e = html.escape
    body = (
        f"<p>The lakecast job <b>{e(job)}</b> (DAG {e(dag_id)}) had not published its predictions"
        f"{' for ' + e(night) if night else ''} by {e(_time(deadline, zone))}, {minutes:g} minutes after its run "
        f"was queued{' at ' + e(_time(run.get('queued_at'), zone)) if run.get('queued_at') else ''} "
        f"(airflow.deadline_minutes). The run's state then: {e(str(run.get('state', 'unknown')))}.</p>\n"
        f"<p>Run: {e(str(run_id))}"
        + (f'<br>\nIn Airflow: <a href="{e(link)}">{e(link)}</a>' if link else "")
        + f"<br>\nJob file: {e(job_file)}</p>\n"
    )
    return subject, body


def _night(run: dict[str, Any], zone: dt.tzinfo) -> str | None:
    """The day the run scores, where its start says it: the ``date`` it was triggered with, else
    the day before a scheduled (or backfill) run's date in ``zone``, as check_input reckons it;
    None for a run on an Asset event, whose day its first task reads from the event."""
    from jobs.schedule import score_date

    date = (run.get("conf") or {}).get("date")
    if date:
        return str(date)
    logical = run.get("logical_date")
    if run.get("run_type") in ("scheduled", "backfill") and logical:
        return score_date(None, _moment(logical), zone).isoformat()
    return None


def _time(value: Any, zone: dt.tzinfo) -> str:
    """A time of Airflow's context (a datetime, or its ISO text) as people read it: on the clock of
    the job's zone, which the mail names (``2026-12-22 06:00:00 CET``)."""
    if not value:
        return "its deadline"
    moment = _moment(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S ") + (moment.tzname() or "UTC")


def _moment(value: Any) -> dt.datetime:
    """A datetime of Airflow's context, given as one or as its ISO text."""
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
