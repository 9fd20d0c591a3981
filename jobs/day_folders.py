"""Where a table keeps a day's rows: the day's folder under the table, written as a ``strftime``
pattern (``input.partition`` and ``ab.labeled_partition`` in a job file).

lakecast writes its own tables as ``ds=YYYY-MM-DD`` (Airflow's ``{{ ds }}``), and reads that
layout by default. The tables it reads are often another team's, partitioned as their writer
chose (``dt=20261205``, ``date=2026-12-05``, ``year=2026/month=12/day=05``), and cannot be
rewritten for lakecast. Kept free of pyarrow: the job files' models import it when Airflow
parses the DAGs.
"""

from __future__ import annotations

import datetime as dt
import re

DEFAULT = "ds=%Y-%m-%d"

# the date's directives a layout may use: each is the same on every machine and locale, where
# %b or %-d are not
DIRECTIVES = {
    "Y": "the year",
    "y": "the year's last two digits",
    "m": "the month",
    "d": "the day",
    "j": "the day of the year",
}
# what a folder's name may hold once the date is in: a path segment on a local disk and an S3 key alike
SEGMENT = re.compile(r"^[A-Za-z0-9_=.+-]+$")
# days that must land in folders of their own: without the day (or the day of the year) the first
# two share one, without the month the first and the third, without the year the first and the
# last. A layout of these directives that parts all four parts any two days of a century.
_PROBE = [dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 2, 1), dt.date(2025, 1, 1)]


def folder(layout: str, ds: dt.date) -> str:
    """The day's folder, relative to its table (``ds=2026-12-05``, ``year=2026/month=12/day=05``)."""
    return ds.strftime(layout)


def check(layout: str) -> str:
    """``layout`` itself when each day has a folder of its own below its table.

    Raises:
        ValueError: a sentence naming what is wrong with it.
    """
    for directive in re.findall(r"%(.?)", layout):
        if not directive:
            raise ValueError(f"{layout!r} ends with a lone %: write %% for the character itself")
        if directive != "%" and directive not in DIRECTIVES:
            known = ", ".join(f"%{d} ({what})" for d, what in DIRECTIVES.items())
            hours = (
                "; the folders below a day's (hr=13/) are read with it, so name the day's folder alone"
                if directive in "HIMSp"
                else ""
            )
            raise ValueError(f"{layout!r}: %{directive} is not a directive of a day's folder; use {known}{hours}")
    sample = folder(layout, dt.date(2026, 12, 5))
    for segment in sample.split("/"):
        if segment in ("", ".", "..") or not SEGMENT.match(segment):
            raise ValueError(
                f"{layout!r} makes the folder {sample!r} for 2026-12-05: each folder's name holds letters, digits "
                "and _ = . + - only, folders apart by one '/', none of them '.' or '..', so that the day stays "
                "below its table"
            )
    seen: dict[str, dt.date] = {}
    for day in _PROBE:
        name = folder(layout, day)
        if name in seen:
            raise ValueError(
                f"{layout!r} puts {seen[name]} and {day} in one folder, {name!r}: a day's folder needs the year, "
                "the month and the day (%Y, %m and %d; or %Y and %j)"
            )
        seen[name] = day
    return layout
