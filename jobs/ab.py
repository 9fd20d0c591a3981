"""``lakecast compare``: score a labeled partition with the champion and the challenger in one
Ray Data pass, compare them with confidence intervals, decide, and record it all.

Records: an MLflow parent run (differences, intervals, verdict, report.json, report.md, plots)
with a child run per model version; ``<lake>/ab/<job>/ds=<date>/report.json``; and a tag on both
model versions with the verdict of that date.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs import abstats, commit, score_stats, stopping, tracking, validation
from jobs.ab_report import markdown, plots
from jobs.config import ABSpec, JobConfig
from jobs.failures import JobError
from jobs.lake import DataFile, Lake, LakeError, NotLanded
from jobs.parquet_source import read_piece
from jobs.pieces import Piece, folder_values, split_files
from jobs.preflight import check_listed_columns_taken, model_inputs
from jobs.ray_errors import raise_ours
from jobs.ray_runtime import (
    actor_gpus,
    actor_pool,
    actors_read_and_write,
    decode_on_threads,
    ensure_ray,
    files_dataset,
    map_on_actors,
    read_pieces,
)
from jobs.settings import Settings, load_settings
from jobs.validation import REASON, ColumnRule, InvalidInput
from jobs.yamlconf import ConfigError
from models.output_columns import PREDICTION
from models.predictor import Lineage, PairActor, PredictorOptions, arrow_scorer
from models.registry import ModelRef, load_pyfunc, resolve

log = logging.getLogger(__name__)


def ab_spec(job: JobConfig, command: str = "compare") -> ABSpec:
    """The job's ``ab:`` section, which ``command`` (compare, promote, rollback) works from."""
    if job.ab is None:
        raise ConfigError(
            f"{job.file} has no ab: section, which lakecast {command} needs: it names the "
            "labeled table and the two aliases (README: A/B comparison)"
        )
    return job.ab


class NothingToCompare(JobError):
    """Both aliases name one version, as they do after a promotion until a new challenger is
    registered: a comparison would score every labeled row twice to find no difference, and write
    an inconclusive report over the day's. The nightly DAG skips its compare task."""


def versions_to_compare(client: Any, job: JobConfig) -> tuple[ModelRef, ModelRef]:
    """The champion's and the challenger's versions, as their aliases name them now.

    Raises:
        NothingToCompare: both aliases name one version.
    """
    spec = ab_spec(job)
    champion = resolve(client, job.model.name, alias=spec.champion)
    challenger = resolve(client, job.model.name, alias=spec.challenger)
    if champion.version == challenger.version:
        raise NothingToCompare(
            f"{spec.champion} and {spec.challenger} are both version {champion.version} of {job.model.name}: "
            f"nothing to compare, and no report was written. Register the version to try under the alias "
            f"{spec.challenger!r} (ab.challenger in {job.file})"
        )
    return champion, challenger


def run_compare(job: JobConfig, ds: dt.date, *, settings: Settings | None = None) -> dict[str, Any]:
    """Compare the job's two aliases on ``ds``'s labeled partition; returns the report.

    Raises:
        jobs.stopping.Stopped: Ctrl-C or SIGTERM before the comparison's MLflow run and report.
    """
    with stopping.on_signals(
        said=lambda stop: (
            f"the comparison of {job.name} for {ds} was stopped by {stop.signal_name} before "
            "its report: no MLflow run, report or verdict was written"
        )
    ):
        return _compare(job, ds, settings=settings)


def _compare(job: JobConfig, ds: dt.date, *, settings: Settings | None) -> dict[str, Any]:
    """:func:`run_compare`'s work, in which a stop raises :class:`jobs.stopping.Stopped`."""
    import mlflow

    spec = ab_spec(job)
    settings = settings or load_settings()
    lake = Lake(settings.lake_root)
    client = tracking.configure(settings)
    refs = versions_to_compare(client, job)
    try:
        files, footers = lake.input_footers(spec.labeled_table, ds, layout=job.labeled_partition)
    except NotLanded as e:
        if spec.label_delay_days:
            raise
        raise NotLanded(
            f"{e}; where outcomes land days after the day they describe, set ab.label_delay_days in {job.file}"
        ) from None
    inputs = [model_inputs(job, ref, takes_every_listed=False) for ref in refs]
    check_listed_columns_taken(job, list(refs), inputs)
    rules = _rules(job, spec, refs, inputs)
    from_folders = validation.check_schema(lake, files, footers, rules, job.input.key).from_folders
    _check_label_type(lake, spec, files, footers)
    rows_in = sum(footer.num_rows for footer in footers)
    pieces = split_files(files, footers, job.output.rows_per_file, from_folders)  # large files: read side by side
    scored = _score_both(job, spec, lake, pieces, rows_in, refs, inputs, rules, settings)
    where = lake.partition_uri(spec.labeled_table, ds, job.labeled_partition)
    table, excluded = _excluded(job, scored, where)
    if spec.task == "multiclass":
        y = _class_indices(table, job, spec, where)
    else:
        y = table.column(spec.label).to_numpy(zero_copy_only=False).astype(np.float64)
    if spec.task == "classification":
        _check_binary(y, table.column(job.input.key), job.input.key, spec, where)
    a, b = (_scores(table.column(c), len(job.classes)) for c in ("score_champion", "score_challenger"))
    if spec.task == "classification":
        for ref, scores in zip(refs, (a, b), strict=True):
            _check_probabilities(ref, scores)
    groups = table.column(spec.group_key).to_numpy(zero_copy_only=False) if spec.group_key else None
    segments = table.column(spec.segment_column).to_numpy(zero_copy_only=False) if spec.segment_column else None
    threshold = job.output.threshold if job.output.threshold is not None else 0.5
    comparison = abstats.compare(
        y,
        a,
        b,
        task=spec.task,
        threshold=threshold,
        confidence=spec.confidence,
        bootstrap=spec.bootstrap,
        groups=groups,
        segments=segments,
    )
    verdict, reasons = abstats.verdict(
        comparison, primary=spec.primary_metric, min_improvement=spec.min_improvement, guards=spec.guards
    )
    shadow, shadow_left_out = shadow_summary(job, lake, ds, refs[1])
    report = {
        "job": job.name,
        "date": ds.isoformat(),
        "task": spec.task,
        "labeled_table": spec.labeled_table,
        "rows": len(y),
        "excluded": excluded,
        "champion": {"alias": spec.champion, "name": refs[0].name, "version": refs[0].version},
        "challenger": {"alias": spec.challenger, "name": refs[1].name, "version": refs[1].version},
        "metrics": {"champion": comparison.champion, "challenger": comparison.challenger},
        "differences": {m: asdict(i) for m, i in comparison.differences.items()},
        "confidence": spec.confidence,
        "bootstrap": {"resamples": spec.bootstrap, "unit": spec.group_key or "row"},
        "mcnemar": comparison.mcnemar,
        "segments": {"column": spec.segment_column, "values": comparison.segments} if spec.segment_column else None,
        "shadow": shadow,
        "shadow_left_out": shadow_left_out,
        "policy": {
            "primary_metric": spec.primary_metric,
            "min_improvement": spec.min_improvement,
            "guards": spec.guards,
        },
        "verdict": verdict,
        "reasons": reasons,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    report["lake_path"] = lake.uri(f"{lake.partition_path(job.ab_report_table, ds)}/report.json")
    experiment = tracking.experiment_id(settings, f"lakecast/{job.name}")
    stopping.finish_first()  # the run, the report and the versions' tags: all of them or none
    with mlflow.start_run(experiment_id=experiment, run_name=f"compare {job.name} {ds}") as parent:
        report["mlflow_run_id"] = parent.info.run_id
        _log_to_mlflow(report, comparison, refs, y, a, b)
    _write_report(lake, job, ds, report)
    for ref in refs:
        client.set_model_version_tag(ref.name, str(ref.version), f"lakecast.ab.{ds.isoformat()}", verdict)
        client.set_model_version_tag(ref.name, str(ref.version), "lakecast.ab.latest", f"{ds.isoformat()}: {verdict}")
    log.info("compare %s %s: v%d vs v%d → %s", job.name, ds, refs[0].version, refs[1].version, verdict)
    return report


# what a label may be, by ab.task, and how an error says it
LABEL_KINDS = {
    "classification": ({"number", "boolean"}, "0 or 1, or a boolean"),
    "multiclass": ({"number", "string"}, "one of model.classes, as a string or a number"),
    "regression": ({"number"}, "a number"),
}


def _check_label_type(lake: Lake, spec: ABSpec, files: list[DataFile], footers: list[pq.FileMetaData]) -> None:
    """The label is a number, or for a classification a boolean too, in every file: a label
    stored as ``"yes"``/``"no"`` ended the comparison in NumPy's traceback. A multiclass label
    names a class, as a string or a number."""
    takes, wanted = LABEL_KINDS[spec.task]
    for f, footer in zip(files, footers, strict=True):
        t = footer.schema.to_arrow_schema().field(spec.label).type
        if pa.types.is_null(t) or validation.kind_of(t) in takes:  # nulls only: excluded as rows with no label
            continue
        raise InvalidInput(
            f"{lake.uri(f.path)}: the label {spec.label!r} (ab.label) has type {t}; a {spec.task} label is {wanted}"
        )


def _check_binary(y: np.ndarray, keys: pa.ChunkedArray, key: str, spec: ABSpec, where: str) -> None:
    """A classification's label is 0 or 1: AUC and the rest read any other value as sklearn's
    error about ``pos_label``, with no word of the partition or the setting."""
    other = np.flatnonzero((y != 0) & (y != 1))
    if other.size:
        values = ", ".join(f"{v:g}" for v in np.unique(y[other])[:5])
        raise InvalidInput(
            f"{where}: the label {spec.label!r} (ab.label) holds values other than 0 and 1 ({values}; e.g. "
            f"{key}={keys[int(other[0])].as_py()!r}): a classification label is 0 or 1, or a boolean; for a numeric "
            "outcome set model.task: regression"
        )


def _class_indices(table: pa.Table, job: JobConfig, spec: ABSpec, where: str) -> np.ndarray:
    """A multiclass label's values as indices into ``model.classes``, each matched by its text
    (a label stored as the number 2, or 2.0, is the class ``"2"``).

    Raises:
        InvalidInput: a label that names none of the classes, with the values and a row's key.
    """
    labels = table.column(spec.label)
    if pa.types.is_dictionary(labels.type):
        labels = labels.cast(labels.type.value_type)
    indices = pc.index_in(labels.cast(pa.string()), value_set=pa.array(job.classes, pa.string()))
    if indices.null_count:
        unknown = pc.is_null(indices)
        values = pc.unique(labels.filter(unknown)).to_pylist()
        first = pc.index(unknown, True).as_py()
        raise InvalidInput(
            f"{where}: the label {spec.label!r} (ab.label) holds values that are none of model.classes "
            f"[{', '.join(job.classes)}] ({', '.join(map(repr, values[:5]))}; e.g. {job.input.key}="
            f"{table.column(job.input.key)[first].as_py()!r}): each label names the class the row turned out in; "
            f"a class the model does not predict cannot be compared, so add it to model.classes in {job.file} with "
            "a model version that predicts it"
        )
    return indices.to_numpy()


def _scores(column: pa.ChunkedArray, classes: int) -> np.ndarray:
    """A version's scores of the compared rows: a vector, or a multiclass model's matrix of a
    row per labeled row and a column per class (stored a fixed-size list a row)."""
    if not classes:
        return column.to_numpy()
    return np.asarray(column.combine_chunks().flatten()).reshape(-1, classes)


def _rules(
    job: JobConfig, spec: ABSpec, refs: tuple[ModelRef, ...], inputs: list[list[tuple[str, str, bool]]]
) -> list[ColumnRule]:
    """The nightly job's row rules for either version's inputs, and a label on every row: a row
    the job would quarantine, or one with no outcome, is not compared. A rule for a column that
    only one version takes applies to that version's inputs (that some version takes each:
    :func:`jobs.preflight.check_listed_columns_taken`)."""
    rules = []
    for ref, columns in zip(refs, inputs, strict=True):
        names = {name for name, _, _ in columns} | {job.input.key}
        own = job.validation.model_copy(
            update={"columns": {c: rule for c, rule in job.validation.columns.items() if c in names}}
        )
        rules += validation.rules_from(columns, own, job.input.key, job_file=job.file, model=ref.uri)
    rules.append(ColumnRule(spec.label, "any", nullable=False))
    rules += [ColumnRule(c, "any") for c in (spec.group_key, spec.segment_column) if c]
    return list(dict.fromkeys(rules))


def _excluded(job: JobConfig, scored: pa.Table, where: str) -> tuple[pa.Table, dict[str, Any]]:
    """The rows both versions scored, and what was left out and why, under the job's policy.

    Raises:
        InvalidInput: an invalid row under ``on_invalid_rows: fail``, or more than
            ``max_invalid_share`` of the rows invalid; nothing is recorded.
    """
    reasons = scored.column(REASON)
    bad = pc.is_valid(reasons)
    n_bad, n = reasons.length() - reasons.null_count, scored.num_rows
    by_reason = validation.reason_counts(reasons)
    if n_bad:
        first = pc.index(bad, True).as_py()
        example = f"{job.input.key}={scored.column(job.input.key)[first].as_py()!r}: {reasons[first].as_py()}"
        share = n_bad / n
        if job.validation.on_invalid_rows == "fail":
            raise InvalidInput(
                f"{where}: {n_bad} of {n} labeled rows are invalid, e.g. {example} (validation.on_invalid_rows "
                "is 'fail'); nothing was compared"
            )
        if share > job.validation.max_invalid_share:
            raise InvalidInput(
                f"{where}: {n_bad} of {n} labeled rows ({100 * share:.2f}%) are invalid, above the job's limit of "
                f"{100 * job.validation.max_invalid_share:g}% (validation.max_invalid_share), e.g. {example}; "
                "nothing was compared"
            )
        if n_bad == n:  # under max_invalid_share: 1.0; every metric would be NaN
            raise InvalidInput(f"{where}: all {n} labeled rows are invalid, e.g. {example}; nothing is left to compare")
        log.warning("%d of %d labeled rows left out of the comparison: %s", n_bad, n, by_reason)
    return scored.filter(pc.invert(bad)).drop_columns([REASON]), {"rows": n_bad, "reasons": by_reason}


def _check_probabilities(ref: ModelRef, scores: np.ndarray) -> None:
    """A classification comparison needs each score to be a probability."""
    outside = (scores < 0) | (scores > 1) | np.isnan(scores)
    if outside.any():
        raise JobError(
            f"{ref.uri} scored {int(outside.sum())} of {len(scores)} labeled rows outside [0, 1] (e.g. "
            f"{scores[outside][0]:g}); a classification (model.task) compares probabilities of the positive class; "
            "a model that predicts a value is a regression: set model.task: regression"
        )


class ValidatedPairActor(PairActor):
    """:class:`PairActor` on the rows the nightly job would score; the others come back unscored,
    with the :data:`~jobs.validation.REASON` they are invalid."""

    def __init__(self, *, rules: list[ColumnRule], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rules = rules

    def _score_pair(self, batch: pa.Table) -> pa.Table:
        reasons = validation.invalid_reasons(batch, self.rules)
        n_bad = len(reasons) - reasons.null_count
        if not n_bad:
            return super()._score_pair(batch).append_column(REASON, reasons)
        bad = pc.is_valid(reasons)
        rejected = batch.select(self.passthrough).filter(bad)
        for column in ("score_champion", "score_challenger"):
            rejected = rejected.append_column(column, pa.nulls(n_bad, self.score_type))
        rejected = rejected.append_column(REASON, reasons.filter(bad))
        if n_bad == len(reasons):
            return rejected
        valid = pc.invert(bad)
        scored = super()._score_pair(batch.filter(valid)).append_column(REASON, reasons.filter(valid))
        return pa.concat_tables([scored, rejected])


class PiecesPairActor(ValidatedPairActor):
    """:class:`ValidatedPairActor` for CPU actors that read their own pieces of the labeled
    partition (a row of :func:`jobs.ray_runtime.files_dataset` each). A read that Ray Data fused
    into the actors would have to ask for their remote args, and a read task refuses the
    restarts' options (:func:`jobs.ray_runtime.map_on_actors`)."""

    def __init__(self, *, filesystem: Any, columns: list[str], threads: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filesystem, self.columns, self.threads = filesystem, columns, threads

    def __call__(self, pieces: pa.Table) -> Iterator[pa.Table]:
        for row in pieces.to_pylist():
            piece, _ = Piece.from_row(row)
            for block in read_piece(piece, self.filesystem, self.columns, threads=self.threads):
                yield super().__call__(block)


def _score_both(
    job: JobConfig,
    spec: ABSpec,
    lake: Lake,
    pieces: list[Piece],
    rows_in: int,
    refs: tuple[ModelRef, ModelRef],
    signatures: list[list[tuple[str, str, bool]]],
    rules: list[ColumnRule],
    settings: Settings,
) -> pa.Table:
    inputs = [tuple(c for c, _, _ in columns) for columns in signatures]
    features = sorted({c for columns in inputs for c in columns})
    passthrough = list(dict.fromkeys(c for c in (job.input.key, spec.label, spec.group_key, spec.segment_column) if c))
    scorers = tuple(arrow_scorer(load_pyfunc(ref.uri)) for ref in refs)
    now = dt.datetime.now(dt.UTC)
    options = tuple(
        PredictorOptions(
            model_uri=ref.uri,
            tracking_uri=settings.mlflow.tracking_uri,
            registry_uri=settings.mlflow.registry_uri,
            key=job.input.key,
            score_column="score",
            threshold=job.output.threshold,
            lineage=Lineage(ref.name, ref.version, "compare", now),
            task=job.model.task,
            classes=job.classes,
            num_threads=max(1, int(job.compute.cpus_per_actor)),
            dtype=job.compute.dtype,  # on GPU actors: the versions are compared as the nightly job scores
            input_columns=columns,
        )
        for ref, columns in zip(refs, inputs, strict=True)
    )
    with stopping.ray_starting():
        ensure_ray(settings)
    columns = list(dict.fromkeys([*passthrough, *features]))
    gpus = actor_gpus(job, settings)
    batch_size = job.compute.batch_size
    if batch_size == "auto":  # measured on the champion's predictor
        from jobs import batch_size as auto

        paths = list(dict.fromkeys(path for p in pieces for path in p.paths))
        batch_size = auto.choose(
            options[0],
            scorers[0],
            paths,
            filesystem=lake.fs,
            columns=columns,
            rows_in=rows_in,
            cpus=job.compute.cpus_per_actor,
            gpus=gpus,
            rules=rules,
            from_folders=folder_values(pieces),
            placement=job.compute.placement,
        )
    pair = {"rules": rules, "options": options, "scorers": scorers, "passthrough": passthrough}
    if actors_read_and_write(gpus):  # CPU actors read their own pieces, as the nightly job's do (docs/adr/0002)
        scored = map_on_actors(
            files_dataset(pieces, lake.uri),
            PiecesPairActor,
            fn_constructor_kwargs={
                **pair,
                "batch_size": batch_size,
                "filesystem": lake.fs,
                "columns": columns,
                "threads": decode_on_threads(job.compute.cpus_per_actor),
            },
            batch_format="pyarrow",
            batch_size=1,
            compute=actor_pool(job, settings, inputs=len(pieces)),
            spec=job.compute,
        )
    else:
        scored = map_on_actors(
            read_pieces(pieces, filesystem=lake.fs, columns=columns),
            ValidatedPairActor,
            fn_constructor_kwargs=pair,
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=actor_pool(job, settings, beside=1),
            spec=job.compute,
            num_gpus=gpus,
            udf_modifying_row_count=False,
        )
    try:
        # a labeled table's files may give a column types that widen to one (int32 and int64 ids,
        # which validation.check_schema lets through): its batches' types then differ as well
        batches = list(scored.iter_batches(batch_format="pyarrow", batch_size=None))
        return pa.concat_tables(batches, promote_options="permissive")
    except Exception as e:
        raise_ours(e)
        raise


def shadow_summary(
    job: JobConfig, lake: Lake, ds: dt.date, challenger: ModelRef
) -> tuple[dict[str, float] | None, str | None]:
    """Agreement (a classification's; a regression's mean absolute difference) and score shift
    (PSI; a multiclass model's, of the shares of rows predicted in each class) between the
    predictions and the shadow predictions of ``ds``, None where the day has no
    shadow of ``challenger`` scored beside its predictions; and why the day's shadow was left
    out, where it has one. A rerun without a shadow (both aliases on one version after a
    promotion) keeps the day's earlier shadow, and the challenger may have moved since: neither is
    compared with the predictions."""
    import pyarrow.dataset as pads

    from jobs.lake import LakeError

    try:
        committed = lake.committed(job.output.table, ds), lake.committed(job.shadow_table, ds)
    except LakeError:
        return None, None
    if None in committed:
        return None, None
    (main, predictions), (shadow, shadowed) = committed
    why = None
    if shadowed["scoring_run_id"] != predictions["scoring_run_id"]:
        why = "was scored by another run than the day's predictions (a rerun with no shadow, say)"
    elif shadowed["model"]["version"] != challenger.version:
        why = f"holds v{shadowed['model']['version']}'s scores, not the challenger v{challenger.version}'s"
    if why:
        left_out = f"{lake.partition_uri(job.shadow_table, ds)} {why}"
        log.warning("%s: the report leaves it out", left_out)
        return None, left_out
    score = job.output.score_column

    def read(files: list[DataFile]) -> pa.Table:
        columns = [job.input.key, score, *([PREDICTION] if job.predicts else [])]
        table = pads.dataset([f.path for f in files], filesystem=lake.fs, format="parquet").to_table(columns=columns)
        if job.classes:  # a multiclass model's class names, dictionary-encoded: joined as the strings
            table = table.set_column(2, PREDICTION, table.column(PREDICTION).cast(pa.string()))
        return table

    joined = read(main).join(read(shadow), job.input.key, right_suffix="_shadow")
    a = joined.column(score).to_numpy()
    b = joined.column(f"{score}_shadow").to_numpy()
    if job.predicts:
        agree = pc.equal(joined.column(PREDICTION), joined.column(f"{PREDICTION}_shadow")).to_numpy()
        apart = {"agreement": float(agree.mean()) if len(a) else float("nan")}
    else:
        apart = {"mean_abs_difference": float(np.abs(a.astype(np.float64) - b).mean()) if len(a) else float("nan")}
    if job.classes and len(a):
        # a class model's score is its top class's probability, sharp in one version and smooth in
        # the other by nature (a PSI of 6.9 at 94.5% agreement): its mix of classes is what moved
        def mix(column: str) -> dict[str, float]:
            counts = {c["values"]: c["counts"] for c in pc.value_counts(joined.column(column)).to_pylist()}
            return score_stats.class_shares(counts, len(a), job.classes)

        shift = score_stats.class_psi(mix(f"{PREDICTION}_shadow"), mix(PREDICTION), job.classes)
    else:
        shift = psi(a, b)
    return {"rows": len(a), **apart, "psi": shift}, None


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected``, on ``expected``'s deciles."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        return 0.0
    e = np.histogram(np.clip(expected, edges[0], edges[-1]), edges)[0] / len(expected)
    a = np.histogram(np.clip(actual, edges[0], edges[-1]), edges)[0] / len(actual)
    e, a = np.clip(e, 1e-6, None), np.clip(a, 1e-6, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _log_to_mlflow(
    report: dict[str, Any],
    comparison: abstats.Comparison,
    refs: tuple[ModelRef, ModelRef],
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
) -> None:
    import mlflow

    mlflow.set_tags(
        {
            "lakecast.kind": "compare",
            "lakecast.job": report["job"],
            "lakecast.date": report["date"],
            "lakecast.verdict": report["verdict"],
        }
    )
    mlflow.log_params(
        {
            "champion": refs[0].uri,
            "challenger": refs[1].uri,
            "primary_metric": report["policy"]["primary_metric"],
            "confidence": report["confidence"],
            "bootstrap": report["bootstrap"]["resamples"],
            "rows": report["rows"],
        }
    )
    for m, i in comparison.differences.items():
        mlflow.log_metrics({f"diff_{m}": i.diff, f"diff_{m}_low": i.low, f"diff_{m}_high": i.high})
    if comparison.mcnemar:
        mlflow.log_metric("mcnemar_p_value", comparison.mcnemar["p_value"])
    mlflow.log_metric("excluded_rows", report["excluded"]["rows"])
    for role, ref, metrics in (
        ("champion", refs[0], comparison.champion),
        ("challenger", refs[1], comparison.challenger),
    ):
        # nested runs default to the "Default" experiment, not their parent's: say which
        experiment = mlflow.active_run().info.experiment_id
        with mlflow.start_run(run_name=f"{role} v{ref.version}", nested=True, experiment_id=experiment):
            mlflow.set_tags({"lakecast.role": role, "lakecast.model_version": f"{ref.name}/{ref.version}"})
            mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
        (folder / "report.md").write_text(markdown(report))
        plots(report, y, a, b, folder)
        mlflow.log_artifacts(str(folder))


def _write_report(lake: Lake, job: JobConfig, ds: dt.date, report: dict[str, Any]) -> str:
    """``<lake>/ab/<job>/ds=<date>/report.json``, committed like any partition."""
    table = job.ab_report_table
    with commit.partition_lock(lake, table, ds, job=job.name):
        commit.recover(lake, table, ds)
        staging = lake.staging_path(table, ds, report["mlflow_run_id"])
        lake.make_dirs(staging)
        with lake.fs.open_output_stream(f"{staging}/report.json") as f:
            f.write(json.dumps(report, indent=2, default=str).encode())
        manifest = {"job": job.name, "date": ds.isoformat(), "output": [{"file": "report.json", "rows": 0}]}
        path = commit.commit(lake, staging, table, ds, manifest)
    return lake.uri(f"{path}/report.json")


class DamagedReport(LakeError):
    """A ``report.json`` in the lake is not one ``lakecast compare`` wrote: it writes the file whole,
    so something else changed it. Its comparison, run again for that date, writes it anew."""


REPORT_KEYS = ("date", "verdict", "reasons", "champion", "challenger")


def latest_report(lake: Lake, job: JobConfig) -> dict[str, Any] | None:
    """The most recent comparison report of the job in the lake.

    Raises:
        DamagedReport: the newest report is not JSON or lacks what ``lakecast promote`` reads. An
            older report is not read instead: it would be evidence about other data.
    """
    day = lake.newest_holding(job.ab_report_table, "report.json")
    if day is None:
        return None
    path = f"{lake.partition_path(job.ab_report_table, day)}/report.json"
    with lake.fs.open_input_stream(path) as f:
        text = f.read()
    return _report_from(text, lake.uri(path), job, day.isoformat())


def _report_from(text: bytes, uri: str, job: JobConfig, day: str) -> dict[str, Any]:
    again = f"lakecast compare {job.name} --date {day} writes it again"
    try:
        report = json.loads(text)
    except ValueError as e:
        raise DamagedReport(f"{uri} is not a report lakecast wrote: not valid JSON ({e}); {again}") from None
    missing = [key for key in REPORT_KEYS if key not in report] if isinstance(report, dict) else list(REPORT_KEYS)
    versions_ok = not missing and all(
        isinstance(report[role], dict) and isinstance(report[role].get("version"), int)
        for role in ("champion", "challenger")
    )
    if missing or not versions_ok or not isinstance(report["reasons"], list):
        what = f"it has no {', '.join(missing)}" if missing else "its versions or reasons are not a report's"
        raise DamagedReport(f"{uri} is not a report lakecast wrote: {what}; {again}")
    return report
