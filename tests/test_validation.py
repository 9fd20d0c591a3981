"""Row validation names the same bad rows whether a string column is read plain or
dictionary-encoded (as the job reads categorical columns), chunk by chunk."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jobs.validation import ColumnRule, invalid_reasons

REGION = ColumnRule(name="region", kind="string", nullable=False, categories=("north", "south"), max_length=5)
AGE = ColumnRule(name="age", kind="number", nullable=False, min=18, max=120)


def batch(regions: list[list[str | None]], ages: list[list[float | None]], *, encode: bool) -> pa.Table:
    """One chunk per inner list, as Ray Data hands the job a block sliced from several reads."""
    chunks = [pa.array(r, pa.string()) for r in regions]
    if encode:
        chunks = [c.dictionary_encode() for c in chunks]
    return pa.table({"region": pa.chunked_array(chunks), "age": pa.chunked_array(ages, pa.float64())})


@pytest.mark.parametrize("encode", [False, True], ids=["plain", "dictionary"])
def test_only_the_bad_rows_are_named(encode):
    table = batch(
        [["north", "south"], ["north", None, "east", "northwest"]],
        [[30, 40], [17, 50, 60, 70]],
        encode=encode,
    )
    assert invalid_reasons(table, [REGION, AGE]).to_pylist() == [
        None,
        None,
        "age: below 18",
        "region: null",
        "region: not an allowed category",
        "region: not an allowed category",  # the first rule broken is named
    ]


@pytest.mark.parametrize("encode", [False, True], ids=["plain", "dictionary"])
def test_a_clean_batch_has_no_reasons(encode):
    table = batch([["north", "south"], ["south"]], [[30, 40], [50]], encode=encode)
    reasons = invalid_reasons(table, [REGION, AGE])
    assert reasons.null_count == len(reasons) == 3


def test_a_null_row_in_a_dictionary_column_whose_values_are_all_fine():
    """The per-value checks pass, so only the row's own null can flag it."""
    table = batch([["north"], [None, "south"]], [[30], [40, 50]], encode=True)
    assert invalid_reasons(table, [REGION, AGE]).to_pylist() == [None, "region: null", None]
