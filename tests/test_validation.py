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


def test_a_row_whose_dictionary_entry_is_null_is_a_null():
    """Another writer's dictionary may hold a null entry: a row pointing at it is null, though
    the column counts no null rows (its indices are all valid)."""
    entries = pa.array(["north", None, "south"], pa.string())
    regions = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2], pa.int32()), entries)
    assert regions.null_count == 0
    table = pa.table({"region": pa.chunked_array([regions]), "age": pa.chunked_array([[30, 40, 50]], pa.float64())})
    assert invalid_reasons(table, [REGION, AGE]).to_pylist() == [None, "region: null", None]


def _with_null_slots_holding(values: list[float], nulls: list[bool]) -> pa.Array:
    """A float64 array whose null rows' slots hold ``values`` anyway, as any writer may leave them."""
    import numpy as np

    validity = pa.array([not n for n in nulls]).buffers()[1]
    data = pa.py_buffer(np.array(values, dtype=np.float64).tobytes())
    return pa.Array.from_buffers(pa.float64(), len(values), [validity, data], null_count=sum(nulls))


NULLABLE_AGE = ColumnRule(name="age", kind="number", nullable=True)


def test_a_null_is_not_infinite_whatever_its_slot_holds():
    """The clean-column check sums the values buffer, null slots included: NaN or infinity left
    in a null's slot must not flag the row, and a real infinity next to it must."""
    ages = _with_null_slots_holding([30.0, float("inf"), float("nan"), 50.0], [False, True, True, False])
    table = pa.table({"age": pa.chunked_array([ages])})
    assert invalid_reasons(table, [NULLABLE_AGE]).to_pylist() == [None, None, None, None]
    table = pa.table({"age": pa.chunked_array([ages, pa.array([float("-inf"), 1.0])])})
    assert invalid_reasons(table, [NULLABLE_AGE]).to_pylist() == [None, None, None, None, "age: infinite", None]


@pytest.mark.parametrize("type_", [pa.float64(), pa.float32()], ids=["float64", "float32"])
def test_only_the_rows_of_a_slice_are_checked(type_):
    """Ray Data hands the job slices of larger arrays: an infinity outside the slice is not in the batch."""
    ages = pa.array([float("inf"), 30.0, None, 40.0, float("nan")], type_)
    assert invalid_reasons(pa.table({"age": ages.slice(1, 3)}), [NULLABLE_AGE]).null_count == 3
    assert invalid_reasons(pa.table({"age": ages.slice(0, 2)}), [NULLABLE_AGE]).to_pylist() == ["age: infinite", None]
    assert invalid_reasons(pa.table({"age": ages.slice(3, 2)}), [AGE]).to_pylist() == [None, "age: NaN"]
    late = pa.array([30.0, 40.0, float("inf")], type_).slice(2, 1)  # the buffer's first value is fine
    assert invalid_reasons(pa.table({"age": late}), [NULLABLE_AGE]).to_pylist() == ["age: infinite"]


def test_rules_for_columns_the_model_does_not_take_name_the_file_the_model_and_its_inputs():
    from jobs.config import ValidationSpec
    from jobs.validation import InvalidInput, rules_from

    inputs = [("age", "long", True), ("region", "string", False)]
    where = {"job_file": "conf/jobs/churn.yaml", "model": "models:/churn-classifier/3"}

    spec = ValidationSpec(columns={"agee": {"min": 18}})
    with pytest.raises(InvalidInput) as raised:
        rules_from(inputs, spec, "customer_id", **where)
    assert str(raised.value) == (
        "validation.columns in conf/jobs/churn.yaml names ['agee'], which models:/churn-classifier/3 does not take "
        "as input (its inputs: ['age', 'region'])"
    )

    spec = ValidationSpec(columns={"customer_id": {"min": 0}})
    with pytest.raises(InvalidInput, match=r"has rules for 'customer_id', the job's key \(input.key\)"):
        rules_from(inputs, spec, "customer_id", **where)

    spec = ValidationSpec(columns={"age": {"min": 18}})
    age, region, key = rules_from(inputs, spec, "customer_id", **where)
    assert (age.name, age.min, age.nullable, region.nullable, key.name) == ("age", 18, False, True, "customer_id")
