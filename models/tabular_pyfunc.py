"""The registered form of the demo model: an MLflow pyfunc wrapping :class:`TabularScorer`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd  # at run time: MLflow resolves predict's type hints when it loads the model
import pyarrow as pa

from models.tabular import TabularScorer

# What the demo logs as its python_model: the file that builds this class (models from code)
CODE = Path(__file__).with_name("tabular_model_code.py")


class TabularClassifier(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc model: load once (``load_context``), score per call (``predict``)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load(Path(context.artifacts["model"]))

    def load(self, folder: Path) -> None:
        self.scorer = TabularScorer(folder)

    def arrow_scorer(self) -> TabularScorer:
        """What the Ray job ships to its actors: the same scoring code, without MLflow."""
        return self.scorer

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        proba = self.scorer.predict_proba(pa.Table.from_pandas(model_input, preserve_index=False))
        return pd.DataFrame({"probability": proba, "prediction": (proba >= self.scorer.threshold).astype(np.int8)})
