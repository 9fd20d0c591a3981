"""The distribution of a night's scores, kept with its run: in MLflow's metrics, the manifest and
``lakecast run``'s result.

A model whose input drifted keeps scoring: an upstream column that changes its units passes the
type checks, every row is valid and every score a number, and the predictions are published. What
shows it is the scores' distribution moving from one night to the next (a median that jumps, a
positive rate that halves), which MLflow charts across the runs of the job's experiment.

A regression's scores are its predicted values: the same figures, without the positive rate
(its predictions have no ``prediction`` column to count). A multiclass model's score is the
probability of the class it predicts, its confidence; in place of the positive rate, the share
of the rows predicted in each class, and their stability against the day before's. An embedding
model's score is a vector: its figures are those of the vectors' lengths (their L2 norms), which
move when the model's inputs do, as a score's distribution does.

Nothing per row leaves an actor for this: a CPU actor (a GPU pipeline's write task) summarises
each file's scores as it writes them, and the challenger's shadow scores beside them
(:func:`summarize`: count, mean, spread, extremes, positives, and every k-th score, about
:data:`SAMPLE` in all, for the quantiles), about 1.5 ns a row, and the driver merges the
summaries (:func:`merge`). Mean, standard deviation, extremes and positive rate are exact; the
quantiles come from the sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from models.output_columns import PREDICTION

# about this many scores in all are kept for the quantiles, every k-th row of each piece for the
# same k, so that every row is as likely to be in the sample, whatever the size of its file
SAMPLE = 100_000
QUANTILES = {"p01": 0.01, **{f"p{10 * i}": i / 10 for i in range(1, 10)}, "p99": 0.99}
DECILES = [f"p{10 * i}" for i in range(1, 10)]
# a population stability index above this is the usual mark of a shift worth a look
PSI_ALERT = 0.25

# a summary's fields, as a CPU actor returns them for each input file beside its row counts
FIELDS = [
    ("score_rows", pa.int64()),
    ("score_mean", pa.float64()),
    ("score_m2", pa.float64()),  # the sum of squared deviations from the mean
    ("score_min", pa.float64()),
    ("score_max", pa.float64()),
    ("positives", pa.int64()),
    ("score_sample", pa.list_(pa.float32())),
    # a multiclass model's rows predicted in each class, by the class's name (empty for the others)
    ("class_names", pa.list_(pa.string())),
    ("class_counts", pa.list_(pa.int64())),
]
# the same of the challenger's shadow scores of the same rows (``ab.shadow``), beside them: an
# actor or a write task summarises both files as it writes them (EMPTY's where no shadow is)
SHADOW = "shadow_"
SHADOW_FIELDS = [(SHADOW + name, kind) for name, kind in FIELDS]
EMPTY: dict[str, Any] = {
    "score_rows": 0,
    "score_mean": 0.0,
    "score_m2": 0.0,
    "score_min": float("inf"),
    "score_max": float("-inf"),
    "positives": 0,
    "score_sample": [],
    "class_names": [],
    "class_counts": [],
}
# the figures' names of the share of rows predicted in a class, and their stability
SHARE = "share."
CLASS_PSI = "class_psi_vs_previous_day"


def as_shadow(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary of shadow scores, under :data:`SHADOW_FIELDS`' names to travel beside the
    published scores' own."""
    return {SHADOW + name: value for name, value in summary.items()}


def shadow_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The shadow scores' summary out of a summary that carries both (:func:`as_shadow`)."""
    return {name: summary[SHADOW + name] for name in EMPTY}


def sample_every(rows: int) -> int:
    """The k of every k-th score sampled, for a run of ``rows`` rows."""
    return max(1, rows // SAMPLE)


def summarize(
    scores: np.ndarray, predictions: np.ndarray | None, every: int, classes: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """One piece's summary: ``scores`` (float) and ``predictions`` (0 or 1; None for a
    regression's or a multiclass model's, which counts no positives), a value per row; every
    ``every``-th score kept in the sample; a multiclass model's rows by predicted class."""
    n = len(scores)
    if n == 0:
        return dict(EMPTY)
    return {
        "score_rows": n,
        "score_mean": float(np.mean(scores, dtype=np.float64)),
        "score_m2": float(np.var(scores)) * n,
        "score_min": float(scores.min()),
        "score_max": float(scores.max()),
        "positives": int(np.count_nonzero(predictions)) if predictions is not None else 0,
        "score_sample": scores[::every].astype(np.float32, copy=False).tolist(),
        "class_names": list(classes or ()),
        "class_counts": list((classes or {}).values()),
    }


def of_table(table: pa.Table, score_column: str, every: int) -> dict[str, Any]:
    """The summary of a table of predictions (:func:`models.predictor.prediction_table`)."""
    column = table.column(score_column)
    if pa.types.is_fixed_size_list(column.type):  # an embedding's vectors: their lengths
        return summarize(norms(column), None, every)
    scores = column.to_numpy()
    if PREDICTION not in table.column_names:
        return summarize(scores, None, every)
    predictions = table.column(PREDICTION)
    if not pa.types.is_dictionary(predictions.type):
        return summarize(scores, predictions.to_numpy(), every)
    counts: Counter[str] = Counter()  # a multiclass model's class names: each chunk's dictionary its own
    for chunk in predictions.chunks:
        names, found = chunk.dictionary.to_pylist(), np.bincount(chunk.indices, minlength=len(chunk.dictionary))
        counts.update(dict(zip(names, found.tolist(), strict=True)))
    return summarize(scores, None, every, counts)


def norms(vectors: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """Each row's L2 norm, of a fixed-size list column of vectors (float32, as the predictions hold them)."""
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    matrix = vectors.flatten().to_numpy().reshape(len(vectors), vectors.type.list_size)
    return np.sqrt(np.einsum("ij,ij->i", matrix, matrix))


def combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two pieces' summaries as one: counts and sums add, the spread merges by Chan's formula,
    the samples join."""
    if not b["score_rows"]:
        return a
    if not a["score_rows"]:
        return b
    n = a["score_rows"] + b["score_rows"]
    delta = b["score_mean"] - a["score_mean"]
    return {
        "score_rows": n,
        "score_mean": a["score_mean"] + delta * b["score_rows"] / n,
        "score_m2": a["score_m2"] + b["score_m2"] + delta * delta * a["score_rows"] * b["score_rows"] / n,
        "score_min": min(a["score_min"], b["score_min"]),
        "score_max": max(a["score_max"], b["score_max"]),
        "positives": a["positives"] + b["positives"],
        "score_sample": a["score_sample"] + b["score_sample"],
        **_class_counts(a, b),
    }


def _class_counts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, list]:
    """``a``'s and ``b``'s rows by predicted class, added, as a summary's two lists."""
    counts = Counter(dict(zip(a["class_names"], a["class_counts"], strict=True)))
    counts.update(dict(zip(b["class_names"], b["class_counts"], strict=True)))
    return {"class_names": list(counts), "class_counts": list(counts.values())}


def merge(
    summaries: Iterable[dict[str, Any]],
    previous: Mapping[str, float] | None = None,
    *,
    classifies: bool = True,
    classes: Sequence[str] = (),
) -> dict[str, float]:
    """The run's figures from its pieces' summaries: ``mean``, ``std``, ``min``, ``max``, the
    quantiles of :data:`QUANTILES` and, where the model ``classifies``, ``positive_rate``, or for
    a multiclass model of ``classes``, the share of the rows predicted in each
    (``share.<class>``); empty when no row was scored. Given the day before's figures, also
    ``psi_vs_previous_day`` (:func:`psi`), and the shares' (:data:`CLASS_PSI`)."""
    whole, samples = dict(EMPTY), []
    for piece in summaries:
        samples.append(piece["score_sample"])
        whole = combine(whole, {k: piece[k] for k in EMPTY} | {"score_sample": []})
    n = whole["score_rows"]
    if not n:
        return {}
    sample = np.concatenate([np.asarray(s, dtype=np.float64) for s in samples])
    figures = {
        "mean": whole["score_mean"],
        "std": (whole["score_m2"] / n) ** 0.5,
        "min": whole["score_min"],
        "max": whole["score_max"],
        **dict(zip(QUANTILES, np.quantile(sample, list(QUANTILES.values())).tolist(), strict=True)),
        **({"positive_rate": whole["positives"] / n} if classifies else {}),
    }
    figures |= class_shares(dict(zip(whole["class_names"], whole["class_counts"], strict=True)), n, classes)
    shift = psi(sample, previous) if previous else None
    figures |= {"psi_vs_previous_day": shift} if shift is not None else {}
    moved = class_psi(figures, previous, classes) if previous and classes else None
    return figures | ({CLASS_PSI: moved} if moved is not None else {})


def class_shares(counts: Mapping[str, int], rows: int, classes: Sequence[str]) -> dict[str, float]:
    """The share of ``rows`` predicted in each of ``classes`` (``share.<class>``), from the rows
    counted by class name (a class no row was predicted in may be absent)."""
    return {SHARE + name: counts.get(name, 0) / rows for name in classes}


def class_psi(figures: Mapping[str, float], previous: Mapping[str, float], classes: Sequence[str]) -> float | None:
    """The population stability index of the shares of rows predicted in each class, tonight's
    against the day before's; None where the day before's figures lack a class's share (another
    model, or a class added since). A share of 0 counts as a millionth."""
    before = [previous.get(SHARE + name) for name in classes]
    if None in before:
        return None
    today = np.clip([figures[SHARE + name] for name in classes], 1e-6, None)
    before = np.clip(np.asarray(before, dtype=np.float64), 1e-6, None)
    return float(np.sum((today - before) * np.log(today / before)))


def psi(sample: np.ndarray, previous: Mapping[str, float]) -> float | None:
    """The population stability index of ``sample`` against the day before's deciles: each tenth
    of yesterday's scores a bin, ``sum((today - 0.1) * ln(today / 0.1))`` over the ten. None
    when yesterday's figures have no deciles, or ties among them (a model that scored many rows
    alike: its bins are not tenths)."""
    edges = [previous.get(d) for d in DECILES]
    if None in edges or not np.all(np.diff(edges) > 0):
        return None
    today = np.bincount(np.searchsorted(edges, sample, side="right"), minlength=10) / len(sample)
    today = np.clip(today, 1e-6, None)
    return float(np.sum((today - 0.1) * np.log(today / 0.1)))


def describe(figures: dict[str, float]) -> str:
    """The figures as a line for people: ``mean 0.149, median 0.099 (p10 0.021, p90 0.367), 3.03% positive``
    (a regression's without its last part; a multiclass model's with the share of each class,
    ``predicted basic 61.2%, plus 30.1%, premium 8.7%``)."""
    line = (
        f"mean {figures['mean']:.4g}, median {figures['p50']:.4g} (p10 {figures['p10']:.4g}, p90 {figures['p90']:.4g})"
    )
    shares = [f"{name.removeprefix(SHARE)} {100 * v:.1f}%" for name, v in figures.items() if name.startswith(SHARE)]
    if shares:
        line += ", predicted " + ", ".join(shares)
    return line + (f", {100 * figures['positive_rate']:.2f}% positive" if "positive_rate" in figures else "")
