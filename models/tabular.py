"""The demo tabular classifier: preprocessing and a PyTorch MLP, scored on Arrow batches.

:class:`TabularScorer` needs torch and pyarrow only, not MLflow: the job loads it once on the
driver and ships it to the Ray actors, which then start without importing MLflow or reaching the
registry. :mod:`models.tabular_pyfunc` wraps it as the MLflow pyfunc model that the registry
holds, so ``mlflow.pyfunc.load_model(uri).predict(raw_df)`` runs this same code.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

# The first layer's two forms are timed on at most this many rows of the first large batch. The
# pick was the same as on the whole batch for the champion and the challenger at 65,536 and
# 131,072 rows (three timings each), and timing the champion's whole 131,072-row batch cost
# 51 ms against 4.5 ms here.
TIMED_ROWS = 16_384
# one thread of an actor times the forms; the others score in the first form (x · Wᵀ) meanwhile
_TIMING = threading.Lock()
# A batch's categories go into the first layer as one code a row (FeatureSpec.category_codes)
# where the table of every combination's weights holds no more than this many numbers a row of
# the batch; past that, building the table costs more than it saves (docs/benchmark.md)
COMBO_WEIGHTS_PER_ROW = 4


class _Refusing(threading.local):
    """Whether this thread is inside :func:`refusing_non_finite`."""

    on = False


_refusing = _Refusing()


class NonFiniteNumbers(ValueError):
    """Under :func:`refusing_non_finite`, a numeric input held NaN or infinity: ``columns``."""

    def __init__(self, columns: list[str]) -> None:
        super().__init__(f"NaN or infinity in {', '.join(columns)}")
        self.columns = columns


@contextmanager
def refusing_non_finite() -> Iterator[None]:
    """On this thread, the scorer raises :class:`NonFiniteNumbers` where a numeric column that is
    not of an integer type holds NaN or infinity, instead of scoring the value as the column's mean.

    For the job's row checks, which would otherwise pass over every float column to find such
    values before the scorer passes over them again to convert them (:meth:`FeatureSpec.raw_numeric`
    finds them anyway): with this, the checks can leave them to the scorer and check in full only
    the rare batch that raises (``jobs.part_writer``). An integer column's NaN is a null, which
    the checks count apart. Thread-local because an actor scores a file on each of its threads."""
    before = _refusing.on
    _refusing.on = True
    try:
        yield
    finally:
        _refusing.on = before


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
        """Raw Arrow columns → float32 matrix of shape (rows, width): what the network trains on.

        Scoring does not build this matrix: :class:`TabularScorer` folds the standardisation and
        the one-hot encoding into the first layer and takes :meth:`raw_numeric` and
        :meth:`category_codes` instead."""
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
        codes, slots, _ = self.category_codes(table)
        for column in slots[codes].T:
            flat[(len(self.numeric) + column) * n + rows] = 1.0
        return out

    def raw_numeric(self, table: pa.Table) -> np.ndarray:
        """The numeric columns unscaled, float32, one row of the result per column (each filled
        contiguously); null, NaN and infinity become the column's training mean, as in
        :meth:`transform`."""
        out = np.empty((len(self.numeric), table.num_rows), dtype=np.float32)
        for j, c in enumerate(self.numeric):
            start = 0
            for chunk in _chunks(table.column(c)):
                np.copyto(out[j, start : start + len(chunk)], _numbers(chunk, self.means[j]), casting="unsafe")
                start += len(chunk)
        finite = np.isfinite(out)
        if not finite.all():
            gaps = np.flatnonzero(~finite.all(axis=1))
            if _refusing.on:
                refused = [
                    self.numeric[j] for j in gaps if not pa.types.is_integer(table.schema.field(self.numeric[j]).type)
                ]
                if refused:
                    raise NonFiniteNumbers(refused)
            # column by column, only those with a gap: a mask over the whole block cost 10 ns a row
            for j in gaps:
                np.copyto(out[j], np.float32(self.means[j]), where=~finite[j])
        return out

    def category_codes(
        self, table: pa.Table, most_combinations: int = 0
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...] | None]:
        """Each row's category in each categorical column, as ``(codes, slots, None)``:
        ``slots[codes]`` is the row's one-hot position, counted from the first categorical slot
        (slot 0 of a column's block takes nulls and unseen values).

        ``codes`` (rows by categorical columns, int32) are the batch's own dictionary codes, each
        column's and chunk's shifted past those before it; ``slots`` (int64) maps each code to
        its slot. A dictionary-encoded column (the job reads categorical columns so, as Parquet
        stores them) is thus looked up once per distinct value, and its rows cost an add: 20 →
        13 ns a row for the churn table's seven columns, against a lookup per row.

        Where each column comes in one chunk and their codes make no more than
        ``most_combinations`` combinations, the codes are one column instead, each row's
        combination: ``code_0 + code_1·size_0 + code_2·size_0·size_1 + …``, with ``size_k``
        column ``k``'s count of codes (its dictionary's values and one for nulls), given as the
        third item, and each column's own codes counted from 0. The first layer then sums each
        combination's weights once a batch and looks a row's up once
        (:meth:`TabularScorer._first_hidden`): for the champion at 131,072 rows a batch, 30 → 12
        ns a row against a lookup a column.
        """
        columns = self._column_codes(table)
        whole = bool(columns) and all(len(chunks) == 1 for chunks in columns)
        sizes = tuple(len(chunks[0][1]) for chunks in columns) if whole else ()
        if whole and math.prod(sizes) <= min(most_combinations, np.iinfo(np.int32).max):  # int32 codes
            combos, term = np.empty(table.num_rows, dtype=np.int32), np.empty(table.num_rows, dtype=np.int32)
            stride = 1
            for k, ((column_codes, _),) in enumerate(columns):
                if k == 0:
                    np.copyto(combos, column_codes, casting="unsafe")
                else:
                    np.add(combos, np.multiply(column_codes, stride, out=term, casting="unsafe"), out=combos)
                stride *= sizes[k]
            return combos[:, None], np.concatenate([slots for ((_, slots),) in columns]), sizes
        codes = np.empty((table.num_rows, len(self.categorical)), dtype=np.int32)
        all_slots: list[np.ndarray] = []
        first_code = 0
        for k, chunks in enumerate(columns):
            start = 0
            for chunk_codes, chunk_slots in chunks:
                end = start + len(chunk_codes)
                np.add(chunk_codes, first_code, out=codes[start:end, k], casting="unsafe")
                all_slots.append(chunk_slots)
                first_code, start = first_code + len(chunk_slots), end
        return codes, np.concatenate(all_slots) if all_slots else np.zeros(0, dtype=np.int64), None

    def _column_codes(self, table: pa.Table) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Per categorical column, per chunk: each row's code, and each code's slot counted from
        the first categorical slot (see :func:`_codes`)."""
        columns, first_slot = [], 0
        for c, values in self.categorical.items():
            columns.append([(codes, slots + first_slot) for codes, slots in _codes(table.column(c), values)])
            first_slot += len(values) + 1
        return columns

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls(**json.loads(text))


def _codes(column: pa.ChunkedArray | pa.Array, values: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk of ``column``: each row's code, and each code's slot in the one-hot block of
    ``values`` (``values[i]`` is slot ``i + 1``; null and unseen are slot 0)."""
    for chunk in _chunks(column):
        if pa.types.is_dictionary(chunk.type):
            # one code more than the dictionary has, for the null rows
            codes = pc.fill_null(chunk.indices, len(chunk.dictionary)) if chunk.null_count else chunk.indices
            yield codes.to_numpy(zero_copy_only=False), np.append(_slots(chunk.dictionary, values), 0)
        else:
            strings = chunk if pa.types.is_string(chunk.type) else chunk.cast(pa.string())
            yield _arrow_slots(strings, values), np.arange(len(values) + 1)


# a dictionary up to this size is looked up value by value in Python (see _slots)
SMALL_DICTIONARY = 256


def _slots(dictionary: pa.Array, values: list[str]) -> np.ndarray:
    """Each of a batch's dictionary values' one-hot slot: ``values[i]`` is slot ``i + 1``, null
    and unseen are slot 0.

    A categorical column's dictionary holds its few distinct values, and every batch brings its
    own: Python's dict finds a handful of them faster than Arrow builds a hash table of
    ``values`` for each batch (the churn table's seven columns: 37 against 257 µs per batch of
    65,536 rows, 3.4 ns a row). A large dictionary still goes through Arrow."""
    if not pa.types.is_string(dictionary.type):
        dictionary = dictionary.cast(pa.string())
    if len(dictionary) > SMALL_DICTIONARY:
        return _arrow_slots(dictionary, values)
    slot = _slot_of(tuple(values))
    return np.fromiter((slot.get(v, 0) for v in dictionary.to_pylist()), np.int64, len(dictionary))


def _arrow_slots(strings: pa.Array, values: list[str]) -> np.ndarray:
    """Each string's slot, looked up by Arrow: ``values[i]`` is slot ``i + 1``, null and unseen 0."""
    found = pc.index_in(strings, value_set=pa.array(values, pa.string()))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False) + 1


@functools.lru_cache(maxsize=64)
def _slot_of(values: tuple[str, ...]) -> dict[str, int]:
    return {v: i + 1 for i, v in enumerate(values)}


def _chunks(column: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def _numbers(chunk: pa.Array, mean: float) -> np.ndarray:
    """A numeric chunk's values for :meth:`FeatureSpec.raw_numeric`'s float32 block, without a
    copy where Arrow's own buffer serves: a float column's nulls are filled with ``mean`` by
    Arrow, where ``to_numpy`` would copy the column to put NaN in its gaps and the block would
    then be searched for them (14.1 → 10.3 ns a row for the churn table's 15 columns, three of
    them with nulls). Other types (integers with nulls among them) go through :func:`_as_float`,
    whose NaN the block's check turns into the mean."""
    if chunk.null_count and (pa.types.is_float32(chunk.type) or pa.types.is_float64(chunk.type)):
        chunk = pc.fill_null(chunk, pa.scalar(mean, chunk.type))
    return _as_float(chunk)


def _as_float(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
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

    It scores with the trained network, its first layer folded with the feature transform: the
    standardisation goes into the numeric weights and bias, and each category's one-hot column
    becomes a row of weights to look up. On the champion this halves the time per row (131 → 78
    ns), mostly because it no longer builds and reads a 49-wide matrix that is 70% zeros.

    The weights stay bytes until the first use of the network: the job's driver loads this
    scorer and ships it to its actors without importing torch (2 s of a 2-core machine's start).
    """

    def __init__(self, folder: Path) -> None:
        self.spec = FeatureSpec.from_json((folder / SPEC_FILE).read_text())
        self.weights = (folder / WEIGHTS_FILE).read_bytes()
        self.device_name = "cpu"
        self.dtype_name = "float32"
        self._net: torch.nn.Module | None = None
        self._first: FoldedLayer | None = None
        self.numeric_by_rows: bool | None = None  # decided on the first large CPU batch

    def __getstate__(self) -> dict:
        # shipped to each actor before its first batch: the weights as bytes, and every actor
        # measures the first layer's form on its own cores
        return self.__dict__ | {"_net": None, "_first": None, "numeric_by_rows": None}

    @property
    def net(self) -> torch.nn.Module:
        """The network as trained: one-hot features in (see :meth:`FeatureSpec.transform`)."""
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
    def first_layer(self) -> FoldedLayer:
        if self._first is None:
            self._first = FoldedLayer.fold(self.spec, self.net[0]).to(self.device, self.dtype)
        return self._first

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

    @property
    def refuses_non_finite(self) -> frozenset[str]:
        """The columns whose NaN and infinity :func:`refusing_non_finite` makes it raise on."""
        return frozenset(self.spec.numeric)

    def to(self, device: str, *, dtype: str | None = None) -> TabularScorer:
        """Move the network (``cuda`` for a GPU actor); ``dtype='bfloat16'`` halves the math."""
        self.device_name = str(device)
        self.dtype_name = dtype or "float32"
        self._first = None
        if self._net is not None:
            self._net.to(self.device, self.dtype)
        return self

    def inputs(self, table: pa.Table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...] | None]:
        """What :meth:`forward` takes, from a raw Arrow batch, on the CPU: the numbers unscaled
        (columns by rows); the categories as each row's code in each column with each code's
        one-hot slot, ``sizes`` None; or, where the batch's columns take few values between them,
        as each row's combination of them, with each column's count of codes in ``sizes``
        (:meth:`FeatureSpec.category_codes`)."""
        import torch

        units = self.spec.hidden[0] if self.spec.hidden else 1  # the first layer's
        codes, slots, sizes = self.spec.category_codes(table, table.num_rows * COMBO_WEIGHTS_PER_ROW // units)
        return torch.from_numpy(self.spec.raw_numeric(table)), torch.from_numpy(codes), torch.from_numpy(slots), sizes

    def predict_proba(self, table: pa.Table) -> np.ndarray:
        """Probability of the positive class for each row of a raw Arrow batch."""
        import torch

        numeric, codes, slots, sizes = self.inputs(table)
        with torch.inference_mode():
            if self.device.type == "cuda":
                numeric, codes, slots = (
                    t.pin_memory().to(self.device, non_blocking=True) for t in (numeric, codes, slots)
                )
            logits = self.forward(numeric.to(self.dtype), codes, slots, sizes).squeeze(1)
            return torch.sigmoid(logits.float()).cpu().numpy()

    def forward(
        self, numeric: torch.Tensor, codes: torch.Tensor, slots: torch.Tensor, sizes: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """Logits from :meth:`inputs`, the numeric product in the faster of two forms.

        The numbers come one column per row, so that each is copied contiguously; for
        ``x · Wᵀ`` the GEMM then takes ``x`` transposed, which is slow when the layer is narrow
        (5x for the champion's 4 units), while ``(W · x)ᵀ`` is fast there but slower for a wide
        layer. Which wins depends on the shapes and the machine, so the first large batch times
        both (:meth:`_faster_form`) in one of an actor's threads; the others score in the first
        form until it has decided."""
        inputs = (numeric, codes, slots, sizes)
        if self.device.type != "cpu":
            return self._after_first(self._first_hidden(*inputs, by_rows=True))
        if self.numeric_by_rows is None and numeric.shape[1] >= 1024 and _TIMING.acquire(blocking=False):
            try:
                if self.numeric_by_rows is None:  # another thread may have decided meanwhile
                    self.numeric_by_rows = self._faster_form(*inputs)
            finally:
                _TIMING.release()
        by_rows = True if self.numeric_by_rows is None else self.numeric_by_rows
        return self._after_first(self._first_hidden(*inputs, by_rows=by_rows))

    def _faster_form(
        self, numeric: torch.Tensor, codes: torch.Tensor, slots: torch.Tensor, sizes: tuple[int, ...] | None
    ) -> bool:
        """Whether ``x · Wᵀ`` beats ``(W · x)ᵀ`` here, timed on the first :data:`TIMED_ROWS` rows."""
        part = (numeric[:, :TIMED_ROWS], codes[:TIMED_ROWS], slots, sizes)
        return _faster(
            lambda: self._first_hidden(*part, by_rows=True), lambda: self._first_hidden(*part, by_rows=False)
        )

    def _after_first(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layers after the first, each ReLU in place: ``hidden`` and every layer's output
        are this call's own, and nothing reads them again. A new tensor per ReLU is memory the
        process has to take and fill on every batch: for the challenger's 128-unit layer, 8 MiB
        at 16,384 rows, and the ReLUs took a quarter of its forward."""
        from torch import nn

        for layer in self.net[1:]:
            hidden = hidden.relu_() if isinstance(layer, nn.ReLU) else layer(hidden)
        return hidden

    def _first_hidden(
        self,
        numeric: torch.Tensor,
        codes: torch.Tensor,
        slots: torch.Tensor,
        sizes: tuple[int, ...] | None,
        *,
        by_rows: bool,
    ) -> torch.Tensor:
        """The first layer's output, rows by units: the categories' weights summed per row (one
        lookup each, in the batch's own table of them; or, given ``sizes``, one lookup of the
        row's combination in the table of their sums), plus the bias, plus the numbers times
        their weights."""
        import torch

        first = self.first_layer
        if sizes is not None:
            hidden = _combination_weights(first.categories, slots, sizes).index_select(0, codes.view(-1))
        elif codes.shape[1]:
            hidden = torch.nn.functional.embedding_bag(codes, first.categories[slots], mode="sum")
        else:
            hidden = torch.zeros(numeric.shape[1], first.bias.shape[0], dtype=first.bias.dtype, device=self.device)
        if by_rows:
            # in place: torch.addmm would first copy hidden into a new tensor (the wide challenger: 12% of
            # its scoring at 8,192 rows a batch)
            return hidden.add_(first.bias).addmm_(numeric.T, first.numeric.T)
        return hidden.add_(torch.addmm(first.bias.unsqueeze(1), first.numeric, numeric).T)


def _combination_weights(categories: torch.Tensor, slots: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Each combination of a batch's categories' summed weights, rows by units, in the order of
    :meth:`FeatureSpec.category_codes`' combinations: the first column's code varies fastest. Summed in
    float32 whatever the layer's dtype, so that a sum rounds once to it (in bfloat16 on a GPU, each
    column's add would round)."""
    table = None
    for column_slots in slots.split(sizes):
        weights = categories[column_slots].float()
        table = weights if table is None else (weights.unsqueeze(1) + table.unsqueeze(0)).reshape(-1, weights.shape[1])
    assert table is not None  # category_codes gives sizes only where there are categorical columns
    return table.to(categories.dtype)


@dataclass(frozen=True)
class FoldedLayer:
    """The first linear layer with :meth:`FeatureSpec.transform` folded in.

    ``W · ((x - mean) / std) + b`` is ``(W / std) · x + (b - (W / std) · mean)``; a one-hot
    column times its weights is the weights' column, looked up instead of multiplied.
    """

    numeric: torch.Tensor  # units by numeric columns: W / std
    bias: torch.Tensor  # units: b - (W / std) · mean
    categories: torch.Tensor  # one-hot slots by units: W's one-hot columns, as rows

    @classmethod
    def fold(cls, spec: FeatureSpec, layer: torch.nn.Linear) -> FoldedLayer:
        import torch

        # in float64, so the folded layer rounds no worse than the original
        weight, bias = layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu()
        k = len(spec.numeric)
        scaled = weight[:, :k] / torch.tensor(spec.stds, dtype=torch.float64)
        return cls(
            numeric=scaled.contiguous(),
            bias=bias - scaled @ torch.tensor(spec.means, dtype=torch.float64),
            categories=weight[:, k:].T.contiguous(),
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> FoldedLayer:
        return FoldedLayer(*(t.to(device, dtype) for t in (self.numeric, self.bias, self.categories)))


def _faster(a: Callable[[], object], b: Callable[[], object], rounds: int = 3) -> bool:
    """Whether ``a`` runs faster than ``b``: each warmed up, then timed in turn, the best of
    ``rounds`` each. One timing each picked the slower form of the wide challenger's first layer
    in three processes of six (by 25-35%): the two are closer there than the machine's noise."""
    import time

    forms, best = (a, b), [float("inf")] * 2
    for fn in forms:
        fn()
    for _ in range(rounds):
        for i, fn in enumerate(forms):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0] < best[1]
