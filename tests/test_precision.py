"""``compute.dtype``: a user's ``mlflow.pytorch`` network under ``torch.autocast``
(models/precision.py). Torch autocasts to bfloat16 on the CPU too, so the wrapping is checked
here on real saved models; tests/test_gpu.py runs it on CUDA where a GPU is present."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from models.precision import Autocast, autocast_pyfunc


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1), torch.nn.Sigmoid()
    ).eval()


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2_000, 12)).astype(np.float32)


@pytest.mark.parametrize("serialization_format", ["pickle", "pt2"])
def test_an_mlflow_pytorch_network_runs_under_autocast(tmp_path, network, rows, serialization_format):
    path = tmp_path / serialization_format
    mlflow.pytorch.save_model(network, str(path), serialization_format=serialization_format, input_example=rows[:4])
    full, low = (mlflow.pyfunc.load_model(str(path), model_config={"device": "cpu"}) for _ in range(2))
    assert autocast_pyfunc(low, "cpu", "bfloat16")
    assert autocast_pyfunc(low, "cpu", "bfloat16")  # a second call leaves one wrapper
    wrapped = low._model_impl.pytorch_model
    assert isinstance(wrapped, Autocast) and not isinstance(wrapped.net, Autocast)

    expected, got = full.predict(rows), low.predict(rows)
    # float32 out, as MLflow hands it to NumPy, and the products computed in bfloat16
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 0.02
    assert not np.array_equal(got, expected)


def test_other_models_keep_their_own_precision(tmp_path):
    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            return model_input * 2

    mlflow.pyfunc.save_model(str(tmp_path / "custom"), python_model=Doubler())
    custom = mlflow.pyfunc.load_model(str(tmp_path / "custom"))
    assert not autocast_pyfunc(custom, "cpu", "bfloat16")
    assert custom.predict(pd.DataFrame({"x": [1.5]}))["x"].tolist() == [3.0]


def test_the_output_keeps_its_kind(network):
    """Only a floating-point output is made float32 again: labels stay integers."""
    argmax = Autocast(torch.nn.Sequential(network[0], torch.nn.Flatten(0)), "cpu", torch.bfloat16)
    x = torch.ones(3, 12)
    assert argmax(x).dtype == torch.float32
    labels = Autocast(_Argmax(network[0]), "cpu", torch.bfloat16)(x)
    assert labels.dtype == torch.int64 and labels.shape == (3,)


class _Argmax(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).argmax(dim=1)
