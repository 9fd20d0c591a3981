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


def test_a_server_that_stops_answering_mid_run_is_worth_a_retry(monkeypatch):
    """Past the start's check of the server (tracking.answering), MLflow's client keeps its own
    patience; when that runs out, the sentence names the server and what the OS said."""
    from mlflow import MlflowClient

    from jobs.failures import EXIT_TRY_AGAIN
    from tests.s3server import free_ports

    port = free_ports(1)[0]  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as raised:
        MlflowClient(f"http://127.0.0.1:{port}").get_run("0" * 32)
    assert mlflow_failure(raised.value) == (
        f"MLflow at http://127.0.0.1:{port} stopped answering (Connection refused; retried 0 times)",
        EXIT_TRY_AGAIN,
    )
    assert not retry_cannot_fix(raised.value)


def test_a_server_behind_a_certificate_of_its_own_answers(tmp_path):
    """A team's MLflow behind TLS with a private CA: the start's check must not call it down;
    checking the certificate is left to MLflow's client and its settings."""
    import http.server
    import ssl
    import subprocess
    import threading

    from jobs.tracking import answering

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # http.server calls it by this name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answering(f"https://127.0.0.1:{server.server_port}", attempts=1)  # raises if it calls it down
    finally:
        server.shutdown()


def test_a_day_under_another_name_is_not_retried_but_one_not_landed_is():
    from jobs.failures import EXIT_TRY_AGAIN
    from jobs.lake import DayElsewhere, NotLanded

    elsewhere, late = DayElsewhere("partition x does not exist, but … holds dt=20261205/"), NotLanded("not there")
    assert retry_cannot_fix(elsewhere) and exit_status(elsewhere) == EXIT_FIX_FIRST
    assert not retry_cannot_fix(late) and exit_status(late) == EXIT_TRY_AGAIN


def _failed(error: type[Exception]):
    """The error a run gives for a model whose code raised ``error``, with its frames."""
    from models.predictor import model_failed

    def predict(rows):
        raise error("lifetime_value")

    try:
        predict(None)
    except error as e:
        return model_failed("models:/fraud-net/4", e, 8192)


def test_a_task_that_is_not_retried_says_so_after_the_sentence_not_after_a_models_traceback():
    """The Airflow task's last lines: the model's error with the verdict on its line, then the
    model's own frames (jobs.airflow_ray.failing_at_once)."""
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.airflow_ray import failing_at_once

    with pytest.raises(AirflowFailException) as stopped, failing_at_once():
        raise _failed(KeyError)

    first, header, *frames = str(stopped.value).splitlines()
    assert first == (
        "models:/fraud-net/4 raised KeyError scoring a batch of 8192 rows: 'lifetime_value' "
        "(not retried: a retry fails the same way)"
    )
    assert header == "the model's traceback, its last frames:"
    assert frames[-1].strip() == 'raise error("lifetime_value")', frames


def test_a_models_oserror_keeps_airflows_retries():
    """A feature store the model calls, down for a moment: exit 75, and the task keeps its retries."""
    from jobs.airflow_ray import failing_at_once
    from jobs.failures import EXIT_TRY_AGAIN, exit_status
    from models.predictor import ModelFailed

    failed = _failed(ConnectionError)
    assert str(failed).splitlines()[0] == (
        "models:/fraud-net/4 raised ConnectionError scoring a batch of 8192 rows: lifetime_value"
    )
    assert exit_status(failed) == EXIT_TRY_AGAIN
    with pytest.raises(ModelFailed), failing_at_once():  # not AirflowFailException: Airflow retries it
        raise failed
