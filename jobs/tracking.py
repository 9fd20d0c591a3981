"""MLflow: where runs go, and what a scoring run records about itself."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from typing import TYPE_CHECKING

from jobs.failures import os_reason
from jobs.lake import DataFile

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from jobs.settings import Settings

log = logging.getLogger(__name__)


def configure(settings: Settings) -> MlflowClient:
    """Point this process (and, through the environment, the processes it starts) at the MLflow stores."""
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow.tracking_uri
    # Against a tracking server, MLflow writes "View run … at: <url>" to stdout as each run ends,
    # into the output of `lakecast run --json`; lakecast names the run itself.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    stores = {settings.mlflow.tracking_uri, settings.mlflow.registry_uri or settings.mlflow.tracking_uri}
    for uri in stores:
        if uri.startswith(("http://", "https://")):
            answering(uri)
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    if settings.mlflow.registry_uri:
        os.environ["MLFLOW_REGISTRY_URI"] = settings.mlflow.registry_uri
        mlflow.set_registry_uri(settings.mlflow.registry_uri)
    if settings.mlflow.tracking_uri.startswith("sqlite:///"):
        path = settings.mlflow.tracking_uri.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if settings.mlflow.artifact_root and not os.path.exists(path):
            _create_store(settings.mlflow.tracking_uri, settings.mlflow.artifact_root)
    for uri in stores:  # after the store's creation above: a store this makes is an empty file
        write_ahead(uri)
    return mlflow.MlflowClient()


def write_ahead(uri: str) -> None:
    """Put a SQLite store (``sqlite:///...``; any other ``uri`` is left alone) in write-ahead-log
    mode, where its readers never block its writer, creating its folder and file if need be.

    MLflow leaves SQLite in its default rollback-journal mode, where a write waits for every open
    read to end, 20 s at most (MLflow's busy timeout), then fails with "database is locked". The
    embedded store has many hands at once: the run logging, the Airflow task that created the run,
    ``lakecast mlflow-ui`` and its users' browsers, a second job's run, a read that a stop left
    open. The mode is kept in the file, so this changes a store once; SQLite allows it only to a
    store on a local disk, as the embedded store is."""
    if not uri.startswith("sqlite:///"):
        return
    path = uri.removeprefix("sqlite:///")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with closing(sqlite3.connect(path, timeout=5)) as conn:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                log.info("MLflow store %s: journal mode %s", path, mode)
    except sqlite3.Error as e:  # busy now: the next process to configure the store tries again
        log.warning("could not put the MLflow store %s in write-ahead-log mode: %s", path, e)


class TrackingUnreachable(ConnectionError):
    """The MLflow server does not answer; it may later, so a retry may pass."""


@functools.cache
def answering(uri: str, attempts: int = 3) -> None:
    """Fail within seconds when the MLflow server at ``uri`` does not answer.

    MLflow's client retries each request for about 4 minutes (7 times, sized for a rate limit),
    which is the patience a run needs once it has work to lose, but not at its first request: a
    server that is down, or a wrong URI, would take 4 minutes to say so. Any HTTP answer counts
    (a 401 or 404 from a proxy too); only no answer, or a 5xx, does not.

    Raises:
        TrackingUnreachable: naming the server and why, after ``attempts`` tries 1 and 2 s apart.
    """
    import time

    import requests

    why = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(attempt)
        try:
            status = requests.get(f"{uri.rstrip('/')}/health", timeout=5).status_code
        except requests.exceptions.SSLError:  # it answered; its certificate is for MLflow's client
            return  # to check, with its settings (MLFLOW_TRACKING_INSECURE_TLS, a CA bundle)
        except requests.Timeout:  # before ConnectionError: a connect timeout is both
            why = "no answer within 5 s"
            continue
        except requests.ConnectionError as e:
            why = os_reason(str(e)) or type(e).__name__
            continue
        if status < 500:
            return
        why = f"HTTP {status}"
    raise TrackingUnreachable(
        f"MLflow at {uri} did not answer ({why}, {attempts} tries); check that the server runs and that "
        "the profile's mlflow.tracking_uri names it"
    )


def _create_store(uri: str, artifact_root: str) -> None:
    """Create a new SQLite store whose Default experiment keeps its artifacts under the profile's
    artifact root.

    Left to MLflow, the process that first opens the store gives the Default experiment
    ``./mlruns/0`` of its working directory, and that is where a user's model lands when they log
    it as MLflow's quickstart does, naming no experiment: outside ``LAKECAST_HOME``, and left
    behind when it is deleted.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    log.info("creating the MLflow store %s, its artifacts under %s", uri, artifact_root)
    SqlAlchemyStore(uri, artifact_root)


def experiment_id(settings: Settings, name: str) -> str:
    """Get or create an experiment whose artifacts live under the profile's artifact root.

    Without an explicit location, a SQLite-backed MLflow puts artifacts in ``./mlruns`` of
    whatever directory the process runs in, outside ``LAKECAST_HOME``.
    """
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = settings.mlflow.artifact_root
    # no root: a tracking server that stores (and serves) artifacts itself decides
    location = f"{root.rstrip('/')}/{name.replace('/', '-')}" if root else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


def scoring_run_name(job: str, ds) -> str:
    return f"{job} {ds.isoformat() if hasattr(ds, 'isoformat') else ds}"


def create_scoring_run(settings: Settings, job: str, ds, *, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """Create the run a scoring job will log into, before the job starts: (experiment id, run id).

    The Airflow task does this so that its link to the run works from the first second, in
    cluster mode too, where the job itself runs elsewhere.
    """
    client = configure(settings)
    experiment = experiment_id(settings, f"lakecast/{job}")
    run = client.create_run(experiment, run_name=scoring_run_name(job, ds), tags=tags or {})
    return experiment, run.info.run_id


def check_run(client: MlflowClient, run_id: str, tracking_uri: str) -> None:
    """That ``run_id`` (``--mlflow-run-id``) is a run a job can log into, checked before Ray starts
    and before anything is scored: MLflow would otherwise say so only when the run is started.

    Raises:
        ConfigError: no such run in this tracking store, or a deleted one.
    """
    from mlflow.exceptions import MlflowException

    from jobs.yamlconf import ConfigError

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ConfigError(
            f"--mlflow-run-id {run_id}: MLflow at {tracking_uri} has no such run (leave the option out "
            "and the job starts a run of its own)"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(
            f"--mlflow-run-id {run_id}: that run is deleted in MLflow at {tracking_uri}; restore it "
            "(the UI, or mlflow runs restore) or leave the option out for a new run"
        )


def fail_run_if_open(settings: Settings, run_id: str, status: str = "FAILED") -> None:
    """A job that died before it ended its run leaves it RUNNING: mark it FAILED (or KILLED,
    for a job stopped from outside). On the way out of a failed task: whatever keeps MLflow from
    recording it is logged, and the task's own error is the one raised."""
    try:
        with briefly() if status == "KILLED" else nullcontext():
            client = configure(settings)
            if client.get_run(run_id).info.status in ("RUNNING", "SCHEDULED"):
                client.set_terminated(run_id, status)
    except Exception as e:
        log.warning("MLflow run %s could not be marked %s: %s", run_id, status, e)


# MLflow's client, asked to try once and for 2 s (see briefly)
_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


@contextmanager
def briefly() -> Iterator[None]:
    """MLflow's client tries once, for 2 s at most, inside the block: for what a stopped run
    records on its way out.

    Its usual patience, 7 retries over about 4 minutes, would keep a stopped run waiting on a
    server that is down, with its partition lock held, past the grace a process gets before it is
    killed: Airflow 3's task supervisor sends SIGKILL 5 s after its SIGTERM (Kubernetes 30 s). And a
    lock that a killed run leaves holds its partition on S3 until its lease ends.

    The setting is the process's (MLflow reads it from the environment at each request): this is
    for a process on its way out, whose other threads no longer talk to MLflow."""
    saved = {name: os.environ.get(name) for name in _PATIENCE}
    os.environ.update(_PATIENCE)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def killed_when_stopped() -> Iterator[None]:
    """Inside an active MLflow run: a run stopped from outside (:class:`jobs.stopping.Stopped`,
    Ctrl-C) ends as KILLED, MLflow's status for it, where ``mlflow.start_run``'s block would
    end it as FAILED, the status of a bug. The stop goes on whether or not MLflow answers."""
    from jobs.stopping import stop_in

    try:
        yield
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt) and stop_in(e) is None:
            raise
        import mlflow

        try:
            with briefly():
                mlflow.end_run("KILLED")  # takes the run off MLflow's stack before it asks the store
        except Exception as e:
            log.warning("the stopped run could not be marked KILLED in MLflow, where it stays RUNNING: %s", e)
        raise


def ui_base(settings: Settings) -> str:
    """Where users open the MLflow UI: the profile's ui_url, the tracking server, or ``lakecast mlflow-ui``."""
    if settings.mlflow.ui_url:
        return settings.mlflow.ui_url.rstrip("/")
    if settings.mlflow.tracking_uri.startswith(("http://", "https://")):
        return settings.mlflow.tracking_uri.rstrip("/")
    return "http://localhost:5000"


def run_url(settings: Settings, experiment: str, run_id: str) -> str:
    return f"{ui_base(settings)}/#/experiments/{experiment}/runs/{run_id}"


def log_dataset(*, name: str, uri: str, files: list[DataFile], context: str) -> None:
    """Record a lake partition as an MLflow dataset of the active run (source, digest, files)."""
    import hashlib

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = hashlib.sha256("".join(f"{f.path}:{f.size};" for f in files).encode()).hexdigest()[:8]
    with warnings.catch_warnings():  # MLflow registers two local sources and warns that it picked one
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(uri)
    dataset = MetaDataset(source=source, name=name, digest=digest)
    mlflow.log_input(dataset, context=context)


def link_model_version(client: MlflowClient, name: str, version: int) -> None:
    """Link the active run to the logged model behind a registered version (MLflow 3)."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    model_id = getattr(client.get_model_version(name, str(version)), "model_id", None)
    if model_id:
        mlflow.log_input(model=LoggedModelInput(model_id))


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    from jobs.settings import PROJECT_ROOT

    try:
        release = version("lakecast")
    except PackageNotFoundError:
        release = "unknown"
    try:
        sha = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return release
    return f"{release}+g{sha}"
