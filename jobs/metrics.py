"""Offline metrics, vectorised for the bootstrap (thousands of evaluations per comparison).

Each agrees with scikit-learn's function of the same name on the same predictions (the tests
check it); ``ece`` has no scikit-learn twin and is the usual 10-bin expected calibration error.

A bootstrap resample is a weight per row, how many times it was drawn: each metric class below
prepares what does not change between resamples once, so that a resample costs a few passes over
the rows, in arrays a :class:`Scratch` keeps from one resample to the next.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Protocol

import numpy as np

EPS = 1e-15
ECE_BINS = 10
# r2 of a resample whose outcomes spread less than this share of their squares about the whole
# day's mean is rounding noise: no spread, no r2
SPREAD_EPS = 1e-12
# the share of rows in runs of tied scores above which Classification works on the runs rather
# than on the rows: at 1M rows, the two took as long with 11% of the rows tied (docs/benchmark.md)
MANY_TIES = 0.1


class Scratch:
    """Arrays that one thread reuses from one resample to the next.

    A resample is a few passes over arrays as long as the partition; a fresh array for each pass
    cost about as much again in page faults, and threads that allocate side by side wait for each
    other (two threads ran no faster than one until each kept its own arrays)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype: type = np.float64) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None or len(array) != n or array.dtype != dtype:
            array = self._arrays[name] = np.empty(n, dtype)
        return array


class Prepared(Protocol):
    """One model's predictions, prepared for its metrics over reweighted rows."""

    def metrics(self, w: np.ndarray | None = None, scratch: Scratch | None = None) -> dict[str, float]: ...


def ece(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: bin by predicted probability (equal width), weight |mean p - mean y|."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    b = _bins(p, bins)
    sum_p = np.bincount(b, weights=p, minlength=bins)
    sum_y = np.bincount(b, weights=y, minlength=bins)
    return float(np.sum(np.abs(sum_p - sum_y)) / len(y))


def _bins(p: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((p * bins).astype(np.int64), bins - 1)


def _weights(w: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n) if w is None else np.asarray(w, dtype=np.float64)


class Classification:
    """The classification metrics of one model's scores, for the rows as they are or reweighted.

    The rows are sorted once, here, by descending score. Then the rows predicted positive are a
    prefix, each calibration bin is a stretch, and ROC AUC, average precision, the confusion
    counts and each bin's outcomes all come from two running sums: of the weights, and of the
    positives' weights (a run of tied scores is one threshold, read at its last row). A resample
    is a gather, two cumulative sums and a few dot products: 200,000 rows, 2.3 ms, where a pass
    per metric took 9.1 ms (docs/benchmark.md, "The A/B comparison's bootstrap"); the few ties
    of float32 scores add 8% to that, where reading every run's end added 40%. In a comparison
    the weights come in the champion's order, which spares its gather (:meth:`weights_drawn_in`).
    """

    NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier", "ece")

    def __init__(self, y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> None:
        y = np.asarray(y).astype(np.int64).astype(np.float64)
        p = np.asarray(p, dtype=np.float64)
        self.n = len(y)
        self.order = np.argsort(-p, kind="stable")
        self.reads: np.ndarray | None = self.order  # where each sorted row's weight is (weights_drawn_in)
        self.y, self.p = y[self.order], p[self.order]
        clipped = np.clip(self.p, EPS, 1 - EPS)
        self.loss = -(self.y * np.log(clipped) + (1 - self.y) * np.log(1 - clipped))
        self.squared = (self.p - self.y) ** 2
        starts = np.flatnonzero(np.diff(self.p, prepend=np.nan) != 0)  # where each run of tied scores starts
        ends = np.r_[starts[1:], self.n] - 1
        tied = ends > starts
        tied_rows = int((ends - starts + 1)[tied].sum())
        # a run of tied scores is one threshold. Where many rows tie (scores of a few distinct
        # values), the running sums are read at the runs' ends and the rest works on runs; where
        # few do (float32 scores: 2% of 1M rows), the rest works on rows and the tied runs' terms
        # are put right afterwards (_Ties), where reading every run's end took a fifth of the time
        self.run_ends = ends if tied_rows > self.n * MANY_TIES else None
        self.ties = _Ties(starts[tied], ends[tied], self.y) if tied_rows and self.run_ends is None else None
        self.predicted_rows = int(np.count_nonzero(self.p >= threshold))  # a prefix: descending
        bins = _bins(self.p, ECE_BINS)
        first = np.flatnonzero(np.diff(bins, prepend=-1) != 0)  # where each bin that has rows starts
        self.bin_rows = [*first.tolist(), self.n]
        self.bin_ends = np.r_[first[1:], self.n] - 1

    def weights_drawn_in(self, order: np.ndarray) -> None:
        """Read a resample's weights as given for the rows in ``order``, not in their own.

        A model reads the weights in its scores' order, a gather at random places: 104 ms a
        model and resample at 10M rows. Weights drawn in the champion's order
        (:func:`jobs.abstats.compare`) spare the champion's gather, and leave the challenger's."""
        if np.array_equal(order, self.order):
            self.reads = None
            return
        place = np.empty_like(order)
        place[order] = np.arange(len(order))  # each row's place in ``order``
        self.reads = place[self.order]

    def metrics(self, w: np.ndarray | None = None, scratch: Scratch | None = None) -> dict[str, float]:
        """The metrics over the rows, each counted ``w`` times (default once)."""
        n = self.n
        if not n:
            return dict.fromkeys(self.NAMES, float("nan"))
        scratch = scratch or Scratch()
        if w is None:
            ws = np.ones(n)
        elif self.reads is None:
            ws = _weights(w, n)  # read only from here on
        else:  # mode="clip": straight into the scratch array (the places are all valid)
            ws = np.take(_weights(w, n), self.reads, out=scratch.get("sorted", n), mode="clip")
        log_loss, brier = float(ws @ self.loss), float(ws @ self.squared)
        sum_p = np.array([ws[s:e] @ self.p[s:e] for s, e in pairwise(self.bin_rows)])
        pos = np.multiply(ws, self.y, out=scratch.get("positives", n))
        cum_pos = np.cumsum(pos, out=scratch.get("cumulative_positives", n))
        cum_total = np.cumsum(ws, out=scratch.get("cumulative_total", n))
        positives, weight = float(cum_pos[-1]), float(cum_total[-1])
        negatives = weight - positives
        k = self.predicted_rows
        tp, predicted = (float(cum_pos[k - 1]), float(cum_total[k - 1])) if k else (0.0, 0.0)
        sum_y = np.diff(cum_pos[self.bin_ends], prepend=0.0)
        total = ws
        if self.run_ends is not None:  # from here on a run of tied scores counts as one row
            runs = len(self.run_ends)
            cum_pos = np.take(cum_pos, self.run_ends, out=scratch.get("run_cumulative_positives", runs), mode="clip")
            cum_total = np.take(cum_total, self.run_ends, out=scratch.get("run_cumulative_total", runs), mode="clip")
            # the runs' own sums, in the rows' arrays: those are not read again
            pos = _steps(cum_pos, scratch.get("positives", n)[:runs])
            total = _steps(cum_total, scratch.get("sorted", n)[:runs])
        # ROC AUC: each negative's weight times the positives' weight above it, a tie counted half:
        # sum(neg * (cum_pos - pos / 2)), with neg = total - pos and sum(pos * cum_pos) = (P² + sum(pos²)) / 2
        pairs = float(total @ cum_pos) - float(total @ pos) / 2
        pairs_fix = precision_fix = 0.0
        if self.ties is not None:  # here, before the precision below takes cum_total's place
            pairs_fix, precision_fix = self.ties.corrections(total, cum_pos, cum_total)
        pairs += pairs_fix
        auc = (pairs - positives * positives / 2) / (positives * negatives) if positives and negatives else float("nan")
        precision = tp / predicted if predicted else 0.0
        recall = tp / positives if positives else 0.0
        if positives:  # average precision: each positive's weight times the precision at its score
            drawn = int(np.searchsorted(cum_total, 0, side="right"))  # none at or above: no precision
            ratio = np.divide(cum_pos[drawn:], cum_total[drawn:], out=cum_total[drawn:])
            pr_auc = (float(pos[drawn:] @ ratio) + precision_fix) / positives
        else:
            pr_auc = float("nan")
        return {
            "accuracy": (tp + negatives - (predicted - tp)) / weight,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "roc_auc": auc,
            "pr_auc": pr_auc,
            "log_loss": log_loss / weight,
            "brier": brier / weight,
            "ece": float(np.abs(sum_p - sum_y).sum()) / weight,
        }


class _Ties:
    """The runs of tied scores among rows scored one by one (:class:`Classification`, where few
    rows tie): what each run's rows added as rows, taken back, and the run's own terms put in.

    ``starts`` and ``ends``: each run's first and last row (of two rows or more) in the sorted
    order; ``y``: the sorted rows' outcomes."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray, y: np.ndarray) -> None:
        lengths = ends - starts + 1
        self.offsets = firsts(lengths)  # each run's first place in ``rows``
        self.lasts = self.offsets + lengths - 1
        self.rows = ranges(starts, lengths)
        self.y = y[self.rows]

    def corrections(self, w: np.ndarray, cum_pos: np.ndarray, cum_total: np.ndarray) -> tuple[float, float]:
        """What the tied runs change in ROC AUC's weighted pairs, ``w @ cum_pos - w @ pos / 2``,
        and in average precision's sum, ``pos @ (cum_pos / cum_total)``, both as taken over the
        rows (``pos``: ``w`` times the outcome)."""
        w_r, cum_pos_r, cum_total_r = w[self.rows], cum_pos[self.rows], cum_total[self.rows]
        pos_r = w_r * self.y
        run_w, run_pos = np.add.reduceat(w_r, self.offsets), np.add.reduceat(pos_r, self.offsets)
        end_pos, end_total = cum_pos_r[self.lasts], cum_total_r[self.lasts]
        pairs = float(run_w @ end_pos) - float(run_w @ run_pos) / 2 - float(w_r @ cum_pos_r) + float(w_r @ pos_r) / 2
        # a row or run none of whose rows was drawn has no positives' weight: its 0 / 0 is left out
        as_rows = np.divide(cum_pos_r, cum_total_r, out=np.zeros_like(cum_pos_r), where=pos_r > 0)
        as_runs = np.divide(end_pos, end_total, out=np.zeros_like(end_pos), where=run_pos > 0)
        return pairs, float(run_pos @ as_runs) - float(pos_r @ as_rows)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``starts[i], starts[i] + 1, …, starts[i] + lengths[i] - 1`` for each ``i``, one after the
    other, without a Python loop."""
    return np.repeat(starts - firsts(lengths), lengths) + np.arange(lengths.sum())


def firsts(lengths: np.ndarray) -> np.ndarray:
    """Where each run starts, of runs of ``lengths`` laid end to end."""
    return np.r_[0, np.cumsum(lengths)[:-1]]


def _steps(cumulative: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The terms whose running sum is ``cumulative``."""
    out[0] = cumulative[0]
    np.subtract(cumulative[1:], cumulative[:-1], out=out[1:])
    return out


def classification(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return Classification(y, p, threshold).metrics()


class Multiclass:
    """The metrics of a multiclass model's class probabilities, for the rows as they are or
    reweighted (a bootstrap resample, as :class:`Classification`'s).

    ``y``: each row's class, as an index into ``p``'s columns. Each row's part of every metric is
    computed once, here; a resample is then the weighted confusion matrix and two dot products:
    ``accuracy``, ``macro_f1`` (the mean over the classes of each class's F1, a class neither
    labeled nor predicted left out, as scikit-learn leaves out a label absent from both),
    ``log_loss`` and ``brier`` (the sum over the classes of the squared difference between
    probability and outcome, Brier's own definition: scikit-learn's ``brier_score_loss`` of more
    than two classes). ``threshold`` is not used: the prediction is the most probable class.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> None:
        y = np.asarray(y, dtype=np.int64)
        p = np.asarray(p, dtype=np.float64)
        self.n, self.k = p.shape
        rows = np.arange(self.n)
        self.cell = y * self.k + p.argmax(axis=1)  # each row's cell of the confusion matrix
        self.loss = -np.log(np.clip(p[rows, y], EPS, 1))
        outcome = np.zeros_like(p)
        outcome[rows, y] = 1.0
        self.squared = ((p - outcome) ** 2).sum(axis=1)

    def metrics(self, w: np.ndarray | None = None, scratch: Scratch | None = None) -> dict[str, float]:
        """The metrics over the rows, each counted ``w`` times (default once)."""
        w = _weights(w, self.n)
        confusion = np.bincount(self.cell, weights=w, minlength=self.k * self.k).reshape(self.k, self.k)
        total = confusion.sum()
        right, labeled, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
        seen = (labeled + predicted) > 0
        return {
            "accuracy": float(right.sum() / total),
            "macro_f1": float(np.mean(2 * right[seen] / (labeled[seen] + predicted[seen]))),
            "log_loss": float(w @ self.loss / total),
            "brier": float(w @ self.squared / total),
        }


def multiclass(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return Multiclass(y, p).metrics()


class Regression:
    """rmse, mae and r2 of predicted values, for the rows as they are or reweighted: each is made
    of dot products of the weights with terms of each row computed once, here. r2's spread of the
    outcomes is taken about the whole day's mean, so that it loses nothing to cancellation where
    the outcomes' mean is far from zero. ``threshold`` is not used."""

    def __init__(self, y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> None:
        y = np.asarray(y, dtype=np.float64)
        residual = y - np.asarray(p, dtype=np.float64)
        self.n = len(y)
        self.squared, self.absolute = residual**2, np.abs(residual)
        self.centered = y - y.mean() if self.n else y
        self.centered_squared = self.centered**2

    def metrics(self, w: np.ndarray | None = None, scratch: Scratch | None = None) -> dict[str, float]:
        """The metrics over the rows, each counted ``w`` times (default once)."""
        w = _weights(w, self.n)
        total, squares = w.sum(), float(w @ self.centered_squared)
        errors = float(w @ self.squared)
        spread = squares - float(w @ self.centered) ** 2 / total
        return {
            "rmse": float(np.sqrt(errors / total)),
            "mae": float(w @ self.absolute / total),
            "r2": 1 - errors / spread if spread > SPREAD_EPS * squares else float("nan"),
        }


def regression(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return Regression(y, p).metrics()


# each task's metrics: (labels, scores, threshold) -> Prepared, whose metrics() are the rows' own
# and metrics(w) those of a bootstrap resample
PREPARED: dict[str, Callable[[np.ndarray, np.ndarray, float], Prepared]] = {
    "classification": Classification,
    "multiclass": Multiclass,
    "regression": Regression,
}
LOWER_IS_BETTER = {"log_loss", "brier", "ece", "rmse", "mae"}


def better(metric: str, diff: float) -> float:
    """A difference (challenger - champion) oriented so that positive means better."""
    return -diff if metric in LOWER_IS_BETTER else diff
