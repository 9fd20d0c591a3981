"""The statistics of an A/B comparison: paired bootstrap intervals, McNemar's exact test,
segments, and the verdict. Pure NumPy on arrays of labels and both models' scores."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from jobs.metrics import LOWER_IS_BETTER, PREPARED, Classification, Prepared, Scratch, better, ranges

CHUNK = 25  # resamples a thread draws in turn from one seed
BLOCK = 1 << 17  # rows whose counts a resample takes at once (Resampler): 1 MiB of them, in the cache
# bytes a row of a thread's arrays: the drawn rows, their counts and the weights; a model's sorted
# weights, positives and two running sums, and the running sums at the ends of runs of ties
SCRATCH_PER_ROW = 72
SCRATCH_BYTES = 2 << 30


@dataclass(frozen=True)
class Interval:
    diff: float  # challenger - champion
    low: float
    high: float


@dataclass
class Comparison:
    champion: dict[str, float]
    challenger: dict[str, float]
    differences: dict[str, Interval]
    mcnemar: dict[str, float] | None
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)


class Resampler:
    """Bootstrap resamples of n rows: of rows, or of whole groups of rows (each group's rows
    drawn together, when rows of one entity are not independent). The groups are sorted once.

    Rows are drawn block by block (:data:`BLOCK` rows each): how many of the n draws land in each
    block, from a multinomial over the blocks, then that many rows uniformly within each. That is
    the same draw as n rows uniformly from all, in distribution, but each block's counts are
    taken in an array that stays in the cache: at 10M rows a resample's counts took 62 ms where
    one ``bincount`` over them all took 226 (docs/benchmark.md)."""

    def __init__(self, n: int, groups: np.ndarray | None) -> None:
        self.n = n
        self.groups = groups is not None
        if groups is not None:
            self.order = np.argsort(groups, kind="mergesort")
            _, self.starts, self.counts = np.unique(groups[self.order], return_index=True, return_counts=True)
        else:
            self.blocks = [(start, min(BLOCK, n - start)) for start in range(0, n, BLOCK)]

    def indices(self, rng: np.random.Generator) -> np.ndarray:
        """The rows a resample drew, each as many times as it was drawn."""
        if not self.groups:
            return np.concatenate([start + drawn for start, _, drawn in self._row_draws(rng)] or [np.zeros(0, int)])
        pick = rng.integers(0, len(self.starts), len(self.starts))
        return self.order[ranges(self.starts[pick], self.counts[pick])]  # the picked groups' rows

    def weights(self, rng: np.random.Generator, scratch: Scratch | None = None) -> np.ndarray:
        """The same draw as :meth:`indices`, as how many times each row was drawn (floats, as
        the metrics' dot products take them)."""
        weights = np.empty(self.n) if scratch is None else scratch.get("weights", self.n)
        if self.groups:
            np.copyto(weights, np.bincount(self.indices(rng), minlength=self.n))
            return weights
        for start, size, drawn in self._row_draws(rng):
            np.copyto(weights[start : start + size], np.bincount(drawn, minlength=size))
        return weights

    def _row_draws(self, rng: np.random.Generator) -> Iterator[tuple[int, int, np.ndarray]]:
        """Per block: its first row, its size, and its rows drawn, counted from its first."""
        if not self.blocks:
            return
        totals = rng.multinomial(self.n, [size / self.n for _, size in self.blocks])
        for (start, size), total in zip(self.blocks, totals.tolist(), strict=True):
            yield start, size, rng.integers(0, size, total)


def compare(
    y: np.ndarray,
    champion: np.ndarray,
    challenger: np.ndarray,
    *,
    task: str,
    threshold: float,
    confidence: float,
    bootstrap: int,
    groups: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> Comparison:
    """Metrics of both models, and a paired bootstrap interval for each difference (``workers``:
    the bootstrap's threads, by default :func:`threads`)."""
    prepared = PREPARED[task]
    models = tuple(prepared(y, scores, threshold) for scores in (champion, challenger))
    a, b = (m.metrics() for m in models)
    order = drawing_order(models[0])
    if order is not None:
        for model in models:
            model.weights_drawn_in(order)
        groups = None if groups is None else groups[order]  # each drawn place's group
    draws = resample(models, Resampler(len(y), groups), bootstrap, seed, workers)
    tail = (1 - confidence) / 2 * 100
    differences = {m: _interval(b[m] - a[m], draws[:, i], tail) for i, m in enumerate(a)}
    mcnemar = None
    if task == "classification":
        mcnemar = _mcnemar((champion >= threshold) == (y == 1), (challenger >= threshold) == (y == 1))
    elif task == "multiclass":
        mcnemar = _mcnemar(champion.argmax(axis=1) == y, challenger.argmax(axis=1) == y)
    result = Comparison(a, b, differences, mcnemar)
    if segments is not None:
        for value in np.unique(segments.astype(str)):
            rows = segments.astype(str) == value
            if rows.sum() < 2:
                continue
            result.segments[value] = {
                "rows": int(rows.sum()),
                "champion": prepared(y[rows], champion[rows], threshold).metrics(),
                "challenger": prepared(y[rows], challenger[rows], threshold).metrics(),
            }
    return result


def drawing_order(champion: Prepared) -> np.ndarray | None:
    """The rows in the order the bootstrap draws their weights in (None: their own): a
    classification's in its champion's order, so that its champion reads them as drawn
    (:meth:`Classification.weights_drawn_in`). A draw is the same in any order of the rows."""
    return champion.order if isinstance(champion, Classification) else None


def resample(
    models: tuple[Prepared, Prepared], resampler: Resampler, resamples: int, seed: int, workers: int | None = None
) -> np.ndarray:
    """The challenger's metrics minus the champion's on each of ``resamples`` paired resamples:
    an array of a row per resample, a column per metric (in the order of ``metrics()``'s keys).

    The resamples are drawn in chunks of :data:`CHUNK`, each from its own seed of ``seed``'s
    sequence, so that they are the same whichever thread takes a chunk and however many threads
    there are; :func:`threads` says how many."""
    seeds = np.random.SeedSequence(seed).spawn(_chunks(resamples))
    local, stopped = threading.local(), threading.Event()

    def chunk(i: int) -> list[list[float]]:
        if not hasattr(local, "scratch"):
            local.scratch = Scratch()
        rng, rows = np.random.default_rng(seeds[i]), []
        for _ in range(min(CHUNK, resamples - i * CHUNK)):
            if stopped.is_set():
                break
            w = resampler.weights(rng, local.scratch)
            ra, rb = (m.metrics(w, local.scratch) for m in models)
            rows.append([rb[m] - ra[m] for m in ra])
        return rows

    workers = workers or threads(resampler.n, resamples)
    if workers == 1:
        parts = [chunk(i) for i in range(len(seeds))]
    else:
        pool = ThreadPoolExecutor(workers, "bootstrap")
        try:  # BLAS's own threads, spinning between our dot products, took the cores our threads wanted
            with threadpool_limits(limits=1, user_api="blas"):
                parts = list(pool.map(chunk, range(len(seeds))))
        finally:  # a stop (jobs.stopping) lands in this thread: the others end at their next resample
            stopped.set()
            pool.shutdown(wait=True, cancel_futures=True)
    return np.array([row for part in parts for row in part], dtype=np.float64).reshape(resamples, -1)


def threads(rows: int, resamples: int) -> int:
    """Threads for a bootstrap of ``resamples`` over ``rows``: one per CPU this process may use
    (NumPy leaves the GIL in each pass over the rows), no more than the chunks of :data:`CHUNK`
    resamples, and no more than :data:`SCRATCH_BYTES` of scratch arrays hold
    (:data:`SCRATCH_PER_ROW` bytes a row each: 2 threads at 10M rows)."""
    return max(1, min(cpus(), _chunks(resamples), SCRATCH_BYTES // max(1, SCRATCH_PER_ROW * rows)))


def _chunks(resamples: int) -> int:
    return -(-resamples // CHUNK)


def cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's share, where Linux says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _interval(diff: float, draws: np.ndarray, tail: float) -> Interval:
    """The percentile interval of the resampled differences, over the resamples where the metric
    is defined (ROC AUC needs both classes); NaN where it is defined in none."""
    defined = draws[~np.isnan(draws)]
    if defined.size == 0:
        return Interval(diff, float("nan"), float("nan"))
    low, high = np.percentile(defined, [tail, 100 - tail])
    return Interval(diff, float(low), float(high))


def _mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test on the rows where exactly one model is right."""
    from scipy.stats import binomtest

    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"champion_only_right": only_a, "challenger_only_right": only_b, "p_value": float(p)}


def verdict(c: Comparison, *, primary: str, min_improvement: float, guards: dict[str, float]) -> tuple[str, list[str]]:
    """``promote``, ``keep`` or ``inconclusive``, with the reasons in words.

    promote: the primary metric is better with confidence (interval above 0) by at least
    ``min_improvement``, and no guard metric regresses beyond its tolerance.
    keep: the challenger is worse with confidence, or a guard regresses beyond its tolerance.
    inconclusive: anything else (the interval straddles 0, or the gain is real but too small).
    """
    reasons: list[str] = []
    d = c.differences[primary]
    gain, lo, hi = better(primary, d.diff), *sorted((better(primary, d.low), better(primary, d.high)))
    direction = "lower" if primary in LOWER_IS_BETTER else "higher"
    reasons.append(
        f"{primary} ({direction} is better): champion {c.champion[primary]:.4f}, challenger "
        f"{c.challenger[primary]:.4f}, gain {gain:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    )
    broken = []
    for metric, tolerance in guards.items():
        g = c.differences[metric]
        g_gain = better(metric, g.diff)
        if g_gain < -tolerance:
            broken.append(f"guard {metric} regresses by {-g_gain:.4f}, more than the {tolerance:g} tolerated")
        else:
            if g_gain >= 0:
                reasons.append(f"guard {metric}: improves by {g_gain:.4f}")
            else:
                reasons.append(f"guard {metric}: regresses by {-g_gain:.4f}, within the {tolerance:g} tolerated")
    if broken:
        return "keep", [*reasons, *broken]
    if hi < 0:
        return "keep", [*reasons, f"the challenger is worse on {primary} with confidence"]
    if lo > 0 and gain >= min_improvement:
        return "promote", [
            *reasons,
            f"the challenger is better on {primary} with confidence, by at least the {min_improvement:g} required",
        ]
    if lo > 0:
        return "inconclusive", [*reasons, f"better with confidence, but by less than the {min_improvement:g} required"]
    return "inconclusive", [*reasons, f"the interval for {primary} includes no difference"]
