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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from jobs import commit, input_stats, score_stats, tracking, validation
from jobs.config import JobConfig
from jobs.lake import DataFile, Lake
from jobs.ray_errors import raise_ours
from jobs.ray_runtime import (
    actor_pool,
    actors_read_and_write,
    decode_on_threads,
    ensure_ray,
    files_at_once,
    files_dataset,
    gpus_per_actor,
    read_parquet_files,
    threads_per_file,
)
from jobs.settings import Settings, load_settings
from jobs.validation import InvalidInput
from models.predictor import (
    ACTOR_READY,
    FIRST_BATCH,
    LINEAGE_COLUMNS,
    TELEMETRY_SEPARATOR,
    ArrowScorer,
    BatchPredictor,
    Lineage,
    PredictorOptions,
    RoutedPredictor,
    arrow_scorer,
    parquet_options,
    prediction_columns,
)
from models.registry import ModelRef, load_pyfunc, resolve

log = logging.getLogger(__name__)


# Read and write tasks reserve half a CPU each: they wait on storage and (de)compress, and with a
# whole CPU each they queue behind one another beside the actors (on 2 cores, one read or one write
# at a time next to one actor: a 10M-row job's reads and writes ran end to end, 16 s, while the
# actor needed 10 s).
IO_CPUS = 0.5


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
    first_batch_unix: float | None = None
    committed_unix: float | None = None
    # when each step of the start was reached (unix seconds): see _milestones
    milestones: dict[str, float] = field(default_factory=dict)
    # seconds the actors spent reading, validating, scoring and writing, summed over them (CPU
    # actors only: GPU actors get their batches from read tasks and hand them to write tasks)
    actor_seconds: dict[str, float] = field(default_factory=dict)
    quarantined: int = 0  # of ``rows``, set aside as invalid instead of scored
    quarantine: str | None = None  # where they were committed (None in a dry run)
    # the distribution of the scores written (jobs.score_stats.merge): mean, std, quantiles...
    scores: dict[str, float] = field(default_factory=dict)
    # each model input's share of nulls in the input partition (jobs.input_stats)
    input_nulls: dict[str, float] = field(default_factory=dict)

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
            "quarantined": self.quarantined,
            "quarantine": self.quarantine,
            "scores": dict(self.scores),
            "input_nulls": dict(self.input_nulls),
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
    """
    settings = settings or load_settings()
    lake = Lake(settings.lake_root)
    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    model_alias, model_version = model_selection(job, model_alias, model_version)

    # Starting Ray takes seconds of waiting on its processes: do the checks and load the model
    # on another thread meanwhile, then import what the pipeline needs if Ray is still starting.
    with ThreadPoolExecutor(1, thread_name_prefix="preflight") as pool:
        checked = pool.submit(preflight, job, ds, settings, lake, model_alias, model_version)
        pool.submit(_import_pipeline)
        ensure_ray(settings)
        ray_ready = time.time()
        pre = checked.result()

    lease = job.airflow.timeout_minutes * 60 + 600
    with commit.partition_lock(lake, job.output.table, ds, job=job.name, lease_s=lease):
        for table in (job.output.table, quarantine_table(job), shadow_table(job)):
            commit.recover(lake, table, ds)
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


def _import_pipeline() -> None:
    """Ray Data's modules: 0.7 s of imports on a 2-core machine, which the pipeline would
    otherwise start with. A private Ray is usually still starting when the checks are done."""
    import ray.data  # noqa: F401


@dataclass(frozen=True)
class Preflight:
    """What the job knows before it writes anything: inputs checked, model resolved and loaded."""

    files: list[DataFile]
    rows_in: int
    ref: ModelRef
    rules: list[validation.ColumnRule]
    duplicates: int
    scorer: ArrowScorer | None
    challenger: ModelRef | None = None  # canary or shadow scoring (the job's ab: section)
    challenger_scorer: ArrowScorer | None = None
    challenger_columns: tuple[str, ...] = ()  # its input columns, in its order
    columns: tuple[str, ...] = ()  # the champion's input columns, in its order
    input_nulls: dict[str, float] = field(default_factory=dict)  # each one's share of nulls
    done_unix: float = field(default_factory=time.time)


def model_selection(
    job: JobConfig, model_alias: str | None = None, model_version: int | None = None
) -> tuple[str | None, int | None]:
    """The run's ``(alias, version)``: the override where one is given (``lakecast run --alias``
    or ``--version``), else the job file's."""
    if model_version is None and model_alias is None:
        return job.model.alias, job.model.version
    return model_alias, model_version


def resolve_model(client: Any, job: JobConfig, model_alias: str | None, model_version: int | None) -> ModelRef:
    """The version a run scores with (see :func:`model_selection`). A fixed version wins, and its
    reference then names no alias: the job file's alias defaults to ``champion`` even beside one."""
    return resolve(client, job.model.name, alias=None if model_version else model_alias, version=model_version)


def preflight(
    job: JobConfig, ds: dt.date, settings: Settings, lake: Lake, model_alias: str | None, model_version: int | None
) -> Preflight:
    files = lake.data_files(job.input.table, ds)
    footers = lake.footers(files)  # zero-byte and truncated files fail here
    rows_in = sum(footer.num_rows for footer in footers)
    # the key column's read and check (numpy, mostly off the GIL) beside MLflow's import and lookups
    with ThreadPoolExecutor(1, thread_name_prefix="duplicates") as pool:
        keys_checked = pool.submit(validation.duplicate_keys, lake, files, job.input.key)
        client = tracking.configure(settings)
        ref = resolve_model(client, job, model_alias, model_version)
        inputs = model_inputs(job, ref)
        rules = validation.rules_from(inputs, job.validation, job.input.key)
        validation.check_schema(lake, files, rules)  # a missing or mistyped key column is named here first
        duplicates, examples = keys_checked.result()
    if duplicates:
        message = f"{duplicates} row(s) repeat a {job.input.key} already seen (e.g. {examples})"
        if job.validation.duplicate_keys == "fail":
            raise InvalidInput(f"{lake.uri(lake.partition_path(job.input.table, ds))}: {message}")
        log.warning("%s; each row is scored (validation.duplicate_keys: keep)", message)
    scorer = arrow_scorer(load_pyfunc(ref.uri))
    challenger = challenger_scorer = None
    challenger_columns: tuple[str, ...] = ()
    if job.ab is not None and (job.ab.challenger_share > 0 or job.ab.shadow):
        challenger = resolve(client, job.model.name, alias=job.ab.challenger)
        challenger_scorer = arrow_scorer(load_pyfunc(challenger.uri))
        challenger_columns = tuple(name for name, _, _ in model_inputs(job, challenger))
        unread = [c for c in challenger_columns if c not in {r.name for r in rules}]
        if unread:
            raise JobError(
                f"the challenger {challenger.uri} takes {unread}, which the champion {ref.uri} does not take: "
                "canary and shadow scoring read the champion's inputs only"
            )
    log.info("scoring %s %s: %d rows in %d files with %s", job.name, ds, rows_in, len(files), ref.uri)
    columns = tuple(name for name, _, _ in inputs)
    return Preflight(
        files,
        rows_in,
        ref,
        rules,
        duplicates,
        scorer,
        challenger,
        challenger_scorer,
        challenger_columns,
        columns=columns,
        input_nulls=input_stats.null_shares(footers, list(columns)),
    )


def quarantine_table(job: JobConfig) -> str:
    return f"quarantine/{job.name}"


def shadow_table(job: JobConfig) -> str:
    """Where the challenger's shadow scores go, beside the predictions."""
    return f"{job.output.table}_shadow"


def _shadow(job: JobConfig) -> bool:
    return job.ab is not None and job.ab.shadow


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
    experiment = tracking.experiment_id(settings, f"lakecast/{job.name}")
    if mlflow_run_id:
        started = mlflow.start_run(run_id=mlflow_run_id)
    else:
        started = mlflow.start_run(experiment_id=experiment, run_name=tracking.scoring_run_name(job.name, ds))
    with started as run:
        run_id = run.info.run_id
        gpus = _log_start(job, ds, ref, lake, files, settings)
        staging = lake.staging_path(job.output.table, ds, run_id)
        q_staging = lake.staging_path(quarantine_table(job), ds, run_id)
        s_staging = lake.staging_path(shadow_table(job), ds, run_id)
        shadow_scores: dict[str, float] = {}
        try:
            for folder in (staging, q_staging, telemetry_path(staging), *([s_staging] if _shadow(job) else [])):
                lake.fs.create_dir(folder, recursive=True)
            pipeline_start, actor_seconds, summaries = _score(
                job,
                lake,
                pre,
                staging,
                q_staging,
                settings=settings,
                run_id=run_id,
                started_at=started_at,
                gpus=gpus,
                shadow_dir=s_staging if _shadow(job) else None,
            )
            if _shadow(job):
                s_files = lake.list_data_files(s_staging)
                s_rows = lake.count_rows(s_files)
                # the challenger's scores of every row, beside the published ones: read back, as
                # the predictor writes them batch by batch
                shadow_scores = _distribution(
                    ds,
                    score_stats.of_files([f.path for f in s_files], lake.fs, job.output.score_column, sum(s_rows)),
                    _day_before(lake, shadow_table(job), ds),
                    table=shadow_table(job),
                )
            out_files = lake.list_data_files(staging)
            out_rows = lake.count_rows(out_files)
            q_files = lake.list_data_files(q_staging)
            q_rows = lake.count_rows(q_files)
            if sum(out_rows) + sum(q_rows) != rows_in:
                raise JobError(
                    f"wrote {sum(out_rows)} predictions and quarantined {sum(q_rows)} rows for {rows_in} input "
                    "rows; nothing was committed"
                )
            if summaries is None:  # GPU actors: Ray Data wrote the files, so their scores are read back
                summaries = score_stats.of_files(
                    [f.path for f in out_files], lake.fs, job.output.score_column, sum(out_rows)
                )
            before = _day_before(lake, job.output.table, ds)
            scores = _distribution(ds, summaries, before, table=job.output.table)
            _warn_of_emptier_inputs(ds, job, pre, before, lake.uri(lake.partition_path(job.input.table, ds)))
            invalid = sum(q_rows)
            share = invalid / rows_in if rows_in else 0.0
            mlflow.log_metrics({"invalid_rows": invalid, "invalid_share": share, "duplicate_keys": duplicates})
            manifest = _manifest(
                job, ds, run_id, ref, lake, files, out_files, out_rows, started_at, scores=scores, nulls=pre.input_nulls
            )
            q_manifest = _manifest(job, ds, run_id, ref, lake, files, q_files, q_rows, started_at)
            if invalid:
                log.warning(
                    "%d of %d rows (%.2f%%) failed validation and were quarantined: %s",
                    invalid,
                    rows_in,
                    100 * share,
                    _reason_counts(lake, q_files),
                )
            if share > job.validation.max_invalid_share:
                q_partition = lake.partition_path(quarantine_table(job), ds)
                if not dry_run:
                    commit.commit(lake, q_staging, quarantine_table(job), ds, q_manifest)
                raise InvalidInput(
                    f"{invalid} of {rows_in} rows ({100 * share:.2f}%) failed validation, above the job's limit "
                    f"of {100 * job.validation.max_invalid_share:g}% (validation.max_invalid_share); no "
                    f"predictions were published; the rows are in {lake.uri(q_partition)}"
                )
            if _shadow(job) and sum(s_rows) != sum(out_rows):
                raise JobError(f"the shadow scored {sum(s_rows)} rows for {sum(out_rows)} predictions")
            if dry_run:
                for folder in (staging, q_staging, s_staging):
                    commit.discard(lake, folder)
                output = lake.partition_path(job.output.table, ds)
            else:
                commit.commit(lake, q_staging, quarantine_table(job), ds, q_manifest)
                if _shadow(job):
                    s_manifest = _manifest(
                        job, ds, run_id, pre.challenger, lake, files, s_files, s_rows, started_at, scores=shadow_scores
                    )
                    commit.commit(lake, s_staging, shadow_table(job), ds, s_manifest)
                output = commit.commit(lake, staging, job.output.table, ds, manifest)
        except BaseException as e:
            for folder in (staging, q_staging, s_staging, telemetry_path(staging)):
                commit.discard(lake, folder)
            raise_ours(e)
            raise
        seconds = time.perf_counter() - t0
        committed_unix = time.time()
        milestones = _milestones(
            started_at.timestamp(), ray_ready, pre.done_unix, pipeline_start, _read_telemetry(lake, staging)
        )
        first_batch_unix = milestones.get("first_batch")
        metrics = {"rows": rows_in, "seconds": seconds, "rows_per_s": rows_in / seconds}
        if first_batch_unix is not None and committed_unix > first_batch_unix:
            metrics["startup_s"] = first_batch_unix - started_at.timestamp()
            metrics["steady_rows_per_s"] = (rows_in - invalid) / (committed_unix - first_batch_unix)
        # the steps of the start, in seconds from the job's start (the last one is startup_s)
        steps = {name: t for name, t in milestones.items() if name not in ("job_start", "first_batch")}
        metrics |= {f"startup.{name}_s": t - started_at.timestamp() for name, t in steps.items()}
        if actor_seconds:
            metrics |= {f"actors.{stage}_s": t for stage, t in actor_seconds.items()}
            log.info("the actors' time: %s", actor_time(actor_seconds))
        if pre.input_nulls:
            metrics |= {f"input.null_share.{name}": share for name, share in pre.input_nulls.items()}
            log.info("the inputs: %s", input_stats.describe(pre.input_nulls))
        if scores:
            metrics |= {f"score.{name}": value for name, value in scores.items()}
            log.info("the scores: %s", score_stats.describe(scores))
        if shadow_scores:
            metrics |= {f"shadow.score.{name}": value for name, value in shadow_scores.items()}
            log.info("the shadow's scores (%s): %s", pre.challenger.uri, score_stats.describe(shadow_scores))
        mlflow.log_metrics(metrics)
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
        quarantined=invalid,
        quarantine=lake.uri(lake.partition_path(quarantine_table(job), ds)) if invalid and not dry_run else None,
        scores=scores,
        input_nulls=pre.input_nulls,
    )


def _day_before(lake: Lake, table: str, ds: dt.date) -> dict[str, Any]:
    """The manifest of the day before's partition of ``table``, which tonight's figures are
    compared with; empty where there is none or it cannot be read (with a warning: a comparison
    never fails the run)."""
    day_before = ds - dt.timedelta(days=1)
    try:
        manifest = lake.read_manifest(table, day_before)
    except (OSError, ValueError) as e:
        log.warning(
            "%s ds=%s: its manifest could not be read, so tonight is not compared with it (%s)", table, day_before, e
        )
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _warn_of_emptier_inputs(ds: dt.date, job: JobConfig, pre: Preflight, before: dict[str, Any], uri: str) -> None:
    """A warning for each input column whose share of nulls in ``uri`` rose much since the day
    before's manifest ``before`` recorded it (:mod:`jobs.input_stats`)."""
    optional = {rule.name for rule in pre.rules if rule.nullable}
    for name, (was, now) in input_stats.rises(pre.input_nulls, before.get("input_nulls")).items():
        log.warning(
            "input column %r is %.1f%% null in %s, against %.1f%% the day before (%s): a change upstream? "
            "Rows with a null there are %s",
            name,
            100 * now,
            uri,
            100 * was,
            ds - dt.timedelta(days=1),
            "scored without it (the model takes it as optional)" if name in optional else "quarantined",
        )


def _distribution(
    ds: dt.date, summaries: list[dict[str, Any]], before: dict[str, Any], *, table: str
) -> dict[str, float]:
    """The figures of ``summaries`` (:func:`jobs.score_stats.merge`), against those of the day
    before's manifest ``before`` of ``table`` where it has them; a warning when the scores moved
    much since."""
    day_before = ds - dt.timedelta(days=1)
    previous = before.get("scores")
    try:  # a comparison: yesterday's partition, whatever its state, never fails tonight's run
        scores = score_stats.merge(summaries, previous)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("%s ds=%s: its manifest's scores could not be compared with tonight's (%s)", table, day_before, e)
        previous, scores = None, score_stats.merge(summaries)
    shift = scores.get("psi_vs_previous_day")
    if shift is not None and shift > score_stats.PSI_ALERT:
        log.warning(
            "%s's scores moved since %s: population stability index %.2f against that day's deciles (above %g); "
            "median %.4g → %.4g, positive rate %.2f%% → %.2f%%",
            table,
            day_before,
            shift,
            score_stats.PSI_ALERT,
            previous["p50"],
            scores["p50"],
            100 * previous["positive_rate"],
            100 * scores["positive_rate"],
        )
    return scores


def actor_time(seconds: dict[str, float]) -> str:
    """``seconds`` by stage as a line for people: "read 1.9 s (48%), validate 0.2 s (5%), ..."."""
    total = sum(seconds.values()) or 1.0
    return ", ".join(f"{stage} {t:.1f} s ({100 * t / total:.0f}%)" for stage, t in seconds.items())


def telemetry_path(staging: str) -> str:
    """Beside the staging folder, never inside it: nothing here is ever committed."""
    return f"{staging}-telemetry"


def _read_telemetry(lake: Lake, staging: str) -> dict[str, float]:
    """The earliest time each event was recorded by any actor (see BatchPredictor), then clean up."""
    import pyarrow.fs as pafs

    folder = telemetry_path(staging)
    infos = lake.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    earliest: dict[str, float] = {}
    for info in infos:
        event = info.base_name.split(TELEMETRY_SEPARATOR, 1)[0]
        with lake.fs.open_input_stream(info.path) as f:
            t = float(f.read())
        earliest[event] = min(t, earliest.get(event, t))
    commit.discard(lake, folder)
    return earliest


def _milestones(
    job_start: float, ray_ready: float | None, checks_done: float, pipeline_start: float, actors: dict[str, float]
) -> dict[str, float]:
    """When each step of the job's start was reached, in unix seconds.

    Ray's start and the input checks run side by side; the pipeline starts when both are done;
    then the first actor is ready (its worker started, the model on its device) and scores its
    first batch. On a cluster, a late ``actor_ready`` is the wait for a node (a GPU, say);
    locally it is the actor's imports. A missing one was not reached (no rows, say).
    """
    found = {
        "job_start": job_start,
        "ray_ready": ray_ready,
        "checks_done": checks_done,
        "pipeline_start": pipeline_start,
        "actor_ready": actors.get(ACTOR_READY),
        "first_batch": actors.get(FIRST_BATCH),
    }
    return {name: t for name, t in found.items() if t is not None}


def _reason_counts(lake: Lake, files: list[DataFile]) -> dict[str, int]:
    import pyarrow.parquet as pq

    reasons = pq.ParquetDataset([f.path for f in files], filesystem=lake.fs).read(columns=[validation.REASON])
    return validation.reason_counts(reasons.column(0))


def model_inputs(job: JobConfig, ref: ModelRef) -> list[tuple[str, str, bool]]:
    """(column, MLflow type, required) for each input: the signature's, limited to the job's
    columns. The key is one where the signature names it (a signature inferred from a frame that
    held the id): MLflow refuses to call such a model without it."""
    from mlflow.models import get_model_info

    signature = get_model_info(ref.uri).signature
    if signature is None or signature.inputs is None:
        if not job.input.columns:
            raise JobError(f"{ref.uri} has no signature: list input.columns in conf/jobs/{job.name}.yaml")
        return [(c, "any", False) for c in job.input.columns]
    if signature.inputs.is_tensor_spec():
        return _tensor_inputs(job, ref, signature.inputs.inputs)
    specs = [(c.name, getattr(c.type, "name", str(c.type)), c.required) for c in signature.inputs.inputs]
    if job.input.columns:
        known = {name for name, _, _ in specs}
        unknown = [c for c in job.input.columns if c not in known]
        if unknown:
            raise JobError(f"input.columns {unknown} are not inputs of {ref.uri}")
        specs = [s for s in specs if s[0] in job.input.columns or s[0] == job.input.key]
    return specs


def _tensor_inputs(job: JobConfig, ref: ModelRef, tensors: list) -> list[tuple[str, str, bool]]:
    """A model that takes one tensor (``mlflow.pytorch``'s default ``pt2`` format) names no
    columns: the job file lists them, in the tensor's order, and each must be a number with no
    nulls."""
    where = f"conf/jobs/{job.name}.yaml"
    if len(tensors) != 1:
        raise JobError(
            f"{ref.uri} takes {len(tensors)} tensors; lakecast gives a model one matrix of its input columns"
        )
    if not job.input.columns:
        raise JobError(
            f"{ref.uri} takes a tensor, which names no columns: list its input columns, in the tensor's order, "
            f"as input.columns in {where}"
        )
    shape = tensors[0].shape
    width = shape[-1] if len(shape) == 2 else None
    if width is None or (width != -1 and width != len(job.input.columns)):
        raise JobError(
            f"{ref.uri} takes a tensor of shape {shape}, and input.columns in {where} lists "
            f"{len(job.input.columns)} columns; it needs one column per feature (shape (-1, columns))"
        )
    return [(c, "double", True) for c in job.input.columns]


def _log_start(
    job: JobConfig, ds: dt.date, ref: ModelRef, lake: Lake, files: list[DataFile], settings: Settings
) -> float:
    import mlflow

    ensure_ray(settings)
    gpus = gpus_per_actor(job.compute.gpus_per_actor)
    mlflow.log_params(
        {
            "job": job.name,
            "date": ds.isoformat(),
            "model_uri": ref.uri,
            "model_version": ref.version,
            "model_alias": ref.alias or "",
            "input_files": len(files),
            "profile": settings.profile,
            "compute.min_actors": job.compute.min_actors,
            "compute.max_actors": job.compute.max_actors,
            "compute.gpus_per_actor": gpus,
            "compute.cpus_per_actor": job.compute.cpus_per_actor,
            "compute.files_at_once": files_at_once(job.compute, len(files), gpus=gpus),
            "compute.batch_size": job.compute.batch_size,
            "compute.dtype": job.compute.dtype if gpus else "float32",
            "compute.transparent_huge_pages": job.compute.transparent_huge_pages,
        }
    )
    if job.compute.dtype != "float32" and not gpus:
        log.warning(
            "compute.dtype is %s, which applies to GPU actors; this run has CPU actors, which score in float32",
            job.compute.dtype,
        )
    mlflow.set_tags(
        {
            "lakecast.job": job.name,
            "lakecast.date": ds.isoformat(),
            "lakecast.model_version": f"{ref.name}/{ref.version}",
            "lakecast.code_version": tracking.code_version(),
        }
    )
    tracking.log_dataset(
        name=f"{job.input.table}@{ds}",
        uri=lake.uri(lake.partition_path(job.input.table, ds)),
        files=files,
        context="input",
    )
    tracking.link_model_version(mlflow.MlflowClient(), ref.name, ref.version)
    return gpus


def _score(
    job: JobConfig,
    lake: Lake,
    pre: Preflight,
    staging: str,
    q_staging: str,
    *,
    settings: Settings,
    run_id: str,
    started_at: dt.datetime,
    gpus: float,
    shadow_dir: str | None = None,
) -> tuple[float, dict[str, float], list[dict[str, Any]] | None]:
    """The Ray Data pipeline: read → validate rows → actor pool of predictors → Parquet in staging.

    CPU actors run all four steps themselves, a file per thread and a thread per CPU
    (docs/adr/0002); GPU actors get their batches from read tasks and hand them to write tasks.

    Fault tolerance is Ray Data's, kept on purpose (its knobs, ``ray_remote_args``, are deprecated
    in Ray 2.60): an actor that dies is restarted and its in-flight work resubmitted, a read or
    write task whose worker dies is retried (Ray's default, 3 times), and both are safe because a
    retry rewrites the same file names. An exception raised by our code is not retried: it fails
    the run at once. The job's ``airflow.timeout_minutes`` bounds the whole, and rows out must
    equal rows in before anything is committed.

    Returns when the pipeline started (unix seconds); with CPU actors, the seconds they spent in
    each stage (:data:`jobs.part_writer.STAGES`), summed over the actors (else ``{}``); and
    the summaries of the scores they wrote, a file's each (:mod:`jobs.score_stats`; None with GPU
    actors, whose files Ray Data writes: the caller reads those back).
    """
    from jobs.part_writer import ScoreAndWrite, stage_seconds  # imports Ray Data: only once Ray is up

    at_once = files_at_once(job.compute, len(pre.files), gpus=gpus)
    options = predictor_options(
        job,
        lake,
        pre,
        settings=settings,
        run_id=run_id,
        started_at=started_at,
        telemetry_dir=telemetry_path(staging),
        at_once=at_once,
    )
    columns, categorical = read_columns(job, pre.rules)
    batch_size = job.compute.batch_size
    if batch_size == "auto":
        import mlflow

        from jobs import batch_size as auto

        batch_size = auto.choose(
            options,
            pre.scorer,
            [f.path for f in pre.files],
            filesystem=lake.fs,
            columns=columns,
            rows_in=pre.rows_in,
            cpus=threads_per_file(job.compute, at_once),
            gpus=gpus,
            dictionary=categorical,
            rules=pre.rules,
            at_once=at_once,
        )
        mlflow.log_param("compute.batch_size_chosen", batch_size)
    predictor, kwargs = predictor_for(job, pre, options, shadow_dir)
    validator = row_validator(job, lake, pre, q_staging)
    if actors_read_and_write(gpus):
        # a task per input file, each actor streaming its files from read to write (docs/adr/0002)
        actors = actor_pool(job.compute, inputs=len(pre.files), at_once=at_once)
        started = time.time()
        done = files_dataset([f.path for f in pre.files], [lake.uri(f.path) for f in pre.files]).map_batches(
            ScoreAndWrite,
            fn_constructor_kwargs=score_and_write_kwargs(
                job,
                lake,
                pre,
                predictor,
                kwargs,
                validator=validator,
                staging=staging,
                batch_size=batch_size,
                at_once=at_once,
            ),
            batch_format="pyarrow",
            batch_size=1,
            compute=actors,
            num_cpus=job.compute.cpus_per_actor,
        )
        files_done = done.take_all()  # a row per input file
        return started, stage_seconds(files_done), files_done
    dataset = read_parquet_files(
        [f.path for f in pre.files],
        filesystem=lake.fs,
        columns=columns,
        sizes=[f.size for f in pre.files],
        dictionary=categorical,
        num_cpus=IO_CPUS,
    )
    validated = dataset.map_batches(validator, batch_format="pyarrow", num_cpus=IO_CPUS)
    # read and write tasks need CPUs beside the actors
    actors = actor_pool(job.compute, beside=2 * IO_CPUS)
    started = time.time()
    scored = validated.map_batches(
        predictor,
        fn_constructor_kwargs=kwargs,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=actors,
        num_cpus=job.compute.cpus_per_actor,
        num_gpus=gpus,
        udf_modifying_row_count=False,
    )
    scored.write_parquet(
        staging,
        filesystem=lake.fs,
        min_rows_per_file=job.output.rows_per_file,
        ray_remote_args={"num_cpus": IO_CPUS},
        **parquet_options(prediction_columns(job.input.key, job.output.score_column)),
    )
    return started, {}, None


def read_columns(job: JobConfig, rules: list[validation.ColumnRule]) -> tuple[list[str], list[str]]:
    """What the job reads (the key, then the model's inputs), and which of those are categorical
    strings, read dictionary-encoded as Parquet stores them."""
    columns = [job.input.key, *(r.name for r in rules if r.name != job.input.key)]
    categorical = [r.name for r in rules if r.kind == "string" and r.name != job.input.key]
    return columns, categorical


def predictor_options(
    job: JobConfig,
    lake: Lake,
    pre: Preflight,
    *,
    settings: Settings,
    run_id: str,
    started_at: dt.datetime,
    telemetry_dir: str | None = None,
    at_once: int = 1,
) -> PredictorOptions:
    """The champion's options, as the job's actors get them when each scores ``at_once`` files at
    a time (:func:`jobs.ray_runtime.files_at_once`)."""
    ref = pre.ref
    return PredictorOptions(
        model_uri=ref.uri,
        tracking_uri=settings.mlflow.tracking_uri,
        registry_uri=settings.mlflow.registry_uri,
        key=job.input.key,
        score_column=job.output.score_column,
        threshold=job.output.threshold,
        lineage=Lineage(ref.name, ref.version, run_id, started_at, variant=ref.alias or f"v{ref.version}"),
        num_threads=max(1, int(threads_per_file(job.compute, at_once))),
        dtype=job.compute.dtype,
        telemetry_dir=telemetry_dir,
        filesystem=lake.fs,
        input_columns=pre.columns,
    )


def predictor_for(
    job: JobConfig, pre: Preflight, options: PredictorOptions, shadow_dir: str | None = None
) -> tuple[type, dict[str, Any]]:
    """The predictor class and its constructor's arguments: the champion alone, or the champion
    and the challenger when the job's ``ab:`` section routes a share to it or shadows it."""
    if pre.challenger is None or job.ab is None:
        return BatchPredictor, {"options": options, "scorer": pre.scorer}
    b = pre.challenger
    challenger = replace(
        options,
        model_uri=b.uri,
        lineage=replace(options.lineage, model_version=b.version, variant=job.ab.challenger),
        input_columns=pre.challenger_columns,
    )
    return RoutedPredictor, {
        "champion": (options, pre.scorer),
        "challenger": (challenger, pre.challenger_scorer),
        "share": job.ab.challenger_share,
        "shadow_dir": shadow_dir,
    }


def row_validator(job: JobConfig, lake: Lake, pre: Preflight, quarantine_dir: str) -> validation.RowValidator:
    """The job's row checks, its policy for a bad row, and where quarantined rows go."""
    return validation.RowValidator(pre.rules, job.validation.on_invalid_rows, job.input.key, lake.fs, quarantine_dir)


def score_and_write_kwargs(
    job: JobConfig,
    lake: Lake,
    pre: Preflight,
    predictor: type,
    kwargs: dict[str, Any],
    *,
    validator: validation.RowValidator,
    staging: str,
    batch_size: int,
    at_once: int = 1,
) -> dict[str, Any]:
    """What a CPU actor's :class:`jobs.part_writer.ScoreAndWrite` is built with, for ``at_once``
    files at a time; the benchmark builds the same in plain processes, to measure the job's own
    work without Ray."""
    columns, categorical = read_columns(job, pre.rules)
    return {
        "predictor": predictor,
        "kwargs": kwargs,
        "validator": validator,
        "columns": columns,
        "dictionary": categorical,
        "staging": staging,
        "filesystem": lake.fs,
        "batch_size": batch_size,
        "rows_per_file": job.output.rows_per_file,
        "score_column": job.output.score_column,
        "sample_every": score_stats.sample_every(pre.rows_in),
        "threads": decode_on_threads(threads_per_file(job.compute, at_once)),
        "huge_pages": job.compute.transparent_huge_pages,
    }


def _manifest(
    job: JobConfig,
    ds: dt.date,
    run_id: str,
    ref: ModelRef,
    lake: Lake,
    files: list[DataFile],
    out_files: list[DataFile],
    out_rows: list[int],
    started_at: dt.datetime,
    *,
    scores: dict[str, float] | None = None,
    nulls: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The partition's ``_manifest.json``; for a partition of predictions, ``scores``: the
    distribution of its scores (:mod:`jobs.score_stats`), and ``nulls``: each model input's share
    of nulls in the input (:mod:`jobs.input_stats`)."""
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
        **({"scores": scores} if scores else {}),
        **({"input_nulls": nulls} if nulls else {}),
    }


if __name__ == "__main__":
    from jobs.cli import run

    run(["run", *__import__("sys").argv[1:]])
