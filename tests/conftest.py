"""Shared fixtures: a fresh LAKECAST_HOME with a tiny real demo lake, real MLflow on SQLite,
two really trained and registered model versions, and one local Ray for the session."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

DAY = dt.date(2026, 11, 21)
ROWS = 3_000
LABELED_ROWS = 4_000


# The modules that take longest, longest first, by their seconds in a run of the whole suite on 2
# cores (2026-12-06: test_demo 390 s, test_production 280, test_bad_inputs 175, test_job 133,
# test_own_model 112, test_faults 101, test_bench 94, test_lake 69, test_cluster 53, test_ab 52,
# test_dags 41, test_mlflow_store 36; the other modules 50 s together).
LONGEST_FIRST = (
    "test_demo",
    "test_production",
    "test_bad_inputs",
    "test_job",
    "test_own_model",
    "test_faults",
    "test_bench",
    "test_lake",
    "test_cluster",
    "test_ab",
    "test_dags",
    "test_mlflow_store",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first (:data:`LONGEST_FIRST`), then the others as collected, each
    module's tests in their order.

    ``make test`` runs two pytest workers, each taking a whole module at a time in this order
    (``--dist loadfile --no-loadscope-reorder``). Longest first, the two end within seconds of each
    other; in the earlier order (the end-to-end modules first, then the rest as collected) one
    worker ended 65 s after the other (822 against 757 s), having taken a module of 112 s late."""

    def rank(item: pytest.Item) -> int:
        module = item.path.stem
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Everything the tests write lives here; the profile is the embedded default."""
    path = tmp_path_factory.mktemp("lakecast-home")
    saved = {k: os.environ.get(k) for k in ("LAKECAST_HOME", "LAKECAST_PROFILE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    os.environ["LAKECAST_HOME"] = str(path)
    for k in ("LAKECAST_PROFILE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "LAKECAST_LAKE_ROOT"):
        os.environ.pop(k, None)
    yield path
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def settings(home: Path):
    from jobs.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def lake(settings):
    from jobs import demo_data
    from jobs.lake import Lake

    lake = Lake(settings.lake_root)
    demo_data.build_demo_lake(lake, DAY, rows=ROWS, labeled_rows=LABELED_ROWS)
    return lake


@pytest.fixture(scope="session")
def registered(settings, lake) -> dict[str, int]:
    """champion and challenger versions of churn-classifier, trained on the fixture's labels."""
    from jobs.demo import train_and_register

    return train_and_register(settings, lake, DAY - dt.timedelta(days=1), name="churn-classifier")


@pytest.fixture(scope="session")
def _private_ray() -> Iterator[None]:
    """Stops the private Ray of this process at the session's end."""
    from jobs.ray_runtime import stop_ray

    yield
    stop_ray()


@pytest.fixture(scope="module")
def ray_local(settings, _private_ray) -> None:
    """A private Ray in this process, started by the first module that needs one and kept for
    the next; started again after a module stopped it (test_cluster's, before it takes a head's
    token)."""
    from jobs.ray_runtime import ensure_ray

    ensure_ray(settings)


@pytest.fixture(scope="session")
def churn_job():
    from jobs.config import load_job

    return load_job("churn")


@pytest.fixture(autouse=True)
def no_console_handler_left_behind() -> Iterator[None]:
    """A test that calls ``jobs.cli.main`` configures logging for the whole process
    (conf/logging.yaml): a console handler on the root logger, writing to that test's captured
    stderr, which pytest closes after it. Every record after that printed a "Logging error"
    traceback, ninety lines each, into the report of whichever test failed next in the worker,
    burying its assertion. The handler goes with the test that added it."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler and handler not in before:
            root.removeHandler(handler)


@pytest.fixture(autouse=True)
def no_open_mlflow_run() -> Iterator[None]:
    """A test that leaves an MLflow run open fails: runs must end, even on errors."""
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        active = mlflow.active_run()
        if active is not None:
            mlflow.end_run("FAILED")
            pytest.fail(f"test left MLflow run {active.info.run_id} open")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS) for the session, stopped at the end even on failure."""
    from tests.s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


S3_BUCKET = "lakecast-tests"


@pytest.fixture
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch):
    """Point this process at the S3 server the way a user does: AWS_* variables."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    from jobs.lake import Lake

    s3 = Lake(f"s3://{S3_BUCKET}").s3fs
    if not s3.exists(S3_BUCKET):
        s3.mkdir(S3_BUCKET)  # one bucket: SeaweedFS gives each bucket volumes of its own
    return s3_server


_prefixes = iter(range(10_000))


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, settings, tmp_path: Path):
    """Settings whose lake is a fresh local folder or a fresh S3 bucket: storage tests run on both."""
    if request.param == "local":
        return settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    request.getfixturevalue("s3_env")
    root = f"s3://{S3_BUCKET}/lake-{os.getpid()}-{next(_prefixes)}"
    return settings.model_copy(update={"lake_root": root})


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real Ray head (``ray start --head``, dashboard and Jobs API) on 127.0.0.1, token-authenticated
    like a production cluster. Its clients get the token from ``auth_env``, each test's own: a
    private Ray that this process starts later must not inherit it (Ray reads RAY_AUTH_MODE once
    per process, so that Ray's GCS would demand a token its driver never sends)."""
    from tests.rayhead import RayHead

    head = RayHead(tmp_path_factory.mktemp("ray-head")).start()
    yield head
    head.stop()


def pytest_unconfigure(config: pytest.Config) -> None:
    """A pytest worker that has imported Ray, torch, MLflow and Airflow took 3 s after its last
    test to end, in Python's teardown collecting those objects; frozen, they are left to the OS
    (0.3 s), as dags/lakecast_jobs.py leaves an Airflow process's."""
    import gc

    gc.freeze()
