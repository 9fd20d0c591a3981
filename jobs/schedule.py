"""Which date a run scores: an explicit date wins, else the day before the run's date.

A nightly run at 02:00 on the 22nd scores the partition of the 21st, the last complete day.
Kept apart from the DAG file so the rule is tested without Airflow.
"""

from __future__ import annotations

import datetime as dt

from jobs.config import parse_date


def score_date(requested: str | None, run_date: dt.datetime | dt.date) -> dt.date:
    """``requested`` (``YYYY-MM-DD``) if given, else the day before ``run_date``."""
    if requested:
        return parse_date(requested)
    day = run_date.date() if isinstance(run_date, dt.datetime) else run_date
    return day - dt.timedelta(days=1)
