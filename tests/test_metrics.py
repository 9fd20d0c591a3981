"""Every metric agrees with scikit-learn's on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from jobs.metrics import classification, ece, regression


@pytest.fixture(params=[0, 1, 2, 3, 4])
def preds(request):
    rng = np.random.default_rng(request.param)
    y = rng.integers(0, 2, 5000)
    p = np.clip(0.3 * y + rng.random(5000) * 0.7, 0, 1)
    if request.param == 2:
        p = np.round(p, 1)  # many ties
    if request.param == 3:
        p = np.round(p, 4)  # 42% of the rows tie with another: the metrics work on runs
    if request.param == 4:
        p = np.round(p, 6)  # a few ties, as float32 scores have: the metrics work on rows
    return y, p


def test_classification_matches_sklearn(preds):
    y, p = preds
    m = classification(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), rel=1e-9)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))


def test_ece_is_the_binned_calibration_gap():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.95, 0.91, 0.99])
    # bins: [0,.1): p .05 y 0 → .05; [.1,.2): .15 vs 1 → .85; [.9,1]: mean p .95, mean y 2/3 → .2833 x 3
    expected = (0.05 + 0.85 + abs((0.95 + 0.91 + 0.99) - 2)) / 5
    assert ece(y, p) == pytest.approx(expected)


def test_regression_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.normal(size=1000)
    p = y + rng.normal(scale=0.5, size=1000)
    m = regression(y, p)
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["r2"] == pytest.approx(skm.r2_score(y, p))


def test_a_reweighting_scores_like_the_resample_it_stands_for(preds):
    """The bootstrap scores each resample as weights on the rows (see Classification): the same
    metrics as on the resampled rows themselves, rows drawn twice and rows not drawn included."""
    from jobs.metrics import Classification

    y, p = preds
    prepared = Classification(y, p)
    rng = np.random.default_rng(7)
    for _ in range(5):
        idx = rng.integers(0, len(y), len(y))
        weighted = prepared.metrics(np.bincount(idx, minlength=len(y)))
        direct = classification(y[idx], p[idx])
        assert weighted.keys() == direct.keys()
        for name, value in direct.items():
            assert weighted[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_one_class_resample_has_no_auc():
    from jobs.metrics import Classification

    y = np.array([0, 0, 1, 1])
    m = Classification(y, np.array([0.1, 0.2, 0.8, 0.9])).metrics(np.array([1, 2, 0, 0]))
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"])
    assert m["accuracy"] == 1.0


def test_multiclass_matches_sklearn_and_reweights_like_its_resample():
    """Accuracy, macro F1 (a class never labeled but predicted counted, as scikit-learn does),
    log loss and Brier's score over the classes, on the rows and on a resample as weights."""
    from jobs.metrics import Multiclass, multiclass

    rng = np.random.default_rng(4)
    n, k = 3000, 4
    y = rng.choice(3, n)  # the fourth class is never the outcome
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = multiclass(y, p)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(axis=1)))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p.argmax(axis=1), average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=range(k)), rel=1e-9)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=range(k)))
    prepared = Multiclass(y, p)
    idx = rng.integers(0, n, n)
    weighted, direct = prepared.metrics(np.bincount(idx, minlength=n)), multiclass(y[idx], p[idx])
    assert weighted == pytest.approx(direct, rel=1e-9)
