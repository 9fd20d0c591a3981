"""What a run checks and loads before it writes anything: the partition's files and rows, its
key column's duplicates, the model version the job selects and its inputs, loaded to score.

The checks that need no row scored fail here, before the partition's lock, the MLflow run or a
Ray pipeline exist, with a sentence naming what to change; the rows themselves are validated as
the actors read them (:mod:`jobs.validation`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs import input_stats, tracking, validation
from jobs.config import JobConfig
from jobs.failures import JobError
from jobs.lake import DataFile, Lake
from jobs.pieces import Piece, split_files
from jobs.settings import Settings
from jobs.validation import InvalidInput
from models.predictor import ArrowScorer, arrow_scorer
from models.registry import ModelRef, RegistryError, load_pyfunc, model_files, resolve

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preflight:
    """What the job knows before it writes anything: inputs checked, model resolved and loaded."""

    files: list[DataFile]
    rows_in: int
    ref: ModelRef
    rules: list[validation.ColumnRule]
    duplicates: int
    scorer: ArrowScorer | None
    challenger: ModelRef | None = None  # canary or shadow scoring (the job's ab: section)
    challenger_scorer: ArrowScorer | None = None
    challenger_columns: tuple[str, ...] = ()  # its input columns, in its order
    columns: tuple[str, ...] = ()  # the champion's input columns, in its order
    input_nulls: dict[str, float] = field(default_factory=dict)  # each one's share of nulls
    # what the readers take: pieces of about output.rows_per_file rows (jobs.pieces)
    pieces: list[Piece] = field(default_factory=list)
    # the type of each column whose type the files disagree on, as the predictions write it
    widened: dict[str, pa.DataType] = field(default_factory=dict)
    done_unix: float = field(default_factory=time.time)


def model_selection(
    job: JobConfig, model_alias: str | None = None, model_version: int | None = None
) -> tuple[str | None, int | None]:
    """The run's ``(alias, version)``: the override where one is given (``lakecast run --alias``
    or ``--version``), else the job file's."""
    if model_version is None and model_alias is None:
        return job.model.alias, job.model.version
    return model_alias, model_version


def resolve_model(client: Any, job: JobConfig, model_alias: str | None, model_version: int | None) -> ModelRef:
    """The version a run scores with (see :func:`model_selection`). A fixed version wins, and its
    reference then names no alias: the job file's alias defaults to ``champion`` even beside one."""
    return resolve(client, job.model.name, alias=None if model_version else model_alias, version=model_version)


def _challenger(client: Any, job: JobConfig) -> ModelRef:
    """The version the canary or the shadow scores with: the job file's ``ab.challenger`` alias.

    Raises:
        RegistryError: the alias is gone (moved away after a promotion, say), with what to change.
    """
    try:
        return resolve(client, job.model.name, alias=job.ab.challenger)
    except RegistryError as e:
        uses = " and ".join(
            what
            for what, on in (
                (f"ab.challenger_share: {job.ab.challenger_share}", job.ab.challenger_share > 0),
                ("ab.shadow: true", job.ab.shadow),
            )
            if on
        )
        raise RegistryError(
            f"{e}; {job.file} scores with it ({uses}): set the alias in the registry, or set "
            "challenger_share: 0 and shadow: false to score with the champion alone"
        ) from None


def preflight(
    job: JobConfig,
    ds: dt.date,
    settings: Settings,
    lake: Lake,
    model_alias: str | None,
    model_version: int | None,
    *,
    inputs: tuple[list[DataFile], list[pq.FileMetaData]] | None = None,
    mlflow_run_id: str | None = None,
) -> Preflight:
    """The run's checks and its models, before anything is written (:class:`Preflight`).
    ``inputs``: the partition's files and footers (:meth:`jobs.lake.Lake.input_footers`), where
    the caller has read them already. ``mlflow_run_id``: the run the job is to log into."""
    # zero-byte and truncated files fail here, and a partition not whole yet
    files, footers = (
        inputs
        if inputs is not None
        else lake.input_footers(job.input.table, ds, ready_marker=job.input.ready_marker, layout=job.input.partition)
    )
    rows_in = sum(footer.num_rows for footer in footers)
    # the key column's read and check (numpy, mostly off the GIL) beside MLflow's import and lookups
    with ThreadPoolExecutor(1, thread_name_prefix="duplicates") as pool:
        keys_checked = pool.submit(validation.duplicate_keys, lake, files, job.input.key)
        client = tracking.configure(settings)
        if mlflow_run_id:
            tracking.check_run(client, mlflow_run_id, settings.mlflow.tracking_uri)
        ref = resolve_model(client, job, model_alias, model_version)
        inputs = model_inputs(job, ref)
        rules = validation.rules_from(inputs, job.validation, job.input.key, job_file=job.file, model=ref.uri)
        scored = {rule.name for rule in rules}  # what the champion's rules check: the challenger may read no more
        rules = validation.passthrough_rules(rules, job.output.passthrough)
        # a missing or mistyped key is named here first
        schema = validation.check_schema(lake, files, footers, rules, job.input.key)
        duplicates, examples = keys_checked.result()
    if duplicates:
        message = f"{duplicates} row(s) repeat a {job.input.key} already seen (e.g. {examples})"
        if job.validation.duplicate_keys == "fail":
            raise InvalidInput(f"{lake.partition_uri(job.input.table, ds, job.input.partition)}: {message}")
        log.warning("%s; each row is scored (validation.duplicate_keys: keep)", message)
    scorer = arrow_scorer(load_pyfunc(ref.uri))
    challenger = challenger_scorer = None
    challenger_columns: tuple[str, ...] = ()
    if job.ab is not None and (job.ab.challenger_share > 0 or job.ab.shadow):
        challenger = _challenger(client, job)
        if challenger.version == ref.version:
            # after a promotion, until the next version is registered under the alias
            log.warning(
                "%s: the alias %r names %s, the version this run scores with: every row is scored once by it, "
                "with no canary and no shadow, until another version is registered under %r",
                job.file,
                job.ab.challenger,
                ref.uri,
                job.ab.challenger,
            )
            challenger = None
    if challenger is not None:
        challenger_scorer = arrow_scorer(load_pyfunc(challenger.uri))
        challenger_columns = tuple(name for name, _, _ in model_inputs(job, challenger, takes_every_listed=False))
        unread = [c for c in challenger_columns if c not in scored]
        if unread:
            raise JobError(
                f"the challenger {challenger.uri} takes {unread}, which the champion {ref.uri} does not take: "
                "canary and shadow scoring read the champion's inputs only"
            )
    log.info("scoring %s %s: %d rows in %d files with %s", job.name, ds, rows_in, len(files), ref.uri)
    columns = tuple(name for name, _, _ in inputs)
    named = [schema.from_folders.get(f.path, {}) for f in files]  # each file's columns from its folders
    return Preflight(
        files,
        rows_in,
        ref,
        rules,
        duplicates,
        scorer,
        challenger,
        challenger_scorer,
        challenger_columns,
        columns=columns,
        input_nulls=input_stats.null_shares(footers, list(columns), named),
        pieces=split_files(files, footers, job.output.rows_per_file, schema.from_folders),
        widened=schema.widened,
    )


def model_inputs(job: JobConfig, ref: ModelRef, *, takes_every_listed: bool = True) -> list[tuple[str, str, bool]]:
    """(column, MLflow type, required) for each input: the signature's, limited to the job's
    columns. The key is one where the signature names it (a signature inferred from a frame that
    held the id): MLflow refuses to call such a model without it.

    ``takes_every_listed``: each of ``input.columns`` must be an input of ``ref``. Not so for the
    A/B challenger, which may take fewer columns than the champion the list was written for
    (the caller checks that some version takes each: :func:`check_listed_columns_taken`)."""
    from mlflow.models import get_model_info

    with model_files(ref.uri):
        signature = get_model_info(ref.uri).signature
    if job.classes and signature is not None and signature.outputs is not None:
        _check_class_columns(job, ref, signature.outputs)
    if job.model.dimensions and signature is not None and signature.outputs is not None:
        _check_dimensions(job, ref, signature.outputs)
    if signature is None or signature.inputs is None:
        if not job.input.columns:
            raise JobError(f"{ref.uri} has no signature: list input.columns in {job.file}")
        return [(c, "any", False) for c in job.input.columns]
    if signature.inputs.is_tensor_spec():
        return _tensor_inputs(job, ref, signature.inputs.inputs)
    specs = [(c.name, getattr(c.type, "name", str(c.type)), c.required) for c in signature.inputs.inputs]
    if job.input.columns:
        _check_listed_columns(job, ref, specs, takes_every_listed)
        specs = [s for s in specs if s[0] in job.input.columns or s[0] == job.input.key]
    return specs


def _check_class_columns(job: JobConfig, ref: ModelRef, outputs: Any) -> None:
    """A multiclass model whose signature says what it returns returns a column per class of
    ``model.classes``, and where it names them, in that order: else every row would be scored
    and then refused at the first batch, or worse, each probability put under another class's name.

    Raises:
        JobError: naming the model, what its signature says and the job file's classes.
    """
    classes = list(job.classes)
    width, said = _declared_width(outputs)
    if width is None or (width == len(classes) and outputs.is_tensor_spec()):
        return
    if width == len(classes):
        names = [str(n) for n in outputs.input_names()]
        if names == classes or sorted(names) != sorted(classes):
            return
        raise JobError(
            f"{ref.uri} returns its classes in the order {', '.join(names)}, by its signature, where "
            f"model.classes in {job.file} lists [{', '.join(classes)}]: each probability would be written under "
            "another class's name; list the classes in the model's order"
        )
    raise JobError(
        f"{ref.uri} returns {said}, by its signature, where model.classes in {job.file} names {len(classes)} "
        f"classes [{', '.join(classes)}]: a multiclass model returns a probability per class, in the order of "
        "model.classes"
    )


def _check_dimensions(job: JobConfig, ref: ModelRef, outputs: Any) -> None:
    """An embedding model whose signature says how wide its output is returns ``model.dimensions``
    numbers a row: else every row would be scored and then refused at the first batch.

    Raises:
        JobError: naming the model, what its signature says and the job file's dimensions.
    """
    width, said = _declared_width(outputs)
    if width in (None, job.model.dimensions):
        return
    raise JobError(
        f"{ref.uri} returns {said}, by its signature, where model.dimensions in {job.file} is "
        f"{job.model.dimensions}: an embedding model returns that many numbers a row"
    )


def _declared_width(outputs: Any) -> tuple[int | None, str]:
    """How many numbers a row a model's output signature says it returns, and the signature's
    words for it (``a tensor of shape (-1, 3)``, ``2 columns (basic, plus)``); None where it does
    not say (several tensors, or one of any width)."""
    if outputs.is_tensor_spec():
        shapes = [tuple(t.shape) for t in outputs.inputs]
        if len(shapes) != 1 or len(shapes[0]) != 2 or shapes[0][1] == -1:
            return None, ""
        return shapes[0][1], f"a tensor of shape {shapes[0]}"
    names = outputs.input_names()
    return len(names), f"{len(names)} columns ({', '.join(map(str, names))})"


def _check_listed_columns(
    job: JobConfig, ref: ModelRef, specs: list[tuple[str, str, bool]], takes_every_listed: bool
) -> None:
    """``input.columns`` may leave out a signature's optional inputs, never a required one: the
    model would fail on its first batch, inside an actor, after Ray and the actors had started."""
    where = f"input.columns in {job.file}"
    known = [name for name, _, _ in specs]
    unknown = [c for c in job.input.columns if c not in known and c != job.input.key]  # the key is read anyway
    if unknown and takes_every_listed:
        raise JobError(f"{where} lists {unknown}, which are not inputs of {ref.uri} (its inputs: {known})")
    listed = {*job.input.columns, job.input.key}
    left_out = [name for name, _, required in specs if required and name not in listed]
    if left_out:
        raise JobError(
            f"{where} leaves out {left_out}, which {ref.uri} requires: list them too, or remove "
            "input.columns to read every input the model's signature names"
        )


def _tensor_inputs(job: JobConfig, ref: ModelRef, tensors: list) -> list[tuple[str, str, bool]]:
    """A model that takes one tensor (``mlflow.pytorch``'s default ``pt2`` format) names no
    columns: the job file lists them, in the tensor's order, and each must be a number with no
    nulls."""
    if len(tensors) != 1:
        raise JobError(
            f"{ref.uri} takes {len(tensors)} tensors; lakecast gives a model one matrix of its input columns"
        )
    if not job.input.columns:
        raise JobError(
            f"{ref.uri} takes a tensor, which names no columns: list its input columns, in the tensor's order, "
            f"as input.columns in {job.file}"
        )
    shape = tensors[0].shape
    width = shape[-1] if len(shape) == 2 else None
    if width is None or (width != -1 and width != len(job.input.columns)):
        raise JobError(
            f"{ref.uri} takes a tensor of shape {shape}, and input.columns in {job.file} lists "
            f"{len(job.input.columns)} columns; it needs one column per feature (shape (-1, columns))"
        )
    return [(c, "double", True) for c in job.input.columns]


def check_listed_columns_taken(job: JobConfig, refs: list[ModelRef], inputs: list[list[tuple[str, str, bool]]]) -> None:
    """Each column the job file names, in ``input.columns`` or ``validation.columns``, is an input of
    at least one of the versions ``refs`` (their :func:`model_inputs`, in the same order, read with
    ``takes_every_listed=False``): the A/B comparison gives each version its own."""
    taken = {name for columns in inputs for name, _, _ in columns}
    versions = " nor ".join(ref.uri for ref in refs)
    unknown = [c for c in job.input.columns or () if c not in taken and c != job.input.key]
    if unknown:
        raise JobError(f"input.columns in {job.file} lists {unknown}, which neither {versions} takes as input")
    ruled = sorted(set(job.validation.columns) - taken - {job.input.key})
    if ruled:
        raise InvalidInput(
            f"validation.columns in {job.file} names {ruled}, which neither {versions} takes as input "
            f"(their inputs: {sorted(taken)})"
        )
