"""Each input column's share of nulls from the Parquet footers, and the rise that is warned of."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.input_stats import NULL_RISE_ALERT, describe, null_shares, rises

TABLE = pa.table({"a": [1, None, 3, None, 5], "b": ["x", None, "y", "z", "w"], "c": [1.0, 2.0, 3.0, 4.0, 5.0]})


def footer(path: Path, table: pa.Table = TABLE, **options) -> pq.FileMetaData:
    pq.write_table(table, path, **options)
    return pq.ParquetFile(path).metadata


def test_shares_add_up_over_files_and_row_groups(tmp_path):
    # three row groups in one file, one in the other: 2 + 2 nulls of 10 rows in a, 1 + 1 in b
    one = footer(tmp_path / "one.parquet", row_group_size=2)
    two = footer(tmp_path / "two.parquet")
    assert one.num_row_groups == 3
    assert null_shares([one, two], ["a", "b", "c"]) == {"a": 0.4, "b": 0.2, "c": 0.0}


def test_a_column_without_null_counts_or_not_there_is_left_out(tmp_path):
    # a writer that kept statistics for c only: a share from nothing would read as none at all
    partial = footer(tmp_path / "partial.parquet", write_statistics=["c"])
    assert null_shares([partial], ["a", "c", "missing"]) == {"c": 0.0}
    # one file without them is enough: a share of the others' row groups would be no share
    full = footer(tmp_path / "full.parquet")
    assert null_shares([full, partial], ["a", "c"]) == {"c": 0.0}


def test_a_column_from_folder_names_counts_a_hive_null_folders_rows(tmp_path):
    """A column Spark keeps in the folders' names (jobs.folder_columns): its share counts the rows
    of files under Hive's null folder, so that a folder turned null raises the alert too."""
    one, two = footer(tmp_path / "one.parquet"), footer(tmp_path / "two.parquet")
    shares = null_shares([one, two], ["region", "c"], [{"region": "eu"}, {"region": None}])
    assert shares == {"region": 0.5, "c": 0.0}
    assert null_shares([one, two], ["region"], [{"region": "eu"}, {}]) == {}  # the second file has none


def test_no_rows_no_shares(tmp_path):
    assert null_shares([footer(tmp_path / "empty.parquet", TABLE.slice(0, 0))], ["a"]) == {}


@pytest.mark.parametrize(
    ("today", "before", "expected"),
    [
        ({"a": 1.0}, {"a": 0.1}, {"a": (0.1, 1.0)}),
        ({"a": 0.02 + NULL_RISE_ALERT}, {"a": 0.02}, {"a": (0.02, 0.02 + NULL_RISE_ALERT)}),  # at the limit
        ({"a": 0.11}, {"a": 0.02}, {}),  # below it
        ({"a": 0.0}, {"a": 0.9}, {}),  # fewer nulls: nothing lost
        ({"a": 1.0}, {"b": 0.0}, {}),  # not recorded the day before
        ({"a": 1.0}, {"a": "x"}, {}),  # a manifest edited by hand
        ({"a": 1.0}, None, {}),  # no manifest, or one from before input_nulls
        ({"a": 1.0}, ["a"], {}),
    ],
)
def test_a_rise_is_warned_of_from_ten_points(today, before, expected):
    assert rises(today, before) == expected


def test_the_line_for_people_names_the_emptiest_columns_first():
    shares = {"a": 0.0, "b": 0.107, "c": 0.052, "d": 0.043, "e": 0.01, "f": 0.052}
    assert describe(shares) == "6 columns, 5 with nulls: b 10.7%, c 5.2%, f 5.2% and 2 more"
    assert describe({"a": 0.0, "b": 0.5}) == "2 columns, 1 with nulls: b 50.0%"
    assert describe({"a": 0.0}) == "1 column, none with nulls"
