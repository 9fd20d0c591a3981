"""A run's Ray Data pipeline (:func:`score`), and what its actors are built with: the
benchmark builds the same actors' work in plain processes from these functions, to measure what
Ray costs."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import pyarrow as pa

from jobs import score_stats, stopping, telemetry, validation
from jobs.config import JobConfig
from jobs.lake import FolderWriter, Lake
from jobs.pieces import folder_values
from jobs.preflight import Preflight
from jobs.ray_runtime import (
    actor_pool,
    actors_read_and_write,
    decode_on_threads,
    files_at_once,
    files_dataset,
    map_on_actors,
    read_pieces,
    threads_per_file,
)
from jobs.settings import Settings
from models.predictor import (
    BatchPredictor,
    Lineage,
    PredictorOptions,
    RoutedPredictor,
)

# Read and write tasks reserve half a CPU each: they wait on storage and (de)compress, and with a
# whole CPU each they queue behind one another beside the actors (on 2 cores, one read or one write
# at a time next to one actor: a 10M-row job's reads and writes ran end to end, 16 s, while the
# actor needed 10 s).
IO_CPUS = 0.5


def score(
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
) -> tuple[float, dict[str, float], float | None, list[dict[str, Any]]]:
    """The Ray Data pipeline: read → validate rows → actor pool of predictors → Parquet in staging.

    CPU actors run all four steps themselves, a piece of the partition (``pre.pieces``: a file, a
    large file's run of row groups, or small files in turn) per thread and a thread per CPU
    (docs/adr/0002); GPU actors get their batches from read tasks and hand them to write tasks.

    Fault tolerance is Ray Data's: an actor that dies is restarted and its in-flight work
    resubmitted, up to :data:`jobs.ray_runtime.ACTOR_RESTARTS` times (Ray Data's default is
    forever), a read or write task whose worker dies is retried (Ray's default, 3 times), and both
    are safe because a retry rewrites the same file names. An exception raised by our code is not
    retried: it fails the run at once. The job's ``airflow.timeout_minutes`` bounds the whole, and
    rows out must equal rows in before anything is committed.

    Returns when the pipeline started (unix seconds); with CPU actors, the seconds they spent in
    each stage (:data:`jobs.part_writer.STAGES`), summed over the actors (else ``{}``), and the
    share of that time their threads were on a core (:func:`jobs.part_writer.on_cpu_share`, else
    None); and the summaries of the scores written, a file's each (:mod:`jobs.score_stats`), from
    the CPU actors or the GPU pipeline's write tasks.
    """
    from jobs.part_writer import ScoreAndWrite, file_rows, on_cpu_share, stage_seconds

    at_once = files_at_once(job.compute, len(pre.pieces), gpus=gpus)
    options = predictor_options(
        job,
        lake,
        pre,
        settings=settings,
        run_id=run_id,
        started_at=started_at,
        telemetry_dir=telemetry.folder(staging),
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
            from_folders=folder_values(pre.pieces),
            placement=job.compute.placement,
        )
        with stopping.held():
            mlflow.log_param("compute.batch_size_chosen", batch_size)
    if actors_read_and_write(gpus):
        # a task per piece of input, each actor streaming its pieces from read to write (docs/adr/0002)
        actors = actor_pool(job, settings, inputs=len(pre.pieces), at_once=at_once)
        started = time.time()
        done = map_on_actors(
            files_dataset(pre.pieces, lake.uri),
            ScoreAndWrite,
            fn_constructor_kwargs=score_and_write_kwargs(
                job,
                lake,
                pre,
                options,
                staging=staging,
                quarantine=q_staging,
                batch_size=batch_size,
                at_once=at_once,
                shadow_dir=shadow_dir,
            ),
            batch_format="pyarrow",
            batch_size=1,
            compute=actors,
            spec=job.compute,
        )
        files_done = done.take_all()  # a row per piece
        return started, stage_seconds(files_done), on_cpu_share(files_done), files_done
    from jobs.write_tasks import PredictionFiles

    # the challenger's scores travel beside the champion's to the write tasks, which write both
    predictor, kwargs = predictor_for(job, pre, options, None if shadow_dir is None else "columns")
    validator = row_validator(job, lake, pre, q_staging)
    dataset = read_pieces(pre.pieces, filesystem=lake.fs, columns=columns, dictionary=categorical, num_cpus=IO_CPUS)
    validated = dataset.map_batches(validator, batch_format="pyarrow", num_cpus=IO_CPUS)
    # read and write tasks need CPUs beside the actors
    actors = actor_pool(job, settings, beside=2 * IO_CPUS)
    started = time.time()
    scored = map_on_actors(
        validated,
        predictor,
        fn_constructor_kwargs=kwargs,
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=actors,
        spec=job.compute,
        num_gpus=gpus,
        udf_modifying_row_count=False,
    )
    sink = PredictionFiles(
        FolderWriter(staging, lake.fs),
        None if shadow_dir is None else FolderWriter(shadow_dir, lake.fs),
        key=job.input.key,
        min_rows=file_rows(job.output.rows_per_file, prediction_bytes(job, shadow=shadow_dir is not None)),
        score_column=job.output.score_column,
        sample_every=score_stats.sample_every(pre.rows_in),
    )
    scored.write_datasink(sink, ray_remote_args={"num_cpus": IO_CPUS})
    return started, {}, None, sink.summaries


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
        task=job.model.task,
        classes=job.classes,
        dimensions=job.model.dimensions or 0,
        num_threads=max(1, int(threads_per_file(job.compute, at_once))),
        dtype=job.compute.dtype,
        telemetry_dir=telemetry_dir,
        filesystem=lake.fs,
        input_columns=pre.columns,
        passthrough=tuple(job.output.passthrough),
        class_columns=job.class_columns,
        widened=tuple((c, t) for c, t in pre.widened.items() if c in (job.input.key, *job.output.passthrough)),
    )


def predictor_for(
    job: JobConfig,
    pre: Preflight,
    options: PredictorOptions,
    shadow: Callable[[pa.Table], None] | Literal["columns"] | None = None,
) -> tuple[type, dict[str, Any]]:
    """The predictor class and its constructor's arguments: the champion alone, or the champion
    and the challenger when the job's ``ab:`` section routes a share to it or shadows it (each
    batch's challenger scores handed to ``shadow``, or put beside the batch's own:
    :class:`models.predictor.RoutedPredictor`)."""
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
        "shadow": shadow,
    }


def row_validator(job: JobConfig, lake: Lake, pre: Preflight, quarantine_dir: str) -> validation.RowValidator:
    """The job's row checks, its policy for a bad row, and where quarantined rows go."""
    return validation.RowValidator(
        pre.rules,
        job.validation.on_invalid_rows,
        job.input.key,
        lake.fs,
        quarantine_dir,
        widened=tuple(pre.widened.items()),
    )


def score_and_write_kwargs(
    job: JobConfig,
    lake: Lake,
    pre: Preflight,
    options: PredictorOptions,
    *,
    staging: str,
    quarantine: str,
    batch_size: int,
    at_once: int = 1,
    shadow_dir: str | None = None,
) -> dict[str, Any]:
    """What a CPU actor's :class:`jobs.part_writer.ScoreAndWrite` is built with, for ``at_once``
    files at a time: the predictor :func:`predictor_for` picks with ``options``, the job's row
    checks (:func:`row_validator`) and where the scores and the bad rows go. The benchmark builds
    the same in plain processes, to measure the job's own work without Ray."""
    predictor, kwargs = predictor_for(job, pre, options)
    columns, categorical = read_columns(job, pre.rules)
    return {
        "predictor": predictor,
        "kwargs": kwargs,
        "validator": row_validator(job, lake, pre, quarantine),
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
        "shadow": None if shadow_dir is None else FolderWriter(shadow_dir, lake.fs),
        "prediction_bytes": prediction_bytes(job, shadow=shadow_dir is not None),
    }


def prediction_bytes(job: JobConfig, *, shadow: bool) -> int:
    """The bytes of a row's predictions beyond the usual few (:func:`jobs.part_writer.wide_prediction_bytes`)."""
    from jobs.part_writer import wide_prediction_bytes

    return wide_prediction_bytes(job.model.task, job.model.dimensions, len(job.class_columns), shadow=shadow)
