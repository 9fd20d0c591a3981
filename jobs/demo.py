"""``lakecast demo``: build the demo lake, register two model versions, run the DAG once.

Each step is idempotent: rerunning the demo rebuilds the data for the date, keeps the models
already registered (``--retrain`` adds new versions), and replaces the predictions partition.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jobs import demo_data, tracking
from jobs.airflow_env import run_airflow
from jobs.config import load_job
from jobs.lake import Lake
from jobs.settings import Settings

log = logging.getLogger(__name__)

JOB = "churn"


@dataclass(frozen=True)
class DemoResult:
    ds: dt.date
    rows: int
    summary: dict


def train_and_register(settings: Settings, lake: Lake, train_day: dt.date, *, name: str) -> dict[str, int]:
    """Train the small and the large MLP on ``train_day``'s labels; alias them champion/challenger."""
    import mlflow
    import pyarrow.parquet as pq
    from mlflow.models import infer_signature

    from models import registry, train
    from models.tabular_pyfunc import CODE, TabularClassifier

    client = tracking.configure(settings)
    files = lake.data_files(demo_data.LABELED_TABLE, train_day)
    table = pq.ParquetDataset([f.path for f in files], filesystem=lake.fs).read()
    # nullability is inferred from the sample: take enough rows that every nullable column shows a null
    sample = table.select(demo_data.FEATURES).slice(0, 2000).to_pandas()
    example = sample.head(5)
    experiment = tracking.experiment_id(settings, "lakecast/training")
    versions = {}
    settings.home.mkdir(parents=True, exist_ok=True)
    for spec, alias in ((train.CHAMPION, "champion"), (train.CHALLENGER, "challenger")):
        # the artifact folder lives under LAKECAST_HOME until MLflow has copied it, then goes
        with tempfile.TemporaryDirectory(prefix=f"train-{spec.label}-", dir=settings.home) as scratch:
            folder, metrics = train.train(
                table,
                label=demo_data.LABEL,
                numeric=demo_data.NUMERIC,
                categorical=list(demo_data.CATEGORIES),
                spec=spec,
                folder=Path(scratch),
            )
            model = TabularClassifier()
            model.load(folder)
            with warnings.catch_warnings():  # MLflow's hint on integer columns: ours never hold nulls
                warnings.simplefilter("ignore", UserWarning)
                signature = infer_signature(sample, model.predict(None, sample))
            with mlflow.start_run(experiment_id=experiment, run_name=f"train {spec.label}"):
                mlflow.log_params(
                    {
                        "architecture": spec.label,
                        "hidden": spec.hidden,
                        "epochs": spec.epochs,
                        "train_rows": table.num_rows,
                        "train_date": train_day.isoformat(),
                    }
                )
                mlflow.log_metrics(metrics)
                ref = registry.register_pyfunc(
                    name=name,
                    python_model=CODE,
                    artifact_dir=folder,
                    signature=signature,
                    input_example=example,
                    tags={"architecture": spec.label},
                )
            registry.set_alias(client, ref, alias)
            versions[alias] = ref.version
    return versions


def registered_aliases(settings: Settings, name: str) -> dict[str, int]:
    from mlflow.exceptions import MlflowException

    client = tracking.configure(settings)
    try:
        return {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def migrate_airflow(settings: Settings) -> Future[subprocess.CompletedProcess]:
    """``airflow db migrate`` on a thread of its own: seconds of a new home's demo, which it spends
    while the demo builds its lake and trains its models (nothing there needs Airflow)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="airflow-migrate")
    migrating = pool.submit(run_airflow, settings, ["db", "migrate"], capture=True)
    pool.shutdown(wait=False)  # the thread ends with the migration
    return migrating


def run_dag(settings: Settings, ds: dt.date, migrating: Future[subprocess.CompletedProcess]) -> None:
    """Run the job's DAG once through Airflow itself (``airflow dags test``) for ``ds``, once
    Airflow's database is migrated (``migrating``: started beforehand by :func:`migrate_airflow`)."""
    migrate = migrating.result()
    if migrate.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}{migrate.stderr[-3000:]}")
    job = load_job(JOB)
    # no logical date: `dags test` dates the run's start at its logical date, so a scheduled run's
    # date (ds + 1 at 02:00) showed the run in the UI as lasting from then until now (days, for
    # an older --date) or, before 02:00, as starting in the future. The date comes in the conf.
    conf = json.dumps({"date": ds.isoformat()})
    test = run_airflow(settings, ["dags", "test", job.dag_id, "--conf", conf])
    if test.returncode != 0:
        raise RuntimeError(f"the DAG run {job.dag_id} failed (exit {test.returncode}); see its task log above")


def latest_scoring_run(settings: Settings, ds: dt.date) -> dict:
    """What the last committed scoring run of the demo job for ``ds`` recorded in MLflow."""
    import mlflow

    tracking.configure(settings)
    runs = mlflow.search_runs(
        experiment_names=[f"lakecast/{JOB}"],
        filter_string=f"tags.`lakecast.date` = '{ds.isoformat()}' and tags.`lakecast.committed` = 'true'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise RuntimeError(f"no committed scoring run for {ds} found in MLflow")
    run = runs[0]
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        **run.data.metrics,
        "model_uri": run.data.params.get("model_uri"),
    }


def run_demo(
    settings: Settings, *, ds: dt.date, rows: int, labeled_rows: int, retrain: bool, run: bool = True
) -> DemoResult:
    """Build the demo lake and models; with ``run``, run the DAG once through ``airflow dags test``.

    Without ``run`` it only seeds a stack (say the docker one), whose scheduler then runs the DAG.
    """
    migrating = migrate_airflow(settings) if run else None  # a seed (no run) leaves Airflow to its stack
    lake = Lake(settings.lake_root)
    t0 = time.perf_counter()
    demo_data.build_demo_lake(lake, ds, rows=rows, labeled_rows=labeled_rows)
    log.info("demo lake built in %.1f s at %s", time.perf_counter() - t0, lake.uri(lake.base))
    job = load_job(JOB)
    aliases = registered_aliases(settings, job.model.name)
    if retrain or not {"champion", "challenger"} <= aliases.keys():
        aliases = train_and_register(settings, lake, ds - dt.timedelta(days=1), name=job.model.name)
    log.info("model %s: %s", job.model.name, ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())))
    if migrating is None:
        return DemoResult(ds, rows, {"aliases": aliases, "lake": lake.uri(lake.base)})
    run_dag(settings, ds, migrating)
    summary = latest_scoring_run(settings, ds)
    summary["output"] = lake.partition_uri(job.output.table, ds)
    return DemoResult(ds, rows, summary)
