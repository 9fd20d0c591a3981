"""A committed partition's ``_manifest.json``: its lineage (the job, the model version, the MLflow
run, the input files), its files and rows, its schema, and the figures tomorrow's run compares
itself with (:mod:`jobs.drift`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

import pyarrow.parquet as pq

from jobs import tracking
from jobs.config import JobConfig
from jobs.lake import DataFile, Lake
from models.output_columns import LINEAGE_COLUMNS
from models.registry import ModelRef


def partition_manifest(
    job: JobConfig,
    ds: dt.date,
    run_id: str,
    ref: ModelRef,
    lake: Lake,
    files: list[DataFile],
    out_files: list[DataFile],
    out_footers: list[pq.FileMetaData],
    started_at: dt.datetime,
    *,
    scores: dict[str, float] | None = None,
    nulls: dict[str, float] | None = None,
    ab: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The partition's ``_manifest.json``; for a partition of predictions, ``scores``: the
    distribution of its scores (:mod:`jobs.score_stats`), ``nulls``: each model input's share
    of nulls in the input (:mod:`jobs.input_stats`), and ``ab``: the challenger's part in the
    run (:func:`ab_lineage`). ``out_footers``: the output files' own, which the caller has read
    for their row counts (on S3 a round trip fewer than reading a schema)."""
    out_rows = [footer.num_rows for footer in out_footers]
    schema = out_footers[0].schema.to_arrow_schema() if out_footers else None
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
        **(ab or {}),
    }


def ab_lineage(job: JobConfig, challenger: ModelRef | None) -> dict[str, Any]:
    """The version beside the champion in a run, where there is one: ``canary``, which scored
    ``share`` of the entities (the rows whose ``variant`` is the challenger's alias), and
    ``shadow``, which scored every row into ``table``. The predictions' manifest, the MLflow run
    and the run's result record it: ``model`` names the champion alone, and a canary's rows
    are the challenger's."""
    if challenger is None or job.ab is None:
        return {}
    version = asdict(challenger) | {"uri": challenger.uri}
    return {
        **({"canary": version | {"share": job.ab.challenger_share}} if job.ab.challenger_share > 0 else {}),
        **({"shadow": version | {"table": job.shadow_table}} if job.ab.shadow else {}),
    }
