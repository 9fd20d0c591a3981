"""The nightly prediction job: score one date partition of a table with a registered model.

``lakecast run JOB --date D`` and ``python -m jobs.predict JOB --date D`` both land in
:func:`run_job`; so do the Airflow task and a Ray job entrypoint.

A run checks its input and loads the model (:mod:`jobs.preflight`) while Ray starts, takes the
partition's lock, scores the partition through Ray Data (:mod:`jobs.pipeline`) into staging
folders, checks that rows out equal rows in, compares tonight with the day before
(:mod:`jobs.drift`), and commits the partition whole with its manifest (:mod:`jobs.manifest`).
A rerun for the same date replaces it; a failed one leaves the published partition as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from jobs import commit, drift, input_stats, labels, pipeline, score_stats, stopping, telemetry, tracking, validation
from jobs.config import JobConfig
from jobs.failures import JobError
from jobs.lake import DataFile, Lake
from jobs.manifest import ab_lineage, partition_manifest
from jobs.preflight import Preflight, model_selection, preflight
from jobs.ray_errors import raise_ours
from jobs.ray_runtime import actor_gpus, ensure_ray, files_at_once
from jobs.settings import Settings, load_settings
from jobs.validation import InvalidInput
from models.registry import ModelRef

__all__ = ["JobError", "RunResult", "run_job"]

log = logging.getLogger(__name__)


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
    first_batch_unix: float | None = None
    committed_unix: float | None = None
    # when each step of the start was reached (unix seconds): see _milestones
    milestones: dict[str, float] = field(default_factory=dict)
    # seconds the actors spent reading, validating, scoring and writing, summed over them (CPU
    # actors only: GPU actors get their batches from read tasks and hand them to write tasks)
    actor_seconds: dict[str, float] = field(default_factory=dict)
    # of that time, the share their threads were on a core (jobs.part_writer.on_cpu_share)
    actor_on_cpu_share: float | None = None
    quarantined: int = 0  # of ``rows``, set aside as invalid instead of scored
    quarantine: str | None = None  # where they were committed (None in a dry run)
    # the distribution of the scores written (jobs.score_stats.merge): mean, std, quantiles...
    scores: dict[str, float] = field(default_factory=dict)
    # each model input's share of nulls in the input partition (jobs.input_stats)
    input_nulls: dict[str, float] = field(default_factory=dict)
    # the challenger's canary and shadow, where the run had them (jobs.manifest.ab_lineage)
    ab: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        """For XCom and JSON output: plain values only."""
        return {
            "job": self.job,
            "date": self.ds.isoformat(),
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s, 1),
            "model_name": self.model.name,
            "model_version": self.model.version,
            "model_uri": self.model.uri,
            "run_id": self.run_id,
            "output": self.output,
            "committed": self.committed,
            "first_batch_unix": self.first_batch_unix,
            "committed_unix": self.committed_unix,
            "milestones_unix": self.milestones,
            "actor_seconds": {stage: round(t, 3) for stage, t in self.actor_seconds.items()},
            "actor_on_cpu_share": None if self.actor_on_cpu_share is None else round(self.actor_on_cpu_share, 3),
            "quarantined": self.quarantined,
            "quarantine": self.quarantine,
            "scores": dict(self.scores),
            "input_nulls": dict(self.input_nulls),
            **self.ab,
        }


def run_job(
    job: JobConfig,
    ds: dt.date,
    *,
    settings: Settings | None = None,
    model_alias: str | None = None,
    model_version: int | None = None,
    dry_run: bool = False,
    mlflow_run_id: str | None = None,
) -> RunResult:
    """Score ``job``'s input partition for ``ds`` and commit the predictions.

    Args:
        model_alias / model_version: override the job file's model selection for this run.
        dry_run: do everything but the commit: the published partitions are left as they were.
        mlflow_run_id: log into this run, created beforehand by the caller (the Airflow task links
            to it before the job starts), instead of a new one.

    Raises:
        LakeError, RegistryError, InvalidInput, CommitConflict, JobError: a sentence naming what
        is wrong. Whatever happens, the previously committed partition stays as it was.
        jobs.stopping.Stopped: Ctrl-C or SIGTERM in the main thread, before the commit.
    """
    settings = settings or load_settings()
    lake = Lake(settings.lake_root)
    with stopping.on_signals(
        said=lambda stop: (
            f"the run of {job.name} for {ds} was stopped by {stop.signal_name} before its commit: nothing "
            f"was published, and {lake.partition_uri(job.output.table, ds)} holds what it held"
        )
    ):
        started_at = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        model_alias, model_version = model_selection(job, model_alias, model_version)

        # The input's files and footers first: a partition that is missing, not whole yet or
        # damaged is a run's commonest failure, and its sentence should not wait on Ray's start
        # (about 5 s for a private Ray on 2 cores, where these take milliseconds on a local lake).
        inputs = lake.input_footers(
            job.input.table, ds, ready_marker=job.input.ready_marker, layout=job.input.partition
        )
        # Starting Ray takes seconds of waiting on its processes: do the other checks and load the
        # model on another thread meanwhile, then import what the pipeline needs if Ray is still
        # starting.
        with ThreadPoolExecutor(1, thread_name_prefix="preflight") as pool:
            checked = pool.submit(
                preflight,
                job,
                ds,
                settings,
                lake,
                model_alias,
                model_version,
                inputs=inputs,
                mlflow_run_id=mlflow_run_id,
            )
            pool.submit(_import_pipeline)
            with stopping.ray_starting():
                ensure_ray(settings)
            ray_ready = time.time()
            pre = checked.result()

        lease = job.airflow.timeout_minutes * 60 + 600
        with commit.partition_lock(lake, job.output.table, ds, job=job.name, lease_s=lease):
            commit.recover_tables(lake, (job.output.table, job.quarantine_table, job.shadow_table), ds)
            result = _run_locked(
                job,
                ds,
                lake=lake,
                settings=settings,
                pre=pre,
                started_at=started_at,
                t0=t0,
                dry_run=dry_run,
                mlflow_run_id=mlflow_run_id,
                ray_ready=ray_ready,
            )
    log.info(
        "scored %d of %d rows in %.1f s (%.0f rows/s; %d quarantined) → %s",
        result.rows - result.quarantined,
        result.rows,
        result.seconds,
        result.rows_per_s,
        result.quarantined,
        result.output,
    )
    return result


def _scores_are(job: JobConfig) -> str:
    """What the figures of a night's scores are of, as its warnings name them."""
    return "vectors' lengths" if job.model.task == "embedding" else "scores"


def _written(lake: Lake, folder: str) -> tuple[list[DataFile], list[pq.FileMetaData], int]:
    """The data files the run wrote into a staging ``folder``, their footers (the manifest takes
    its row counts and schema from them) and their rows in all."""
    files = lake.list_data_files(folder)
    footers = lake.footers(files)
    return files, footers, sum(footer.num_rows for footer in footers)


def _import_pipeline() -> None:
    """Ray Data's modules: 0.7 s of imports on a 2-core machine, which the pipeline would
    otherwise start with. A private Ray is usually still starting when the checks are done."""
    import ray.data  # noqa: F401


def _run_locked(
    job: JobConfig,
    ds: dt.date,
    *,
    lake: Lake,
    settings: Settings,
    pre: Preflight,
    started_at: dt.datetime,
    t0: float,
    dry_run: bool,
    mlflow_run_id: str | None = None,
    ray_ready: float | None = None,
) -> RunResult:
    import mlflow

    ref, files, rows_in, duplicates = pre.ref, pre.files, pre.rows_in, pre.duplicates
    shadows = job.shadows and pre.challenger is not None  # none while both aliases name one version
    ab = ab_lineage(job, pre.challenger)
    with stopping.held():
        experiment = tracking.experiment_id(settings, f"lakecast/{job.name}")
        if mlflow_run_id:
            started = mlflow.start_run(run_id=mlflow_run_id)
        else:
            started = mlflow.start_run(experiment_id=experiment, run_name=tracking.scoring_run_name(job.name, ds))
    with started as run, tracking.killed_when_stopped():
        run_id = run.info.run_id
        with stopping.held():
            gpus = _log_start(job, ds, pre, lake, settings)
        staging = lake.staging_path(job.output.table, ds, run_id)
        q_staging = lake.staging_path(job.quarantine_table, ds, run_id)
        s_staging = lake.staging_path(job.shadow_table, ds, run_id)
        shadow_scores: dict[str, float] = {}
        try:
            lake.make_dirs(staging, q_staging, telemetry.folder(staging), *([s_staging] if shadows else []))
            pipeline_start, actor_seconds, on_cpu, summaries = pipeline.score(
                job,
                lake,
                pre,
                staging,
                q_staging,
                settings=settings,
                run_id=run_id,
                started_at=started_at,
                gpus=gpus,
                shadow_dir=s_staging if shadows else None,
            )
            if shadows:
                s_files, s_footers, s_rows = _written(lake, s_staging)
                # the challenger's scores of every row, beside the published ones, summarised by
                # the actors or write tasks that wrote them
                shadow_scores = drift.score_distribution(
                    ds,
                    [score_stats.shadow_of(s) for s in summaries],
                    drift.day_before(lake, job.shadow_table, ds),
                    table=job.shadow_table,
                    version=pre.challenger.version,
                    classifies=job.classifies,
                    classes=job.classes,
                    what=_scores_are(job),
                )
            out_files, out_footers, out_rows = _written(lake, staging)
            q_files, q_footers, q_rows = _written(lake, q_staging)
            if out_rows + q_rows != rows_in:
                raise JobError(
                    f"wrote {out_rows} predictions and quarantined {q_rows} rows for {rows_in} input "
                    "rows; nothing was committed"
                )
            before = drift.day_before(lake, job.output.table, ds)
            scores = drift.score_distribution(
                ds,
                summaries,
                before,
                table=job.output.table,
                version=ref.version,
                classifies=job.classifies,
                classes=job.classes,
                what=_scores_are(job),
            )
            drift.warn_of_emptier_inputs(
                ds, job, pre, before, lake.partition_uri(job.input.table, ds, job.input.partition)
            )
            invalid = q_rows
            share = invalid / rows_in if rows_in else 0.0
            metrics = {"invalid_rows": invalid, "invalid_share": share, "duplicate_keys": duplicates}
            volume = drift.rows_against(ds, out_rows, before, table=job.output.table)
            with stopping.held():
                mlflow.log_metrics(metrics | ({"rows_vs_previous_day": volume} if volume is not None else {}))
            manifest = partition_manifest(
                job,
                ds,
                run_id,
                ref,
                lake,
                files,
                out_files,
                out_footers,
                started_at,
                scores=scores,
                nulls=pre.input_nulls,
                ab=ab,
            )
            q_manifest = partition_manifest(job, ds, run_id, ref, lake, files, q_files, q_footers, started_at)
            if invalid:
                log.warning(
                    "%d of %d rows (%.2f%%) failed validation and were quarantined: %s",
                    invalid,
                    rows_in,
                    100 * share,
                    _reason_counts(lake, q_files),
                )
            stopping.finish_first()  # the commits: a stop from here on waits for the run's end
            if share > job.validation.max_invalid_share:
                q_partition = lake.partition_path(job.quarantine_table, ds)
                if not dry_run:
                    commit.commit(lake, q_staging, job.quarantine_table, ds, q_manifest)
                raise InvalidInput(
                    f"{invalid} of {rows_in} rows ({100 * share:.2f}%) failed validation, above the job's limit "
                    f"of {100 * job.validation.max_invalid_share:g}% (validation.max_invalid_share); no "
                    f"predictions were published; the rows are in {lake.uri(q_partition)}"
                )
            if shadows and s_rows != out_rows:
                raise JobError(f"the shadow scored {s_rows} rows for {out_rows} predictions")
            if dry_run:
                for folder in (staging, q_staging, s_staging):
                    commit.discard(lake, folder)
                output = lake.partition_path(job.output.table, ds)
            else:
                commit.commit(lake, q_staging, job.quarantine_table, ds, q_manifest)
                if shadows:
                    s_manifest = partition_manifest(
                        job,
                        ds,
                        run_id,
                        pre.challenger,
                        lake,
                        files,
                        s_files,
                        s_footers,
                        started_at,
                        scores=shadow_scores,
                    )
                    commit.commit(lake, s_staging, job.shadow_table, ds, s_manifest)
                output = commit.commit(lake, staging, job.output.table, ds, manifest)
        except BaseException as e:
            for folder in (staging, q_staging, s_staging, telemetry.folder(staging)):
                commit.discard(lake, folder)
            raise_ours(e)
            raise
        seconds = time.perf_counter() - t0
        committed_unix = time.time()
        notes = telemetry.read(lake, staging)
        milestones = telemetry.milestones(
            started_at.timestamp(), ray_ready, pre.done_unix, pipeline_start, notes.earliest
        )
        first_batch_unix = milestones.get("first_batch")
        mlflow.log_metrics(
            _end_metrics(
                pre,
                scored=rows_in - invalid,
                seconds=seconds,
                committed_unix=committed_unix,
                milestones=milestones,
                actor_seconds=actor_seconds,
                on_cpu=on_cpu,
                scores=scores,
                shadow_scores=shadow_scores,
                scores_are=_scores_are(job),
                placed=labels.placed_by(job.compute.selectors, notes.nodes) if job.compute.fallback_strategy else {},
            )
        )
        if not dry_run:
            tracking.log_dataset(
                name=f"{job.output.table}@{ds}",
                uri=lake.uri(output),
                files=lake.data_files(job.output.table, ds),
                context="output",
            )
        mlflow.set_tag("lakecast.committed", str(not dry_run).lower())
    return RunResult(
        job.name,
        ds,
        rows_in,
        seconds,
        ref,
        run_id,
        lake.uri(output),
        committed=not dry_run,
        first_batch_unix=first_batch_unix,
        committed_unix=committed_unix,
        milestones=milestones,
        actor_seconds=actor_seconds,
        actor_on_cpu_share=on_cpu,
        quarantined=invalid,
        quarantine=lake.partition_uri(job.quarantine_table, ds) if invalid and not dry_run else None,
        scores=scores,
        input_nulls=pre.input_nulls,
        ab=ab,
    )


def _end_metrics(
    pre: Preflight,
    *,
    scored: int,
    seconds: float,
    committed_unix: float,
    milestones: dict[str, float],
    actor_seconds: dict[str, float],
    on_cpu: float | None,
    scores: dict[str, float],
    shadow_scores: dict[str, float],
    scores_are: str = "scores",
    placed: dict[str, int] | None = None,
) -> dict[str, float]:
    """The run's MLflow metrics once it is committed: its speed, its start step by step, where the
    actors' time went, how many actors each of the job file's label selectors placed (``placed``,
    where it has fallbacks), and the figures tomorrow compares itself with; the log says the same."""
    job_start = milestones["job_start"]
    metrics = {"rows": pre.rows_in, "seconds": seconds, "rows_per_s": pre.rows_in / seconds}
    first_batch = milestones.get("first_batch")
    if first_batch is not None and committed_unix > first_batch:
        metrics["startup_s"] = first_batch - job_start
        metrics["steady_rows_per_s"] = scored / (committed_unix - first_batch)
    # the steps of the start, in seconds from the job's start (the last one is startup_s)
    steps = {name: t for name, t in milestones.items() if name not in ("job_start", "first_batch")}
    metrics |= {f"startup.{name}_s": t - job_start for name, t in steps.items()}
    if actor_seconds:
        metrics |= {f"actors.{stage}_s": t for stage, t in actor_seconds.items()}
        if on_cpu is not None:
            metrics["actors.on_cpu_share"] = on_cpu
        log.info("the actors' time: %s", telemetry.actor_time(actor_seconds, on_cpu))
    if placed:
        metrics |= {f"actors.placed_by.{key}": n for key, n in placed.items()}
        log.info(
            "the actors' nodes: %s",
            ", ".join(
                f"{n} by compute.{key}" if key != "none" else f"{n} on nodes none of the label selectors matches"
                for key, n in placed.items()
            ),
        )
    if pre.input_nulls:
        metrics |= {f"input.null_share.{name}": share for name, share in pre.input_nulls.items()}
        log.info("the inputs: %s", input_stats.describe(pre.input_nulls))
    if scores:
        metrics |= {f"score.{name}": value for name, value in scores.items()}
        log.info("the %s: %s", scores_are, score_stats.describe(scores))
    if shadow_scores:
        metrics |= {f"shadow.score.{name}": value for name, value in shadow_scores.items()}
        log.info("the shadow's scores (%s): %s", pre.challenger.uri, score_stats.describe(shadow_scores))
    return metrics


def _reason_counts(lake: Lake, files: list[DataFile]) -> dict[str, int]:
    import pyarrow.parquet as pq

    reasons = pq.ParquetDataset([f.path for f in files], filesystem=lake.fs).read(columns=[validation.REASON])
    return validation.reason_counts(reasons.column(0))


def _log_start(job: JobConfig, ds: dt.date, pre: Preflight, lake: Lake, settings: Settings) -> float:
    import mlflow

    ref = pre.ref
    ensure_ray(settings)
    gpus = actor_gpus(job, settings)
    mlflow.log_params(
        {
            "job": job.name,
            "date": ds.isoformat(),
            "model_uri": ref.uri,
            "model_version": ref.version,
            "model_alias": ref.alias or "",
            "model_task": job.model.task,
            "input_files": len(pre.files),
            # what the actors take: pieces of about output.rows_per_file rows (jobs.pieces)
            "input_pieces": len(pre.pieces),
            "profile": settings.profile,
            "compute.min_actors": job.compute.min_actors,
            "compute.max_actors": job.compute.max_actors,
            "compute.gpus_per_actor": gpus,
            "compute.cpus_per_actor": job.compute.cpus_per_actor,
            "compute.files_at_once": files_at_once(job.compute, len(pre.pieces), gpus=gpus),
            "compute.batch_size": job.compute.batch_size,
            "compute.dtype": job.compute.dtype if gpus else "float32",
            "compute.transparent_huge_pages": job.compute.transparent_huge_pages,
            "compute.label_selector": labels.shown(job.compute.label_selector),
            "compute.fallback_strategy": "; ".join(
                labels.shown(f.label_selector) or "any node" for f in job.compute.fallback_strategy
            ),
        }
    )
    if job.compute.dtype != "float32" and not gpus:
        log.warning(
            "compute.dtype is %s, which applies to GPU actors; this run has CPU actors, which score in float32",
            job.compute.dtype,
        )
    tags = {
        "lakecast.job": job.name,
        "lakecast.date": ds.isoformat(),
        "lakecast.model_version": f"{ref.name}/{ref.version}",
        "lakecast.code_version": tracking.code_version(),
    }
    if pre.challenger is not None:
        # the run scored with it too: a search for the runs that used a version finds this one
        mlflow.log_params(
            {
                "ab.challenger_uri": pre.challenger.uri,
                "ab.challenger_version": pre.challenger.version,
                "ab.challenger_share": job.ab.challenger_share,
                "ab.shadow": job.ab.shadow,
            }
        )
        tags["lakecast.challenger_version"] = f"{pre.challenger.name}/{pre.challenger.version}"
    mlflow.set_tags(tags)
    tracking.log_dataset(
        name=f"{job.input.table}@{ds}",
        uri=lake.partition_uri(job.input.table, ds, job.input.partition),
        files=pre.files,
        context="input",
    )
    tracking.link_model_version(mlflow.MlflowClient(), ref.name, ref.version)
    return gpus


if __name__ == "__main__":
    from jobs.cli import run

    run(["run", *__import__("sys").argv[1:]])
