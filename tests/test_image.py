"""The image workload: JPEG decoding, the ResNet-50 the benchmark runs, and the classifier actor
called directly (the GPU path runs where a GPU is: tests/test_gpu.py)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")


def jpeg(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_resnet50_has_the_shape_of_torchvisions():
    from models.resnet import ResNet50

    net = ResNet50().eval()
    # torchvision.models.resnet50().parameters() sums to 25,557,032
    assert sum(p.numel() for p in net.parameters()) == 25_557_032
    with torch.inference_mode():
        assert net(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_decode_crops_the_centre_to_uint8_channels_last():
    from models.image import decode_jpegs

    batch = pa.table({"id": [7, 8], "image": [jpeg(256, 256, (200, 30, 30)), jpeg(640, 480, (10, 10, 220))]})
    out = decode_jpegs(batch, key="id", size=224)
    assert out["pixels"].shape == (2, 224, 224, 3) and out["pixels"].dtype == np.uint8
    assert out["id"].tolist() == [7, 8]
    red, blue = out["pixels"][0].mean(axis=(0, 1)), out["pixels"][1].mean(axis=(0, 1))
    assert red[0] > 180 and red[2] < 50
    assert blue[2] > 200 and blue[0] < 30


def test_a_corrupt_image_is_named_by_its_key():
    from models.image import BadImage, decode_jpegs

    batch = pa.table({"id": [1, 2], "image": [jpeg(64, 64, (0, 0, 0)), b"\xff\xd8 not a jpeg"]})
    with pytest.raises(BadImage, match=r"id=2: column 'image' holds no decodable image"):
        decode_jpegs(batch, key="id", size=32)


def test_the_classifier_returns_a_class_and_its_probability_per_image():
    from models.image import ImageClassifier, ImageOptions, decode_jpegs

    batch = pa.table({"id": [1, 2, 3], "image": [jpeg(80, 80, (i * 80, 0, 0)) for i in range(3)]})
    classifier = ImageClassifier(ImageOptions(key="id", num_classes=10))
    out = classifier(decode_jpegs(batch, key="id", size=64))
    assert out["id"].tolist() == [1, 2, 3]
    assert out["label"].dtype == np.int16 and ((out["label"] >= 0) & (out["label"] < 10)).all()
    assert ((out["probability"] >= 0.1) & (out["probability"] <= 1)).all()  # top-1 of 10 classes


def test_a_warmed_up_classifier_scores_as_a_cold_one():
    """The warm-up batch (cuDNN's kernel choice, on a GPU) runs as the actor starts and changes
    nothing about what it then returns."""
    from models.image import ImageClassifier, ImageOptions, decode_jpegs

    batch = pa.table({"id": [1, 2], "image": [jpeg(48, 48, (i * 120, 40, 200)) for i in range(2)]})
    pixels = decode_jpegs(batch, key="id", size=32)
    torch.manual_seed(1)
    cold = ImageClassifier(ImageOptions(key="id", num_classes=10))
    warm = ImageClassifier(ImageOptions(key="id", num_classes=10, warmup=(2, 32)))
    warm.net.load_state_dict(cold.net.state_dict())
    np.testing.assert_allclose(warm(pixels)["probability"], cold(pixels)["probability"], rtol=1e-6)
