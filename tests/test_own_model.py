"""A user's own model in the registry, with no lakecast code in it: a PyTorch network logged
with ``mlflow.pytorch`` (as a pickle with named columns, or in MLflow's default ``pt2`` format,
which takes one tensor), a scikit-learn classifier, or any pyfunc model. The job scores it
through its pyfunc, and its scores are what the model itself gives for the same rows; the
comparison's metrics are those of the models' own scores."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.models import ModelSignature, infer_signature
from sklearn.metrics import roc_auc_score

from jobs.ab import run_compare
from jobs.ab_report import markdown
from jobs.cli import main as lakecast
from jobs.config import load_job_file
from jobs.failures import EXIT_FIX_FIRST, JobError, exit_status
from jobs.lake import Lake
from jobs.predict import run_job
from jobs.ray_errors import ActorsDied
from jobs.settings import PROJECT_ROOT
from jobs.tracking import configure
from jobs.validation import InvalidInput
from models.output_columns import LINEAGE_COLUMNS
from models.predictor import ModelFailed, ModelOutputError, prediction_columns
from models.registry import ModelLoadError
from tests.conftest import DAY, LABELED_ROWS, ROWS, S3_BUCKET

# MLflow's advice to whoever logs a model, given as the users' models here are logged on purpose:
# a signature inferred from integer columns, no input example
pytestmark = [
    pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*An input example was not provided:UserWarning"),
]

# the demo table's numeric columns, in the order the user's network takes them
NUMERIC = ["age", "tenure_months", "monthly_charges", "total_charges", "num_support_calls", "data_usage_gb"]


def job_file(folder: Path, name: str, model: str, *, columns: list[str] | None = None) -> Path:
    """``conf/jobs/<name>.yaml`` as a user writes it for their model (rows with nulls the network
    cannot take are quarantined, so the job accepts up to half of them)."""
    lines = [
        f"description: churn scored by {model}",
        "schedule: null",
        "input: {table: raw/customers, key: customer_id"
        + (f", columns: [{', '.join(columns)}]" if columns else "")
        + "}",
        f"model: {{name: {model}}}",
        f"output: {{table: predictions/{name}}}",
        "validation: {max_invalid_share: 0.5}",
    ]
    path = folder / "jobs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def raw_rows(lake) -> pd.DataFrame:
    return pads.dataset(lake.partition_path("raw/customers", DAY), format="parquet").to_table().to_pandas()


def output(lake, name: str, table: str = "predictions") -> pd.DataFrame:
    return pads.dataset(lake.partition_path(f"{table}/{name}", DAY), format="parquet").to_table().to_pandas()


@pytest.fixture(scope="module")
def network(lake) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(len(NUMERIC), 8), torch.nn.ReLU(), torch.nn.Linear(8, 1), torch.nn.Sigmoid()
    )
    return net.eval()


def expected_scores(net: torch.nn.Module, rows: pd.DataFrame, columns: list[str]) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(rows[columns].to_numpy(np.float32))).numpy()[:, 0]


def register(settings, name: str, log) -> None:
    """Log and register a model the way a user does (as the README shows: no experiment named, so
    its files go under LAKECAST_HOME), and point ``champion`` at it."""
    configure(settings)
    with mlflow.start_run():
        info = log(name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", info.registered_model_version)


def register_pyfunc(
    settings,
    name: str,
    model: mlflow.pyfunc.PythonModel,
    *,
    signature: ModelSignature | None = None,
    requirements: list[str] | None = None,
) -> None:
    """``register`` for a ``PythonModel`` of the user's, with its pinned requirements (pandas by
    default: MLflow would otherwise spend seconds inferring them)."""
    register(
        settings,
        name,
        lambda name: mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=signature,
            registered_model_name=name,
            pip_requirements=requirements or ["pandas"],
        ),
    )


@pytest.fixture(scope="module")
def user_torch(settings, lake, network) -> str:
    """A PyTorch network logged with its named columns (a pickle: MLflow's default, pt2, takes a
    tensor; see below), typed float32 as PyTorch users build their frames: the lake's columns are
    int64 and float64, which MLflow's schema check refuses for a float32 input."""
    sample = raw_rows(lake)[NUMERIC].dropna().head(100).astype(np.float32)
    register(settings, "user-torch", with_columns(network, sample))
    return "user-torch"


def with_columns(net: torch.nn.Module, sample: pd.DataFrame):
    """Logs ``net`` as a user does to give it named columns: a pickle with a signature inferred
    from ``sample`` (MLflow's default format, pt2, takes one tensor)."""
    return lambda name: mlflow.pytorch.log_model(
        net,
        name="model",
        serialization_format="pickle",
        signature=infer_signature(sample, expected_scores(net, sample, NUMERIC)),
        registered_model_name=name,
        pip_requirements=[f"torch=={torch.__version__}"],
    )


def as_on_gpus(job, monkeypatch: pytest.MonkeyPatch):
    """``job`` scored in the GPU pipeline's shape on a CPU actor (no GPU here): the actor scores
    batches of 500 rows that write tasks apart from it write in files of 1,000."""
    from jobs import pipeline

    monkeypatch.setattr(pipeline, "actors_read_and_write", lambda gpus: False)
    compute = {"min_actors": 1, "max_actors": 1, "cpus_per_actor": 1, "batch_size": 500}
    return job.model_copy(
        update={
            "compute": job.compute.model_copy(update=compute),
            "output": job.output.model_copy(update={"rows_per_file": 1_000}),
        }
    )


@pytest.mark.parametrize("columns", [None, ["customer_id", *NUMERIC]], ids=["signature", "listed-with-the-key"])
def test_pytorch_model_with_named_columns(settings, lake, ray_local, network, user_torch, tmp_path, columns):
    """Its columns read from its signature, or listed in the job file (the key among them, which
    is read anyway)."""
    result = run_job(
        load_job_file(job_file(tmp_path, "user_torch", user_torch, columns=columns)), DAY, settings=settings
    )

    rows = raw_rows(lake)
    scored, quarantined = output(lake, "user_torch"), output(lake, "user_torch", "quarantine")
    has_null = rows.set_index("customer_id")[NUMERIC].isna().any(axis=1)
    assert sorted(quarantined["customer_id"]) == sorted(has_null.index[has_null])  # the signature requires them
    assert result.rows == ROWS and result.quarantined == len(quarantined) > 0
    assert len(scored) == ROWS - len(quarantined)
    want = expected_scores(network, rows.set_index("customer_id").loc[scored["customer_id"]], NUMERIC)
    np.testing.assert_allclose(scored["score"], want, rtol=1e-6)
    assert set(scored["model_name"]) == {"user-torch"}


def test_a_network_on_named_columns_scores_without_torchs_warning_of_read_only_input(
    settings, lake, user_torch, tmp_path
):
    """pandas 3 hands a DataFrame's numbers out as read-only views, and MLflow's pytorch flavor
    makes its input tensor of them: torch warned in every actor's log that writing to that tensor
    would be undefined behavior. The wrapper only reads it, so the predictor quiets that one
    warning. Checked in a fresh process, as torch warns once a process, with every other warning
    shown."""
    rows = raw_rows(lake)[["customer_id", *NUMERIC]].dropna().head(64)
    batch = tmp_path / "batch.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), batch)
    code = f"""
import datetime as dt, warnings
import pyarrow.parquet as pq
warnings.simplefilter("always")
from models.predictor import BatchPredictor, Lineage, PredictorOptions
options = PredictorOptions(
    model_uri="models:/{user_torch}@champion", tracking_uri={settings.mlflow.tracking_uri!r}, registry_uri=None,
    key="customer_id", score_column="score", threshold=None,
    lineage=Lineage("{user_torch}", 1, "run", dt.datetime(2026, 11, 22, tzinfo=dt.UTC)),
)
print(len(BatchPredictor(options).score(pq.read_table({str(batch)!r}))))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["64"]
    assert "not writable" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize(
    ("columns", "error"),
    [
        (
            [*NUMERIC, "favourite_colour"],
            r"input.columns in <jobs>/listed.yaml lists \['favourite_colour'\], which are not inputs of "
            r"models:/user-torch/1 \(its inputs: \['age', 'tenure_months', ",
        ),
        (
            NUMERIC[:2],
            r"input.columns in <jobs>/listed.yaml leaves out \['monthly_charges', 'total_charges', "
            r"'num_support_calls', 'data_usage_gb'\], which models:/user-torch/1 requires: list them too",
        ),
    ],
)
def test_input_columns_must_be_inputs_the_model_can_score_with(
    settings, lake, ray_local, user_torch, tmp_path, columns, error
):
    """A job file that lists columns the model does not take, or leaves out ones it needs, is told
    so before an actor starts, where the model would fail on its first batch with a traceback.
    The error names the job file where it is (a folder outside the project: its whole path)."""
    job = load_job_file(job_file(tmp_path, "listed", user_torch, columns=columns))
    with pytest.raises(JobError, match=error.replace("<jobs>", re.escape(str(tmp_path / "jobs")))):
        run_job(job, DAY, settings=settings)
    assert not Path(lake.partition_path("predictions/listed", DAY)).exists()


def test_pt2_model_takes_the_columns_in_the_job_files_order(settings, lake, ray_local, network, tmp_path):
    """MLflow's default format logs a tensor signature, which names no columns: the job file lists
    them, in the network's order (here not the file's order)."""
    order = NUMERIC[::-1]
    reordered = torch.nn.Sequential(_Permute([order.index(c) for c in NUMERIC]), network).eval()
    rows = raw_rows(lake)
    sample = rows[order].dropna().head(16).to_numpy(np.float32)
    register(
        settings,
        "user-pt2",
        lambda name: mlflow.pytorch.log_model(
            reordered,
            name="model",
            input_example=sample,
            registered_model_name=name,
            pip_requirements=[f"torch=={torch.__version__}"],
        ),
    )
    conf = tmp_path / "conf"

    with pytest.raises(
        JobError, match=rf"takes a tensor.*input\.columns in {re.escape(str(conf))}/jobs/user_pt2\.yaml$"
    ):
        run_job(load_job_file(job_file(conf, "user_pt2", "user-pt2")), DAY, settings=settings)
    with pytest.raises(JobError, match=r"shape \(-1, 6\).*lists 5 columns"):
        run_job(load_job_file(job_file(conf, "user_pt2", "user-pt2", columns=order[:5])), DAY, settings=settings)

    run_job(load_job_file(job_file(conf, "user_pt2", "user-pt2", columns=order)), DAY, settings=settings)
    scored = output(lake, "user_pt2")
    assert len(scored) + len(output(lake, "user_pt2", "quarantine")) == ROWS
    want = expected_scores(network, rows.set_index("customer_id").loc[scored["customer_id"]], NUMERIC)
    np.testing.assert_allclose(scored["score"], want, rtol=1e-5, atol=1e-6)


class _Permute(torch.nn.Module):
    """Takes the columns in another order: a network trained on the reversed column order."""

    def __init__(self, index: list[int]):
        super().__init__()
        self.register_buffer("index", torch.tensor(index))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class _TierScore(mlflow.pyfunc.PythonModel):
    """A pyfunc model on a string column and a number; ``columns`` outputs (2 is not a score)."""

    def __init__(self, columns: int = 1):
        self.columns = columns

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        score = (model_input["plan_tier"] == "premium") * 0.5 + model_input["age"] / 1000
        return pd.DataFrame({f"out{i}": score for i in range(self.columns)})


class _OldAgeNaN(_TierScore):
    """A model that breaks on some valid rows: NaN for customers over 70."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return super().predict(context, model_input).where(model_input["age"] <= 70)


def test_pyfunc_model_gets_strings_and_a_user_error_for_a_bad_output(settings, lake, ray_local, tmp_path):
    rows = raw_rows(lake)
    # a signature inferred from the frame the user had, id included: MLflow will not call the
    # model without every column its signature names
    sample = rows[["customer_id", "plan_tier", "age"]].dropna().head(20)
    # the model's class is pickled with its code, as a user's notebook would log it
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for name, model in (("user-tiers", _TierScore()), ("user-two-outputs", _TierScore(2)), ("user-nan", _OldAgeNaN())):
        register_pyfunc(settings, name, model, signature=infer_signature(sample, _TierScore().predict(None, sample)))

    run_job(load_job_file(job_file(tmp_path, "user_tiers", "user-tiers")), DAY, settings=settings)
    scored = output(lake, "user_tiers").merge(rows, on="customer_id")
    np.testing.assert_allclose(scored["score"], (scored["plan_tier"] == "premium") * 0.5 + scored["age"] / 1000)

    job = load_job_file(job_file(tmp_path, "user_two_outputs", "user-two-outputs"))
    with pytest.raises(
        ModelOutputError, match=r"^models:/user-two-outputs/1 returned predictions of shape \(\d+, 2\)"
    ) as raised:
        run_job(job, DAY, settings=settings)
    assert type(raised.value) is ModelOutputError  # the sentence, not Ray's wrapper with the traceback
    assert not Path(lake.partition_path("predictions/user_two_outputs", DAY)).exists()

    job = load_job_file(job_file(tmp_path, "user_nan", "user-nan"))
    with pytest.raises(ModelOutputError, match=r"models:/user-nan/1 returned NaN or infinite predictions for [1-9]"):
        run_job(job, DAY, settings=settings)
    assert not Path(lake.partition_path("predictions/user_nan", DAY)).exists()


class _Brightness(mlflow.pyfunc.PythonModel):
    """A user's image model on a column of JPEG files' bytes: each decoded, scored by its mean
    brightness."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        return np.array([_brightness(photo) for photo in model_input["photo"]])


def _brightness(jpeg: bytes) -> float:
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")).mean()) / 255


def test_a_pyfunc_model_gets_a_binary_column_as_bytes(settings, lake, ray_local, tmp_path):
    """Images (or documents) stored in Parquet as bytes, as Spark and pandas write them: the model
    gets each row's bytes whole, in small batches as the job file asks (a row is kilobytes here,
    not a few numbers), and a photo missing where the signature requires one is quarantined."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = []
    for _ in range(300):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        photos.append(buffer.getvalue())
    rows = pa.table({"photo_id": np.arange(300), "photo": pa.array([*photos[:-1], None], pa.binary())})
    partition = Path(lake.partition_path("raw/photos", DAY))
    partition.mkdir(parents=True)
    pq.write_table(rows, partition / "part-0.parquet")
    sample = pd.DataFrame({"photo": photos[:5]})
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    signature = infer_signature(sample, _Brightness().predict(None, sample))
    register_pyfunc(settings, "user-photos", _Brightness(), signature=signature, requirements=["pandas", "pillow"])
    job = tmp_path / "jobs" / "photos.yaml"
    job.parent.mkdir()
    job.write_text(
        "description: photos scored by their brightness\nschedule: null\n"
        "input: {table: raw/photos, key: photo_id}\nmodel: {name: user-photos}\n"
        "output: {table: predictions/photos}\nvalidation: {max_invalid_share: 0.01}\n"
        "compute: {batch_size: 64}\n"
    )

    result = run_job(load_job_file(job), DAY, settings=settings)

    scored = output(lake, "photos").sort_values("photo_id")
    assert list(scored["photo_id"]) == list(range(299))
    np.testing.assert_allclose(scored["score"], [_brightness(photo) for photo in photos[:-1]], rtol=1e-6)
    assert list(output(lake, "photos", "quarantine")["photo_id"]) == [299]
    assert (result.rows, result.quarantined) == (300, 1)


# MLflow's scikit-learn flavor saves through skops, which looks up names in every loaded module;
# in this process that includes Airflow's, and each lookup of a moved name warns
@pytest.mark.filterwarnings("ignore::FutureWarning:skops")
def test_a_scikit_learn_classifier_scores_its_positive_class(settings, lake, ray_local, tmp_path):
    """Logged as scikit-learn's docs say, with ``predict_proba``: two class probabilities a row."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    labeled = pads.dataset(lake.partition_path("labeled/customers", DAY), format="parquet").to_table().to_pandas()
    labeled = labeled.dropna(subset=NUMERIC)
    classifier = LogisticRegression(max_iter=1000).fit(labeled[NUMERIC], labeled["churned"])
    register(
        settings,
        "user-sklearn",
        lambda name: mlflow.sklearn.log_model(
            classifier,
            name="model",
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(labeled[NUMERIC].head(50), classifier.predict_proba(labeled[NUMERIC].head(50))),
            registered_model_name=name,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],  # MLflow's inference takes seconds
        ),
    )

    run_job(load_job_file(job_file(tmp_path, "user_sklearn", "user-sklearn")), DAY, settings=settings)

    rows = raw_rows(lake).set_index("customer_id")
    scored = output(lake, "user_sklearn")
    assert len(scored) + len(output(lake, "user_sklearn", "quarantine")) == ROWS
    want = classifier.predict_proba(rows.loc[scored["customer_id"], NUMERIC])[:, 1]
    np.testing.assert_allclose(scored["score"], want, rtol=1e-5)
    assert (scored["prediction"] == (want >= 0.5)).all()


@pytest.mark.filterwarnings("ignore::FutureWarning:skops")
def test_a_regression_model_writes_its_predicted_values_and_is_compared_on_rmse(settings, lake, ray_local, tmp_path):
    """``model.task: regression``: a customer's total charges predicted from their tenure and monthly
    charges, by two scikit-learn regressors. The predictions hold the predicted values as the
    models return them (in the thousands, not probabilities) and no ``prediction`` column; the
    scores' distribution has no positive rate; the comparison follows the model's task (RMSE as
    its primary metric, with no ``ab.task`` in the file) and sets the shadow's predicted values
    beside the published ones."""
    import sklearn
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error

    features, label = ["tenure_months", "monthly_charges"], "total_charges"
    labeled = pads.dataset(lake.partition_path("labeled/customers", DAY), format="parquet").to_table().to_pandas()
    fit_on = labeled.dropna(subset=[*features, label])
    versions = [LinearRegression(), LinearRegression(fit_intercept=False)]
    for regressor in versions:
        regressor.fit(fit_on[features], fit_on[label])
        register(
            settings,
            "user-regressor",
            lambda name, r=regressor: mlflow.sklearn.log_model(
                r,
                name="model",
                signature=infer_signature(fit_on[features].head(50), r.predict(fit_on[features].head(50))),
                registered_model_name=name,
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],  # MLflow's inference takes seconds
            ),
        )
    mlflow.MlflowClient().set_registered_model_alias("user-regressor", "champion", "1")
    mlflow.MlflowClient().set_registered_model_alias("user-regressor", "challenger", "2")
    path = job_file(tmp_path, "user_spend", "user-regressor")
    text = path.read_text().replace("model: {name: user-regressor}", "model: {name: user-regressor, task: regression}")
    text = text.replace(
        "output: {table: predictions/user_spend}",
        "output: {table: predictions/user_spend, score_column: total_charges_predicted}",
    )
    path.write_text(text + f"ab: {{labeled_table: labeled/customers, label: {label}, bootstrap: 100, shadow: true}}\n")
    job = load_job_file(path)

    result = run_job(job, DAY, settings=settings)

    rows = raw_rows(lake).set_index("customer_id")
    scored, shadow = output(lake, "user_spend"), output(lake, "user_spend_shadow")
    assert list(scored.columns) == ["customer_id", "total_charges_predicted", *LINEAGE_COLUMNS]
    assert list(scored.columns) == prediction_columns("customer_id", "total_charges_predicted", predicts=False)
    want = versions[0].predict(rows.loc[scored["customer_id"], features])
    # a predicted value as the model gives it, in float64: no digit lost to a probability's float32
    np.testing.assert_array_equal(scored["total_charges_predicted"], want)
    assert scored["total_charges_predicted"].max() > 100  # a value, not a probability
    assert "positive_rate" not in result.scores
    assert result.scores["mean"] == pytest.approx(scored["total_charges_predicted"].mean(), rel=1e-6)
    manifest = lake.committed("predictions/user_spend", DAY)[1]
    assert (
        manifest["scores"]["p50"] == pytest.approx(result.scores["p50"]) and "positive_rate" not in manifest["scores"]
    )
    assert mlflow.MlflowClient().get_run(result.run_id).data.params["model_task"] == "regression"

    report = run_compare(job, DAY, settings=settings)

    assert (report["task"], report["policy"]["primary_metric"]) == ("regression", "rmse")
    valid = labeled.dropna(subset=[*features, label])
    for role, regressor in zip(("champion", "challenger"), versions, strict=True):
        want_rmse = mean_squared_error(valid[label], regressor.predict(valid[features])) ** 0.5
        assert report["metrics"][role]["rmse"] == pytest.approx(want_rmse, rel=1e-5)
    both = scored.merge(shadow, on="customer_id", suffixes=("", "_shadow"))
    apart = (both["total_charges_predicted"] - both["total_charges_predicted_shadow"]).abs().mean()
    assert len(both) == len(scored) and report["shadow"]["mean_abs_difference"] == pytest.approx(apart, rel=1e-5)
    assert f"mean absolute difference {apart:.4g}" in markdown(report)


@pytest.mark.filterwarnings("ignore::FutureWarning:skops")
def test_a_multiclass_model_predicts_a_class_with_its_probability_and_is_compared_on_log_loss(
    settings, lake, ray_local, tmp_path, monkeypatch
):
    """``model.task: multiclass``: a customer's contract type predicted from their account by two
    scikit-learn classifiers (``predict_proba``, a probability per class). The predictions hold
    the most probable class's name and its probability; the night's figures, each class's share;
    the shadow's report, how often the two versions predict one class; with ``output.class_scores``,
    every class's probability in a column of its own; the comparison, log loss
    on the labeled table's class names, with McNemar's test on the rows one version gets right.
    The GPU pipeline's shape (write tasks apart from the actors) writes the same predictions and
    counts the same classes."""
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = ["month_to_month", "one_year", "two_year"]
    features = ["tenure_months", "monthly_charges", "contract_months_left", "discount_pct"]
    labeled = pads.dataset(lake.partition_path("labeled/customers", DAY), format="parquet").to_table().to_pandas()
    fit_on = labeled.dropna(subset=features)
    # the challenger held back by its regularisation, the champion not
    versions = [make_pipeline(StandardScaler(), LogisticRegression(C=c)) for c in (1.0, 1e-3)]
    for classifier in versions:
        classifier.fit(fit_on[features], fit_on["contract_type"])
        assert list(classifier.classes_) == classes  # the columns of predict_proba
        register(
            settings,
            "user-contract",
            lambda name, c=classifier: mlflow.sklearn.log_model(
                c,
                name="model",
                pyfunc_predict_fn="predict_proba",
                signature=infer_signature(fit_on[features].head(50), c.predict_proba(fit_on[features].head(50))),
                registered_model_name=name,
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
            ),
        )
    mlflow.MlflowClient().set_registered_model_alias("user-contract", "champion", "1")
    mlflow.MlflowClient().set_registered_model_alias("user-contract", "challenger", "2")
    path = job_file(tmp_path, "user_contract", "user-contract")
    text = path.read_text().replace(
        "model: {name: user-contract}",
        f"model: {{name: user-contract, task: multiclass, classes: [{', '.join(classes)}]}}",
    )
    text = text.replace(
        "output: {table: predictions/user_contract}", "output: {table: predictions/user_contract, class_scores: true}"
    )
    path.write_text(
        text + "ab: {labeled_table: labeled/customers, label: contract_type, bootstrap: 100, shadow: true}\n"
    )
    job = load_job_file(path)

    result = run_job(job, DAY, settings=settings)

    rows = raw_rows(lake).set_index("customer_id")
    scored, shadow = output(lake, "user_contract"), output(lake, "user_contract_shadow")
    each = [f"score_{c}" for c in classes]  # output.class_scores: every class's probability too
    assert list(scored.columns) == prediction_columns("customer_id", "score", class_columns=each)
    proba = versions[0].predict_proba(rows.loc[scored["customer_id"], features])
    np.testing.assert_allclose(scored[each].to_numpy(), proba, rtol=1e-6)
    assert (scored["prediction"].astype(str) == np.array(classes)[proba.argmax(axis=1)]).all()
    np.testing.assert_allclose(scored["score"], proba.max(axis=1), rtol=1e-6)
    assert scored["score"].dtype == np.float32 and scored["prediction"].nunique() > 1
    shares = scored["prediction"].astype(str).value_counts(normalize=True)
    for name in classes:
        assert result.scores[f"share.{name}"] == pytest.approx(shares.get(name, 0.0))
    assert "positive_rate" not in result.scores
    manifest = lake.committed("predictions/user_contract", DAY)[1]
    assert manifest["scores"]["share.one_year"] == pytest.approx(result.scores["share.one_year"])
    metrics = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert metrics["score.share.month_to_month"] == pytest.approx(shares.get("month_to_month", 0.0))

    report = run_compare(job, DAY, settings=settings)

    assert (report["task"], report["policy"]["primary_metric"]) == ("multiclass", "log_loss")
    valid = labeled.dropna(subset=features)
    for role, classifier in zip(("champion", "challenger"), versions, strict=True):
        want = log_loss(valid["contract_type"], classifier.predict_proba(valid[features]), labels=classes)
        assert report["metrics"][role]["log_loss"] == pytest.approx(want, rel=1e-4)
    assert report["mcnemar"]["champion_only_right"] + report["mcnemar"]["challenger_only_right"] > 0
    both = scored.merge(shadow, on="customer_id", suffixes=("", "_shadow"))
    agree = (both["prediction"].astype(str) == both["prediction_shadow"].astype(str)).mean()
    assert len(both) == len(scored) and report["shadow"]["agreement"] == pytest.approx(agree)
    # the shadow's shift: how the challenger's mix of predicted classes differs from the champion's
    mixes = [both[c].astype(str).value_counts(normalize=True) for c in ("prediction", "prediction_shadow")]
    champion, challenger = (np.clip([mix.get(c, 0.0) for c in classes], 1e-6, None) for mix in mixes)
    shift = np.sum((challenger - champion) * np.log(challenger / champion))
    assert report["shadow"]["psi"] == pytest.approx(shift)
    assert f"PSI of the shares of rows predicted in each class {report['shadow']['psi']:.4f}" in markdown(report)

    # as on GPU actors (no GPU here: the same pipeline on a CPU actor), whose write tasks encode
    # the class names and count them file by file, in files of other rows than the actors' batches
    again = run_job(as_on_gpus(job, monkeypatch), DAY, settings=settings)
    rescored = output(lake, "user_contract")
    assert len(rescored) == len(scored) and rescored["prediction"].dtype == "category"
    assert len(lake.committed("predictions/user_contract", DAY)[1]["output"]) > 1
    fused, apart = (t.set_index("customer_id").sort_index() for t in (scored, rescored))
    assert (apart["prediction"].astype(str) == fused["prediction"].astype(str)).all()
    np.testing.assert_array_equal(apart[["score", *each]].to_numpy(), fused[["score", *each]].to_numpy())
    assert {k: again.scores[f"share.{k}"] for k in classes} == pytest.approx(
        {k: result.scores[f"share.{k}"] for k in classes}
    )

    # a fourth class in the job file: refused before any actor starts, from the model's signature
    path.write_text(path.read_text().replace("two_year]", "two_year, five_year]"))
    with pytest.raises(
        JobError, match=re.escape("returns a tensor of shape (-1, 3), by its signature, where model.classes")
    ):
        run_job(load_job_file(path), DAY, settings=settings)


def test_an_embedding_model_writes_a_vector_a_row(settings, lake, ray_local, tmp_path, monkeypatch):
    """``model.task: embedding``: a user's PyTorch encoder turns each customer's account into a
    vector of 16 numbers, for a nearest-neighbour search downstream. The predictions hold each
    row's vector as the network gives it, in a fixed-size list of float32, with no prediction; the
    night's figures are those of the vectors' lengths. The GPU pipeline's shape writes the same
    vectors, and a job file that names another width is refused from the model's signature before
    any actor starts."""
    torch.manual_seed(1)
    encoder = torch.nn.Sequential(torch.nn.Linear(len(NUMERIC), 32), torch.nn.Tanh(), torch.nn.Linear(32, 16)).eval()
    sample = raw_rows(lake)[NUMERIC].dropna().head(100).astype(np.float32)
    with torch.no_grad():
        sample_out = encoder(torch.from_numpy(sample.to_numpy())).numpy()
    register(
        settings,
        "user-encoder",
        lambda name: mlflow.pytorch.log_model(
            encoder,
            name="model",
            serialization_format="pickle",
            signature=infer_signature(sample, sample_out),
            registered_model_name=name,
            pip_requirements=[f"torch=={torch.__version__}"],
        ),
    )
    path = job_file(tmp_path, "user_embed", "user-encoder")
    text = path.read_text().replace(
        "model: {name: user-encoder}", "model: {name: user-encoder, task: embedding, dimensions: 16}"
    )
    path.write_text(
        text.replace(
            "output: {table: predictions/user_embed}",
            "output: {table: predictions/user_embed, score_column: embedding}",
        )
    )
    job = load_job_file(path)

    result = run_job(job, DAY, settings=settings)

    files = lake.data_files("predictions/user_embed", DAY)
    schema = pads.dataset([f.path for f in files], format="parquet").schema
    assert schema.names == prediction_columns("customer_id", "embedding", predicts=False)
    vector = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vector) and (vector.list_size, vector.value_type) == (16, pa.float32())
    assert not schema.field("embedding").nullable
    assert not vector.value_field.nullable  # Parquet's "required float element": no null among the values
    scored = output(lake, "user_embed")
    rows = raw_rows(lake).set_index("customer_id").loc[scored["customer_id"], NUMERIC]
    vectors = np.stack(scored["embedding"].to_numpy())
    with torch.no_grad():
        want = encoder(torch.from_numpy(rows.to_numpy(np.float32))).numpy()
    np.testing.assert_allclose(vectors, want, rtol=1e-5, atol=1e-6)
    norms = np.linalg.norm(want, axis=1)
    assert result.scores["mean"] == pytest.approx(norms.mean(), rel=1e-5)
    assert result.scores["max"] == pytest.approx(norms.max(), rel=1e-5) and "positive_rate" not in result.scores
    assert lake.committed("predictions/user_embed", DAY)[1]["scores"]["mean"] == pytest.approx(result.scores["mean"])

    # as on GPU actors (no GPU here: the same pipeline on a CPU actor), whose write tasks write the
    # actors' batches in files of other rows
    again = run_job(as_on_gpus(job, monkeypatch), DAY, settings=settings)
    rescored = output(lake, "user_embed").set_index("customer_id").sort_index()
    assert len(lake.committed("predictions/user_embed", DAY)[1]["output"]) > 1
    files = lake.data_files("predictions/user_embed", DAY)
    assert pads.dataset([f.path for f in files], format="parquet").schema.field("embedding").type == vector
    fused = scored.set_index("customer_id").sort_index()
    np.testing.assert_array_equal(np.stack(rescored["embedding"].to_numpy()), np.stack(fused["embedding"].to_numpy()))
    assert again.scores["mean"] == pytest.approx(result.scores["mean"], rel=1e-6)

    # another width in the job file: refused before any actor starts, from the model's signature
    path.write_text(path.read_text().replace("dimensions: 16", "dimensions: 8"))
    with pytest.raises(JobError) as e:
        run_job(load_job_file(path), DAY, settings=settings)
    assert str(e.value) == (
        f"models:/user-encoder/1 returns a tensor of shape (-1, 16), by its signature, where model.dimensions in "
        f"{path} is 8: an embedding model returns that many numbers a row"
    )


@pytest.mark.parametrize(
    ("names", "error"),
    [
        (["basic", "plus", "premium"], None),
        (["p0", "p1", "p2"], None),  # names that are no class's say nothing of the order
        (["premium", "basic", "plus"], "returns its classes in the order premium, basic, plus, by its signature"),
        (["basic", "plus"], "returns 2 columns (basic, plus), by its signature, where model.classes"),
    ],
)
def test_a_multiclass_models_signature_names_its_classes_in_the_job_files_order(names, error):
    """A model whose output columns are named by class (a pyfunc that returns a frame) returns
    them in the order of ``model.classes``: another order would write each probability under
    another class's name."""
    from mlflow.types import ColSpec, Schema

    from jobs.config import JobConfig
    from jobs.preflight import _check_class_columns
    from models.registry import ModelRef

    job = JobConfig.model_validate(
        {
            "name": "plan",
            "description": "d",
            "schedule": None,
            "input": {"table": "raw/plans", "key": "id"},
            "model": {"name": "plan", "task": "multiclass", "classes": ["basic", "plus", "premium"]},
            "output": {"table": "predictions/plan"},
        }
    )
    outputs = Schema([ColSpec("double", name) for name in names])
    ref = ModelRef("plan", 3, run_id=None, alias="champion")
    if error is None:
        _check_class_columns(job, ref, outputs)
    else:
        with pytest.raises(JobError, match=re.escape(error)):
            _check_class_columns(job, ref, outputs)


class _AgeScore(mlflow.pyfunc.PythonModel):
    """A challenger on fewer columns (``age``), or on one more (``tenure_months`` as well)."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return model_input["age"] / 100 + model_input.get("tenure_months", 0) * 0


def test_canary_gives_each_version_its_own_columns(settings, lake, ray_local, tmp_path):
    rows = raw_rows(lake)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for name, model, columns in (
        ("user-canary", _TierScore(), ["plan_tier", "age"]),
        ("user-canary", _AgeScore(), ["age"]),
        ("user-canary", _AgeScore(), ["age", "tenure_months"]),
    ):
        sample = rows[columns].dropna().head(20)
        register_pyfunc(settings, name, model, signature=infer_signature(sample, model.predict(None, sample)))
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("user-canary", "champion", "1")
    path = job_file(tmp_path, "user_canary", "user-canary")
    path.write_text(
        path.read_text() + "ab: {labeled_table: labeled/customers, label: churned, challenger_share: 0.5}\n"
    )

    client.set_registered_model_alias("user-canary", "challenger", "3")
    with pytest.raises(
        JobError, match=r"challenger models:/user-canary/3 takes \['tenure_months'\], which the champion"
    ):
        run_job(load_job_file(path), DAY, settings=settings)

    client.set_registered_model_alias("user-canary", "challenger", "2")
    run_job(load_job_file(path), DAY, settings=settings)
    scored = output(lake, "user_canary").merge(rows, on="customer_id")
    by_tier = (scored["plan_tier"] == "premium") * 0.5 + scored["age"] / 1000
    challenger = scored["variant"] == "challenger"
    assert 0.3 < challenger.mean() < 0.7
    np.testing.assert_allclose(scored["score"][challenger], scored["age"][challenger] / 100, rtol=1e-6)
    np.testing.assert_allclose(scored["score"][~challenger], by_tier[~challenger], rtol=1e-6)

    # the job file lists the champion's columns, of which the challenger takes one
    path.write_text(path.read_text().replace("key: customer_id}", "key: customer_id, columns: [plan_tier, age]}"))
    run_job(load_job_file(path), DAY, settings=settings)
    assert set(output(lake, "user_canary")["variant"]) == {"champion", "challenger"}

    # the comparison checks a rule on the champion's column on the champion's inputs alone
    tiers = "validation: {max_invalid_share: 0.9, columns: {plan_tier: {categories: [basic, standard]}}}"
    path.write_text(path.read_text().replace("validation: {max_invalid_share: 0.5}", tiers))
    report = run_compare(load_job_file(path), DAY, settings=settings)
    labeled = pads.dataset(lake.partition_path("labeled/customers", DAY), format="parquet").to_table().to_pandas()
    outside = ~labeled["plan_tier"].isin(["basic", "standard"]) | labeled["age"].isna()
    assert report["excluded"]["rows"] == outside.sum() > 0
    path.write_text(path.read_text().replace("plan_tier: {", "favourite_colour: {"))
    with pytest.raises(
        InvalidInput,
        match=r"names \['favourite_colour'\], which neither models:/user-canary/1 nor models:/user-canary/2 takes",
    ):
        run_compare(load_job_file(path), DAY, settings=settings)
    path.write_text(path.read_text().replace("favourite_colour: {", "plan_tier: {").replace("age]", "age, colour]"))
    with pytest.raises(
        JobError, match=r"lists \['colour'\], which neither models:/user-canary/1 nor models:/user-canary/2 takes"
    ):
        run_compare(load_job_file(path), DAY, settings=settings)


def test_cli_says_how_many_rows_were_quarantined(settings, lake, ray_local, user_torch, tmp_path, monkeypatch, capsys):
    """``lakecast run``'s summary counts the rows it set aside, and says where they are."""
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf" / "profiles", conf / "profiles")
    job_file(conf, "user_torch", user_torch)
    monkeypatch.setenv("LAKECAST_CONF", str(conf))

    assert lakecast(["run", "user_torch", "--date", DAY.isoformat()]) == 0

    quarantined = len(output(lake, "user_torch", "quarantine"))
    out = capsys.readouterr().out
    assert f"scored {ROWS - quarantined:,} of {ROWS:,} rows of user_torch {DAY}" in out
    where = lake.uri(lake.partition_path("quarantine/user_torch", DAY))
    assert f"quarantined: {quarantined:,} invalid rows, not scored → {where}" in out


def test_compare_of_own_models_leaves_out_the_rows_the_job_would_not_score(
    settings, lake, ray_local, network, tmp_path
):
    """The labeled rows with a null the networks cannot take are counted and left out, as the
    nightly job quarantines them; the metrics are those of the models' own scores on the rest."""
    labeled = pads.dataset(lake.partition_path("labeled/customers", DAY), format="parquet").to_table().to_pandas()
    sample = labeled[NUMERIC].dropna().head(100)
    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Linear(len(NUMERIC), 1), torch.nn.Sigmoid()).eval()
    logits = network[:-1]  # the champion's network without its sigmoid: scores, not probabilities
    for net in (network, other, logits):
        register(settings, "user-ab", with_columns(net, sample))
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("user-ab", "champion", "1")
    client.set_registered_model_alias("user-ab", "challenger", "2")
    path = job_file(tmp_path, "user_ab", "user-ab")
    ab = "ab: {labeled_table: labeled/customers, label: churned, bootstrap: 100}\n"
    path.write_text(path.read_text() + ab)

    report = run_compare(load_job_file(path), DAY, settings=settings)

    has_null = labeled[NUMERIC].isna().any(axis=1)
    assert report["excluded"]["rows"] == has_null.sum() > 0
    assert sum(report["excluded"]["reasons"].values()) == has_null.sum()
    assert report["rows"] == LABELED_ROWS - has_null.sum()
    valid = labeled[~has_null]
    for role, net in (("champion", network), ("challenger", other)):
        want = roc_auc_score(valid["churned"], expected_scores(net, valid, NUMERIC))
        assert report["metrics"][role]["roc_auc"] == pytest.approx(want, abs=1e-6)
    assert f"Left out: {has_null.sum():,} rows that the nightly job would not score" in markdown(report)
    assert client.get_run(report["mlflow_run_id"]).data.metrics["excluded_rows"] == has_null.sum()

    path.write_text(path.read_text().replace("max_invalid_share: 0.5", "max_invalid_share: 0.001"))
    with pytest.raises(InvalidInput, match=r"labeled rows \(.*%\) are invalid, above the job's limit of 0.1%"):
        run_compare(load_job_file(path), DAY, settings=settings)
    path.write_text(path.read_text().replace("validation: {", "validation: {on_invalid_rows: fail, "))
    with pytest.raises(InvalidInput, match=r"labeled rows are invalid, e\.g\. customer_id=\d+: \w+: null"):
        run_compare(load_job_file(path), DAY, settings=settings)

    client.set_registered_model_alias("user-ab", "challenger", "3")
    path.write_text(
        path.read_text().replace("on_invalid_rows: fail, max_invalid_share: 0.001", "max_invalid_share: 0.5")
    )
    with pytest.raises(JobError, match=r"models:/user-ab/3 scored \d+ of \d+ labeled rows outside \[0, 1\]"):
        run_compare(load_job_file(path), DAY, settings=settings)

    # a limit of 100% and a rule no row meets: nothing left, said as such rather than NaN metrics
    every_row = f"max_invalid_share: 1.0, columns: {{{NUMERIC[0]}: {{min: 1.0e12}}}}"
    path.write_text(path.read_text().replace("max_invalid_share: 0.5", every_row))
    with pytest.raises(InvalidInput, match=rf"all {LABELED_ROWS} labeled rows are invalid, e\.g\. customer_id=\d+: "):
        run_compare(load_job_file(path), DAY, settings=settings)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_version_whose_files_are_gone_is_named_and_not_retried(
    store, request, settings, lake, ray_local, network, tmp_path, monkeypatch, capsys
):
    """The registry still lists a version whose files a bucket's lifecycle rule or a deleted
    folder took: the run stops before Ray starts, naming the version and where its files were,
    with the status that tells Airflow not to retry. MLflow says so differently for each store
    (a local store's missing artifact, S3's 404 quoted in a download error)."""
    name = f"user-gone-{store}"
    sample = raw_rows(lake)[NUMERIC].dropna().head(100).astype(np.float32)
    configure(settings)
    if store == "s3":
        request.getfixturevalue("s3_env")
        experiment = mlflow.create_experiment(name, artifact_location=f"s3://{S3_BUCKET}/artifacts-{name}")
    else:
        experiment = None  # the README's way: no experiment named, files under LAKECAST_HOME
    with mlflow.start_run(experiment_id=experiment):
        info = with_columns(network, sample)(name)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, "champion", info.registered_model_version)
    location = client.get_logged_model(info.model_id).artifact_location
    if store == "s3":
        lake_s3 = Lake(f"s3://{S3_BUCKET}").s3fs
        lake_s3.rm(location.removeprefix("s3://"), recursive=True)
    else:
        shutil.rmtree(location)
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf" / "profiles", conf / "profiles")
    job_file(conf, "user_gone", name)
    monkeypatch.setenv("LAKECAST_CONF", str(conf))

    assert lakecast(["run", "user_gone", "--date", DAY.isoformat()]) == EXIT_FIX_FIRST

    err = capsys.readouterr().err
    last = err.rstrip().splitlines()[-1]  # the sentence, on one line, after MLflow's log of the logging
    assert last.startswith(f"lakecast: models:/{name}/1: its files are not in the artifact store at {location} ("), err
    assert last.endswith("or point the alias at a version whose files are there") and "Traceback" not in err, err
    written = lake.fs.get_file_info(lake.partition_path("predictions/user_gone", DAY))
    assert written.type == pafs.FileType.NotFound


def test_a_model_this_environment_cannot_load_is_named_and_not_retried(
    settings, lake, ray_local, tmp_path, monkeypatch, capsys
):
    """A model pickled with a module of its trainer's (a notebook's helper) and pinned to a
    package the jobs' environment lacks: MLflow's traceback ends in ``No module named``, naming
    neither the model nor what to install. The run stops with a sentence that names the version,
    the missing module and the requirement, and says what to do; nothing is published."""
    trainer_code = tmp_path / "trainer_code"
    trainer_code.mkdir()
    (trainer_code / "lakecast_trainer_helpers.py").write_text(
        "import mlflow.pyfunc\nimport pandas as pd\n\n\n"
        "class HalfEverywhere(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:\n"
        "        return model_input['age'] * 0.0 + 0.5\n"
    )
    monkeypatch.syspath_prepend(str(trainer_code))
    from lakecast_trainer_helpers import HalfEverywhere  # pickled by reference, as a module's classes are

    register_pyfunc(
        settings, "user-unloadable", HalfEverywhere(), requirements=["lakecast-surely-not-installed==1.0", "pandas"]
    )
    monkeypatch.delitem(sys.modules, "lakecast_trainer_helpers")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(trainer_code)])
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf" / "profiles", conf / "profiles")
    job_file(conf, "user_unloadable", "user-unloadable", columns=["age"])
    monkeypatch.setenv("LAKECAST_CONF", str(conf))

    assert lakecast(["run", "user_unloadable", "--date", DAY.isoformat()]) == EXIT_FIX_FIRST

    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.rstrip().splitlines()[-1]
    assert last == (
        "lakecast: models:/user-unloadable/1 cannot be loaded in this Python environment (ModuleNotFoundError: "
        "No module named 'lakecast_trainer_helpers'); it was logged with lakecast-surely-not-installed==1.0, "
        "which is not installed here: install what the model needs where the jobs run (lakecast's virtualenv; "
        "on a Ray cluster, its image), or, if 'lakecast_trainer_helpers' is a module of the trainer's own, log "
        "the model again with it (mlflow.pyfunc.log_model's code_paths=[...]) so that its code travels with "
        "the model"
    ), err
    written = lake.fs.get_file_info(lake.partition_path("predictions/user_unloadable", DAY))
    assert written.type == pafs.FileType.NotFound


def pickled_model_job(settings, tmp_path: Path, name: str, model: mlflow.pyfunc.PythonModel):
    """A job scoring the ``age`` column with ``model``, its class pickled with its code as a
    notebook logs it, registered as ``name`` with ``champion`` on it."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    register_pyfunc(settings, name, model)
    return load_job_file(job_file(tmp_path, name.replace("-", "_"), name, columns=["age"]))


class _OnlyOnTheDriver(mlflow.pyfunc.PythonModel):
    """Loads where the job's driver runs, not in a Ray actor: a cluster whose image lacks a
    package that the machine submitting the job has."""

    def load_context(self, context) -> None:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            import lakecast_not_in_the_workers_image  # noqa: F401

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return model_input["age"] * 0.0 + 0.5


def test_a_model_the_ray_workers_cannot_load_is_named_with_their_node(settings, lake, ray_local, tmp_path):
    """An actor's constructor that raises reaches the driver as Ray's ActorDiedError, whose text
    alone holds the error: the predictor raises it from its first batch instead, so that the
    user gets the sentence, with the node whose environment differs."""
    job = pickled_model_job(settings, tmp_path, "user-driver-only", _OnlyOnTheDriver())

    with pytest.raises(ModelLoadError) as raised:
        run_job(job, DAY, settings=settings)

    assert type(raised.value) is ModelLoadError  # the sentence, not Ray's wrapper with the traceback
    assert re.fullmatch(
        r"models:/user-driver-only/1 cannot be loaded on the Ray worker at [\d.]+, whose Python environment is "
        r"not that of the job's driver, which loaded it \(ModuleNotFoundError: No module named "
        r"'lakecast_not_in_the_workers_image'\): install what the model needs where the jobs run .*",
        str(raised.value),
    ), raised.value
    assert not Path(lake.partition_path("predictions/user_driver_only", DAY)).exists()


class _LooksUpAFeature(mlflow.pyfunc.PythonModel):
    """A model with a bug in its own code: a column it reads that the job does not give it."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        return model_input["lifetime_value"]


def test_a_model_that_raises_is_named_with_its_own_frames(settings, lake, ray_local, tmp_path):
    """Ray's report of an exception in the model's code is hundreds of lines, ending with Ray
    Data's advice to open an issue on Ray's GitHub. The run says which model raised what, with
    the model's own frames to debug from, and is not retried."""
    job = pickled_model_job(settings, tmp_path, "user-raises", _LooksUpAFeature())

    with pytest.raises(ModelFailed) as failed:
        run_job(job, DAY, settings=settings)

    assert type(failed.value) is ModelFailed  # the sentence, not Ray's wrapper with its traceback
    first, header, *frames = str(failed.value).splitlines()
    rows = int(first.split(" rows")[0].rsplit(" ", 1)[1])
    assert first == f"models:/user-raises/1 raised KeyError scoring a batch of {rows} rows: 'lifetime_value'"
    assert header == "the model's traceback, its last frames:"
    # the line of the model's code that raised (pickled with its class, its file is not at hand)
    raising = 'return model_input["lifetime_value"]'
    line = 1 + next(i for i, text in enumerate(Path(__file__).read_text().splitlines()) if text.strip() == raising)
    assert f'  File "<dynamic-code>", line {line}, in predict' in frames, frames
    assert exit_status(failed.value) == EXIT_FIX_FIRST
    assert not Path(lake.partition_path(job.output.table, DAY)).exists()


class _Segfaults(mlflow.pyfunc.PythonModel):
    """A model whose native code crashes its process on every batch (a library built for another
    CPU, a bad pointer in an extension)."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        os.kill(os.getpid(), signal.SIGSEGV)


def test_an_actor_that_crashes_on_every_try_stops_the_run_naming_its_log(
    settings, lake, ray_local, tmp_path, monkeypatch
):
    """Ray Data restarts a dead actor and retries its task forever by default: a model that
    crashed its process on every batch held the run until the Airflow task's timeout. The run
    gives up after the restarts and says where the actor's last words are (its stderr: Python's
    report of the segfault). So does the nightly comparison, whose actors score the labeled rows
    with both versions. One restart here, where the job allows 3: each costs an actor's start, and
    the bound is the same setting."""
    monkeypatch.setattr("jobs.ray_runtime.ACTOR_RESTARTS", 1)
    job = pickled_model_job(settings, tmp_path, "user-segfaults", _Segfaults())

    def gives_up(run) -> None:
        with pytest.raises(ActorsDied) as died:
            run()
        said = str(died.value)
        assert re.fullmatch(
            r"the actor scoring the rows died on its first try and on each of its 1 restart, its process ended from "
            r"outside Python \(pid \d+ on node [\d.]+\): a crash in native code \(a model's SIGSEGV\), the kernel's "
            r"OOM killer, or `ray stop`; what it wrote last is in (/\S+\.err)",
            said,
        ), said
        assert "SIGSEGV" in Path(said.rsplit(" ", 1)[1]).read_text()
        assert exit_status(died.value) == EXIT_FIX_FIRST

    gives_up(lambda: run_job(job, DAY, settings=settings))
    assert not Path(lake.partition_path("predictions/user_segfaults", DAY)).exists()

    # a second version of it, the challenger, compared with the first on the labeled rows
    pickled_model_job(settings, tmp_path, "user-segfaults", _Segfaults())
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("user-segfaults", "champion", "1")
    client.set_registered_model_alias("user-segfaults", "challenger", "2")
    path = Path(job.file)
    path.write_text(path.read_text() + "ab: {labeled_table: labeled/customers, label: churned, bootstrap: 100}\n")
    gives_up(lambda: run_compare(load_job_file(path), DAY, settings=settings))
    assert not Path(lake.partition_path("ab/user_segfaults", DAY)).exists()
