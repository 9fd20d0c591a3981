"""The predictor that runs inside each Ray Data actor.

Load once, predict per call: ``__init__`` fetches the model version from the registry and puts
it on the actor's device; ``__call__`` scores one Arrow batch and adds the lineage columns.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
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


class BatchPredictor:
    """Ray Data callable class: ``map_batches(BatchPredictor, fn_constructor_kwargs=...)``."""

    def __init__(self, options: PredictorOptions) -> None:
        import mlflow
        import torch

        self.options = options
        # one intra-op pool per actor, sized to the CPUs Ray gave it: no oversubscription
        torch.set_num_threads(max(1, options.num_threads))
        mlflow.set_tracking_uri(options.tracking_uri)
        if options.registry_uri:
            mlflow.set_registry_uri(options.registry_uri)
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs; an actor given none sees no CUDA.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        with warnings.catch_warnings():  # pyfunc nags about type hints our Arrow fast path doesn't use
            warnings.simplefilter("ignore", UserWarning)
            pyfunc = mlflow.pyfunc.load_model(options.model_uri)
        inner = pyfunc.unwrap_python_model() if hasattr(pyfunc, "unwrap_python_model") else None
        if isinstance(inner, ArrowScorer):
            self.model: ArrowScorer | None = inner.to(self.device, dtype=options.dtype)
            self.pyfunc = None
            self.threshold = options.threshold if options.threshold is not None else inner.threshold
        else:  # any other pyfunc: pandas in, first output column is the score
            self.model, self.pyfunc = None, pyfunc
            self.threshold = options.threshold if options.threshold is not None else 0.5
        self.reported_first_batch = False
        log.info("actor pid %d scores %s on %s", os.getpid(), options.model_uri, self.device)

    def _report_first_batch(self) -> None:
        """Record on the scoring run when this actor scored its first batch: startup is the time
        from the run's start to the earliest of these, and steady-state throughput is measured
        from there to the commit."""
        import mlflow

        self.reported_first_batch = True
        try:
            mlflow.MlflowClient().log_metric(self.options.lineage.scoring_run_id, "first_batch_unix", time.time())
        except Exception as e:  # telemetry must never fail a scoring run
            log.warning("could not record the first batch time: %s", e)

    def score(self, batch: pa.Table) -> np.ndarray:
        if self.model is not None:
            return self.model.predict_proba(batch)
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
