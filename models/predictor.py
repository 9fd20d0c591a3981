"""The predictor that runs inside each Ray Data actor.

Load once, predict per call: ``__init__`` fetches the model version from the registry and puts
it on the actor's device; ``__call__`` scores one Arrow batch and adds the lineage columns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from models.output_columns import LINEAGE_COLUMNS, PREDICTION
from models.registry import ModelLoadError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ENCODED_LINEAGE = ("model_name", "variant", "scoring_run_id")  # one string per run: see constant_strings

# The challenger's shadow columns beside a batch's own, on their way to a write task (with_shadow)
SHADOW_PREFIX = "shadow:"

# Events an actor records for the job's start-up figures (file names: EVENT--pid-random), and
# the labels of the node it scores on (the job tells which of its label selectors placed it)
ACTOR_READY, FIRST_BATCH, ACTOR_NODE = "actor-ready", "first-batch", "actor-node"
TELEMETRY_SEPARATOR = "--"


# a probability needs no more than float32's seven digits; a regression's value (a spend in cents,
# past 16.7M of them) does, and is kept as the model gives it
SCORE_TYPES = {
    "classification": np.float32,
    "multiclass": np.float32,
    "regression": np.float64,
    "embedding": np.float32,
}


class ModelOutputError(ValueError):
    """A model's predictions are not one number per row; nothing was committed."""


class ModelInputError(ValueError):
    """A column's values do not fit the type the model's signature declares; nothing was committed."""


class ModelFailed(RuntimeError):
    """The model's own code raised while scoring a batch; nothing was committed.

    ``fix_first`` (read by :func:`jobs.failures.retry_cannot_fix`): a model that reaches out
    (a feature store, a file) and fails to may pass on a retry; any other error it raises, a
    bug or rows it cannot take, fails each try the same way."""

    def __init__(self, message: str, fix_first: bool = True) -> None:
        super().__init__(message)
        self.fix_first = fix_first


def model_failed(model_uri: str, e: Exception, rows: int) -> ModelFailed:
    """The sentence for a model that raised, with the model's own frames of its traceback: the
    user debugs their code from them, where Ray's report buries them under its own and MLflow's."""
    import traceback

    skipped = (__file__, _package_dir("mlflow"))  # this file's frames and MLflow's wrappers
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skipped)]
    if len(frames) > 8:  # the model's own entry, and where it raised in what it called
        frames = [frames[0], *frames[-7:]]
    where = "".join(traceback.format_list(frames)).rstrip() if frames else ""
    error = " ".join(str(e).split()) or "(no message)"
    message = f"{model_uri} raised {type(e).__name__} scoring a batch of {rows} rows: {error}"
    if where:
        message += f"\nthe model's traceback, its last frames:\n{where}"
    return ModelFailed(message, fix_first=not isinstance(e, OSError))


def _package_dir(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec is not None and spec.origin else "\0"


@runtime_checkable
class ArrowScorer(Protocol):
    """A model that scores raw Arrow batches directly (the fast path, no pandas)."""

    threshold: float

    def predict_proba(self, table: pa.Table) -> np.ndarray: ...

    def to(self, device: str, *, dtype: str | None = None) -> ArrowScorer: ...


@dataclass(frozen=True)
class Lineage:
    """Stamped on every output row: which version scored it, in which run, when."""

    model_name: str
    model_version: int
    scoring_run_id: str
    scored_at: dt.datetime
    variant: str = "champion"


@dataclass(frozen=True)
class PredictorOptions:
    model_uri: str
    tracking_uri: str
    registry_uri: str | None
    key: str
    score_column: str
    threshold: float | None
    lineage: Lineage
    # regression: the score is the predicted value, with no prediction column (model.task);
    # multiclass: the prediction is the most probable of ``classes``, the score its probability;
    # embedding: the score is a vector of ``dimensions`` float32 values, with no prediction column
    task: Literal["classification", "multiclass", "regression", "embedding"] = "classification"
    classes: tuple[str, ...] = ()
    dimensions: int = 0
    num_threads: int = 1
    dtype: str | None = None  # on a GPU: bfloat16 or float16 (the job file's compute.dtype)
    telemetry_dir: str | None = None
    filesystem: object | None = None
    # the model's input columns, in the order it takes them (a tensor's); empty: all but the key
    # and the passthrough
    input_columns: tuple[str, ...] = ()
    # input columns copied into the predictions beside the key (output.passthrough)
    passthrough: tuple[str, ...] = ()
    # a multiclass model's column of each class's probability, in ``classes``' order (output.class_scores)
    class_columns: tuple[str, ...] = ()
    # (column, type) for the key and passthrough columns whose type the partition's files disagree
    # on (int32 in one, int64 in the next): written as the type they widen to, every file alike
    widened: tuple[tuple[str, pa.DataType], ...] = ()


def arrow_scorer(pyfunc: object) -> ArrowScorer | None:
    """The fast-path scorer inside a loaded pyfunc model, if it is a python model that offers one.

    A flavor's model (``mlflow.pytorch``, ``mlflow.sklearn``) has no python model to unwrap: it
    is scored through its pyfunc, as :func:`pyfunc_input` shapes the batch."""
    from mlflow.exceptions import MlflowException

    try:
        inner = pyfunc.unwrap_python_model()
    except (AttributeError, MlflowException):
        return None
    scorer = inner.arrow_scorer() if hasattr(inner, "arrow_scorer") else None
    return scorer if isinstance(scorer, ArrowScorer) else None


def tensor_input(pyfunc: object) -> np.dtype | None:
    """The element type of the one tensor a pyfunc model takes (``mlflow.pytorch``'s default
    ``pt2`` format logs such a signature), or None when it takes named columns or has no
    signature."""
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or not schema.is_tensor_spec():
        return None
    return schema.numpy_types()[0]


def column_types(pyfunc: object) -> dict[str, np.dtype]:
    """The numeric type of each input column a pyfunc model's signature names. MLflow's schema
    check refuses a column of another numeric type, even one that converts without loss (an
    int64 for a double, a float64 for the float32 a PyTorch model was logged with)."""
    schema = pyfunc.metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec():
        return {}
    types = zip(schema.input_names(), schema.numpy_types(), strict=True)
    return {name: np.dtype(t) for name, t in types if np.dtype(t).kind in "iuf"}


def pyfunc_input(
    batch: pa.Table, columns: Sequence[str], tensor: np.dtype | None, types: Mapping[str, np.dtype] | None = None
) -> pd.DataFrame | np.ndarray:
    """``batch`` as a pyfunc model without the Arrow fast path takes it: only its input columns
    (the key only where the signature names it: MLflow warns of an extra input on every batch),
    as a DataFrame, or, for a model that takes one tensor, as one matrix of the tensor's type, a
    column per input column in ``columns``' order.

    The job reads string columns dictionary-encoded, which pandas would turn into categoricals
    and MLflow's schema check refuses for a string input: they are decoded first. Numbers are
    cast to the signature's ``types``, with Arrow's checks: a float to an integer only where it
    is whole, an int64 to an int32 only where it fits.

    Raises:
        ModelInputError: naming the column, the type and the value that does not fit.
    """
    table = batch.select(list(columns))
    if tensor is not None:
        matrix = np.empty((table.num_rows, table.num_columns), dtype=tensor)
        for j, column in enumerate(table.columns):
            matrix[:, j] = column.to_numpy()
        return matrix
    decoded = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        want = (types or {}).get(name)
        if want is not None and column.type != (arrow_type := pa.from_numpy_dtype(want)):
            try:
                column = column.cast(arrow_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ModelInputError(f"column {name!r} does not fit the model's {want} input: {e}") from None
        decoded.append(column)
    return pa.table(decoded, names=table.column_names).to_pandas()


def one_score_per_row(predictions: object, rows: int, model_uri: str, *, classifies: bool = True) -> np.ndarray:
    """A pyfunc model's predictions as one score per row: a vector, or a single column
    (a DataFrame's, or an ``(n, 1)`` array, what a PyTorch model with one output unit gives), or,
    where it ``classifies``, a binary classifier's two class probabilities, of which the score is
    the second (scikit-learn logged with ``pyfunc_predict_fn="predict_proba"``, a network with a
    two-way softmax). A regression's two columns are two predicted values, not a choice to make.
    The scores are float32 for a probability, float64 for a regression's value
    (:data:`SCORE_TYPES`).

    Raises:
        ModelOutputError: naming the model and the shape or type it returned.
    """
    values = _as_array(predictions)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    elif classifies and values.ndim == 2 and values.shape[1] == 2 and _class_probabilities(values):
        values = values[:, 1]
    if values.shape != (rows,):
        needs = (
            "one number per row (a single output column, such as the positive class's probability), or a binary "
            "classifier's two class probabilities (each row summing to 1); a model that returns a probability for "
            "each of more classes is a multiclass model: set model.task: multiclass and name them in model.classes"
            if classifies
            else "one number per row, the predicted value (model.task is 'regression')"
        )
        raise ModelOutputError(
            f"{model_uri} returned predictions of shape {values.shape} for {rows} rows; lakecast needs {needs}"
        )
    try:
        scores = values.astype(SCORE_TYPES["classification" if classifies else "regression"])
    except (TypeError, ValueError):
        raise ModelOutputError(
            f"{model_uri} returned {values.dtype} predictions; lakecast needs a number per row"
        ) from None
    return _finite(scores, rows, model_uri, "predictions")


def _as_array(predictions: object) -> np.ndarray:
    """A pyfunc model's predictions (a DataFrame, a Series, an array, a list) as a NumPy array."""
    return np.asarray(predictions.to_numpy() if hasattr(predictions, "to_numpy") else predictions)


def _finite(values: np.ndarray, rows: int, model_uri: str, what: str) -> np.ndarray:
    """``values``, a number or a row of numbers per input row, where all are finite.

    Raises:
        ModelOutputError: naming the model, how many rows it returned NaN or infinity for, and
            the first (``what`` it returned: predictions, probabilities, vectors).
    """
    finite = np.isfinite(values)
    if finite.all():
        return values
    broken = ~finite.reshape(rows, -1).all(axis=1)
    raise ModelOutputError(
        f"{model_uri} returned NaN or infinite {what} for {int(broken.sum())} of {rows} rows (the first at row "
        f"{int(np.argmax(broken))} of the batch), from inputs that passed validation; nothing is published"
    )


def _class_probabilities(values: np.ndarray) -> bool:
    """Each row is a probability distribution over the classes."""
    if values.dtype.kind not in "fiu":
        return False
    return bool(np.all((values >= 0) & (values <= 1)) and np.allclose(values.sum(axis=1), 1.0, atol=1e-3))


def class_probabilities(predictions: object, rows: int, model_uri: str, classes: Sequence[str]) -> np.ndarray:
    """A multiclass model's predictions as a float32 matrix of a row per input row and a column
    per class, in ``classes``' order (scikit-learn's ``predict_proba``, a network's softmax).

    Raises:
        ModelOutputError: naming the model and what it returned where a row is not a probability
            per class (a network's logits: its last layer needs a softmax).
    """
    values = _as_array(predictions)
    k = len(classes)
    if values.shape != (rows, k):
        raise ModelOutputError(
            f"{model_uri} returned predictions of shape {values.shape} for {rows} rows; a multiclass model "
            f"(model.task) returns a probability per class, {k} columns for model.classes "
            f"[{', '.join(classes)}]"
        )
    if values.dtype.kind not in "fiu":
        raise ModelOutputError(
            f"{model_uri} returned {values.dtype} predictions; lakecast needs a probability per class"
        )
    proba = _finite(values.astype(np.float32, copy=False), rows, model_uri, "probabilities")
    if not _class_probabilities(proba):
        sums = proba.sum(axis=1, dtype=np.float64)
        row = int(np.argmax((np.abs(sums - 1) > 1e-3) | (proba < 0).any(axis=1) | (proba > 1).any(axis=1)))
        raise ModelOutputError(
            f"{model_uri} returned rows that are not a probability per class (row {row} of the batch: "
            f"{', '.join(f'{v:.4g}' for v in proba[row])}, summing to {sums[row]:.4g}); a multiclass model returns "
            "each row's class probabilities, summing to 1: a network that returns logits needs a softmax last"
        )
    return proba


def embedding_vectors(predictions: object, rows: int, model_uri: str, dimensions: int) -> np.ndarray:
    """An embedding model's predictions as a float32 matrix of a row per input row and
    ``dimensions`` columns: a network's output, a DataFrame of a column per component, or one
    column (a Series, a list) holding each row's vector, as many pyfunc models return them.

    Raises:
        ModelOutputError: naming the model and what it returned where that is not ``dimensions``
            finite numbers a row.
    """
    values = _as_array(predictions)
    if values.dtype == object and values.size == rows and (values.ndim == 1 or values.shape[1:] == (1,)):
        # a vector in each row's one cell; vectors of several lengths, or not numbers, are named below
        with contextlib.suppress(TypeError, ValueError):
            values = np.stack([np.asarray(v, dtype=np.float64) for v in values.reshape(-1)])
    if values.shape != (rows, dimensions):
        raise ModelOutputError(
            f"{model_uri} returned predictions of shape {values.shape} for {rows} rows; an embedding model "
            f"(model.task) returns a vector of model.dimensions ({dimensions}) numbers a row"
        )
    if values.dtype.kind not in "fiu":
        raise ModelOutputError(f"{model_uri} returned {values.dtype} predictions; lakecast needs numbers")
    return _finite(values.astype(np.float32, copy=False), rows, model_uri, "vectors")


def _on_this_worker() -> str:
    """Where an actor runs, for a model its driver loaded and it cannot: on a cluster, a node
    whose image lacks what the driver's environment has."""
    import ray

    if not ray.is_initialized():  # built in the caller's process (a test, a notebook)
        return "in this Python environment"
    node = ray.util.get_node_ip_address()
    return f"on the Ray worker at {node}, whose Python environment is not that of the job's driver, which loaded it"


class BatchPredictor:
    """Ray Data callable class: ``map_batches(BatchPredictor, fn_constructor_kwargs=...)``.

    Given ``scorer`` (loaded once on the driver, shipped through the object store), an actor
    starts without MLflow and without reaching the registry. Without it, the actor loads the
    pyfunc model from ``options.model_uri`` and scores through pandas.
    """

    def __init__(self, options: PredictorOptions, scorer: ArrowScorer | None = None) -> None:
        import torch

        self.options = options
        # one intra-op pool per actor, sized to the CPUs Ray gave it: no oversubscription
        torch.set_num_threads(max(1, options.num_threads))
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs; an actor given none sees no CUDA.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # a lower precision is for the GPU (models/precision.py); the CPU scores in float32
        dtype = options.dtype if self.device == "cuda" and options.dtype != "float32" else None
        self.pyfunc, self.tensor, self.types = None, None, {}
        # raised by the first batch: raised here, Ray would hand the driver an ActorDiedError
        # whose text alone holds it, and the user a traceback in place of the sentence
        self.unloadable: ModelLoadError | None = None
        if scorer is None:
            import mlflow

            from models.registry import load_pyfunc

            mlflow.set_tracking_uri(options.tracking_uri)
            if options.registry_uri:
                mlflow.set_registry_uri(options.registry_uri)
            try:
                # the driver loaded it before the run began: a failure here is the worker's environment
                self.pyfunc = load_pyfunc(options.model_uri, where=_on_this_worker())
            except ModelLoadError as e:
                self.unloadable = e
        if self.pyfunc is not None:
            # pandas 3 hands a DataFrame's numbers out as read-only views (copy-on-write), and
            # MLflow's pytorch flavor makes its input tensor of them with torch.from_numpy: torch
            # then warns, once in every actor, that writing to that tensor is undefined. The
            # wrapper only reads it, under no_grad.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", module="mlflow.pytorch")
            scorer = arrow_scorer(self.pyfunc)
            self.tensor = tensor_input(self.pyfunc)
            self.types = column_types(self.pyfunc)
            if dtype and scorer is None:
                from models.precision import autocast_pyfunc

                if not autocast_pyfunc(self.pyfunc, self.device, dtype):
                    log.warning(
                        "%s is not an mlflow.pytorch network, so compute.dtype %s does not apply to it: "
                        "it scores in its own precision",
                        options.model_uri,
                        dtype,
                    )
        self.model = scorer.to(self.device, dtype=dtype) if scorer is not None else None
        default = self.model.threshold if self.model is not None else 0.5
        # None: a regression's score is its prediction, with nothing to cut at
        self.threshold: float | None = None
        if options.task == "classification":
            self.threshold = options.threshold if options.threshold is not None else default
        self.reported_first_batch = False
        self.ready_at = time.time()  # recorded with the first batch: see _record
        log.info("actor pid %d scores %s on %s", os.getpid(), options.model_uri, self.device)

    def _record(self, event: str, at: float) -> None:
        """Note that this actor reached ``event`` at ``at``, in a file beside the run's staging
        folder (the job reads the earliest of each): the job's startup is the time to the first
        batch, its steady-state throughput is measured from there to the commit, and
        ``actor-ready`` splits the startup into the wait for the actor and its first batch.

        Both are written at the first batch, inside a task the job waits for. Written at the end
        of the constructor, the ready file of an actor that got no batch could land after the job
        had committed and cleaned up its staging, and stay there (seen on S3)."""
        self._note(event, repr(at))

    def _record_node(self) -> None:
        """Note the labels of the node this actor runs on, once, at its first batch (as
        :meth:`_record`): which of the job file's label selectors placed it, the job tells."""
        import ray

        if ray.is_initialized():
            self._note(ACTOR_NODE, json.dumps(ray.get_runtime_context().get_node_labels()))

    def _note(self, event: str, text: str) -> None:
        if self.options.telemetry_dir is None or self.options.filesystem is None:
            return
        try:
            name = f"{event}{TELEMETRY_SEPARATOR}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            with self.options.filesystem.open_output_stream(f"{self.options.telemetry_dir}/{name}") as f:
                f.write(text.encode())
        except Exception as e:  # telemetry must never fail a scoring run
            log.warning("could not record %s: %s", event, e)

    @property
    def refuses_non_finite(self) -> frozenset[str]:
        """The input columns whose NaN and infinity this predictor's scorer raises on inside
        ``models.tabular.refusing_non_finite()`` (the built-in model's numbers); none for others,
        which score whatever the checks let through."""
        return getattr(self.model, "refuses_non_finite", frozenset())

    def score(self, batch: pa.Table) -> np.ndarray:
        """The batch's scores: a vector, or a matrix of a row per input row (a multiclass model's
        column per class, an embedding's component)."""
        options = self.options
        if self.unloadable is not None:
            raise self.unloadable
        if self.model is not None:
            scores = self.model.predict_proba(batch)
            if options.task == "multiclass":
                return class_probabilities(scores, batch.num_rows, options.model_uri, options.classes)
            if options.task == "embedding":
                return embedding_vectors(scores, batch.num_rows, options.model_uri, options.dimensions)
            return scores
        assert self.pyfunc is not None
        columns = options.input_columns or [
            c for c in batch.column_names if c != options.key and c not in options.passthrough
        ]
        try:
            model_input = pyfunc_input(batch, columns, self.tensor, self.types)
        except ModelInputError as e:
            raise ModelInputError(f"{options.model_uri}: {e}") from None
        try:
            predictions = self.pyfunc.predict(model_input)
        except Exception as e:
            raise model_failed(options.model_uri, e, batch.num_rows) from None
        if options.task == "multiclass":
            return class_probabilities(predictions, batch.num_rows, options.model_uri, options.classes)
        if options.task == "embedding":
            return embedding_vectors(predictions, batch.num_rows, options.model_uri, options.dimensions)
        return one_score_per_row(
            predictions, batch.num_rows, options.model_uri, classifies=options.task == "classification"
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        proba = self.score(batch).astype(SCORE_TYPES[self.options.task], copy=False)
        if not self.reported_first_batch:
            self.reported_first_batch = True
            self._record(ACTOR_READY, self.ready_at)
            self._record(FIRST_BATCH, time.time())
            self._record_node()
        options = self.options
        batch = widened(batch, options.widened)
        return prediction_table(
            batch.column(options.key),
            proba,
            key=options.key,
            score_column=options.score_column,
            threshold=self.threshold,
            lineage=options.lineage,
            passthrough={c: batch.column(c) for c in options.passthrough},
            classes=options.classes,
            class_columns=options.class_columns,
        )


def widened(table: pa.Table, types: Sequence[tuple[str, pa.DataType]]) -> pa.Table:
    """``table`` with each ``(column, type)`` of ``types`` cast to that type: the one that the
    partition's files' types for it widen to (int32 in one, int64 in the next), so that every
    file written from it gives the column one type."""
    for name, type_ in types:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table.column(i).cast(type_))
    return table


def prediction_columns(
    key: str,
    score_column: str,
    *,
    predicts: bool = True,
    passthrough: Sequence[str] = (),
    class_columns: Sequence[str] = (),
) -> list[str]:
    """The columns :func:`prediction_table` builds, in order (a regression's without ``prediction``)."""
    return [key, *passthrough, score_column, *([PREDICTION] if predicts else []), *class_columns, *LINEAGE_COLUMNS]


def prediction_table(
    keys: pa.Array | pa.ChunkedArray,
    proba: np.ndarray,
    *,
    key: str,
    score_column: str,
    threshold: float | None,
    lineage: Lineage,
    passthrough: Mapping[str, pa.Array | pa.ChunkedArray] | None = None,
    classes: Sequence[str] = (),
    class_columns: Sequence[str] = (),
) -> pa.Table:
    """The rows a job writes: the key, the ``passthrough`` columns (the input's own, copied as
    they are), the score, the prediction (``score >= threshold``; none where ``threshold`` is
    None, a regression's) and the lineage columns.

    A multiclass model's ``proba`` is a matrix, a column per class of ``classes``: the
    prediction is the most probable class's name (dictionary-encoded, an index a row, as the
    lineage's strings), the score its probability; with ``class_columns``, each class's
    probability follows in a column of its own. An embedding model's is a matrix too, with no
    ``classes``: each row's vector is the score, a fixed-size list over the matrix's buffer, with
    no prediction.

    Every column of lakecast's is declared non-nullable (Parquet's ``required``): none can hold a
    null (the key is checked before a row is scored), and the writer then stores no definition
    level per value and column: 53 → 36 ms per 1M rows written, a third of the write. So are an
    embedding's values (:func:`vector_type`). The passthrough columns stay nullable, as the input's.
    """
    carried = dict(passthrough or {})
    if proba.ndim == 2 and not classes:
        score = pa.FixedSizeListArray.from_arrays(pa.array(proba.reshape(-1)), type=vector_type(proba.shape[1]))
        predicted = {}
    elif proba.ndim == 2:
        best = proba.argmax(axis=1).astype(np.int32)
        score = pa.array(proba[np.arange(len(best)), best])
        predicted = {PREDICTION: pa.DictionaryArray.from_arrays(pa.array(best), _names(tuple(classes)))}
        predicted |= {name: pa.array(proba[:, j]) for j, name in enumerate(class_columns)}
    else:
        score = pa.array(proba)
        cut = threshold is not None
        predicted = {PREDICTION: pa.array((proba >= threshold).astype(np.int8))} if cut else {}
    columns = {key: keys, **carried, score_column: score, **predicted, **_lineage_columns(lineage, len(keys))}
    schema = _schema(tuple(columns), tuple(c.type for c in columns.values()), tuple(carried))
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


@functools.lru_cache(maxsize=4)
def vector_type(dimensions: int) -> pa.DataType:
    """An embedding's column: ``dimensions`` float32 values a row, none of them null (Parquet's
    ``required float element``). Where the values were nullable, a list's default, the file held a
    definition level for each value and a reader rebuilt a validity bit for each: pyarrow reads
    100,000 vectors of 768 in 0.35 s against 0.48 s. Days written before 2026-12-07, with nullable
    values, read together with the later ones as one table (pyarrow's datasets, pandas)."""
    return pa.list_(pa.field("element", pa.float32(), nullable=False), dimensions)


@functools.lru_cache(maxsize=4)
def _names(classes: tuple[str, ...]) -> pa.Array:
    return pa.array(classes, pa.string())


@functools.lru_cache(maxsize=16)
def _schema(names: tuple[str, ...], types: tuple[pa.DataType, ...], nullable: tuple[str, ...]) -> pa.Schema:
    return pa.schema(
        [pa.field(name, type_, nullable=name in nullable) for name, type_ in zip(names, types, strict=True)]
    )


@functools.lru_cache(maxsize=4)
def _lineage_columns(lineage: Lineage, n: int) -> dict[str, pa.Array]:
    """The lineage columns of ``n`` rows. They are the same for every batch of a run, and Arrow
    arrays are immutable, so each batch size's are built once and shared (they took 11 ns a row,
    10% of the scoring step)."""
    return {
        "model_name": constant_strings(lineage.model_name, n),
        "model_version": pa.repeat(pa.scalar(lineage.model_version, pa.int32()), n),
        "variant": constant_strings(lineage.variant, n),
        "scoring_run_id": constant_strings(lineage.scoring_run_id, n),
        "scored_at": pa.repeat(pa.scalar(lineage.scored_at, pa.timestamp("us", tz="UTC")), n),
    }


def parquet_options(columns: pa.Schema | pa.Table, *, key: str | None = None) -> dict[str, Any]:
    """How to write a table of predictions to Parquet:
    ``pq.write_table(t, path, **parquet_options(t, key=...))``.

    Dictionary pages only for the lineage strings, which :func:`prediction_table` builds
    dictionary-encoded already, and a multiclass model's class names; by default Parquet also
    tries a dictionary for the key and the scores, hashing a million distinct values per file
    before it gives up. Statistics (min and max per row group) for the other columns only: a
    lineage string holds one value per run, and its statistics cost as much as the rest of the
    file's. Together 93 → 53 ms per 1M rows.

    A binary ``prediction`` (0 or 1) is stored as deltas (``DELTA_BINARY_PACKED``, a bit or two a
    row), and so is an integer key, given a table and its ``key``, where its values span less
    than :data:`DELTA_KEY_SPAN` (:func:`_deltas_pay`).
    """
    schema = columns if isinstance(columns, pa.Schema) else columns.schema
    names = schema.names
    encoded = [c for c in ENCODED_LINEAGE if c in names]
    deltas = []
    if PREDICTION in names:
        kind = schema.field(PREDICTION).type
        if pa.types.is_dictionary(kind):
            encoded.append(PREDICTION)
        elif pa.types.is_integer(kind):
            deltas.append(PREDICTION)
    if key is not None and isinstance(columns, pa.Table) and _deltas_pay(columns.column(key)):
        deltas.append(key)
    return {
        "use_dictionary": encoded,
        "write_statistics": [c for c in names if c not in encoded],
        "column_encoding": dict.fromkeys(deltas, "DELTA_BINARY_PACKED"),
    }


# An integer key is stored as deltas where its values span less than this. Below, deltas were
# both faster to write and smaller than plain values compressed with snappy, ids sorted or not
# (1M rows, one thread: ids 0..n in order 12.7 → 4.6 ns a row and 4.0 → 0.01 bytes; drawn from
# 2^32, 17.4 → 13.9 ns, 6.4 → 4.2 bytes); from 2^48 on, snappy gives up on the plain values at
# once (6.5 ns) and deltas cost 16-19 ns, for hardly fewer bytes.
DELTA_KEY_SPAN = 1 << 40


def _deltas_pay(column: pa.ChunkedArray) -> bool:
    """Whether ``column``'s values are integers spanning less than :data:`DELTA_KEY_SPAN`."""
    import pyarrow.compute as pc

    if not pa.types.is_integer(column.type) or len(column) == column.null_count:
        return False
    span = pc.min_max(column)
    return span["max"].as_py() - span["min"].as_py() < DELTA_KEY_SPAN


def in_batches(score: Callable[[pa.Table], pa.Table], table: pa.Table, batch_size: int | None) -> pa.Table:
    """``score`` over ``table`` in batches of at most ``batch_size`` rows (all at once when None),
    the results joined in order: how an actor given a whole block scores it."""
    step = batch_size or table.num_rows
    if table.num_rows <= step:
        return score(table)
    return pa.concat_tables(score(table.slice(i, step)) for i in range(0, table.num_rows, step))


def constant_strings(value: str, n: int) -> pa.DictionaryArray:
    """A string column that holds one value, dictionary-encoded: four bytes of index per row
    where a plain column copies the value into every row (a run id is 32 bytes). Lineage columns
    are all like this; plain, they were 60% of the bytes each batch moved through Ray's object
    store, and the Parquet writer hashed every value again to dictionary-encode it. Parquet
    stores them as strings either way; pyarrow reads them back dictionary-encoded, pandas as
    categoricals."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string()))


def canary_mask(keys: pa.Array | pa.ChunkedArray, share: float) -> np.ndarray:
    """True for the entities the challenger scores: a hash of the id below ``share``.

    The hash depends on the id alone, so an entity stays in or out of the canary night after
    night, on every machine, whatever the batch it arrives in.
    """
    if share <= 0:
        return np.zeros(len(keys), dtype=bool)
    if pa.types.is_integer(keys.type):
        x = keys.to_numpy(zero_copy_only=False).astype(np.uint64)
        with np.errstate(over="ignore"):  # splitmix64: wrap-around is the point
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
        return (x >> np.uint64(11)).astype(np.float64) / float(2**53) < share
    import hashlib

    values = keys.cast(pa.string()).to_pylist()
    digests = [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest()) >> 11 for v in values]
    return np.array(digests, dtype=np.float64) / float(2**53) < share


class RoutedPredictor:
    """Ray Data callable class for canary and shadow scoring in the nightly job.

    Canary: the challenger scores the share of entities that :func:`canary_mask` picks; every row
    records which version scored it. Shadow: the challenger also scores every row, and each
    batch's scores go to ``shadow`` (None: no shadow), which the job hands in. CPU actors hand a
    callable that keeps them for the output file (``jobs.shadow``); GPU actors, whose batches go on
    to Ray Data's write tasks, say ``"columns"``: the scores travel beside the batch's own
    (:func:`with_shadow`), and the write task writes each file's shadow beside it.
    """

    def __init__(
        self,
        champion: tuple[PredictorOptions, ArrowScorer | None],
        challenger: tuple[PredictorOptions, ArrowScorer | None],
        share: float,
        shadow: Callable[[pa.Table], None] | Literal["columns"] | None,
    ) -> None:
        self.champion, self.challenger = BatchPredictor(*champion), BatchPredictor(*challenger)
        self.share, self.shadow = share, shadow

    @property
    def refuses_non_finite(self) -> frozenset[str]:
        """None: a batch the champion or the challenger refused part-way would leave the shadow
        holding the scores of its first slices, written again when the batch is scored anew."""
        return frozenset()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        main = self.champion(batch)
        other = self.challenger(batch)
        if callable(self.shadow):
            self.shadow(other)
        mask = pa.array(canary_mask(batch.column(self.champion.options.key), self.share))
        if pc.any(mask).as_py():
            main = pa.table({c: _pick(mask, other.column(c), main.column(c)) for c in main.column_names})
        return with_shadow(main, other, self.champion.options.key) if self.shadow == "columns" else main


def with_shadow(table: pa.Table, shadow: pa.Table, key: str) -> pa.Table:
    """``table`` with the columns of ``shadow`` (the same rows' challenger scores) beside its own,
    named ``shadow:<column>``; the key, the same in both, once. :func:`shadow_apart` undoes it."""
    fields = [f.with_name(SHADOW_PREFIX + f.name) for f in shadow.schema if f.name != key]
    columns = [shadow.column(f.name) for f in shadow.schema if f.name != key]
    return pa.Table.from_arrays([*table.columns, *columns], schema=pa.schema([*table.schema, *fields]))


def shadow_apart(table: pa.Table, key: str) -> tuple[pa.Table, pa.Table | None]:
    """A table of :func:`with_shadow`'s as its two: the batch's own, and the shadow's (None when it
    has no shadow columns), each with the key first as the predictor built them."""
    ours = [f for f in table.schema if not f.name.startswith(SHADOW_PREFIX)]
    theirs = [f for f in table.schema if f.name.startswith(SHADOW_PREFIX)]
    main = pa.Table.from_arrays([table.column(f.name) for f in ours], schema=pa.schema(ours))
    if not theirs:
        return main, None
    fields = [table.schema.field(key), *(f.with_name(f.name.removeprefix(SHADOW_PREFIX)) for f in theirs)]
    columns = [table.column(key), *(table.column(f.name) for f in theirs)]
    return main, pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _pick(mask: pa.Array, where_true: pa.Array, where_false: pa.Array) -> pa.Array:
    """``if_else`` for columns that may be dictionary-encoded with different dictionaries (the
    champion's and the challenger's lineage): choose on the values, encode the result again."""
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(where_true.type):
        return pc.if_else(mask, where_true, where_false)
    values = where_true.type.value_type
    return pc.dictionary_encode(pc.if_else(mask, where_true.cast(values), where_false.cast(values)))


class PairPredictor:
    """Ray Data callable class for an A/B comparison: both versions score each batch, so the data
    is read once. Returns the passthrough columns and one score column per version.

    ``batch_size``: score a larger block in batches of this many rows (the CPU path, where Ray
    hands the actor whole blocks it has read itself)."""

    def __init__(
        self,
        champion: BatchPredictor,
        challenger: BatchPredictor,
        passthrough: list[str],
        batch_size: int | None = None,
    ) -> None:
        self.champion, self.challenger, self.passthrough = champion, challenger, passthrough
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        return in_batches(self._score_pair, batch, self.batch_size)

    @property
    def score_type(self) -> pa.DataType:
        """A score column's type: a float, or a multiclass model's fixed-size list of a float per class."""
        classes = self.champion.options.classes
        return pa.list_(pa.float32(), len(classes)) if classes else pa.float32()

    def _score_pair(self, batch: pa.Table) -> pa.Table:
        columns = {c: batch.column(c) for c in self.passthrough}
        columns["score_champion"] = self._scores(self.champion.score(batch))
        columns["score_challenger"] = self._scores(self.challenger.score(batch))
        return pa.table(columns)

    def _scores(self, scores: np.ndarray) -> pa.Array:
        scores = scores.astype(np.float32, copy=False)
        if scores.ndim == 1:
            return pa.array(scores)
        return pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), scores.shape[1])


class PairActor(PairPredictor):
    """The actor form: built from picklable options (Ray constructs it on the worker)."""

    def __init__(
        self,
        options: tuple[PredictorOptions, PredictorOptions],
        scorers: tuple,
        passthrough: list[str],
        batch_size: int | None = None,
    ):
        champion, challenger = BatchPredictor(options[0], scorers[0]), BatchPredictor(options[1], scorers[1])
        super().__init__(champion, challenger, passthrough, batch_size)
