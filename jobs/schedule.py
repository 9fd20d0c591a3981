"""Which date a run scores: an explicit date wins, then the day the Asset event that triggered the
run names (``schedule: on_input``: the event's partition key, or its ``date`` extra), else the
day before the run's date, on the clock of the job's ``timezone``.

A nightly run at 02:00 on the 22nd scores the partition of the 21st, the last complete day.
Kept apart from the DAG file so the rule is tested without Airflow.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from jobs import day_folders
from jobs.config import parse_date
from jobs.yamlconf import ConfigError

log = logging.getLogger(__name__)


def announced_dates(events: Iterable[Any]) -> list[dt.date]:
    """The days that the Asset events which triggered a run (``schedule: on_input``) say were
    written, newest event first: each event's ``date`` in its extra (lakecast's publish puts it
    there). Events that name no day are left out. (Airflow's partitioned events, which name theirs
    in a partition key, start partition-aware DAGs only: :func:`partition_day`.)

    Raises:
        ConfigError: an event names a date that is not ``YYYY-MM-DD``, naming the DAG that sent it.
    """
    days = []
    for event in sorted(events, key=lambda e: e.timestamp, reverse=True):
        said = (event.extra or {}).get("date")
        if not said:
            continue
        try:
            day = parse_date(str(said))
        except ConfigError:
            source = f"DAG {event.source_dag_id}" if event.source_dag_id else "the REST API"
            raise ConfigError(
                f"the Asset event of {event.asset.uri} from {source} names the day {said!r}, not a date "
                "YYYY-MM-DD: lakecast scores no day it cannot tell"
            ) from None
        if day not in days:
            days.append(day)
    return days


def score_date(requested: str | None, run_date: dt.datetime | dt.date, zone: dt.tzinfo = dt.UTC) -> dt.date:
    """``requested`` (``YYYY-MM-DD``) if given, else the day before ``run_date``'s date in ``zone``.

    Airflow gives a run's date in UTC. For a team whose night is not UTC's, the day is its own:
    a run at 21:00 in New York (``0 21 * * *``, 01:00 UTC the next day) scores the day before
    New York's date, not UTC's, whose partition its producer has not written yet."""
    if requested:
        return parse_date(requested)
    if isinstance(run_date, dt.datetime):
        run_date = (run_date.astimezone(zone) if run_date.tzinfo else run_date).date()
    return run_date - dt.timedelta(days=1)


def partition_day(key: str, layout: str) -> dt.date:
    """The day a partitioned Asset event's key names (``airflow.partitioned_assets``): the date
    (``2026-12-04``), a timestamp on that day (``2026-12-04T00:00:00``, as Airflow's temporal
    partition mappers write them), or the day's folder under the input table, as
    ``input.partition`` names it (``dt=20261204``): a producer keys its events as it keys its table.

    Raises:
        ConfigError: the key is none of these, naming it and what would do.
    """
    try:
        when = dt.datetime.fromisoformat(key)
    except ValueError:
        pass
    else:
        if when.time() != dt.time(0):
            log.warning(
                "the partition key %r names a time of day (%s on %s): the run scores the whole day's partition, "
                "and each key starts a run of its own; for a producer that keys its events by the hour, "
                "airflow.hourly_keys runs the job once a day, when all 24 hours have arrived",
                key,
                when.time(),
                when.date(),
            )
        return when.date()
    try:
        return dt.datetime.strptime(key, layout).date()
    except ValueError:
        raise ConfigError(
            f"the Asset event's partition key {key!r} names no day: lakecast takes the date (2026-12-04), a "
            f"timestamp on it (2026-12-04T00:00:00) or the day's folder as input.partition names it "
            f"({day_folders.folder(layout, dt.date(2026, 12, 4))})"
        ) from None
