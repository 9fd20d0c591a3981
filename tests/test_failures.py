"""Which MLflow errors a retry can fix: what a scheduled task's retries, and the exit status, follow."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos import databricks_pb2

from jobs.failures import EXIT_FIX_FIRST, exit_status, mlflow_failure, retry_cannot_fix


def test_a_tracking_server_that_refuses_the_token_fails_without_retries():
    refused = RestException({"error_code": "PERMISSION_DENIED", "message": "User alice lacks READ on model 'churn'"})
    assert retry_cannot_fix(refused) and exit_status(refused) == EXIT_FIX_FIRST
    assert mlflow_failure(refused) == (
        "MLflow refused the request: PERMISSION_DENIED: User alice lacks READ on model 'churn'",
        EXIT_FIX_FIRST,
    )


@pytest.mark.parametrize("error_code", ["INTERNAL_ERROR", "INVALID_PARAMETER_VALUE"])
def test_an_mlflow_error_that_is_not_about_its_server_stays_a_traceback(error_code):
    """No sentence is made up for it: lakecast's own bug, or a case not yet classified, keeps its
    traceback, and Airflow's retries."""
    e = MlflowException("the store said something else", error_code=getattr(databricks_pb2, error_code))
    assert mlflow_failure(e) is None and not retry_cannot_fix(e)
