"""The nightly prediction job: score one date partition of a table with a registered model.

``lakecast run JOB --date D`` and ``python -m jobs.predict JOB --date D`` both land in
:func:`run_job`; so do the Airflow task and a Ray job entrypoint.

The pipeline reads only that partition and only the needed columns, shards the batches over an
actor pool of :class:`models.predictor.BatchPredictor` (CUDA actors where Ray gives them a GPU),
writes Parquet into a staging folder, checks that rows out equal rows in, and commits the
partition whole. A rerun for the same date replaces it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from jobs import tracking
from jobs.config import JobConfig
from jobs.lake import DataFile, Lake, LakeError
from jobs.ray_runtime import ensure_ray, gpus_per_actor
from jobs.settings import Settings, load_settings
from models.predictor import LINEAGE_COLUMNS, BatchPredictor, Lineage, PredictorOptions
from models.registry import ModelRef, resolve

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """The job cannot run or its output is wrong; nothing was committed."""


@dataclass(frozen=True)
class RunResult:
    job: str
    ds: dt.date
    rows: int
    seconds: float
    model: ModelRef
    run_id: str
    output: str
    committed: bool

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        """For XCom and JSON output: plain values only."""
        return {
            "job": self.job, "date": self.ds.isoformat(), "rows": self.rows,
            "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1),
            "model_name": self.model.name, "model_version": self.model.version,
            "model_uri": self.model.uri, "run_id": self.run_id, "output": self.output,
            "committed": self.committed,
        }  # fmt: skip


def run_job(
    job: JobConfig,
    ds: dt.date,
    *,
    settings: Settings | None = None,
    model_alias: str | None = None,
    model_version: int | None = None,
    dry_run: bool = False,
) -> RunResult:
    """Score ``job``'s input partition for ``ds`` and commit the predictions.

    Args:
        model_alias / model_version: override the job file's model selection for this run.
        dry_run: do everything but the commit: the published partition is left as it was.

    Raises:
        LakeError, RegistryError, JobError: with a message that names what is wrong.
    """
    import mlflow

    settings = settings or load_settings()
    lake = Lake(settings.lake_root)
    client = tracking.configure(settings)
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()

    files = lake.data_files(job.input.table, ds)
    rows_in = sum(lake.count_rows(files))
    if model_version is None and model_alias is None:
        model_alias, model_version = job.model.alias, job.model.version
    ref = resolve(client, job.model.name, alias=None if model_version else model_alias, version=model_version)
    columns = [job.input.key, *feature_columns(job, ref)]
    _check_columns(lake, files[0], columns)
    log.info("scoring %s %s: %d rows in %d files with %s", job.name, ds, rows_in, len(files), ref.uri)

    experiment = tracking.experiment_id(settings, f"lakecast/{job.name}")
    with mlflow.start_run(experiment_id=experiment, run_name=f"{job.name} {ds.isoformat()}") as run:
        run_id = run.info.run_id
        gpus = _log_start(job, ds, ref, lake, files, settings)
        staging = lake.staging_path(job.output.table, ds, run_id)
        try:
            _score(job, lake, files, columns, staging, settings=settings, ref=ref, run_id=run_id,
                   started_at=started_at, gpus=gpus)  # fmt: skip
            out_files = lake._list_data_files(staging)
            out_rows = lake.count_rows(out_files)
            if sum(out_rows) != rows_in:
                raise JobError(f"wrote {sum(out_rows)} rows for {rows_in} input rows; nothing was committed")
            manifest = _manifest(job, ds, run_id, ref, lake, files, out_files, out_rows, started_at)
            if dry_run:
                lake.discard(staging)
                output = lake.partition_path(job.output.table, ds)
            else:
                output = lake.commit(staging, job.output.table, ds, manifest)
        except BaseException:
            lake.discard(staging)
            raise
        seconds = time.perf_counter() - t0
        mlflow.log_metrics({"rows": rows_in, "seconds": seconds, "rows_per_s": rows_in / seconds})
        if not dry_run:
            tracking.log_dataset(name=f"{job.output.table}@{ds}", uri=lake.uri(output),
                                 files=[DataFile(f.path.replace(staging, output), f.size) for f in out_files],
                                 context="output")  # fmt: skip
        mlflow.set_tag("lakecast.committed", str(not dry_run).lower())
    result = RunResult(job.name, ds, rows_in, seconds, ref, run_id, lake.uri(output), committed=not dry_run)
    log.info("scored %d rows in %.1f s (%.0f rows/s) → %s", result.rows, seconds, result.rows_per_s, result.output)
    return result


def feature_columns(job: JobConfig, ref: ModelRef) -> list[str]:
    """The job file's columns, else the model signature's inputs."""
    if job.input.columns:
        return list(job.input.columns)
    from mlflow.models import get_model_info

    signature = get_model_info(ref.uri).signature
    if signature is None or signature.inputs is None:
        raise JobError(f"{ref.uri} has no signature: list input.columns in conf/jobs/{job.name}.yaml")
    return [c for c in signature.inputs.input_names() if c != job.input.key]


def _check_columns(lake: Lake, first: DataFile, columns: list[str]) -> None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(first.path, filesystem=lake.fs)
    except Exception as e:
        raise LakeError(f"cannot read Parquet file {lake.uri(first.path)}: {e}") from e
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise JobError(f"{lake.uri(first.path)}: missing column(s) {', '.join(map(repr, missing))}")


def _log_start(job: JobConfig, ds: dt.date, ref: ModelRef, lake: Lake, files: list[DataFile],
               settings: Settings) -> float:  # fmt: skip
    import mlflow

    ensure_ray(settings)
    gpus = gpus_per_actor(job.compute.gpus_per_actor)
    mlflow.log_params({
        "job": job.name, "date": ds.isoformat(), "model_uri": ref.uri, "model_version": ref.version,
        "model_alias": ref.alias or "", "input_files": len(files), "profile": settings.profile,
        "compute.min_actors": job.compute.min_actors, "compute.max_actors": job.compute.max_actors,
        "compute.gpus_per_actor": gpus, "compute.cpus_per_actor": job.compute.cpus_per_actor,
        "compute.batch_size": job.compute.batch_size,
    })  # fmt: skip
    mlflow.set_tags({
        "lakecast.job": job.name, "lakecast.date": ds.isoformat(),
        "lakecast.model_version": f"{ref.name}/{ref.version}", "lakecast.code_version": tracking.code_version(),
    })  # fmt: skip
    tracking.log_dataset(name=f"{job.input.table}@{ds}", uri=lake.uri(lake.partition_path(job.input.table, ds)),
                         files=files, context="input")  # fmt: skip
    tracking.link_model_version(mlflow.MlflowClient(), ref.name, ref.version)
    return gpus


def _score(job: JobConfig, lake: Lake, files: list[DataFile], columns: list[str], staging: str, *,
           settings: Settings, ref: ModelRef, run_id: str, started_at: dt.datetime, gpus: float) -> None:  # fmt: skip
    """The Ray Data pipeline: read → actor pool of predictors → Parquet in staging."""
    import ray

    options = PredictorOptions(
        model_uri=ref.uri,
        tracking_uri=settings.mlflow.tracking_uri,
        registry_uri=settings.mlflow.registry_uri,
        key=job.input.key,
        score_column=job.output.score_column,
        threshold=job.output.threshold,
        lineage=Lineage(ref.name, ref.version, run_id, started_at),
        num_threads=max(1, int(job.compute.cpus_per_actor)),
    )
    dataset = ray.data.read_parquet([f.path for f in files], filesystem=lake.fs, columns=columns, partitioning=None)
    scored = dataset.map_batches(
        BatchPredictor,
        fn_constructor_kwargs={"options": options},
        batch_format="pyarrow",
        batch_size=job.compute.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=job.compute.min_actors, max_size=job.compute.max_actors),
        num_cpus=job.compute.cpus_per_actor,
        num_gpus=gpus,
        udf_modifying_row_count=False,
    )
    scored.write_parquet(staging, filesystem=lake.fs, min_rows_per_file=job.output.rows_per_file)


def _manifest(job: JobConfig, ds: dt.date, run_id: str, ref: ModelRef, lake: Lake, files: list[DataFile],
              out_files: list[DataFile], out_rows: list[int], started_at: dt.datetime) -> dict[str, Any]:  # fmt: skip
    import pyarrow.parquet as pq

    schema = pq.read_schema(out_files[0].path, filesystem=lake.fs) if out_files else None
    return {
        "job": job.name,
        "date": ds.isoformat(),
        "scoring_run_id": run_id,
        "model": asdict(ref) | {"uri": ref.uri},
        "input": [{"path": lake.uri(f.path), "bytes": f.size} for f in files],
        "output": [
            {"file": f.path.rsplit("/", 1)[-1], "bytes": f.size, "rows": n}
            for f, n in zip(out_files, out_rows, strict=True)
        ],
        "rows": sum(out_rows),
        "schema": {name: str(t) for name, t in zip(schema.names, schema.types, strict=True)} if schema else {},
        "lineage_columns": list(LINEAGE_COLUMNS),
        "code_version": tracking.code_version(),
        "started_at": started_at.isoformat(),
        "ended_at": dt.datetime.now(dt.UTC).isoformat(),
    }


if __name__ == "__main__":
    from jobs.cli import main

    raise SystemExit(main(["run", *__import__("sys").argv[1:]]))
