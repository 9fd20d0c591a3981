"""The predictor that runs inside each Ray Data actor.

Load once, predict per call: ``__init__`` fetches the model version from the registry and puts
it on the actor's device; ``__call__`` scores one Arrow batch and adds the lineage columns.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

LINEAGE_COLUMNS = ("model_name", "model_version", "scoring_run_id", "scored_at")


@runtime_checkable
class ArrowScorer(Protocol):
    """A model that scores raw Arrow batches directly (the fast path, no pandas)."""

    threshold: float

    def predict_proba(self, table: pa.Table) -> np.ndarray: ...

    def to(self, device: str, *, dtype: str | None = None) -> ArrowScorer: ...


@dataclass(frozen=True)
class Lineage:
    """Stamped on every output row: which version scored it, in which run, when."""

    model_name: str
    model_version: int
    scoring_run_id: str
    scored_at: dt.datetime


@dataclass(frozen=True)
class PredictorOptions:
    model_uri: str
    tracking_uri: str
    registry_uri: str | None
    key: str
    score_column: str
    threshold: float | None
    lineage: Lineage
    num_threads: int = 1
    dtype: str | None = None
    telemetry_dir: str | None = None
    filesystem: object | None = None


def arrow_scorer(pyfunc: object) -> ArrowScorer | None:
    """The fast-path scorer inside a loaded pyfunc model, if its python model offers one."""
    inner = pyfunc.unwrap_python_model() if hasattr(pyfunc, "unwrap_python_model") else None
    scorer = inner.arrow_scorer() if hasattr(inner, "arrow_scorer") else None
    return scorer if isinstance(scorer, ArrowScorer) else None


class BatchPredictor:
    """Ray Data callable class: ``map_batches(BatchPredictor, fn_constructor_kwargs=...)``.

    Given ``scorer`` (loaded once on the driver, shipped through the object store), an actor
    starts without MLflow and without reaching the registry. Without it, the actor loads the
    pyfunc model from ``options.model_uri`` and scores through pandas.
    """

    def __init__(self, options: PredictorOptions, scorer: ArrowScorer | None = None) -> None:
        import torch

        self.options = options
        # one intra-op pool per actor, sized to the CPUs Ray gave it: no oversubscription
        torch.set_num_threads(max(1, options.num_threads))
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs; an actor given none sees no CUDA.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.pyfunc = None
        if scorer is None:
            import mlflow

            mlflow.set_tracking_uri(options.tracking_uri)
            if options.registry_uri:
                mlflow.set_registry_uri(options.registry_uri)
            with warnings.catch_warnings():  # pyfunc nags about type hints our Arrow path doesn't use
                warnings.simplefilter("ignore", UserWarning)
                self.pyfunc = mlflow.pyfunc.load_model(options.model_uri)
            scorer = arrow_scorer(self.pyfunc)
        self.model = scorer.to(self.device, dtype=options.dtype) if scorer is not None else None
        default = self.model.threshold if self.model is not None else 0.5
        self.threshold = options.threshold if options.threshold is not None else default
        self.reported_first_batch = False
        log.info("actor pid %d scores %s on %s", os.getpid(), options.model_uri, self.device)

    def _report_first_batch(self) -> None:
        """Note when this actor scored its first batch, in a file beside the run's staging folder:
        the job's startup is the time to the earliest of these, and its steady-state throughput
        is measured from there to the commit."""
        self.reported_first_batch = True
        if self.options.telemetry_dir is None or self.options.filesystem is None:
            return
        try:
            path = f"{self.options.telemetry_dir}/first-batch-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            with self.options.filesystem.open_output_stream(path) as f:
                f.write(repr(time.time()).encode())
        except Exception as e:  # telemetry must never fail a scoring run
            log.warning("could not record the first batch time: %s", e)

    def score(self, batch: pa.Table) -> np.ndarray:
        if self.model is not None:
            return self.model.predict_proba(batch)
        assert self.pyfunc is not None
        out = self.pyfunc.predict(batch.to_pandas())
        column = out.iloc[:, 0] if hasattr(out, "iloc") and out.ndim == 2 else out
        return np.asarray(column, dtype=np.float32)

    def __call__(self, batch: pa.Table) -> pa.Table:
        proba = self.score(batch).astype(np.float32, copy=False)
        if not self.reported_first_batch:
            self._report_first_batch()
        n, lineage = batch.num_rows, self.options.lineage
        return pa.table(
            {
                self.options.key: batch.column(self.options.key),
                self.options.score_column: pa.array(proba),
                "prediction": pa.array((proba >= self.threshold).astype(np.int8)),
                "model_name": pa.repeat(lineage.model_name, n),
                "model_version": pa.repeat(pa.scalar(lineage.model_version, pa.int32()), n),
                "scoring_run_id": pa.repeat(lineage.scoring_run_id, n),
                "scored_at": pa.repeat(pa.scalar(lineage.scored_at, pa.timestamp("us", tz="UTC")), n),
            }
        )


class PairPredictor:
    """Ray Data callable class for an A/B comparison: both versions score each batch, so the data
    is read once. Returns the passthrough columns and one score column per version."""

    def __init__(self, champion: BatchPredictor, challenger: BatchPredictor, passthrough: list[str]) -> None:
        self.champion, self.challenger, self.passthrough = champion, challenger, passthrough

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = {c: batch.column(c) for c in self.passthrough}
        columns["score_champion"] = pa.array(self.champion.score(batch).astype(np.float32, copy=False))
        columns["score_challenger"] = pa.array(self.challenger.score(batch).astype(np.float32, copy=False))
        return pa.table(columns)


class PairActor(PairPredictor):
    """The actor form: built from picklable options (Ray constructs it on the worker)."""

    def __init__(self, options: tuple[PredictorOptions, PredictorOptions], scorers: tuple, passthrough: list[str]):
        super().__init__(BatchPredictor(options[0], scorers[0]), BatchPredictor(options[1], scorers[1]), passthrough)
