"""A/B comparison: verdicts on constructed data, the whole comparison on the demo models, and
promotion then rollback with its audit trail."""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import abstats
from jobs.ab import NothingToCompare, latest_report, psi, run_compare
from jobs.ab_report import markdown
from jobs.lake import Lake
from jobs.metrics import PREPARED
from jobs.promotion import PREVIOUS, PromotionRefused, promote, read_audit, rollback
from jobs.validation import InvalidInput
from tests.conftest import DAY
from tests.scores import assert_scores_describe


def constructed(n: int, champion_signal: float, challenger_signal: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)

    def scores(signal: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))

    return y, scores(champion_signal), scores(challenger_signal)


def decide(y, a, b, **policy):
    c = abstats.compare(y, a, b, task="classification", threshold=0.5, confidence=0.95, bootstrap=300)
    return abstats.verdict(c, primary="roc_auc", min_improvement=policy.get("min_improvement", 0.005),
                           guards=policy.get("guards", {}))  # fmt: skip


def test_a_clearly_better_challenger_is_promoted():
    verdict, reasons = decide(*constructed(4000, 0.5, 1.2))
    assert verdict == "promote", reasons
    assert "better on roc_auc with confidence" in reasons[-1]


def test_a_clearly_worse_challenger_is_kept_out():
    verdict, reasons = decide(*constructed(4000, 1.2, 0.5))
    assert verdict == "keep", reasons
    assert "worse on roc_auc with confidence" in reasons[-1]


def test_an_equal_challenger_is_inconclusive():
    verdict, reasons = decide(*constructed(4000, 0.8, 0.8))
    assert verdict == "inconclusive", reasons
    assert "includes no difference" in reasons[-1]


def test_a_broken_guard_keeps_the_champion():
    y, a, b = constructed(4000, 0.5, 1.2)
    b = np.clip(b * 0.3, 0, 1)  # same ranking (AUC), badly calibrated
    verdict, reasons = decide(y, a, b, guards={"log_loss": 0.01})
    assert verdict == "keep"
    assert any("guard log_loss regresses" in r for r in reasons)


def test_entity_bootstrap_resamples_whole_entities():
    groups = np.repeat(np.arange(50), 4)
    idx = abstats.Resampler(len(groups), groups).indices(np.random.default_rng(0))
    picked = groups[idx]
    assert len(idx) == len(groups)
    _, counts = np.unique(picked, return_counts=True)
    assert set(counts % 4) == {0}  # every entity comes with all 4 of its rows


def test_mcnemar_matches_the_exact_binomial_test():
    y = np.array([1] * 30)
    a = np.array([0.9] * 20 + [0.1] * 10)  # right on 20
    b = np.array([0.1] * 5 + [0.9] * 25)  # right on 25; only-a = 5, only-b = 10
    c = abstats.compare(y, a, b, task="classification", threshold=0.5, confidence=0.9, bootstrap=100)
    assert c.mcnemar["champion_only_right"] == 5 and c.mcnemar["challenger_only_right"] == 10
    from scipy.stats import binomtest

    assert c.mcnemar["p_value"] == pytest.approx(binomtest(5, 15, 0.5).pvalue)
    # one class only: ROC AUC is undefined, in the point estimate and in every resample
    assert np.isnan(c.champion["roc_auc"]) and np.isnan(c.differences["roc_auc"].low)
    assert c.differences["accuracy"].low <= c.differences["accuracy"].diff <= c.differences["accuracy"].high


def test_a_multiclass_challenger_that_is_right_more_often_is_promoted_on_log_loss():
    """A multiclass comparison: the bootstrap over the class probabilities, McNemar's test on
    the rows where one model's most probable class is right, the primary metric log loss."""
    rng = np.random.default_rng(2)
    n, k = 3000, 3
    y = rng.choice(k, n)

    def probabilities(signal: float) -> np.ndarray:
        logits = rng.normal(size=(n, k)) + signal * np.eye(k)[y]
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    a, b = probabilities(0.5), probabilities(1.5)
    c = abstats.compare(y, a, b, task="multiclass", threshold=0.5, confidence=0.95, bootstrap=200)
    assert set(c.champion) == {"accuracy", "macro_f1", "log_loss", "brier"}
    right_a, right_b = a.argmax(axis=1) == y, b.argmax(axis=1) == y
    assert c.mcnemar["champion_only_right"] == int(np.sum(right_a & ~right_b))
    assert c.mcnemar["challenger_only_right"] == int(np.sum(~right_a & right_b))
    verdict, reasons = abstats.verdict(c, primary="log_loss", min_improvement=0.01, guards={"accuracy": 0.0})
    assert verdict == "promote", reasons
    assert c.differences["log_loss"].high < 0 < c.differences["accuracy"].low


def by_definition(task: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Each metric by scikit-learn's function (ECE, which has none, by its plain formula)."""
    from sklearn import metrics as skm

    from jobs.metrics import ece

    if task == "classification":
        predicted = (p >= 0.5).astype(int)
        return {
            "accuracy": skm.accuracy_score(y, predicted),
            "precision": skm.precision_score(y, predicted, zero_division=0),
            "recall": skm.recall_score(y, predicted, zero_division=0),
            "f1": skm.f1_score(y, predicted, zero_division=0),
            "roc_auc": skm.roc_auc_score(y, p),
            "pr_auc": skm.average_precision_score(y, p),
            "log_loss": skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]),
            "brier": skm.brier_score_loss(y, p),
            "ece": ece(y, p),
        }
    if task == "multiclass":
        labels = range(p.shape[1])
        return {
            "accuracy": skm.accuracy_score(y, p.argmax(axis=1)),
            "macro_f1": skm.f1_score(y, p.argmax(axis=1), average="macro"),
            "log_loss": skm.log_loss(y, p, labels=labels),
            "brier": skm.brier_score_loss(y, p, labels=labels),
        }
    return {
        "rmse": np.sqrt(skm.mean_squared_error(y, p)),
        "mae": skm.mean_absolute_error(y, p),
        "r2": skm.r2_score(y, p),
    }


def _tasks():
    """Labels and two models' scores for each task, as the bootstrap takes them."""
    rng = np.random.default_rng(5)
    n = 2000
    y = rng.integers(0, 2, n)
    yield "classification", y, np.round(rng.random(n), 2), np.round(np.clip(0.2 * y + rng.random(n), 0, 1), 3)
    k = rng.integers(0, 3, n)
    p = [rng.dirichlet(np.ones(3), n) for _ in range(2)]
    yield "multiclass", k, *p
    t = rng.normal(100, 5, n)
    yield "regression", t, t + rng.normal(0, 2, n), t + rng.normal(0, 1.8, n)


@pytest.mark.parametrize("grouped", [False, True], ids=["rows", "entities"])
@pytest.mark.parametrize("task, y, a, b", list(_tasks()), ids=lambda v: v if isinstance(v, str) else "")
def test_each_interval_is_that_of_resampling_the_rows_themselves(task, y, a, b, grouped, monkeypatch):
    """The bootstrap weighs the rows by how often a resample drew them, and runs its resamples in
    chunks on threads: its intervals are those of drawing the same rows and computing each metric
    on them with scikit-learn, as the definition reads (the chunks' seeds are
    :func:`abstats.resample`'s). The rows are drawn in blocks, here of 300 rows, the last one
    shorter."""
    monkeypatch.setattr(abstats, "BLOCK", 300)
    groups = np.arange(len(y)) // 4 if grouped else None
    resamples, seed = 60, 3
    c = abstats.compare(
        y, a, b, task=task, threshold=0.5, confidence=0.9, bootstrap=resamples, groups=groups, seed=seed, workers=2
    )
    order = abstats.drawing_order(PREPARED[task](y, a, 0.5))  # the rows as the bootstrap draws them
    if order is not None:
        y, a, b = y[order], a[order], b[order]
        groups = None if groups is None else groups[order]
    resampler = abstats.Resampler(len(y), groups)
    draws = []
    for i, chunk_seed in enumerate(np.random.SeedSequence(seed).spawn(-(-resamples // abstats.CHUNK))):
        rng = np.random.default_rng(chunk_seed)
        for _ in range(min(abstats.CHUNK, resamples - i * abstats.CHUNK)):
            idx = resampler.indices(rng)
            ra, rb = by_definition(task, y[idx], a[idx]), by_definition(task, y[idx], b[idx])
            draws.append({m: rb[m] - ra[m] for m in ra})
    assert set(c.differences) == set(draws[0])
    for metric, interval in c.differences.items():
        low, high = np.percentile([d[metric] for d in draws], [5, 95])
        assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-9, abs=1e-12), metric


def test_every_row_is_drawn_alike_whatever_its_block(monkeypatch):
    """A resample draws how many rows land in each block, then the rows within it: each row is
    still drawn once on average with a multinomial's spread (variance 1 - 1/n), in a short last
    block as in the others, and a resample draws n rows in all."""
    monkeypatch.setattr(abstats, "BLOCK", 300)
    n, resamples = 1000, 4000
    resampler, rng = abstats.Resampler(n, None), np.random.default_rng(11)
    counts = np.array([resampler.weights(rng) for _ in range(resamples)])
    assert (counts.sum(axis=1) == n).all()
    blocks = [counts[:, :300], counts[:, 300:600], counts[:, 600:900], counts[:, 900:]]  # the last of 100 rows
    for block in blocks:
        assert block.mean() == pytest.approx(1, abs=0.02)
        assert block.var() == pytest.approx(1 - 1 / n, abs=0.05)
        assert block.sum(axis=1).var() == pytest.approx(block.shape[1] * (1 - block.shape[1] / n), rel=0.1)


def test_the_intervals_do_not_depend_on_how_many_threads_draw_them():
    y, a, b = constructed(3000, 0.8, 1.0)
    runs = [
        abstats.compare(y, a, b, task="classification", threshold=0.5, confidence=0.95, bootstrap=110, workers=w)
        for w in (1, 2, 5)
    ]
    assert runs[0].differences == runs[1].differences == runs[2].differences


def test_the_bootstrap_takes_a_thread_per_cpu_within_its_memory_budget():
    assert abstats.threads(200_000, 1000) == min(len(os.sched_getaffinity(0)), 40)  # 40 chunks of 25
    assert abstats.threads(200_000, 25) == 1  # 25 resamples or fewer: one chunk
    at_10m = abstats.threads(10_000_000, 1000)
    assert at_10m >= 1 and at_10m * abstats.SCRATCH_PER_ROW * 10_000_000 <= abstats.SCRATCH_BYTES
    assert abstats.threads(100_000_000, 1000) == 1  # past the budget, still one


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(0)
    x = rng.random(10_000)
    assert psi(x, x) == pytest.approx(0, abs=1e-9)
    assert psi(x, np.clip(x + 0.2, 0, 1)) > 0.1


@pytest.fixture(scope="module")
def report(settings, lake, registered, ray_local, churn_job):
    return run_compare(churn_job, DAY, settings=settings)


def test_compare_records_report_in_lake_mlflow_and_registry(report, settings, lake, registered):
    assert report["champion"]["version"] == registered["champion"]
    assert report["challenger"]["version"] == registered["challenger"]
    assert report["rows"] == 4000 and report["verdict"] in {"promote", "keep", "inconclusive"}
    assert set(report["differences"]) == {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss",
                                          "brier", "ece"}  # fmt: skip
    assert report["segments"]["column"] == "contract_type"
    assert set(report["segments"]["values"]) == {"month_to_month", "one_year", "two_year"}
    # the same report.json in the lake and in MLflow
    assert latest_report(Lake(settings.lake_root), __import__("jobs.config").config.load_job("churn")) == report
    client = mlflow.MlflowClient(settings.mlflow.tracking_uri)
    parent = client.get_run(report["mlflow_run_id"])
    assert parent.data.tags["lakecast.verdict"] == report["verdict"]
    assert "diff_roc_auc_low" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.json", "report.md", "roc.png", "calibration.png", "differences.png"} <= artifacts
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["lakecast.role"] for r in children) == ["challenger", "champion"]
    with open(client.download_artifacts(parent.info.run_id, "report.json")) as f:
        assert json.load(f) == report
    for version in registered.values():
        tags = client.get_model_version("churn-classifier", str(version)).tags
        assert tags[f"lakecast.ab.{DAY}"] == report["verdict"]


def test_the_demo_challenger_wins(report):
    """The large MLP is better than the small one on the demo's interactions."""
    assert report["differences"]["roc_auc"]["low"] > 0, report["reasons"]


def test_promote_then_rollback_restores_aliases_with_an_audit_trail(report, settings, lake, registered, churn_job):
    client = mlflow.MlflowClient(settings.mlflow.tracking_uri)

    def aliases() -> dict[str, int]:
        return {a: int(v) for a, v in client.get_registered_model("churn-classifier").aliases.items()}

    before = dict(aliases())
    try:
        if report["verdict"] != "promote":
            with pytest.raises(PromotionRefused, match="Use --force"):
                promote(churn_job, settings=settings)
        event = promote(churn_job, settings=settings, force=report["verdict"] != "promote", reason="test")
        assert aliases()["champion"] == registered["challenger"]
        assert aliases()[PREVIOUS] == registered["champion"]
        assert event["from_version"] == registered["champion"] and event["to_version"] == registered["challenger"]

        # champion and challenger now name one version, until a new challenger is registered: the
        # night's comparison has nothing to compare, and leaves the day's report as it was
        with pytest.raises(NothingToCompare) as raised:
            run_compare(churn_job, DAY, settings=settings)
        assert str(raised.value) == (
            f"champion and challenger are both version {registered['challenger']} of churn-classifier: nothing to "
            "compare, and no report was written. Register the version to try under the alias 'challenger' "
            "(ab.challenger in conf/jobs/churn.yaml)"
        )
        assert latest_report(Lake(settings.lake_root), churn_job) == report

        back = rollback(churn_job, settings=settings, reason="test rollback")
        assert aliases()["champion"] == registered["champion"]
        assert PREVIOUS not in aliases()
        assert back["to_version"] == registered["champion"]
        with pytest.raises(PromotionRefused, match="nothing to roll back to"):
            rollback(churn_job, settings=settings)
        trail = read_audit(Lake(settings.lake_root), churn_job)
        assert [e["action"] for e in trail[-2:]] == ["promote", "rollback"]
        assert all({"by", "at", "from_version", "to_version", "why"} <= e.keys() for e in trail)
        tags = client.get_model_version("churn-classifier", str(registered["challenger"])).tags
        assert "lakecast.promoted_at" in tags and "lakecast.rolled_back_at" in tags
    finally:
        for alias, version in before.items():
            client.set_registered_model_alias("churn-classifier", alias, str(version))


@pytest.mark.parametrize(
    ("content", "says"),
    [(b'{"verdict": "promote", "champ', "not valid JSON"), (b'{"verdict": "promote"}', "it has no date, reasons")],
)
def test_a_damaged_latest_report_refuses_the_promotion_and_names_the_file(
    report, settings, lake, registered, churn_job, content, says
):
    """A report.json changed by hand is not evidence: promote says which file and how to write it
    again, moves no alias, and does not fall back to an older day's report."""
    client = mlflow.MlflowClient(settings.mlflow.tracking_uri)
    before = client.get_registered_model("churn-classifier").aliases
    later = lake.partition_path(churn_job.ab_report_table, DAY.replace(year=DAY.year + 1))
    lake.make_dirs(later)
    try:
        with open(f"{later}/report.json", "wb") as f:
            f.write(content)
        with pytest.raises(PromotionRefused) as refused:
            promote(churn_job, settings=settings)
        said = str(refused.value)
        assert f"{later}/report.json is not a report lakecast wrote: {says}" in said
        assert f"lakecast compare churn --date {DAY.replace(year=DAY.year + 1)} writes it again" in said
        assert "Use --force" in said
        assert client.get_registered_model("churn-classifier").aliases == before
    finally:
        lake.fs.delete_dir(later)


def test_canary_mask_is_stable_and_near_its_share():
    import pyarrow as pa

    from models.predictor import canary_mask

    ids = pa.array(range(7_000_000, 7_100_000))
    mask = canary_mask(ids, 0.2)
    assert abs(mask.mean() - 0.2) < 0.01
    assert (canary_mask(ids.slice(500, 1000), 0.2) == mask[500:1500]).all()  # batch boundaries do not matter
    assert canary_mask(ids, 0.1)[mask].mean() < 1 and not canary_mask(ids, 0.1)[~mask].any()  # nested shares
    names = pa.array([f"c{i}" for i in range(20_000)])
    assert abs(canary_mask(names, 0.5).mean() - 0.5) < 0.02


def test_a_canary_whose_challenger_alias_is_gone_says_what_to_change(settings, lake, registered, ray_local, churn_job):
    """The challenger alias moved away (after a promotion, say) while the job file still asks for a
    canary and a shadow: the run stops before scoring, naming the alias, the job file's keys and
    the two ways out, and the day's predictions stay as they were."""
    from jobs.predict import run_job
    from models.registry import RegistryError

    job = churn_job.model_copy(update={
        "ab": churn_job.ab.model_copy(update={"challenger": "retired", "challenger_share": 0.3, "shadow": True}),
    })  # fmt: skip
    before = lake.read_manifest(job.output.table, DAY)
    with pytest.raises(RegistryError) as refused:
        run_job(job, DAY, settings=settings)
    assert str(refused.value).startswith("registered model 'churn-classifier' has no alias 'retired' (aliases: ")
    assert str(refused.value).endswith(
        "; conf/jobs/churn.yaml scores with it (ab.challenger_share: 0.3 and ab.shadow: true): set the alias in "
        "the registry, or set challenger_share: 0 and shadow: false to score with the champion alone"
    )
    assert lake.read_manifest(job.output.table, DAY) == before


def test_canary_and_shadow_in_the_nightly_job(settings, lake, registered, ray_local, churn_job):
    """The challenger scores its canary share of customers, the same ones on a rerun, and shadows
    every row; the comparison reports agreement and PSI on that unlabeled data."""
    import pyarrow.dataset as pads

    from jobs.predict import run_job

    job = churn_job.model_copy(update={
        "ab": churn_job.ab.model_copy(update={"challenger_share": 0.3, "shadow": True}),
        "compute": churn_job.compute.model_copy(update={"batch_size": 500}),  # several batches a file
    })  # fmt: skip
    out = lake.partition_path(job.output.table, DAY)
    first = run_job(job, DAY, settings=settings)
    table = pads.dataset(out, format="parquet").to_table()
    canary = table.filter(pads.field("variant") == "challenger")
    assert 0.25 < canary.num_rows / table.num_rows < 0.35
    assert set(canary["model_version"].to_pylist()) == {registered["challenger"]}
    assert set(table.filter(pads.field("variant") == "champion")["model_version"].to_pylist()) == {
        registered["champion"]
    }
    shadow_files = pads.dataset(lake.partition_path(f"{job.output.table}_shadow", DAY), format="parquet")
    shadow = shadow_files.to_table()
    assert shadow.num_rows == table.num_rows
    # a shadow file beside each file of predictions, of the same rows: not one per batch
    files = pads.dataset(out, format="parquet")
    assert sorted(f.rsplit("/", 1)[1] for f in shadow_files.files) == sorted(f.rsplit("/", 1)[1] for f in files.files)
    assert [f.count_rows() for f in shadow_files.get_fragments()] == [f.count_rows() for f in files.get_fragments()]
    assert set(shadow["model_version"].to_pylist()) == {registered["challenger"]}
    assert set(shadow["scoring_run_id"].to_pylist()) == {first.run_id}
    # the shadow's score distribution beside the published one's, to compare night by night
    # (summarised by the actors as they wrote the files)
    metrics = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(first.run_id).data.metrics
    shadow_scores = {k.removeprefix("shadow.score."): v for k, v in metrics.items() if k.startswith("shadow.score.")}
    assert_scores_describe(shadow_scores, shadow)
    assert_scores_describe({k.removeprefix("score."): v for k, v in metrics.items()}, table)
    assert lake.read_manifest(f"{job.output.table}_shadow", DAY)["scores"] == pytest.approx(shadow_scores)
    # the challenger's part, where the lineage is read: the manifest (whose model is the
    # champion's), the run's result (the DAG's XCom and Asset event) and the MLflow run
    challenger = f"models:/churn-classifier/{registered['challenger']}"
    manifest = lake.read_manifest(job.output.table, DAY)
    assert manifest["model"]["version"] == registered["champion"]
    assert manifest["canary"]["uri"] == manifest["shadow"]["uri"] == challenger
    assert manifest["canary"]["share"] == 0.3 and manifest["canary"]["alias"] == "challenger"  # the variant
    assert manifest["shadow"]["table"] == "predictions/churn_shadow"
    assert {k: first.as_dict()[k] for k in ("canary", "shadow")} == {k: manifest[k] for k in ("canary", "shadow")}
    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(first.run_id).data
    assert run.params["ab.challenger_uri"] == challenger and run.params["ab.challenger_share"] == "0.3"
    assert run.tags["lakecast.challenger_version"] == f"churn-classifier/{registered['challenger']}"

    run_job(job, DAY, settings=settings)  # a rerun routes the same customers
    again = pads.dataset(out, format="parquet").to_table().filter(pads.field("variant") == "challenger")
    assert sorted(again["customer_id"].to_pylist()) == sorted(canary["customer_id"].to_pylist())

    report = run_compare(job, DAY, settings=settings)
    assert report["shadow"]["rows"] == table.num_rows
    assert 0 <= report["shadow"]["agreement"] <= 1 and report["shadow"]["psi"] >= 0


def test_a_challenger_alias_on_the_champions_version_scores_each_row_once(
    settings, lake, registered, ray_local, churn_job, caplog
):
    """After a promotion both aliases name one version until the next is registered: the nightly
    run with a canary and a shadow scores every row once with it, says why in its log, and leaves
    the day's shadow partition as it was (no second scoring of the same model). A comparison of
    that day later leaves that shadow out: the predictions it sat beside were replaced."""
    from jobs.predict import run_job

    shadowed = churn_job.model_copy(update={"ab": churn_job.ab.model_copy(update={"shadow": True})})
    run_job(shadowed, DAY, settings=settings)
    shadow_before = lake.read_manifest(shadowed.shadow_table, DAY)
    assert shadow_before["model"]["version"] == registered["challenger"]

    job = churn_job.model_copy(update={
        "ab": churn_job.ab.model_copy(update={"challenger": "champion", "challenger_share": 0.3, "shadow": True}),
    })  # fmt: skip
    with caplog.at_level("WARNING", logger="jobs.preflight"):
        result = run_job(job, DAY, settings=settings)
    table = pads.dataset(lake.partition_path(job.output.table, DAY), format="parquet").to_table()
    assert table.num_rows == result.rows
    assert set(table["model_version"].to_pylist()) == {registered["champion"]}
    assert (
        f"conf/jobs/churn.yaml: the alias 'champion' names models:/churn-classifier/{registered['champion']}, "
        "the version this run scores with: every row is scored once by it, with no canary and no shadow"
    ) in caplog.text
    assert lake.read_manifest(job.shadow_table, DAY) == shadow_before
    metrics = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result.run_id).data.metrics
    assert not [k for k in metrics if k.startswith("shadow.")]
    manifest = lake.read_manifest(job.output.table, DAY)
    assert "canary" not in manifest and "shadow" not in manifest and "canary" not in result.as_dict()

    with caplog.at_level("WARNING", logger="jobs.ab"):
        report = run_compare(shadowed, DAY, settings=settings)
    assert report["shadow"] is None
    why = "predictions/churn_shadow/ds=2026-11-21 was scored by another run than the day's predictions (a rerun "
    assert f"{why}with no shadow, say): the report leaves it out" in caplog.text
    assert report["shadow_left_out"].endswith(f"{why}with no shadow, say)")
    assert f"Shadow scoring left out: {report['shadow_left_out']}." in markdown(report)  # report.md in MLflow


@pytest.mark.parametrize(
    ("relabel", "error"),
    [
        (
            lambda y: pc.if_else(pc.equal(y, 1), "yes", "no"),
            r"/part-0\.parquet: the label 'churned' \(ab\.label\) has type string; a classification label is 0 or 1, "
            r"or a boolean",
        ),
        (
            lambda y: pc.add(y, pa.scalar(1, y.type)),
            r"/date=2026-11-21: the label 'churned' \(ab\.label\) holds values other than 0 and 1 "
            r"\(2; e\.g\. customer_id=\d+\): a classification label is 0 or 1, or a boolean; for a numeric outcome "
            r"set model\.task: regression",
        ),
    ],
    ids=["yes_or_no", "one_or_two"],
)
def test_a_label_that_is_not_0_or_1_is_named(relabel, error, request, settings, lake, registered, ray_local, churn_job):
    """Labels as a warehouse exports them ("yes"/"no", or classes 1 and 2) stop the comparison with
    a sentence naming the label's setting, not NumPy's or scikit-learn's traceback. The warehouse
    names its days ``date=YYYY-MM-DD`` (``ab.labeled_partition``), where the comparison reads them."""
    table = pads.dataset(lake.partition_path(churn_job.ab.labeled_table, DAY), format="parquet").to_table()
    labeled = f"labeled/{request.node.callspec.id}"
    path = lake.partition_path(labeled, DAY, "date=%Y-%m-%d")
    lake.fs.create_dir(path, recursive=True)
    pq.write_table(table.set_column(table.schema.get_field_index("churned"), "churned", relabel(table["churned"])),
                   f"{path}/part-0.parquet", filesystem=lake.fs)  # fmt: skip
    ab = churn_job.ab.model_copy(update={"labeled_table": labeled, "labeled_partition": "date=%Y-%m-%d"})
    job = churn_job.model_copy(update={"ab": ab})

    with pytest.raises(InvalidInput, match=error):
        run_compare(job, DAY, settings=settings)


def test_compare_on_a_gpu_actor_that_leaves_its_reads_no_cpu_is_refused_at_once(
    settings, lake, registered, ray_local, churn_job, monkeypatch
):
    """The comparison's GPU path reads in tasks beside its actors, as the nightly job's does: on a
    private Ray (which never grows) an actor that would hold every CPU is a sentence, not a run
    that waits forever on its reads (the GPU pipeline's shape, on CPU actors here)."""
    import time

    import ray

    from jobs import ab
    from jobs.failures import exit_status
    from jobs.yamlconf import ConfigError

    monkeypatch.setattr(ab, "actors_read_and_write", lambda gpus: False)
    cpus = ray.cluster_resources()["CPU"]
    job = churn_job.model_copy(update={"compute": churn_job.compute.model_copy(update={"cpus_per_actor": cpus})})
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"conf/jobs/churn\.yaml: a GPU actor asks for {cpus:g} CPU") as raised:
        run_compare(job, DAY, settings=settings)
    assert time.monotonic() - started < 60
    assert f"at most {cpus - 1:g}" in str(raised.value) and exit_status(raised.value) == 2
