"""The demo model as MLflow logs it: "models from code", this file copied beside the weights and
run when the model loads, where a pickled :class:`TabularClassifier` would ask its loader to
trust what unpickling runs (MLflow warns at every log of a pickled model)."""

import mlflow.models

from models.tabular_pyfunc import TabularClassifier

mlflow.models.set_model(TabularClassifier())
