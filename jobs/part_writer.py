"""Read, validate, score and write an input file in the same actor, a batch at a time: the job's
pipeline on CPU actors (docs/adr/0002).

With CPU actors, reading, scoring and writing share the same cores, and every row that crosses
Ray's object store between them is copied in, copied out and scheduled as its own task. So on
CPU, Ray Data hands each actor input files, whole or a run of a large file's row groups
(:class:`jobs.pieces.Piece`), and :class:`ScoreAndWrite` streams a piece
:data:`READ_ROWS` rows at a time: it validates them, scores the valid ones in batches of
``batch_size``, keeps only the scores, and writes them as Parquet files of about
``rows_per_file`` input rows each into the run's staging folder (their invalid rows as one file
each in quarantine). Only file names and row counts go back through Ray.

So an actor's working set is a batch of input and a file's worth of scores (about 15 bytes a
row), not a decoded slice of the file: a 1M-row slice of the churn table grew an actor by 500 MB,
and the development machine backs new memory slowly (each actor's first two slices read in
0.6-1.0 s where later ones took 0.11 s). Streamed, the first batches cost what later ones do.
Ray Data's own read could not keep the batches small: it joins a read's blocks up to
``target_max_block_size`` (128 MiB) before the next step.

GPU actors keep the three stages apart (CPU read tasks, GPU actors, CPU write tasks), so the GPU
never waits on Parquet.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import score_stats
from jobs.huge_pages import turn_off as huge_pages_off
from jobs.pieces import Piece, file_batches
from jobs.validation import InvalidInput, RowValidator
from models.predictor import in_batches, parquet_options

# rows read and validated at a time, then scored in batches of the job's batch_size: about 40 MB
# of the churn table's columns. Reading and validating 65,536 rows at a time cost more per row.
READ_ROWS = 262_144

# what an actor spends its time on, in order; "score" is the predictor's call: the features'
# conversion from Arrow, the model, and the output rows with their lineage
STAGES = ("read", "validate", "score", "write")

# what an actor returns for each piece of input: rows scored and set aside, the seconds of each
# stage, and a summary of the scores it wrote (jobs.score_stats)
DONE = pa.schema(
    [("file", pa.string()), ("rows", pa.int64()), ("quarantined", pa.int64())]
    + [(f"{stage}_s", pa.float64()) for stage in STAGES]
    + score_stats.FIELDS
)


def stage_seconds(done: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds by stage, summed over rows of :data:`DONE` (as dicts): over an actor's files, or a
    job's."""
    return {stage: sum(row[f"{stage}_s"] for row in done) for stage in STAGES}


def slice_ends(rows: int, rows_per_file: int) -> list[int]:
    """Where the output files of ``rows`` input rows end: as many as the rows fill files of
    ``rows_per_file`` (one at least), of equal size. No file is smaller than ``rows_per_file``
    unless all the rows are, and none holds twice as many: a 1,048,576-row input (pyarrow's row
    group) makes one file, not one of 1,000,000 and one of 48,576."""
    files = max(1, rows // rows_per_file)
    return [rows * (i + 1) // files for i in range(files)]


def slices(batches: Iterable[pa.RecordBatch], ends: list[int]) -> Iterator[tuple[int, pa.Table]]:
    """``(slice number, rows)`` for ``batches`` cut where ``ends`` says (:func:`slice_ends`), a
    batch that straddles two slices cut in two. Rows past the last end go to the last slice."""
    seen = i = 0
    for batch in batches:
        start = 0
        while start < batch.num_rows:
            while i < len(ends) - 1 and seen >= ends[i]:
                i += 1
            n = batch.num_rows - start if i == len(ends) - 1 else min(batch.num_rows - start, ends[i] - seen)
            yield i, pa.Table.from_batches([batch.slice(start, n)])
            start, seen = start + n, seen + n


class ScoreAndWrite:
    """Ray Data callable class over a dataset of input pieces
    (:func:`jobs.ray_runtime.files_dataset`): ``map_batches(ScoreAndWrite, batch_size=1, ...)``.

    ``predictor(**kwargs)`` is built once per actor (a ``BatchPredictor`` or ``RoutedPredictor``).
    Slice ``i`` of input file ``part-3.parquet`` is written as ``part-3-000i.parquet`` (scores)
    and ``q-part-3-000i.parquet`` (invalid rows, if any); of the piece of it that starts at row
    group 12, ``part-3-g0012-000i.parquet``. A task that Ray retries after its actor died
    rewrites the same files rather than adding second copies. Each call returns a row of
    :data:`DONE` per piece.
    """

    def __init__(
        self,
        predictor: type,
        kwargs: dict[str, Any],
        *,
        validator: RowValidator,
        columns: list[str],
        dictionary: list[str],
        staging: str,
        filesystem: Any,
        batch_size: int,
        rows_per_file: int,
        score_column: str,
        sample_every: int = 1,
        threads: bool = False,
        huge_pages: bool = True,
    ):
        """``dictionary``: string columns read dictionary-encoded, as Parquet stores them.
        ``threads``: decode a batch's columns on pyarrow's thread pool, for actors with two CPUs
        or more (with one, its threads would only contend with the other actors).
        ``huge_pages``: False turns transparent huge pages off for this process (the job's
        default: :mod:`jobs.huge_pages` says why). ``score_column`` and ``sample_every``: what
        the summary of the scores reads, and its sample's spacing (:mod:`jobs.score_stats`)."""
        if not huge_pages:
            huge_pages_off()
        self.predictor = predictor(**kwargs)
        self.validator, self.columns, self.dictionary = validator, columns, dictionary
        self.staging, self.filesystem = staging, filesystem
        self.batch_size, self.rows_per_file, self.threads = batch_size, rows_per_file, threads
        self.score_column, self.sample_every = score_column, sample_every

    def __call__(self, pieces: pa.Table) -> pa.Table:
        done = [
            self.score_file(Piece(row["path"], 0, row["rows"], _groups(row["row_groups"])), row["uri"])
            for row in pieces.to_pylist()
        ]
        return pa.Table.from_pylist(done, schema=DONE)

    def score_file(self, piece: Piece, uri: str) -> dict[str, Any]:
        """Score one piece of input: a row of :data:`DONE` (``file`` is ``uri`` and which of its
        row groups the piece is)."""
        label = piece.label(uri)
        seconds = dict.fromkeys(STAGES, 0.0)
        rows = quarantined = 0
        summary = dict(score_stats.EMPTY)
        for i, parts in itertools.groupby(_timed(self._read(piece), seconds), key=itemgetter(0)):
            name = f"{piece.stem}-{i:04d}.parquet"
            scored, rejected = [], []
            for _, part in parts:
                t0 = time.perf_counter()
                try:
                    valid, bad = self.validator.split(part)
                except InvalidInput as e:
                    raise InvalidInput(f"{label}: {e}") from None
                t1 = time.perf_counter()
                if bad is not None:
                    rejected.append(bad)
                if valid.num_rows:
                    scored.append(in_batches(self.predictor, valid, self.batch_size))
                seconds["validate"] += t1 - t0
                seconds["score"] += time.perf_counter() - t1
            t0 = time.perf_counter()
            if rejected:
                bad = pa.concat_tables(rejected)
                pq.write_table(bad, f"{self.validator.quarantine_dir}/q-{name}", filesystem=self.validator.fs)
                quarantined += bad.num_rows
            if scored:  # else every row of the slice was quarantined
                table = pa.concat_tables(scored)
                pq.write_table(
                    table, f"{self.staging}/{name}", filesystem=self.filesystem, **parquet_options(table.column_names)
                )
                rows += table.num_rows
                summary = score_stats.combine(
                    summary, score_stats.of_table(table, self.score_column, self.sample_every)
                )
            seconds["write"] += time.perf_counter() - t0
        return {
            "file": label,
            "rows": rows,
            "quarantined": quarantined,
            **{f"{k}_s": v for k, v in seconds.items()},
            **summary,
        }

    def _read(self, piece: Piece) -> Iterator[tuple[int, pa.Table]]:
        batches = file_batches(
            piece.path,
            self.filesystem,
            columns=self.columns,
            dictionary=self.dictionary,
            rows=READ_ROWS,
            threads=self.threads,
            row_groups=piece.row_groups,
        )
        if piece.rows is None:
            raise ValueError(f"{piece.path}: a piece handed to an actor carries its row count")
        return slices(batches, slice_ends(piece.rows, self.rows_per_file))


def _groups(value: list[int] | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(value)


def _timed(items: Iterator[Any], seconds: dict[str, float]) -> Iterator[Any]:
    """``items``, the time spent producing them (reading and decoding) added to ``seconds["read"]``."""
    while True:
        t0 = time.perf_counter()
        item = next(items, None)
        seconds["read"] += time.perf_counter() - t0
        if item is None:
            return
        yield item
