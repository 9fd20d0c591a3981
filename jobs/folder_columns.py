"""Columns that a day's folders name instead of its files: Spark's ``partitionBy("ds", "region")``
writes ``region`` into the folders' names (``ds=…/region=eu/part-0.parquet``) and leaves it out
of the files, and Spark and Ray Data read it back from there. A model input that a file lacks
and one of its folders below the day's names is read so too: a value for each of the file's rows.

Without Ray imports: the driver finds these columns in its checks
(:func:`jobs.validation.check_schema`) and the readers add them (:func:`jobs.pieces.file_batches`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa

# the folder Hive and Spark write a null partition value into
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

Value = bool | float | str | None


def named(folder: str) -> dict[str, str | None]:
    """The ``name=value`` pairs of the folders ``folder`` names (``region=eu/hr=13``), unescaped as
    Spark escapes them (``north%20east``); Hive's null folder as None."""
    pairs: dict[str, str | None] = {}
    for segment in folder.split("/") if folder else ():
        name, equals, value = segment.partition("=")
        if equals and name:
            pairs[unquote(name)] = None if value == HIVE_NULL else unquote(value)
    return pairs


def typed(value: str | None, kind: str) -> Value:
    """A folder's ``value`` as the model takes its column (``kind``: :func:`jobs.validation.kind_of`).

    Raises:
        ValueError: it is not one, said as the end of a sentence.
    """
    if value is None:
        return None
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number, which the model expects") from None
    if kind == "boolean":
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{value!r} is not true or false, which the model expects")
        return value.lower() == "true"
    return value


def arrow_type(value: Value) -> pa.DataType:
    """The type of the column :func:`column` makes of ``value``."""
    if value is None:
        return pa.null()
    if isinstance(value, bool):
        return pa.bool_()
    return pa.float64() if isinstance(value, float) else pa.string()


def column(value: Value, rows: int, *, dictionary: bool) -> pa.Array:
    """``value`` for each of ``rows`` rows; a string dictionary-encoded where the job reads its
    column so (``dictionary``), as the files' own string columns are read."""
    if isinstance(value, str) and dictionary:
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([value]))
    return pa.repeat(pa.scalar(value, arrow_type(value)), rows)


def added(
    batch: pa.RecordBatch | pa.Table, values: Mapping[str, Value], columns: Sequence[str], dictionary: Sequence[str]
) -> pa.RecordBatch | pa.Table:
    """``batch`` (read without the columns of ``values``) with them added, its columns in the order
    of ``columns``, as a file that held them would be read."""
    arrays: dict[str, Any] = {name: batch.column(name) for name in batch.schema.names}
    for name, value in values.items():
        arrays[name] = column(value, batch.num_rows, dictionary=name in dictionary)
    kind = pa.RecordBatch if isinstance(batch, pa.RecordBatch) else pa.Table
    return kind.from_arrays([arrays[name] for name in columns], names=list(columns))
