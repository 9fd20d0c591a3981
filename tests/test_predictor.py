"""The predictor a Ray actor runs, called directly on one Arrow batch."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.conftest import DAY


@pytest.fixture(scope="module")
def raw_batch(lake) -> pa.Table:
    return pads.dataset(lake.partition_path("raw/customers", DAY), format="parquet").to_table().slice(0, 500)


def make_predictor(settings, version: int, threshold: float | None = None, scorer=None, dtype: str | None = None):
    from models.predictor import BatchPredictor, Lineage, PredictorOptions

    return BatchPredictor(
        PredictorOptions(
            model_uri=f"models:/churn-classifier/{version}",
            tracking_uri=settings.mlflow.tracking_uri,
            registry_uri=None,
            key="customer_id",
            score_column="churn_probability",
            threshold=threshold,
            lineage=Lineage("churn-classifier", version, "run-123", dt.datetime(2026, 11, 22, 2, tzinfo=dt.UTC)),
            dtype=dtype,
        ),
        scorer=scorer,
    )


def test_scores_a_batch_with_lineage(settings, registered, raw_batch):
    from models.predictor import prediction_columns

    predictor = make_predictor(settings, registered["champion"])
    out = predictor(raw_batch)
    assert out.num_rows == raw_batch.num_rows
    assert out.column_names == [
        "customer_id",
        "churn_probability",
        "prediction",
        "model_name",
        "model_version",
        "variant",
        "scoring_run_id",
        "scored_at",
    ]
    assert out.column_names == prediction_columns("customer_id", "churn_probability")
    assert out["customer_id"].equals(raw_batch["customer_id"])
    proba = out["churn_probability"].to_numpy()
    assert ((proba >= 0) & (proba <= 1)).all() and proba.std() > 0
    assert (out["prediction"].to_numpy() == (proba >= 0.5)).all()
    assert set(out["model_version"].to_pylist()) == {registered["champion"]}
    assert set(out["scoring_run_id"].to_pylist()) == {"run-123"}
    assert out["scored_at"].type == pa.timestamp("us", tz="UTC")
    assert predictor.device == "cpu"


def test_a_shipped_scorer_scores_the_same_without_the_registry(settings, registered, raw_batch):
    """The job loads the model once on the driver and ships it to actors: same scores."""
    import mlflow

    from models.predictor import arrow_scorer

    uri = f"models:/churn-classifier/{registered['champion']}"
    scorer = arrow_scorer(mlflow.pyfunc.load_model(uri))
    from_registry = make_predictor(settings, registered["champion"])(raw_batch)
    shipped = make_predictor(settings, registered["champion"], scorer=scorer)
    assert shipped.pyfunc is None  # no MLflow in the actor
    assert shipped(raw_batch)["churn_probability"].equals(from_registry["churn_probability"])


def test_same_scores_as_the_registered_pyfunc(settings, registered, raw_batch):
    import mlflow

    predictor = make_predictor(settings, registered["challenger"])
    expected = mlflow.pyfunc.load_model("models:/churn-classifier@challenger").predict(raw_batch.to_pandas())
    got = predictor(raw_batch)
    np.testing.assert_allclose(got["churn_probability"].to_numpy(), expected["probability"].to_numpy(), rtol=1e-6)
    assert (got["prediction"].to_numpy() == expected["prediction"].to_numpy()).all()


def test_a_cpu_actor_scores_in_float32_whatever_the_jobs_dtype(settings, registered, raw_batch):
    """``compute.dtype`` is for GPU actors; on the CPU the scores are float32's, to the bit."""
    import torch

    version = registered["challenger"]
    full = make_predictor(settings, version)(raw_batch)
    for dtype in ("bfloat16", "float16"):
        predictor = make_predictor(settings, version, dtype=dtype)
        assert predictor.device == "cpu" and next(predictor.model.net.parameters()).dtype == torch.float32
        assert predictor(raw_batch).equals(full)


def test_two_outputs_are_a_classifiers_probabilities_never_a_regressions():
    """A row of two numbers that sum to 1 is a binary classifier's two class probabilities, of
    which the score is the second; a regression's two outputs are two predicted values, and which
    one the user meant is not lakecast's guess."""
    from models.predictor import ModelOutputError, one_score_per_row

    three = np.array([[0.2, 0.3, 0.5]] * 3)
    with pytest.raises(ModelOutputError, match=r"shape \(3, 3\) .* set model.task: multiclass and name them in model"):
        one_score_per_row(three, 3, "models:/m/1")
    two = np.array([[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_array_equal(one_score_per_row(two, 3, "models:/m/1"), np.float32([0.75, 0.5, 0.0]))
    with pytest.raises(ModelOutputError, match=r"models:/m/1 returned predictions of shape \(3, 2\) for 3 rows; "):
        one_score_per_row(two, 3, "models:/m/1", classifies=False)
    values = one_score_per_row(np.array([[250.0], [-3.5], [16_777_217.0]]), 3, "models:/m/1", classifies=False)
    np.testing.assert_array_equal(values, [250.0, -3.5, 16_777_217.0])  # past float32's integers, kept


def test_a_multiclass_models_prediction_is_its_most_probable_class(tmp_path):
    """The prediction names the class of the highest probability, which is the score; the
    classes' names go to Parquet as strings, dictionary-encoded, and are read back as written."""
    import pyarrow.parquet as pq

    from models.predictor import Lineage, class_probabilities, parquet_options, prediction_table

    classes = ("basic", "plus", "premium")
    proba = class_probabilities(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]]), 3, "m", classes)
    lineage = Lineage("plan", 4, "run-1", dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    keys = pa.array([10, 11, 12])
    table = prediction_table(keys, proba, key="id", score_column="p", threshold=None, lineage=lineage, classes=classes)
    assert table.column("prediction").to_pylist() == ["basic", "premium", "plus"]
    np.testing.assert_array_equal(table.column("p").to_numpy(), np.float32([0.7, 0.6, 0.5]))
    options = parquet_options(table.schema)
    assert "prediction" in options["use_dictionary"] and "p" not in options["use_dictionary"]
    pq.write_table(table, tmp_path / "part.parquet", **options)
    back = pq.read_table(tmp_path / "part.parquet")
    assert back.column("prediction").to_pylist() == ["basic", "premium", "plus"]
    assert pq.read_schema(tmp_path / "part.parquet").field("p").type == pa.float32()


@pytest.mark.parametrize(
    ("keys", "key_as_deltas"),
    [
        (np.arange(5_000, dtype=np.int64) + 10**12, True),  # ids in order, far from 0
        (np.random.default_rng(1).permutation(5_000).astype(np.int64), True),  # shuffled, a small span
        (np.random.default_rng(2).integers(-(2**62), 2**62, 5_000), False),  # hashes: plain values
    ],
)
def test_the_key_and_prediction_are_stored_as_deltas_where_that_pays(tmp_path, keys, key_as_deltas):
    """What a reader of the lake sees: the file's encodings, and the same rows read back."""
    from models.predictor import Lineage, parquet_options, prediction_table

    lineage = Lineage("churn", 3, "r" * 32, dt.datetime(2026, 12, 7, tzinfo=dt.UTC))
    proba = np.random.default_rng(0).random(len(keys), dtype=np.float32)
    table = prediction_table(pa.array(keys), proba, key="id", score_column="p", threshold=0.5, lineage=lineage)
    pq.write_table(table, tmp_path / "part.parquet", **parquet_options(table, key="id"))
    columns = pq.ParquetFile(tmp_path / "part.parquet").metadata.row_group(0)
    encodings = {columns.column(i).path_in_schema: columns.column(i).encodings for i in range(columns.num_columns)}
    assert "DELTA_BINARY_PACKED" in encodings["prediction"]
    assert ("DELTA_BINARY_PACKED" in encodings["id"]) is key_as_deltas
    assert pq.read_table(tmp_path / "part.parquet").equals(table)


@pytest.mark.parametrize(
    ("returned", "error"),
    [
        (
            np.full((3, 2), 0.5),
            r"m returned predictions of shape \(3, 2\) for 3 rows; a multiclass model \(model.task\) "
            r"returns a probability per class, 3 columns for model.classes \[a, b, c\]",
        ),
        (
            np.array([[2.0, -1.0, 0.5]] * 3),
            r"m returned rows that are not a probability per class \(row 0 of the batch: "
            r"2, -1, 0.5, summing to 1.5\); .* a network that returns logits needs a softmax last",
        ),
        (
            np.array([[0.5, 0.5, 0.0], [np.nan, 0.5, 0.5], [0.2, 0.2, 0.6]]),
            r"m returned NaN or infinite probabilities "
            r"for 1 of 3 rows \(the first at row 1 of the batch\)",
        ),
    ],
)
def test_a_multiclass_models_output_that_is_not_its_class_probabilities_is_named(returned, error):
    from models.predictor import ModelOutputError, class_probabilities

    with pytest.raises(ModelOutputError, match=error):
        class_probabilities(returned, 3, "m", ("a", "b", "c"))


def test_an_embedding_models_vectors_are_written_as_they_are_and_a_wrong_one_is_named(tmp_path):
    """A vector of ``dimensions`` numbers a row, from an array or a frame of a column per
    component, written as a fixed-size list of float32 that reads back as the model returned it;
    another width, or a NaN, stops the run naming the model and the batch's row."""
    import pandas as pd

    from models.predictor import Lineage, ModelOutputError, embedding_vectors, parquet_options, prediction_table

    returned = pd.DataFrame(np.arange(12, dtype=np.float64).reshape(3, 4) / 7)
    vectors = embedding_vectors(returned, 3, "m", 4)
    lineage = Lineage("m", 1, "r" * 32, dt.datetime(2026, 11, 21, tzinfo=dt.UTC))
    table = prediction_table(
        pa.array([7, 8, 9]), vectors, key="id", score_column="vec", threshold=None, lineage=lineage
    )
    pq.write_table(table, tmp_path / "p.parquet", **parquet_options(table.schema))
    back = pq.read_table(tmp_path / "p.parquet")
    assert "prediction" not in back.column_names
    np.testing.assert_array_equal(np.stack(back["vec"].to_numpy(zero_copy_only=False)), returned.to_numpy(np.float32))
    with pytest.raises(
        ModelOutputError, match=r"m returned predictions of shape \(3, 4\) for 3 rows; an embedding model"
    ):
        embedding_vectors(returned, 3, "m", 8)
    # a frame of one column holding each row's vector, as many pyfunc models return them
    np.testing.assert_array_equal(
        embedding_vectors(pd.DataFrame({"v": list(returned.to_numpy())}), 3, "m", 4), returned.to_numpy(np.float32)
    )
    with pytest.raises(ModelOutputError, match=r"m returned predictions of shape \(3,\) for 3 rows"):
        embedding_vectors(pd.Series([[1.0, 2.0], [1.0], [3.0, 4.0]]), 3, "m", 2)
    returned.iloc[2, 1] = np.nan
    with pytest.raises(
        ModelOutputError,
        match=r"m returned NaN or infinite vectors for 1 of 3 rows \(the first at row 2 of the batch\)",
    ):
        embedding_vectors(returned, 3, "m", 4)


def test_an_embeddings_values_are_required_and_read_with_the_days_written_before(tmp_path):
    """An embedding's values are stored as Parquet's ``required float element``: none can be
    null, and readers skip a definition level per value. Days written before, when the values were
    declared nullable, read together with a day written now as one table, in either order."""
    import pandas as pd

    from models.predictor import Lineage, parquet_options, prediction_table

    lineage = Lineage("m", 1, "r" * 32, dt.datetime(2026, 11, 21, tzinfo=dt.UTC))
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    now = prediction_table(pa.array([7, 8, 9]), vectors, key="id", score_column="vec", threshold=None, lineage=lineage)
    (tmp_path / "ds=2026-11-21").mkdir()
    pq.write_table(now, tmp_path / "ds=2026-11-21" / "p.parquet", **parquet_options(now, key="id"))
    element = pq.ParquetFile(tmp_path / "ds=2026-11-21" / "p.parquet").schema.column(1)
    assert (element.path, element.max_definition_level) == ("vec.list.element", 1)  # 2 where values may be null
    assert str(pq.read_schema(tmp_path / "ds=2026-11-21" / "p.parquet").field("vec").type) == (
        "fixed_size_list<element: float not null>[4]"
    )

    before = now.set_column(1, "vec", pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel() + 100), 4))
    (tmp_path / "ds=2026-11-20").mkdir()
    pq.write_table(before, tmp_path / "ds=2026-11-20" / "p.parquet")
    days = sorted(tmp_path.glob("ds=*/p.parquet"))
    for files in (days, days[::-1]):
        table = pads.dataset([str(f) for f in files], format="parquet").to_table()
        read = np.stack(table["vec"].to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(
            np.sort(read.ravel()), np.sort(np.concatenate([vectors.ravel(), vectors.ravel() + 100]))
        )
    assert pd.read_parquet(tmp_path).shape[0] == 6


def test_threshold_from_job_overrides_model(settings, registered, raw_batch):
    out = make_predictor(settings, registered["champion"], threshold=0.0)(raw_batch)
    assert out["prediction"].to_numpy().all()


def test_nulls_and_unseen_categories_are_scored(settings, registered, raw_batch):
    batch = raw_batch.slice(0, 4)
    batch = batch.set_column(
        batch.schema.get_field_index("plan_tier"), "plan_tier", pa.array(["basic", "quantum", None, "fiber"])
    )
    batch = batch.set_column(
        batch.schema.get_field_index("tenure_months"), "tenure_months", pa.array([None, 3.0, 1.0, 2.0], pa.float64())
    )
    out = make_predictor(settings, registered["champion"])(batch)
    assert np.isfinite(out["churn_probability"].to_numpy()).all()


def test_challenger_is_the_better_model(settings, registered, lake):
    """The demo's point: the larger model really predicts the label better."""
    from sklearn.metrics import roc_auc_score

    labeled = pads.dataset(lake.partition_path("labeled/customers", DAY), format="parquet").to_table()
    auc = {
        alias: roc_auc_score(labeled["churned"].to_numpy(), make_predictor(settings, v)(labeled)["churn_probability"])
        for alias, v in registered.items()
    }
    assert auc["challenger"] > auc["champion"] + 0.01, auc


@pytest.mark.parametrize("combined", [False, True], ids=["lookup per column", "lookup per combination"])
def test_the_folded_first_layer_scores_as_the_trained_network(settings, registered, raw_batch, combined, monkeypatch):
    """Scoring folds the standardisation and the one-hot encoding into the first layer. On rows
    with nulls, NaN, infinities, unseen and null categories, an integer column with a null, in
    several chunks, read with plain or dictionary-encoded strings, a float column as float32, it
    gives what the trained network gives on the one-hot features it learned from. So it does
    where a batch's categories are looked up as one combination a row (as a large batch of the
    champion's is: here forced on these small ones; a batch in chunks still takes a lookup per
    column)."""
    import mlflow
    import pyarrow.compute as pc
    import torch

    from models import tabular
    from models.predictor import arrow_scorer
    from models.tabular import SMALL_DICTIONARY

    monkeypatch.setattr(tabular, "COMBO_WEIGHTS_PER_ROW", 10**9 if combined else 0)
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    n = raw_batch.num_rows
    messy = {
        "tenure_months": [None, float("nan"), float("inf"), float("-inf"), 1e6],
        "age": [None, 0, 200, -5, 40],
        "plan_tier": ["quantum", None, "", "basic", "Basic"],
    }
    batch = with_values(raw_batch, **messy)
    strings = [f.name for f in batch.schema if pa.types.is_string(f.type)]
    encoded = pa.table(
        {c: pc.dictionary_encode(batch.column(c)) if c in strings else batch.column(c) for c in batch.column_names}
    )
    chunked = pa.concat_tables([encoded.slice(0, 7), encoded.slice(7, n - 107), encoded.slice(n - 100)])
    # dictionaries as other writers make them: a null among the entries, and one larger than a
    # batch's dictionary usually is (looked up through Arrow instead of Python)
    null_entry = with_dictionary(batch, "plan_tier", lambda seen: [None, *seen])
    large = with_dictionary(batch, "plan_tier", lambda seen: [*seen, *(f"x{i}" for i in range(SMALL_DICTIONARY))])
    # float32, as Spark and Polars may write it: its nulls are filled by Arrow, not found as NaN
    narrow = chunked.set_column(
        chunked.schema.get_field_index("tenure_months"), "tenure_months", chunked["tenure_months"].cast(pa.float32())
    )
    for alias in ("champion", "challenger"):
        scorer = arrow_scorer(mlflow.pyfunc.load_model(f"models:/churn-classifier@{alias}"))
        features = one_hot_features(scorer.spec, batch)
        np.testing.assert_allclose(scorer.spec.transform(batch), features, atol=1e-6)
        with torch.inference_mode():
            trained = torch.sigmoid(scorer.net(torch.from_numpy(features))).squeeze(1).numpy()
        assert np.isfinite(trained).all() and trained.std() > 0
        for table in (batch, encoded, chunked, null_entry, large, narrow):
            in_chunks = table is chunked or table is narrow
            assert table.column("plan_tier").num_chunks == (3 if in_chunks else 1)
            assert (scorer.inputs(table)[3] is not None) == (combined and not in_chunks)
            np.testing.assert_allclose(scorer.predict_proba(table), trained, atol=1e-6, err_msg=alias)


def test_refusing_non_finite_numbers_raises_on_this_thread_only(settings, registered, raw_batch):
    """What the CPU actors' row checks rely on when they leave NaN and infinity to the scorer:
    inside ``refusing_non_finite`` a float column's NaN or infinity raises, naming the column,
    where outside it scores as the column's mean; an integer column's null (NaN once converted)
    still scores as its mean; and another thread scoring meanwhile is not refused."""
    import threading

    from models.tabular import NonFiniteNumbers, refusing_non_finite

    predictor = make_predictor(settings, registered["champion"])
    assert {"tenure_months", "monthly_charges", "age"} <= predictor.refuses_non_finite

    nan = with_values(raw_batch, tenure_months=[1.0, float("nan")])
    infinite = with_values(raw_batch, monthly_charges=[float("-inf")], tenure_months=[float("inf")])
    null = with_values(raw_batch, tenure_months=[1.0, None])
    null_age = with_values(raw_batch, age=[None])
    assert pa.types.is_integer(null_age.schema.field("age").type)
    cases = [("clean", raw_batch), ("nan", nan), ("null", null), ("null_age", null_age)]
    outside = {name: predictor.score(t) for name, t in cases}
    np.testing.assert_array_equal(outside["nan"], outside["null"])  # NaN scores as a null would

    elsewhere: list[np.ndarray] = []
    with refusing_non_finite():
        other = threading.Thread(target=lambda: elsewhere.append(predictor.score(nan)))
        other.start()
        other.join()
        with pytest.raises(NonFiniteNumbers) as e:
            predictor.score(nan)
        assert e.value.columns == ["tenure_months"]
        with pytest.raises(NonFiniteNumbers) as e:
            predictor.score(infinite)
        assert sorted(e.value.columns) == ["monthly_charges", "tenure_months"]
        np.testing.assert_array_equal(predictor.score(null_age), outside["null_age"])
        np.testing.assert_array_equal(predictor.score(raw_batch), outside["clean"])  # nulls in float columns too
    np.testing.assert_array_equal(elsewhere[0], outside["nan"])
    np.testing.assert_array_equal(predictor.score(nan), outside["nan"])  # refused no more


def with_values(table: pa.Table, **columns: list) -> pa.Table:
    """``table`` with the first values of each named column replaced by those given, typed as the
    column is."""
    for name, values in columns.items():
        original = table.column(name).to_pylist()
        typed = pa.array(values + original[len(values) :], table.schema.field(name).type)
        table = table.set_column(table.schema.get_field_index(name), name, typed)
    return table


def with_dictionary(table: pa.Table, column: str, entries) -> pa.Table:
    """``table`` with ``column`` dictionary-encoded over ``entries(distinct values)``."""
    values = table.column(column).to_pylist()
    dictionary = entries(sorted({v for v in values if v is not None}))
    index = {v: i for i, v in enumerate(dictionary)}  # a null row points at a null entry if any
    indices = pa.array([index.get(v) for v in values], pa.int32())
    encoded = pa.DictionaryArray.from_arrays(indices, pa.array(dictionary, pa.string()))
    return table.set_column(table.schema.get_field_index(column), column, encoded)


def one_hot_features(spec, table: pa.Table) -> np.ndarray:
    """The features the network trained on, row by row in plain Python: standardised numbers (0
    where null, NaN or infinite), then each categorical column's one-hot block, whose first slot
    takes nulls and unseen values."""
    import math

    out = np.zeros((table.num_rows, spec.width), dtype=np.float32)
    for i, row in enumerate(table.to_pylist()):
        for j, column in enumerate(spec.numeric):
            value = row[column]
            if value is not None and math.isfinite(value):
                out[i, j] = (value - spec.means[j]) / spec.stds[j]
        offset = len(spec.numeric)
        for column, values in spec.categorical.items():
            value = row[column]
            out[i, offset + (values.index(value) + 1 if value in values else 0)] = 1.0
            offset += len(values) + 1
    return out


def test_both_forms_of_the_first_layer_score_alike(settings, registered, raw_batch):
    """The scorer times x·Wᵀ against (W·x)ᵀ on its first large batch and keeps the faster: the
    choice may differ between machines, the probabilities may not."""
    import mlflow

    from models.predictor import arrow_scorer

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    for alias in ("champion", "challenger"):
        scorer = arrow_scorer(mlflow.pyfunc.load_model(f"models:/churn-classifier@{alias}"))
        batch = pa.concat_tables([raw_batch] * 3)  # 1,500 rows: large enough to decide on
        chosen = scorer.predict_proba(batch)
        assert scorer.numeric_by_rows is not None
        scorer.numeric_by_rows = not scorer.numeric_by_rows
        np.testing.assert_allclose(scorer.predict_proba(batch), chosen, atol=1e-6)


def test_one_of_an_actors_threads_times_the_forms_on_a_slice(settings, registered, raw_batch, monkeypatch):
    """A CPU actor's threads share its scorer: one thread times the first layer's two forms, on
    the first TIMED_ROWS rows of its batch only, while another scores in the first form meanwhile,
    and the probabilities do not depend on which form scored them."""
    import threading

    import mlflow

    from models import tabular
    from models.predictor import arrow_scorer

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    scorer = arrow_scorer(mlflow.pyfunc.load_model("models:/churn-classifier@champion"))
    batch = pa.concat_tables([raw_batch] * 3)  # 1,500 rows
    monkeypatch.setattr(tabular, "TIMED_ROWS", 1_100)
    timing, scored, timed_rows = threading.Event(), threading.Event(), []
    faster = tabular._faster

    def held_faster(a, b):  # the timing thread waits inside its timing until the other has scored
        timing.set()
        assert scored.wait(30)
        return faster(a, b)

    first_hidden = scorer._first_hidden

    def recorded(numeric, codes, slots, sizes, *, by_rows):
        if timing.is_set() and threading.current_thread() is timer:
            timed_rows.append((numeric.shape[1], codes.shape[0]))
        return first_hidden(numeric, codes, slots, sizes, by_rows=by_rows)

    monkeypatch.setattr(tabular, "_faster", held_faster)
    monkeypatch.setattr(scorer, "_first_hidden", recorded)
    results = {}
    timer = threading.Thread(target=lambda: results.update(timer=scorer.predict_proba(batch)))
    timer.start()
    assert timing.wait(30)
    results["other"] = scorer.predict_proba(batch)  # scores while the timer holds the decision
    assert scorer.numeric_by_rows is None
    scored.set()
    timer.join(30)
    assert scorer.numeric_by_rows is not None
    # each form warmed up and timed three times on the slice, then the whole batch scored
    assert timed_rows == [(1_100, 1_100)] * 8 + [(1_500, 1_500)]
    np.testing.assert_allclose(results["timer"], results["other"], atol=1e-6)


def test_the_faster_form_is_chosen_on_more_than_one_timing():
    """Each form is timed several times in turn and its best kept: a form slowed once by the
    machine is not chosen against, and the pick does not depend on which goes first."""
    import time

    from models.tabular import _faster

    calls = []

    def quick() -> None:
        calls.append("quick")
        if calls.count("quick") == 2:  # its first timed run lands in a slow moment
            time.sleep(0.02)

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.005)

    assert _faster(quick, slow)
    assert calls.count("quick") == calls.count("slow") == 4  # a warm-up and three timed runs each
    calls.clear()
    assert not _faster(slow, quick)


def test_the_driver_loads_and_ships_the_scorer_without_torch(settings, registered, raw_batch, tmp_path):
    """torch takes 2 s to import: the job's driver only loads the model and ships it to actors."""
    import os
    import pickle
    import subprocess
    import sys

    from models.predictor import arrow_scorer
    from models.registry import load_pyfunc

    uri = f"models:/churn-classifier/{registered['champion']}"
    shipped = tmp_path / "scorer.pkl"
    code = (
        "import pickle, sys\n"
        "from models.predictor import arrow_scorer\n"
        "from models.registry import load_pyfunc\n"
        f"scorer = arrow_scorer(load_pyfunc({uri!r}))\n"
        f"open({str(shipped)!r}, 'wb').write(pickle.dumps(scorer))\n"
        "assert 'torch' not in sys.modules, 'the driver imported torch'\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    scorer = pickle.loads(shipped.read_bytes())
    expected = arrow_scorer(load_pyfunc(uri)).predict_proba(raw_batch)
    np.testing.assert_array_equal(scorer.predict_proba(raw_batch), expected)


def test_a_model_pinned_to_other_packages_is_named(tmp_path):
    from importlib.metadata import version

    from models.registry import requirement_mismatches

    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "# logged by a newer trainer\n"
        f"torch=={version('torch')}\n"  # satisfied (a local label such as +cpu does not count)
        "pyarrow\n"
        "numpy==0.0.1\n"
        "lakecast-surely-not-installed==1.0\n"
        'pandas==0.0.1; python_version < "3"\n'  # not for this Python
        "-r more.txt\n"
    )
    problems = requirement_mismatches(requirements)
    assert len(problems) == 2, problems
    assert problems[0] == f"numpy==0.0.1, but this environment has numpy {version('numpy')}"
    assert problems[1] == "lakecast-surely-not-installed==1.0, which is not installed here"
    assert requirement_mismatches(tmp_path / "missing.txt") == []


@pytest.mark.parametrize(
    ("logged", "differs"),
    [("python: 3.10\n", True), ("python: '3.10.4'\n", True), (None, False), ("build_dependencies: [pip]\n", False)],
)
def test_a_model_logged_under_another_python_is_named(tmp_path, logged, differs):
    """A pickled model may need the Python it was pickled with: the minor version MLflow recorded
    (``python_env.yaml``, read as text: YAML reads ``3.10`` as the number 3.1) is compared with
    this one's, beside the model's requirements."""
    import platform

    from models.registry import environment_mismatches

    (tmp_path / "requirements.txt").write_text("lakecast-surely-not-installed==1.0\n")
    if logged is not None:
        (tmp_path / "python_env.yaml").write_text(logged)
    problems = environment_mismatches(tmp_path)
    assert problems[0] == "lakecast-surely-not-installed==1.0, which is not installed here"
    if differs:
        python = logged.split(":")[1].strip().strip("'")
        assert problems[1:] == [f"Python {python}, where this environment runs Python {platform.python_version()}"]
    else:
        assert problems[1:] == []
    here = ".".join(platform.python_version_tuple()[:2])
    (tmp_path / "python_env.yaml").write_text(f"python: {here}.99\n")
    assert environment_mismatches(tmp_path)[1:] == []  # another patch release loads the same pickles


def test_lineage_strings_are_stored_as_parquet_strings(settings, registered, raw_batch, tmp_path):
    """One value per run, dictionary-encoded in memory; any Parquet reader sees strings."""
    import pyarrow.parquet as pq

    out = make_predictor(settings, registered["champion"])(raw_batch)
    assert pa.types.is_dictionary(out["scoring_run_id"].type)
    pq.write_table(out, tmp_path / "part.parquet")
    schema = pq.ParquetFile(tmp_path / "part.parquet").schema
    for column in ("model_name", "variant", "scoring_run_id"):
        assert str(schema.column(schema.names.index(column)).logical_type) == "String"
    plain = pq.read_table(tmp_path / "part.parquet", schema=pa.schema([("scoring_run_id", pa.string())]))
    assert set(plain["scoring_run_id"].to_pylist()) == {"run-123"}


def test_a_table_reads_across_partitions_written_before_its_columns_were_required(
    settings, registered, raw_batch, tmp_path
):
    """Earlier versions wrote the same columns as optional: a reader of the whole table gets
    every partition's rows, whichever it meets first."""
    import pyarrow.parquet as pq

    out = make_predictor(settings, registered["champion"])(raw_batch)
    assert not any(field.nullable for field in out.schema)
    optional = out.cast(pa.schema([field.with_nullable(True) for field in out.schema]))
    for day, table in (("2026-01-01", out), ("2026-01-02", optional), ("2026-01-03", out)):
        (tmp_path / f"ds={day}").mkdir()
        pq.write_table(table, tmp_path / f"ds={day}" / "part.parquet")
    read = pads.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert read.num_rows == 3 * out.num_rows
    assert read["customer_id"].null_count == 0


def test_a_pyfunc_model_gets_its_signatures_number_types():
    """MLflow refuses an int64 or float64 column for a float32 input (and a float64 for an int64),
    so lakecast casts each to the declared type, and names a value that does not fit."""
    from models.predictor import ModelInputError, pyfunc_input

    batch = pa.table({"id": [1, 2], "age": [40, 51], "charges": [1.5, 2.25], "calls": [3.0, 4.0]})
    types = {"age": np.dtype("float32"), "charges": np.dtype("float32"), "calls": np.dtype("int64")}
    frame = pyfunc_input(batch, ["age", "charges", "calls"], None, types)
    assert list(frame.columns) == ["age", "charges", "calls"]  # never the key
    assert frame.dtypes.to_dict() == types
    assert frame.to_numpy().tolist() == [[40.0, 1.5, 3.0], [51.0, 2.25, 4.0]]
    with pytest.raises(ModelInputError, match=r"column 'charges' does not fit the model's int64 input: .*1\.5"):
        pyfunc_input(batch, ["charges"], None, {"charges": np.dtype("int64")})
    with pytest.raises(ModelInputError, match=r"column 'id' does not fit the model's int32 input"):
        pyfunc_input(pa.table({"id": [2**40]}), ["id"], None, {"id": np.dtype("int32")})


def test_the_demo_model_imports_without_mlflow_nagging():
    """MLflow checks a PythonModel's predict type hints when the class is defined, on every job's
    start; hints it cannot resolve printed two log lines and a warning about adding type hints."""
    import subprocess
    import sys

    from jobs.settings import PROJECT_ROOT

    code = (
        "import logging, warnings; logging.basicConfig(level=logging.INFO); warnings.simplefilter('always'); "
        "import models.tabular_pyfunc"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "type hint" not in proc.stderr, proc.stderr
