"""The CUDA path of the predictor: a GPU actor scores on the GPU, with pinned memory and
non-blocking copies, in fp32 or bf16, and agrees with the CPU. Skipped where no GPU is present;
run it on a GPU machine with ``pytest tests/test_gpu.py``. It needs torch and pyarrow only."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def scorer_folder(tmp_path_factory):
    from jobs import demo_data
    from models import train

    day = dt.date(2026, 11, 21)
    table = demo_data.generate(20_000, day, with_label=True)
    folder, _ = train.train(
        table,
        label=demo_data.LABEL,
        numeric=demo_data.NUMERIC,
        categorical=list(demo_data.CATEGORIES),
        spec=train.CHALLENGER,
    )
    return folder, demo_data.generate(50_000, day)


def predictor(folder, dtype=None):
    from models.predictor import BatchPredictor, Lineage, PredictorOptions
    from models.tabular import TabularScorer

    options = PredictorOptions(
        model_uri="models:/churn-classifier/1",
        tracking_uri="unused",
        registry_uri=None,
        key="customer_id",
        score_column="p",
        threshold=None,
        dtype=dtype,
        lineage=Lineage("churn-classifier", 1, "gpu-test", dt.datetime.now(dt.UTC)),
    )
    return BatchPredictor(options, TabularScorer(folder))


@pytest.fixture(params=[False, True], ids=["lookup per column", "lookup per combination"])
def combined(request, monkeypatch):
    """The categories looked up per column, or as one combination a row (forced: the challenger's
    128 units keep this batch on the lookup per column)."""
    from models import tabular

    monkeypatch.setattr(tabular, "COMBO_WEIGHTS_PER_ROW", 10**9 if request.param else 0)
    return request.param


def test_a_gpu_actor_scores_on_cuda_like_the_cpu(scorer_folder, combined):
    from models.tabular import TabularScorer

    folder, batch = scorer_folder
    assert (TabularScorer(folder).inputs(batch)[3] is not None) == combined
    cpu = TabularScorer(folder).predict_proba(batch)
    gpu = predictor(folder)
    assert gpu.device == "cuda" and next(gpu.model.net.parameters()).is_cuda
    out = gpu(batch)
    np.testing.assert_allclose(out["p"].to_numpy(), cpu, atol=1e-5)
    assert out.num_rows == batch.num_rows


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_lower_precision_stays_close(scorer_folder, dtype, combined):
    from models.tabular import TabularScorer

    folder, batch = scorer_folder
    cpu = TabularScorer(folder).predict_proba(batch)
    gpu = predictor(folder, dtype=dtype)
    low = gpu(batch)["p"].to_numpy()
    assert gpu.model.first_layer.numeric.dtype == getattr(torch, dtype)
    assert np.abs(low - cpu).max() < 0.02
    assert ((low >= 0.5) == (cpu >= 0.5)).mean() > 0.99


def test_the_image_classifier_runs_on_cuda_like_the_cpu():
    import pyarrow as pa

    from models.image import ImageClassifier, ImageOptions, decode_jpegs
    from tests.test_image import jpeg

    batch = pa.table({"id": list(range(8)), "image": [jpeg(96, 96, (30 * i, 255 - 30 * i, 90)) for i in range(8)]})
    pixels = decode_jpegs(batch, key="id", size=64)
    torch.manual_seed(0)
    gpu = ImageClassifier(ImageOptions(key="id", dtype=None, num_classes=10))
    assert gpu.device.type == "cuda"
    cpu = ImageClassifier(ImageOptions(key="id", dtype=None, num_classes=10, device="cpu"))
    cpu.net.load_state_dict({k: v.cpu() for k, v in gpu.net.state_dict().items()})
    on_gpu, on_cpu = gpu(pixels), cpu(pixels)
    np.testing.assert_allclose(on_gpu["probability"], on_cpu["probability"], rtol=1e-2)
    assert (on_gpu["label"] == on_cpu["label"]).mean() >= 0.75
    bf16 = ImageClassifier(ImageOptions(key="id", dtype="bfloat16", num_classes=10))(pixels)
    assert bf16["label"].shape == (8,) and np.isfinite(bf16["probability"]).all()


def test_cuda_graphs_classify_as_the_ops_launched_one_by_one():
    """The captured graphs give the eager network's answer for the warm-up's shape, from several
    threads at once (one graph per call in flight), and other shapes still run, op by op."""
    from concurrent.futures import ThreadPoolExecutor

    from models.image import ImageClassifier, ImageOptions

    torch.manual_seed(0)
    graphs = ImageClassifier(ImageOptions(key="id", dtype=None, num_classes=10, warmup=(8, 64), cuda_graphs=2))
    eager = ImageClassifier(ImageOptions(key="id", dtype=None, num_classes=10))
    eager.net.load_state_dict(graphs.net.state_dict())
    rng = np.random.default_rng(0)
    batches = [{"id": np.arange(8), "pixels": rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)} for _ in range(6)]
    with ThreadPoolExecutor(2) as pool:
        replayed = list(pool.map(graphs, batches))
    for batch, out in zip(batches, replayed, strict=True):
        expected = eager(batch)
        np.testing.assert_array_equal(out["label"], expected["label"])
        np.testing.assert_allclose(out["probability"], expected["probability"], rtol=1e-4)
    short = {"id": np.arange(5), "pixels": batches[0]["pixels"][:5]}
    np.testing.assert_array_equal(graphs(short)["label"], eager(short)["label"])


def test_a_users_network_runs_under_autocast_on_cuda():
    """``compute.dtype`` for a user's ``mlflow.pytorch`` network: its products in bfloat16 and
    float16 on the GPU, its answer float32 and close to full precision's."""
    from models.precision import Autocast

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).cuda().eval()
    x = torch.randn(4096, 12, device="cuda")
    with torch.no_grad():
        full = net(x)
        for dtype in (torch.bfloat16, torch.float16):
            low = Autocast(net, "cuda", dtype)(x)
            assert low.dtype == torch.float32 and next(net.parameters()).dtype == torch.float32
            assert (low - full).abs().max().item() < 0.05 and not torch.equal(low, full)
