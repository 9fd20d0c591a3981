"""How many values each input column lacks, from the Parquet footers, night against night.

A column the model takes as optional can go empty upstream (a join that stopped matching, a
renamed source field) and every row still passes validation: the network sees a missing value
where it used to see a number, and the scores shift without an error anywhere. The footers the
job already reads for its row counts carry each row group's null count per column, so the share
of nulls costs no data page. Each run records it (MLflow metrics ``input.null_share.<column>``,
the manifest's ``input_nulls``) and warns when a column's share rose by :data:`NULL_RISE_ALERT`
or more since the day before's partition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow.parquet as pq

# a rise of the null share by 10 points (0.02 → 0.12, say) in one night is an upstream change
NULL_RISE_ALERT = 0.10


def null_shares(
    footers: list[pq.FileMetaData], columns: list[str], from_folders: list[dict[str, Any]] | None = None
) -> dict[str, float]:
    """Each of ``columns``' share of nulls over the files of ``footers``; ``from_folders``: for
    each file, the columns it lacks that its folders name (:mod:`jobs.folder_columns`), a null
    there for each of its rows.

    A column is left out where a row group has no null count in its statistics (a writer may
    skip them): a share from some row groups only would read as a change that is not there.
    """
    rows = sum(f.num_rows for f in footers)
    nulls = dict.fromkeys(columns, 0)
    for footer, named in zip(footers, from_folders or [{}] * len(footers), strict=True):
        index = {footer.schema.column(i).path: i for i in range(footer.num_columns)}
        for name in [n for n in columns if n in nulls]:
            if name not in index and name in named:
                nulls[name] += footer.num_rows if named[name] is None else 0
                continue
            counts = [_null_count(footer.row_group(g), index.get(name)) for g in range(footer.num_row_groups)]
            if None in counts:
                del nulls[name]
            else:
                nulls[name] += sum(counts)
    return {name: count / rows for name, count in nulls.items()} if rows else {}


def _null_count(row_group: Any, index: int | None) -> int | None:
    if index is None:
        return None
    stats = row_group.column(index).statistics
    if stats is None or not stats.has_null_count:
        return None
    return stats.null_count


def rises(today: dict[str, float], before: dict[str, Any] | None) -> dict[str, tuple[float, float]]:
    """The columns whose null share rose by :data:`NULL_RISE_ALERT` or more since ``before`` (the
    day before's ``input_nulls``): ``{column: (share before, share today)}``. A column the day
    before did not record is not compared."""
    if not isinstance(before, dict):
        return {}
    found = {}
    for name, share in today.items():
        was = before.get(name)
        if isinstance(was, int | float) and share - was >= NULL_RISE_ALERT:
            found[name] = (float(was), share)
    return found


def describe(shares: dict[str, float], most: int = 3) -> str:
    """``shares`` as a line for people, the emptiest columns first: "22 columns, 5 with nulls:
    satisfaction_score 10.7%, device_os 5.2%, avg_session_minutes 4.3% and 2 more"."""
    with_nulls = sorted(((share, name) for name, share in shares.items() if share > 0), key=lambda x: (-x[0], x[1]))
    columns = f"{len(shares)} column{'' if len(shares) == 1 else 's'}"
    if not with_nulls:
        return f"{columns}, none with nulls"
    shown = ", ".join(f"{name} {100 * share:.1f}%" for share, name in with_nulls[:most])
    more = f" and {len(with_nulls) - most} more" if len(with_nulls) > most else ""
    return f"{columns}, {len(with_nulls)} with nulls: {shown}{more}"
