"""Input validation before scoring.

Two levels. **Schema**, checked on the driver before anything is written: every file of the
partition has a readable footer and every needed column with a type the model accepts; a
problem is an error naming the file and the column. **Rows**, checked inside the Ray pipeline on
each batch: nulls where none are allowed, NaN or infinity, values out of range, categories not
allowed, strings too long. Bad rows either fail the run (``on_invalid_rows: fail``) or go, with a
``reason`` column, to ``quarantine/<job>/ds=<date>/`` while the rest is scored.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import folder_columns
from jobs.lake import DataFile, FolderWriter, Lake
from models.predictor import widened

if TYPE_CHECKING:
    from jobs.config import ValidationSpec

log = logging.getLogger(__name__)

Kind = Literal["number", "string", "boolean", "any"]
REASON = "reason"


class InvalidInput(ValueError):
    """The input breaks the job's schema or row rules; nothing was published."""


@dataclass(frozen=True)
class ColumnRule:
    name: str
    kind: Kind
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None
    max_length: int | None = None
    # the job file's key that asks for the column where the model does not (output.passthrough)
    listed_in: str | None = None


_SIGNATURE_KINDS: dict[str, Kind] = {
    "double": "number",
    "float": "number",
    "long": "number",
    "integer": "number",
    "string": "string",
    "boolean": "boolean",
}


def rules_from(
    signature_inputs: list[tuple[str, str, bool]],
    spec: ValidationSpec,
    key: str,
    *,
    job_file: str,
    model: str,
) -> list[ColumnRule]:
    """Merge the model signature (name, MLflow type, required) with the job file's rules.
    ``job_file`` and ``model`` (its URI) name them in the errors.

    Raises:
        InvalidInput: the job file has rules for a column the model does not take.
    """
    by_name = {name: (_SIGNATURE_KINDS.get(t, "any"), required) for name, t, required in signature_inputs}
    unknown = sorted(set(spec.columns) - set(by_name))
    if key in unknown:
        raise InvalidInput(
            f"validation.columns in {job_file} has rules for {key!r}, the job's key (input.key): a key is "
            "checked for nulls only, and every row needs one"
        )
    if unknown:
        raise InvalidInput(
            f"validation.columns in {job_file} names {unknown}, which {model} does not take as input "
            f"(its inputs: {list(by_name)})"
        )
    rules = []
    for name, (kind, required) in by_name.items():
        check = spec.columns.get(name)
        nullable = (not required) if check is None or check.nullable is None else check.nullable
        rules.append(
            ColumnRule(
                name,
                kind,
                nullable=nullable,
                min=check.min if check else None,
                max=check.max if check else None,
                categories=tuple(check.categories) if check and check.categories else None,
                max_length=spec.max_string_length if kind == "string" else None,
            )
        )
    rules.append(ColumnRule(key, "any", nullable=False))
    return rules


def passthrough_rules(rules: list[ColumnRule], columns: list[str]) -> list[ColumnRule]:
    """``rules`` and one for each of ``columns`` (``output.passthrough``) that no rule reads yet:
    read and copied into the predictions, checked only to be there, in every file, of one type."""
    read = {rule.name for rule in rules}
    return rules + [ColumnRule(c, "any", listed_in="output.passthrough") for c in columns if c not in read]


def kind_of(t: pa.DataType) -> Kind:
    """What a model takes a column of type ``t`` as (a dictionary as its values)."""
    if pa.types.is_dictionary(t):
        return kind_of(t.value_type)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    return "any"


class PartitionSchema(NamedTuple):
    """What :func:`check_schema` found beside its checks."""

    # the columns a file lacks that its folders name, with their values, by file: ``{path: {column: value}}``
    from_folders: dict[str, dict[str, folder_columns.Value]]
    # the type each column the files give different types widens to (int32 and int64: int64)
    widened: dict[str, pa.DataType]


def check_schema(
    lake: Lake, files: list[DataFile], footers: list[pq.FileMetaData], rules: list[ColumnRule], key: str
) -> PartitionSchema:
    """Every file has every needed column, with a type the model takes, and the files agree on
    each column's type. ``footers``: the files' own (:meth:`jobs.lake.Lake.footers`), which the
    caller has read already for its row counts. A column a file lacks may be in the name of a
    folder it lies in below the day's (``region=eu/``: :mod:`jobs.folder_columns`), except the
    ``key``: one value for a whole folder's rows is no entity's id.

    Returns:
        The columns the readers add from the folders' names, and the types that files which
        disagree widen to (the key and the passthrough are written as such, every file alike).

    Raises:
        InvalidInput: naming the file, the column, its type and the expected kind (or the type
            another file has).
    """
    first_of_type: dict[str, dict[pa.DataType, str]] = {rule.name: {} for rule in rules}
    from_folders: dict[str, dict[str, folder_columns.Value]] = {}
    for f, footer in zip(files, footers, strict=True):
        schema = footer.schema.to_arrow_schema()
        in_folders = folder_columns.named(f.folder)
        for rule in rules:
            if rule.name in schema.names:
                actual = schema.field(rule.name).type
            elif rule.name in in_folders and rule.name != key:
                try:
                    value = folder_columns.typed(in_folders[rule.name], rule.kind)
                except ValueError as e:
                    raise InvalidInput(
                        f"{lake.uri(f.path)}: column {rule.name!r}, from the name of the folder it lies in: {e}"
                    ) from None
                from_folders.setdefault(f.path, {})[rule.name] = value
                actual = folder_columns.arrow_type(value)
            else:
                listed = f" (listed in {rule.listed_in})" if rule.listed_in else ""
                raise InvalidInput(f"{lake.uri(f.path)}: missing column {rule.name!r}{listed}")
            # a column of nulls only, as pandas stores an all-None column, has no type to check
            if rule.kind != "any" and not pa.types.is_null(actual) and kind_of(actual) != rule.kind:
                raise InvalidInput(
                    f"{lake.uri(f.path)}: column {rule.name!r} has type {actual}, the model expects a {rule.kind}"
                )
            if rule.kind != "string":  # strings are read dictionary-encoded: one type whatever the file's
                first_of_type[rule.name].setdefault(actual, f.path)
    widened = {name: _one_type(lake, name, seen) for name, seen in first_of_type.items() if len(seen) > 1}
    return PartitionSchema(from_folders, widened)


def _one_type(lake: Lake, name: str, seen: dict[pa.DataType, str]) -> pa.DataType:
    """The type the partition's files' types for column ``name`` widen to (int32 and int64,
    string and large_string), as an output file joining rows of several input files needs: a
    key that is a number in one file and a string in the next would otherwise fail an actor
    half-way through, or write a partition whose files disagree on the key's type.

    ``seen``: each type, with the first file that has it."""
    (first, first_path), *others = seen.items()
    merged = first
    for other, path in others:
        try:
            unified = pa.unify_schemas(
                [pa.schema([(name, merged)]), pa.schema([(name, other)])], promote_options="permissive"
            )
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            raise InvalidInput(
                f"{lake.uri(path)}: column {name!r} has type {other}, where {lake.uri(first_path)} has {first}: "
                "the files of a partition must agree on each column's type"
            ) from None
        merged = unified.field(name).type
    return merged


def _per_row(column: pa.ChunkedArray, check: Callable[[pa.Array], pa.Array]) -> pa.ChunkedArray:
    """A check computed once per distinct value of a dictionary column, then mapped to its rows.

    When no distinct value fails (nearly every chunk of every night), no row can: the chunk's
    mask is all null, which the callers read as "no row breaks this rule", and the mapping to
    rows (an index lookup per row) is skipped."""
    masks = []
    for chunk in column.chunks:
        flagged = check(chunk.dictionary)
        if flagged.null_count == len(flagged) or not pc.any(flagged).as_py():
            masks.append(pa.nulls(len(chunk), pa.bool_()))
        else:
            masks.append(pc.fill_null(pc.take(flagged, chunk.indices), False))
    return pa.chunked_array(masks, pa.bool_())


def _dictionary_checks(column: pa.ChunkedArray, rule: ColumnRule) -> Iterator[tuple[pa.ChunkedArray, str]]:
    """The string checks of :func:`_checks` on a dictionary-encoded column, without decoding it."""
    # a null row is a null index or an index of a null entry; both counts are known without a pass
    if not rule.nullable and (column.null_count or any(chunk.dictionary.null_count for chunk in column.chunks)):
        yield pc.or_kleene(pc.is_null(column), _per_row(column, pc.is_null)), "null"
    if rule.categories is not None:
        allowed = pa.array(rule.categories, column.type.value_type)
        yield (
            _per_row(column, lambda d: pc.and_(pc.invert(pc.is_in(d, value_set=allowed)), pc.is_valid(d))),
            "not an allowed category",
        )
    if rule.max_length is not None:
        yield (
            _per_row(column, lambda d: pc.greater(pc.utf8_length(d), rule.max_length)),
            f"longer than {rule.max_length}",
        )


def _all_finite(column: pa.ChunkedArray) -> bool:
    """True when no value of a floating-point column is NaN or infinite. False may be wrong,
    which only sends the column down the exact path (the masks of :func:`_checks`).

    One sum per chunk over its values buffer as it is: a sum is NaN or infinite when a value is,
    and otherwise only when it overflows. It allocates nothing, where each mask costs two passes,
    and nearly every night's columns pass. The slots of nulls are summed too: pyarrow's Parquet
    reader leaves zero there, and anything else only sends the column down the exact path, which
    skips nulls. Arrow's own sum skips them, and slows in step with their share: 2.4 against 0.3
    ns a row for a column with 10% nulls.
    """
    for chunk in column.chunks:
        data = chunk.buffers()[1]
        if data is None:  # Arrow allows a chunk without rows to have no values buffer
            continue
        end = chunk.offset + len(chunk)
        values = np.frombuffer(data, dtype=chunk.type.to_pandas_dtype(), count=end)[chunk.offset :]
        if not math.isfinite(np.add.reduce(values)):
            return False
    return True


def _checks(
    column: pa.ChunkedArray, rule: ColumnRule, *, finite: bool = False
) -> Iterator[tuple[pa.ChunkedArray, str]]:
    """(mask of the rows breaking one rule, what is wrong with them), for one column. A rule of a
    column the model does not score (``output.passthrough``, the comparison's segment) that may
    be null checks nothing: no value of it can make a row unfit to score. ``finite``: the column
    is known to hold no NaN or infinity (:meth:`RowValidator.split`'s ``left_to_scorer``)."""
    if rule.kind == "any" and rule.nullable and (rule.min, rule.max, rule.categories) == (None, None, None):
        return
    if pa.types.is_dictionary(column.type):
        if kind_of(column.type.value_type) == "string":
            yield from _dictionary_checks(column, rule)
            return
        column = column.cast(column.type.value_type)
    if pa.types.is_floating(column.type) and not finite and not _all_finite(column):
        yield pc.is_inf(column), "infinite"
        if not rule.nullable:
            yield pc.is_nan(column), "NaN"
    if not rule.nullable and column.null_count:
        yield pc.is_null(column), "null"
    if rule.min is not None:
        yield pc.less(column, rule.min), f"below {rule.min:g}"
    if rule.max is not None:
        yield pc.greater(column, rule.max), f"above {rule.max:g}"
    if rule.categories is not None:
        allowed = pc.is_in(column, value_set=pa.array(rule.categories, column.type))
        yield pc.and_(pc.invert(allowed), pc.is_valid(column)), "not an allowed category"
    if rule.max_length is not None and kind_of(column.type) == "string":
        yield pc.greater(pc.utf8_length(column), rule.max_length), f"longer than {rule.max_length}"


def invalid_reasons(batch: pa.Table, rules: list[ColumnRule], *, finite: Collection[str] = ()) -> pa.Array:
    """Per row, the first rule it breaks ("age: null", "plan_tier: not an allowed category"), else null.
    ``finite``: columns known to hold no NaN or infinity, whose search for them is left out.

    Nearly every nightly batch is clean, so the masks are first OR-ed as bit arrays; only a batch
    with a bad row pays for naming the reasons row by row.
    """
    n = batch.num_rows
    masks = [
        (rule, mask, what)
        for rule in rules
        for mask, what in _checks(batch.column(rule.name), rule, finite=rule.name in finite)
    ]
    bad = np.zeros(n, dtype=bool)
    for _, mask, _ in masks:
        if mask.null_count < n and pc.any(mask).as_py():
            bad |= pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    if not bad.any():
        return pa.nulls(n, pa.string())
    reasons = np.full(n, None, dtype=object)
    for rule, mask, what in masks:
        hit = pc.fill_null(mask, False).to_numpy(zero_copy_only=False) & (reasons == None)  # noqa: E711
        reasons[hit] = f"{rule.name}: {what}"
    return pa.array(reasons, pa.string())


def reason_counts(reasons: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """How many rows broke each rule, from a :data:`REASON` column (nulls, the valid rows, are not counted)."""
    counts = pc.value_counts(reasons.drop_null())
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))


@dataclass(frozen=True)
class RowValidator:
    """A Ray Data map_batches function: returns the valid rows, sets the others aside.

    Bad rows are written to ``quarantine_dir`` under a name derived from their content, so a
    retried task rewrites the same file instead of adding a duplicate. CPU actors call
    :meth:`split` themselves and write a slice's bad rows as one file (:mod:`jobs.part_writer`).
    """

    rules: list[ColumnRule]
    policy: Literal["fail", "quarantine"]
    key: str
    fs: object
    quarantine_dir: str
    # (column, type) where the partition's files disagree on a column's type (PartitionSchema.widened):
    # the set-aside rows hold it as the wider type, in every file of the quarantine alike
    widened: tuple[tuple[str, pa.DataType], ...] = ()

    def split(self, batch: pa.Table, *, left_to_scorer: Collection[str] = ()) -> tuple[pa.Table, pa.Table | None]:
        """The valid rows, and the others with their :data:`REASON` (None when every row is valid).

        ``left_to_scorer``: columns whose NaN and infinity are not searched for here, because the
        scorer will find them as it converts them and refuse the batch
        (``models.tabular.refusing_non_finite``), which the caller then splits again without this.

        Raises:
            InvalidInput: a row is invalid and the policy is ``fail``.
        """
        reasons = invalid_reasons(batch, self.rules, finite=left_to_scorer)
        if reasons.null_count == len(reasons):
            return batch, None
        bad = pc.is_valid(reasons)
        if self.policy == "fail":
            first = pc.index(bad, True).as_py()
            raise InvalidInput(
                f"{len(reasons) - reasons.null_count} invalid row(s) in a batch, e.g. {self.key}="
                f"{batch.column(self.key)[first].as_py()!r}: {reasons[first].as_py()} "
                "(validation.on_invalid_rows is 'fail'; set it to 'quarantine' to score the rest)"
            )
        rejected = widened(batch.filter(bad), self.widened)
        return batch.filter(pc.invert(bad)), rejected.append_column(REASON, reasons.filter(bad))

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid, rejected = self.split(batch)
        if rejected is not None:
            digest = hashlib.sha1(_digest(rejected)).hexdigest()[:20]
            FolderWriter(self.quarantine_dir, self.fs)(rejected, f"q-{digest}.parquet")
        return valid


def _digest(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def duplicate_keys(lake: Lake, files: list[DataFile], key: str) -> tuple[int, list]:
    """How many rows repeat an earlier key, and a few examples (reads only the key column).

    Dense integer ids (the usual entity key) are checked with a bitmap of their range, O(rows)
    and 1 byte per id: 50M ids in well under a second, where hashing them took 20 s on 2 cores.
    Other keys, and the examples when there are repeats, go through a hash count.
    """
    # the files' own key column: pyarrow would add the folders' names (region=eu/) as columns too
    paths = [f.path for f in files]
    keys = pq.ParquetDataset(paths, filesystem=lake.fs, partitioning=None).read(columns=[key]).column(key)
    if pa.types.is_integer(keys.type) and keys.null_count == 0 and len(keys):
        ids = np.concatenate([chunk.to_numpy() for chunk in keys.chunks]).astype(np.int64, copy=False)
        low, high = int(ids.min()), int(ids.max())
        if high - low < 2 * len(ids) + 2**20:
            seen = np.zeros(high - low + 1, dtype=bool)
            seen[ids - low] = True
            if int(np.count_nonzero(seen)) == len(ids):
                return 0, []
    counts = pc.value_counts(keys)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    extra = int(pc.sum(pc.subtract(repeated.field("counts"), 1)).as_py() or 0)
    return extra, repeated.field("values").to_pylist()[:5]
