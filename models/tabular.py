"""The demo tabular classifier: preprocessing and a PyTorch MLP, scored on Arrow batches.

:class:`TabularScorer` needs torch and pyarrow only, not MLflow: the job loads it once on the
driver and ships it to the Ray actors, which then start without importing MLflow or reaching the
registry. :mod:`models.tabular_pyfunc` wraps it as the MLflow pyfunc model that the registry
holds, so ``mlflow.pyfunc.load_model(uri).predict(raw_df)`` runs this same code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import torch

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True)
class FeatureSpec:
    """How raw columns become the network's input: standardised numbers, one-hot categories.

    A null number becomes the training mean (0 after scaling); a null or unseen category gets
    its column's slot 0, so the model scores any row whose columns have the right types.
    """

    numeric: list[str]
    means: list[float]
    stds: list[float]
    categorical: dict[str, list[str]]
    hidden: list[int]
    threshold: float = 0.5

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) + 1 for v in self.categorical.values())

    @classmethod
    def fit(cls, table: pa.Table, *, numeric: list[str], categorical: list[str], hidden: list[int]) -> FeatureSpec:
        means, stds = [], []
        for c in numeric:
            x = _as_float(table.column(c))
            means.append(float(np.nanmean(x)))
            stds.append(float(np.nanstd(x)) or 1.0)
        cats = {c: sorted(v for v in pc.unique(table.column(c)).to_pylist() if v is not None) for c in categorical}
        return cls(numeric, means, stds, cats, hidden)

    def transform(self, table: pa.Table) -> np.ndarray:
        """Raw Arrow columns → float32 matrix of shape (rows, width)."""
        n = table.num_rows
        # column-major: every write below fills (part of) one column, so it stays contiguous; ~1.6x
        # faster than row-major here, and torch's matmul takes the transposed layout without a copy
        out = np.zeros((n, self.width), dtype=np.float32, order="F")
        for j, c in enumerate(self.numeric):
            x = _as_float(table.column(c))
            np.multiply(x - self.means[j], 1.0 / self.stds[j], out=out[:, j], casting="same_kind")
        # nulls came through as NaN; they and infinities become the mean (0 once scaled), in one
        # pass over the numeric block, which is contiguous
        numeric = out[:, : len(self.numeric)]
        finite = np.isfinite(numeric)
        if not finite.all():
            numeric[~finite] = 0.0
        # one-hot: index the column-major matrix as flat memory, (column * n + row): one 1-D
        # scatter per category column, ~3x faster than 2-D fancy indexing
        flat, rows = out.reshape(-1, order="F"), np.arange(n)
        offset = len(self.numeric)
        for c, values in self.categorical.items():
            slot = offset + 1 + _category_index(table.column(c), values)  # unseen/null → slot 0
            flat[slot * n + rows] = 1.0
            offset += len(values) + 1
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls(**json.loads(text))


def _category_index(column: pa.ChunkedArray, values: list[str]) -> np.ndarray:
    """Position of each row's category in ``values``, -1 for null or unseen.

    A dictionary-encoded column (the job reads categorical columns so, as Parquet stores them)
    is looked up once per distinct value, then mapped through its indices: ~10x fewer hash
    lookups than the strings row by row.
    """
    value_set = pa.array(values, pa.string())
    if pa.types.is_dictionary(column.type):
        parts = []
        for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
            dictionary = chunk.dictionary.cast(pa.string())
            # one extra entry, -1, for the null rows' codes
            lookup = np.append(pc.fill_null(pc.index_in(dictionary, value_set=value_set), -1).to_numpy(), -1)
            codes = pc.fill_null(chunk.indices, len(dictionary)) if chunk.null_count else chunk.indices
            parts.append(lookup[codes.to_numpy(zero_copy_only=False)])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if not pa.types.is_string(column.type):
        column = column.cast(pa.string())
    return pc.fill_null(pc.index_in(column, value_set=value_set), -1).to_numpy()


def _as_float(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if not pa.types.is_floating(column.type):
        column = column.cast(pa.float64())
    return column.to_numpy(zero_copy_only=False)  # nulls become NaN


def build_net(spec: FeatureSpec) -> torch.nn.Module:
    """An MLP with one logit out; ``spec.hidden`` sets its size (and so its quality)."""
    from torch import nn

    layers: list[nn.Module] = []
    width = spec.width
    for h in spec.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class TabularScorer:
    """The fast path the job uses: raw Arrow batch in, probabilities out (an ``ArrowScorer``).

    The weights stay bytes until the first use of the network: the job's driver loads this
    scorer and ships it to its actors without importing torch (2 s of a 2-core machine's start).
    """

    def __init__(self, folder: Path) -> None:
        self.spec = FeatureSpec.from_json((folder / SPEC_FILE).read_text())
        self.weights = (folder / WEIGHTS_FILE).read_bytes()
        self.device_name = "cpu"
        self.dtype_name = "float32"
        self._net: torch.nn.Module | None = None
        self.transposed_first_layer: bool | None = None  # decided on the first large CPU batch

    def __getstate__(self) -> dict:
        # shipped to each actor before its first batch: the weights as bytes, and every actor
        # measures the first layer's form on its own cores
        return self.__dict__ | {"_net": None, "transposed_first_layer": None}

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            import io

            import torch

            # first used inside predict_proba's inference mode: build ordinary parameters anyway,
            # so the network still works outside it (training, load_state_dict)
            with torch.inference_mode(False):
                net = build_net(self.spec)
                net.load_state_dict(torch.load(io.BytesIO(self.weights), map_location="cpu", weights_only=True))
                self._net = net.eval().to(self.device, self.dtype)
        return self._net

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(self.device_name)

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def threshold(self) -> float:
        return self.spec.threshold

    @property
    def input_columns(self) -> list[str]:
        return self.spec.columns

    def to(self, device: str, *, dtype: str | None = None) -> TabularScorer:
        """Move the network (``cuda`` for a GPU actor); ``dtype='bfloat16'`` halves the math."""
        self.device_name = str(device)
        self.dtype_name = dtype or "float32"
        if self._net is not None:
            self._net.to(self.device, self.dtype)
        return self

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        """Probability of the positive class for each row of a raw Arrow batch."""
        import torch

        features = torch.from_numpy(self.spec.transform(table))
        with torch.inference_mode():
            if self.device.type == "cuda":
                features = features.pin_memory().to(self.device, non_blocking=True)
            logits = self._forward(features.to(self.dtype)).squeeze(1)
            return torch.sigmoid(logits.float()).cpu().numpy()

    def _forward(self, features: torch.Tensor) -> torch.Tensor:
        """The network on column-major features, its first layer in the faster of two forms.

        ``x @ W.T`` on a column-major ``x`` makes the CPU's GEMM take a transposed operand, which
        is slow when the layer is narrow (5x for the champion's 4 units); the same product as
        ``(W @ x.T).T`` reads ``x.T`` row-major and is fast there, but slower for a wide layer.
        Which one wins depends on the shapes and the machine, so the first large batch times both.
        """

        if self.device.type != "cpu" or features.is_contiguous():
            return self.net(features)
        if self.transposed_first_layer is None:
            if features.shape[0] < 1024:
                return self.net(features)
            self.transposed_first_layer = _time(self._transposed, features) < _time(self.net, features)
        return self._transposed(features) if self.transposed_first_layer else self.net(features)

    def _transposed(self, features: torch.Tensor) -> torch.Tensor:
        import torch

        first = self.net[0]
        hidden = torch.addmm(first.bias.unsqueeze(1), first.weight, features.T).T
        return self.net[1:](hidden)


def _time(fn, x) -> float:
    import time

    fn(x)  # warm up
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0
