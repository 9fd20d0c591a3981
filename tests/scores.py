"""What a test checks of a run's score figures (``lakecast run``'s result, a manifest's, MLflow's)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jobs.score_stats import QUANTILES


def assert_scores_describe(scores: dict, table: pa.Table, column: str = "churn_probability") -> None:
    """``scores`` are the distribution of ``table``'s ``column``: exact where they are sums, the
    quantiles from a sample of every k-th row (all of them, at a test's size)."""
    p = table[column].to_numpy().astype(np.float64)
    assert scores["mean"] == pytest.approx(p.mean(), rel=1e-6)
    assert scores["std"] == pytest.approx(p.std(), rel=1e-5)
    assert (scores["min"], scores["max"]) == pytest.approx((p.min(), p.max()))
    assert scores["positive_rate"] == pytest.approx(np.mean(table["prediction"].to_numpy()))
    assert [scores[q] for q in QUANTILES] == pytest.approx(np.quantile(p, list(QUANTILES.values())), abs=1e-6)
