"""The summary of a night's scores (jobs/score_stats.py): summarised in pieces, as the actors do
file by file, and merged, it says what numpy says of all the scores at once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jobs import score_stats


def pieces(scores: np.ndarray, cuts: list[int], every: int) -> list[dict]:
    predictions = (scores >= 0.5).astype(np.int8)
    bounds = [0, *cuts, len(scores)]
    return [score_stats.summarize(scores[a:b], predictions[a:b], every) for a, b in itertools.pairwise(bounds)]


def test_pieces_merge_to_the_whole():
    rng = np.random.default_rng(7)
    scores = rng.beta(0.6, 3.0, 250_000).astype(np.float32)
    whole = scores.astype(np.float64)
    # pieces of very different sizes, one of them empty, as files and slices come
    figures = score_stats.merge(pieces(scores, [10, 10, 90_000, 90_001, 200_000], every=1))
    assert figures["mean"] == pytest.approx(whole.mean(), rel=1e-9)
    assert figures["std"] == pytest.approx(whole.std(), rel=1e-6)
    assert (figures["min"], figures["max"]) == (whole.min(), whole.max())
    assert figures["positive_rate"] == np.mean(scores >= 0.5)
    exact = np.quantile(whole, list(score_stats.QUANTILES.values()))
    assert [figures[q] for q in score_stats.QUANTILES] == pytest.approx(exact)


def test_the_quantiles_of_a_large_run_come_from_an_even_sample():
    """Every k-th row of each piece, the same k everywhere: a small file weighs no more than its
    rows. Here a small file's scores sit far above the rest's."""
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.random(1_000_000) * 0.5, 0.9 + rng.random(20_000) * 0.1]).astype(np.float32)
    every = score_stats.sample_every(len(scores))
    assert every == 10
    figures = score_stats.merge(pieces(scores, [1_000_000], every))
    exact = np.quantile(scores.astype(np.float64), list(score_stats.QUANTILES.values()))
    assert [figures[q] for q in score_stats.QUANTILES] == pytest.approx(exact, abs=0.01)
    assert figures["p99"] > 0.9  # the small file's 2% of the rows, no more and no less


def test_no_scored_row_has_no_figures():
    assert score_stats.merge(pieces(np.zeros(0, dtype=np.float32), [], every=1)) == {}
    assert score_stats.merge([]) == {}


def test_a_line_for_people():
    figures = score_stats.merge(pieces(np.array([0.1, 0.2, 0.6, 0.9], dtype=np.float32), [], every=1))
    line = score_stats.describe(figures)
    assert line.startswith("mean 0.45, median 0.4 (p10 0.13, p90 0.81)") and line.endswith("50.00% positive")


def test_a_regressions_figures_have_no_positive_rate():
    """A regression's predictions have no ``prediction`` column: its summaries count no positives,
    and its figures and line say nothing of them."""
    import pyarrow as pa

    values = np.array([120.0, 80.5, 3000.0, 42.0], dtype=np.float32)
    table = pa.table({"key": [1, 2, 3, 4], "spend": values})
    figures = score_stats.merge([score_stats.of_table(table, "spend", every=1)], classifies=False)
    assert "positive_rate" not in figures and figures["max"] == 3000.0
    assert score_stats.describe(figures) == "mean 810.6, median 100.2 (p10 53.55, p90 2136)"


def test_a_regressions_shift_is_warned_of_without_a_positive_rate(caplog):
    """The warning of scores that moved since the day before, for predicted values: the median's
    move, and no rate of positives that a regression does not have."""
    import datetime as dt

    from jobs import drift

    rng = np.random.default_rng(5)
    day = lambda mean: [score_stats.summarize(rng.normal(mean, 10, 50_000), None, 1)]  # noqa: E731
    yesterday = score_stats.merge(day(100), classifies=False)
    figures = drift.score_distribution(
        dt.date(2026, 11, 21), day(130), {"scores": yesterday}, table="predictions/spend", classifies=False
    )
    assert figures["psi_vs_previous_day"] > score_stats.PSI_ALERT and "positive_rate" not in figures
    assert f"median {yesterday['p50']:.4g} → {figures['p50']:.4g}\n" in caplog.text + "\n"
    assert "positive rate" not in caplog.text


def test_the_shift_from_the_day_before():
    """The population stability index of tonight's scores on yesterday's deciles: near 0 for the
    same distribution, past the alert mark for a shifted one, None where yesterday's deciles tie."""
    rng = np.random.default_rng(11)
    yesterday = score_stats.merge(pieces(rng.beta(2, 5, 200_000).astype(np.float32), [], every=1))
    same = score_stats.merge(pieces(rng.beta(2, 5, 200_000).astype(np.float32), [], every=1), yesterday)
    moved = score_stats.merge(pieces(rng.beta(5, 2, 200_000).astype(np.float32), [], every=1), yesterday)
    assert same["psi_vs_previous_day"] < 0.01
    assert moved["psi_vs_previous_day"] > score_stats.PSI_ALERT
    # by hand: all of tonight's scores above yesterday's top decile
    top = score_stats.merge(pieces(np.full(1000, 0.99, dtype=np.float32), [], every=1), yesterday)
    expected = 9 * (1e-6 - 0.1) * np.log(1e-6 / 0.1) + (1 - 0.1) * np.log(1 / 0.1)
    assert top["psi_vs_previous_day"] == pytest.approx(expected, rel=1e-4)
    flat = score_stats.merge(pieces(np.zeros(1000, dtype=np.float32), [], every=1))
    assert "psi_vs_previous_day" not in score_stats.merge(pieces(rng.random(100).astype(np.float32), [], 1), flat)
    assert "psi_vs_previous_day" not in score_stats.merge(pieces(rng.random(100).astype(np.float32), [], 1), {})


def test_a_multiclass_nights_figures_are_its_classes_shares_and_their_shift(caplog):
    """A multiclass model's summaries count the rows by predicted class, by the class's name,
    whatever each file's dictionary (a canary's files encode the names anew): merged, the share
    of each class, its line, and the shares' stability against the day before, warned of past
    the alert mark."""
    import datetime as dt

    import pyarrow as pa

    from jobs import drift

    classes = ("basic", "plus", "premium")

    def night(shares: list[float], seed: int) -> list[dict]:
        rng = np.random.default_rng(seed)
        picked = rng.choice(3, 30_000, p=shares)
        summaries = []
        for part, order in ((picked[:10_000], classes), (picked[10_000:], classes[::-1])):
            names = pa.array(order)
            indices = pa.array([order.index(classes[i]) for i in part], pa.int32())
            table = pa.table({"p": rng.random(len(part)), "prediction": pa.DictionaryArray.from_arrays(indices, names)})
            summaries.append(score_stats.of_table(table, "p", every=1))
        return summaries, np.bincount(picked, minlength=3) / len(picked)

    summaries, shares = night([0.6, 0.3, 0.1], 1)
    yesterday = score_stats.merge(summaries, classifies=False, classes=classes)
    assert [yesterday[f"share.{c}"] for c in classes] == pytest.approx(shares.tolist())
    assert "positive_rate" not in yesterday and score_stats.CLASS_PSI not in yesterday
    line = score_stats.describe(yesterday)
    assert line.endswith(
        f"predicted basic {100 * shares[0]:.1f}%, plus {100 * shares[1]:.1f}%, premium {100 * shares[2]:.1f}%"
    )

    same = score_stats.merge(night([0.6, 0.3, 0.1], 2)[0], yesterday, classifies=False, classes=classes)
    assert same[score_stats.CLASS_PSI] < 0.01
    moved, now = night([0.2, 0.3, 0.5], 3)
    figures = drift.score_distribution(
        dt.date(2026, 12, 5), moved, {"scores": yesterday}, table="predictions/plan", classifies=False, classes=classes
    )
    expected = sum((b - a) * np.log(b / a) for a, b in zip(shares, now, strict=True))
    assert figures[score_stats.CLASS_PSI] == pytest.approx(expected, rel=1e-9)
    assert (
        f"predictions/plan's predicted classes moved since 2026-12-04: population stability index {expected:.2f}"
        in caplog.text
    )
    assert f"premium {100 * shares[2]:.1f}% → {100 * now[2]:.1f}%" in caplog.text
