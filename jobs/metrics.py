"""Offline metrics, vectorised for the bootstrap (thousands of evaluations per comparison).

Each agrees with scikit-learn's function of the same name on the same predictions (the tests
check it); ``ece`` has no scikit-learn twin and is the usual 10-bin expected calibration error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EPS = 1e-15


def _auc_roc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties: sklearn.metrics.roc_auc_score."""
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # average rank of each group of tied scores
    boundaries = np.flatnonzero(np.diff(ps)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(p)]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    pos = y == 1
    n_pos, n_neg = pos.sum(), len(y) - pos.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """sklearn.metrics.average_precision_score: sum over thresholds of (R_n - R_n-1) * P_n."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tp = np.cumsum(ys)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    total_pos = ys.sum()
    if total_pos == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / total_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _prf(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float, float]:
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: bin by predicted probability (equal width), weight |mean p - mean y|."""
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    return float(np.sum(np.abs(sum_p - sum_y)) / len(y))


def classification(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    y = y.astype(np.int64)
    p = p.astype(np.float64)
    precision, recall, f1 = _prf(y, p, threshold)
    clipped = np.clip(p, EPS, 1 - EPS)
    return {
        "accuracy": float(np.mean((p >= threshold) == (y == 1))),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": _auc_roc(y, p),
        "pr_auc": _average_precision(y, p),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": ece(y, p),
    }


def regression(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    y = y.astype(np.float64)
    p = p.astype(np.float64)
    residual = y - p
    total = np.sum((y - y.mean()) ** 2)
    return {
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mae": float(np.mean(np.abs(residual))),
        "r2": float(1 - np.sum(residual**2) / total) if total else float("nan"),
    }


METRICS: dict[str, Callable[..., dict[str, float]]] = {"classification": classification, "regression": regression}
LOWER_IS_BETTER = {"log_loss", "brier", "ece", "rmse", "mae"}


def better(metric: str, diff: float) -> float:
    """A difference (challenger - champion) oriented so that positive means better."""
    return -diff if metric in LOWER_IS_BETTER else diff
