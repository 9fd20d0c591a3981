"""Read, validate, score and write a piece of input in the same actor, a batch at a time: the
job's pipeline on CPU actors (docs/adr/0002).

With CPU actors, reading, scoring and writing share the same cores, and every row that crosses
Ray's object store between them is copied in, copied out and scheduled as its own task. So on
CPU, Ray Data hands each actor pieces of the partition (:class:`jobs.pieces.Piece`: a file, a
run of a large file's row groups, or small files in turn), and :class:`ScoreAndWrite` streams
a piece a row group at a time, or :data:`READ_ROWS` rows at a time where a row group's columns
take more than :data:`READ_BYTES`: it validates them, scores the valid ones in batches of
``batch_size``, keeps only the scores, and writes them as Parquet files of about
``rows_per_file`` input rows each into the run's staging folder (their invalid rows as one file
each in quarantine). Only file names and row counts go back through Ray.

So an actor's working set is a batch of input (a row group of at most :data:`READ_BYTES` of
decoded columns, or :data:`READ_ROWS` rows) and a file's worth of scores (about 15 bytes a row).
When Ray Data read the files, a 1M-row slice of the churn table grew an actor by 500 MB, and its
read could not keep the batches small: it joins a read's blocks up to ``target_max_block_size``
(128 MiB) before the next step.

GPU actors keep the three stages apart (CPU read tasks, GPU actors, CPU write tasks), so the GPU
never waits on Parquet.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

import pyarrow as pa

from jobs import score_stats
from jobs.huge_pages import turn_off as huge_pages_off
from jobs.lake import FolderWriter
from jobs.pieces import BATCH_BYTES, FEWEST_ROWS, Piece, piece_batches
from jobs.shadow import PerFile
from jobs.validation import InvalidInput, RowValidator
from models.predictor import in_batches, parquet_options
from models.tabular import NonFiniteNumbers, refusing_non_finite

T = TypeVar("T")
log = logging.getLogger(__name__)

# rows read and validated at a time, then scored in batches of the job's batch_size: about 40 MB
# of the churn table's columns. Reading and validating 65,536 rows at a time cost more per row.
READ_ROWS = 262_144
# ... unless a whole row group's columns decode to at most this many bytes: then a batch is the
# row group (jobs.pieces.file_batches), read 12% faster; and never more rows than decode to this
# many. The churn table's 1M-row groups take 156 MB; read whole, its actor's peak RSS grew by
# 130-170 MB (two files at once), its work 4% faster.
READ_BYTES = 192 << 20
# An output file ends early where the predictions (and invalid rows) it holds take more than this
# many bytes in memory: an actor holds a file's rows until it writes them, and 1M rows of an
# embedding of 768 float32 are 3 GB (two files at once: an actor's peak RSS 6.8 GiB).
FILE_BYTES = 256 << 20
# ... and where a row's predictions are that wide, an actor scores no more rows at once than a
# quarter of those bytes hold (ScoreAndWrite's prediction_bytes), nor fewer than FEWEST_ROWS

# what an actor spends its time on, in order; "score" is the predictor's call: the features'
# conversion from Arrow, the model, and the output rows with their lineage
STAGES = ("read", "validate", "score", "write")

# what an actor returns for each piece of input: rows scored and set aside, the seconds of each
# stage, the CPU time of the thread that scored it (cpu_s), and summaries of the scores it wrote
# and of their shadow's (jobs.score_stats)
DONE = pa.schema(
    [("file", pa.string()), ("rows", pa.int64()), ("quarantined", pa.int64())]
    + [(f"{stage}_s", pa.float64()) for stage in STAGES]
    + [("cpu_s", pa.float64())]
    + score_stats.FIELDS
    + score_stats.SHADOW_FIELDS
)


def stage_seconds(done: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds by stage, summed over rows of :data:`DONE` (as dicts): over an actor's files, or a
    job's."""
    return {stage: sum(row[f"{stage}_s"] for row in done) for stage in STAGES}


def on_cpu_share(done: list[dict[str, Any]]) -> float | None:
    """The share of the stages' time (:func:`stage_seconds`) that the threads scoring the pieces
    spent on a core, over rows of :data:`DONE`. The rest they waited: for a core that another
    process held (a node with more work than CPUs; on 2 cores, Ray's own processes), for storage,
    for a lock. None where a piece was decoded and scored on pyarrow's and torch's threads as well
    (a file given several CPUs), whose CPU time its own thread's does not count."""
    cpu = [row.get("cpu_s") for row in done]
    wall = sum(stage_seconds(done).values())
    if not done or wall <= 0 or any(c is None or math.isnan(c) for c in cpu):
        return None
    return min(1.0, sum(cpu) / wall)  # type: ignore[arg-type]


def slice_ends(rows: int, rows_per_file: int) -> list[int]:
    """Where the output files of ``rows`` input rows end: as many as the rows fill files of
    ``rows_per_file`` (one at least), of equal size. No file is smaller than ``rows_per_file``
    unless all the rows are, and none holds twice as many: a 1,048,576-row input (pyarrow's row
    group) makes one file, not one of 1,000,000 and one of 48,576."""
    files = max(1, rows // rows_per_file)
    return [rows * (i + 1) // files for i in range(files)]


def slices(batches: Iterable[tuple[T, pa.RecordBatch]], ends: list[int]) -> Iterator[tuple[int, T, pa.Table]]:
    """``(slice number, tag, rows)`` for tagged ``batches`` (a tag: which file a batch came from)
    cut where ``ends`` says (:func:`slice_ends`), a batch that straddles two slices cut in two.
    Rows past the last end go to the last slice."""
    seen = i = 0
    for tag, batch in batches:
        start = 0
        while start < batch.num_rows:
            while i < len(ends) - 1 and seen >= ends[i]:
                i += 1
            n = batch.num_rows - start if i == len(ends) - 1 else min(batch.num_rows - start, ends[i] - seen)
            yield i, tag, pa.Table.from_batches([batch.slice(start, n)])
            start, seen = start + n, seen + n


class ScoreAndWrite:
    """Ray Data callable class over a dataset of input pieces
    (:func:`jobs.ray_runtime.files_dataset`): ``map_batches(ScoreAndWrite, batch_size=1, ...)``.

    ``predictor(**kwargs)`` is built once per actor (a ``BatchPredictor`` or ``RoutedPredictor``).
    Slice ``i`` of input file ``part-3.parquet`` is written as ``part-3-000i.parquet`` (scores)
    and ``q-part-3-000i.parquet`` (invalid rows, if any), and with ``shadow`` the challenger's
    scores of the same rows as ``part-3-000i.parquet`` in the shadow's folder; of the piece of
    it that starts at row group 12, ``part-3-g0012-000i.parquet``; of small files read in turn,
    after the first of them (:mod:`jobs.pieces`). Where a slice's predictions would take more than
    :data:`FILE_BYTES` in memory, its rows go to several files, numbered on in the same way. A
    task that Ray retries after its actor died rewrites the same files rather than adding second
    copies. Each call returns a row of :data:`DONE` per piece.
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
        shadow: FolderWriter | None = None,
        prediction_bytes: int = 0,
    ):
        """``dictionary``: string columns read dictionary-encoded, as Parquet stores them.
        ``threads``: decode a batch's columns on pyarrow's thread pool, for actors with two CPUs
        or more (with one, its threads would only contend with the other actors).
        ``huge_pages``: False turns transparent huge pages off for this process (the job's
        default: :mod:`jobs.huge_pages` says why). ``score_column`` and ``sample_every``: what
        the summary of the scores reads, and its sample's spacing (:mod:`jobs.score_stats`).
        ``prediction_bytes``: the bytes of a row's predictions beyond the usual few (an
        embedding's vector: :func:`wide_prediction_bytes`), which bound the rows scored at once."""
        if not huge_pages:
            huge_pages_off()
        self.shadow = None if shadow is None else PerFile(shadow, key=validator.key)
        if self.shadow is not None:  # the challenger's scores of each output file, written beside it
            kwargs = {**kwargs, "shadow": self.shadow}
        self.predictor = predictor(**kwargs)
        # the columns whose NaN and infinity the checks leave to the scorer (_checked_and_scored)
        self.left_to_scorer: frozenset[str] = self.predictor.refuses_non_finite
        self.validator, self.columns, self.dictionary = validator, columns, dictionary
        self.filesystem = filesystem
        self.output = FolderWriter(staging, filesystem)
        self.batch_size, self.rows_per_file, self.threads = batch_size, rows_per_file, threads
        self.score_column, self.sample_every = score_column, sample_every
        # rows scored at once where a row's predictions are wide: a quarter of a file's bytes of
        # them, so that a file ends within a quarter past FILE_BYTES
        self.most_rows = max(FEWEST_ROWS, FILE_BYTES // 4 // prediction_bytes) if prediction_bytes else None

    def __call__(self, pieces: pa.Table) -> pa.Table:
        done = [self.score_file(*Piece.from_row(row)) for row in pieces.to_pylist()]
        return pa.Table.from_pylist(done, schema=DONE)

    def score_file(self, piece: Piece, uris: list[str]) -> dict[str, Any]:
        """Score one piece of input (``uris``: its files', for messages): a row of :data:`DONE`."""
        seconds = dict.fromkeys(STAGES, 0.0)
        cpu = time.thread_time()
        done = _Written()
        files = itertools.count()
        for _, parts in itertools.groupby(_timed(self._read(piece), seconds), key=itemgetter(0)):
            scored, rejected, held = [], [], 0
            for _, (first, last), part in parts:
                try:
                    scores, bad = self._checked_and_scored(part, seconds)
                except InvalidInput as e:
                    where = piece.label(uris[first]) if first == last else f"one of {uris[first]} to {uris[last]}"
                    raise InvalidInput(f"{where}: {e}") from None
                for table, kept in ((bad, rejected), (scores, scored)):
                    if table is not None:
                        kept.append(table)
                        held += table.get_total_buffer_size()
                if held > FILE_BYTES:  # wide predictions (an embedding's vectors): a file now
                    self._write(f"{piece.stem}-{next(files):04d}.parquet", scored, rejected, done, seconds)
                    scored, rejected, held = [], [], 0
            if scored or rejected:
                self._write(f"{piece.stem}-{next(files):04d}.parquet", scored, rejected, done, seconds)
        return {
            "file": piece.describe(uris),
            "rows": done.rows,
            "quarantined": done.quarantined,
            **{f"{k}_s": v for k, v in seconds.items()},
            # with threads, pyarrow's pool decodes the piece too: this thread's time is not all of it
            "cpu_s": math.nan if self.threads else time.thread_time() - cpu,
            **done.summary,
            **score_stats.as_shadow(done.shadow),
        }

    def _write(
        self, name: str, scored: list[pa.Table], rejected: list[pa.Table], done: _Written, seconds: dict[str, float]
    ) -> None:
        """One output file of scores as ``name``, its invalid rows as ``q-name`` in quarantine and
        its shadow's scores as ``name`` in the shadow's folder, each where it has rows; counted
        into ``done``, its time into ``seconds["write"]``."""
        t0 = time.perf_counter()
        # a piece's files may differ in types the checks allow (an int32 key in one, int64 in
        # the next): one output file holds the wider
        if rejected:
            bad = pa.concat_tables(rejected, promote_options="permissive")
            FolderWriter(self.validator.quarantine_dir, self.validator.fs)(bad, f"q-{name}")
            done.quarantined += bad.num_rows
        if scored:  # else every row of the file was quarantined
            theirs = None if self.shadow is None else self.shadow.write(name)
            table = pa.concat_tables(scored, promote_options="permissive")
            self.output(table, name, **parquet_options(table, key=self.validator.key))
            done.rows += table.num_rows
            done.summary = score_stats.combine(done.summary, self._summary(table))
            if theirs is not None:
                done.shadow = score_stats.combine(done.shadow, self._summary(theirs))
        seconds["write"] += time.perf_counter() - t0

    def _checked_and_scored(self, part: pa.Table, seconds: dict[str, float]) -> tuple[pa.Table | None, pa.Table | None]:
        """The scores of ``part``'s valid rows (None where there is none) and its invalid rows
        (None where there is none), the time of each step added to ``seconds``.

        Where the scorer finds NaN and infinity in its numbers as it converts them
        (``models.tabular.refusing_non_finite``), the checks leave their search for them to it:
        one pass over the float columns less, 5% of the churn actor's time. A batch that holds
        such a value is refused by the scorer, then checked in full and scored again, and this
        actor checks in full from then on: NaN is allowed where the model takes nulls, and data
        that holds some in every batch would otherwise be scored twice."""
        left = self.left_to_scorer
        t0 = time.perf_counter()
        valid, bad = self.validator.split(part, left_to_scorer=left)
        t1 = time.perf_counter()
        seconds["validate"] += t1 - t0
        try:
            with refusing_non_finite() if left else contextlib.nullcontext():
                scores = in_batches(self.predictor, valid, self.batch_size) if valid.num_rows else None
        except NonFiniteNumbers as e:
            seconds["score"] += time.perf_counter() - t1
            log.info(
                "NaN or infinity in %s: this actor checks every batch for them from now on, before scoring it",
                ", ".join(e.columns),
            )
            self.left_to_scorer = frozenset()
            return self._checked_and_scored(part, seconds)
        seconds["score"] += time.perf_counter() - t1
        return scores, bad

    def _summary(self, table: pa.Table) -> dict[str, Any]:
        return score_stats.of_table(table, self.score_column, self.sample_every)

    def _read(self, piece: Piece) -> Iterator[tuple[int, tuple[int, int], pa.Table]]:
        """``(slice number, (first, last) file of piece.paths its rows come from, rows)``."""
        batches = piece_batches(
            piece,
            self.filesystem,
            columns=self.columns,
            dictionary=self.dictionary,
            rows=READ_ROWS,
            threads=self.threads,
            whole_up_to=READ_BYTES,
        )
        if piece.rows is None:
            raise ValueError(f"{piece.path}: a piece handed to an actor carries its row count")
        parts = slices(joined(batches, READ_ROWS), slice_ends(piece.rows, self.rows_per_file))
        return parts if self.most_rows is None else _cut(parts, self.most_rows)


def _cut(parts: Iterable[tuple[int, T, pa.Table]], rows: int) -> Iterator[tuple[int, T, pa.Table]]:
    """``parts`` (:func:`slices`') in parts of at most ``rows`` rows, without copying them."""
    for i, tag, table in parts:
        for start in range(0, table.num_rows, rows):
            yield i, tag, table.slice(start, rows)


def file_rows(rows_per_file: int, prediction_bytes: int) -> int:
    """The rows of a file of predictions that the GPU pipeline's write tasks join the actors'
    batches up to: ``rows_per_file``, or as many as :data:`FILE_BYTES` of wide predictions hold
    where that is fewer (:func:`wide_prediction_bytes`), a write task holding them all at once."""
    if not prediction_bytes:
        return rows_per_file
    return min(rows_per_file, max(FEWEST_ROWS, FILE_BYTES // prediction_bytes))


def wide_prediction_bytes(task: str, dimensions: int | None, class_columns: int, shadow: bool) -> int:
    """The bytes a row's predictions take beyond the key, the score and the lineage: an
    embedding's vector of float32, a multiclass model's probability for each class in a column of
    its own; twice that with a shadow, whose scores an actor holds beside them. 0: none."""
    wide = 4 * (dimensions or 0) if task == "embedding" else 4 * class_columns
    return wide * (2 if shadow else 1)


@dataclass
class _Written:
    """What a piece's output files hold so far: rows scored and set aside, and the summaries of
    the scores and of their shadow's (:mod:`jobs.score_stats`)."""

    rows: int = 0
    quarantined: int = 0
    summary: dict[str, Any] = field(default_factory=lambda: dict(score_stats.EMPTY))
    shadow: dict[str, Any] = field(default_factory=lambda: dict(score_stats.EMPTY))


def joined(
    batches: Iterable[tuple[int, pa.RecordBatch]], rows: int, most_bytes: int = BATCH_BYTES
) -> Iterator[tuple[tuple[int, int], pa.RecordBatch]]:
    """Batches of a piece's small files joined up to ``rows`` rows and ``most_bytes`` bytes, where
    they have the same schema: ``((first file, last file), batch)``. The row checks and the scorer
    cost per batch as well as per row, and a thousand files of 10,000 rows spent more in those
    calls than in the rows (docs/benchmark.md). A batch of ``rows`` rows, a large file's, passes
    as it is; so do a thousand small files of photos, and a large file's batches of them, which
    its read sized to the same bytes (:data:`jobs.pieces.BATCH_BYTES`).

    The held rows and bytes are kept as running sums, each batch's bytes taken once from its
    buffers' sizes: summed again for every batch, with ``RecordBatch.nbytes`` (65 µs a batch of
    30 columns), 2,600 files of 100 rows took 207 s to join; now 0.11 s (0.16 before bytes were counted,
    with the rows summed again for every batch)."""
    held: list[pa.RecordBatch] = []
    held_rows = held_bytes = first = last = 0
    for i, batch in batches:
        size = batch.get_total_buffer_size()
        if held and (
            batch.schema != held[0].schema or held_rows + batch.num_rows > rows or held_bytes + size > most_bytes
        ):
            yield (first, last), held[0] if len(held) == 1 else pa.concat_batches(held)
            held, held_rows, held_bytes = [], 0, 0
        if not held:
            first = i
        held.append(batch)
        held_rows += batch.num_rows
        held_bytes += size
        last = i
    if held:
        yield (first, last), held[0] if len(held) == 1 else pa.concat_batches(held)


def _timed(items: Iterator[Any], seconds: dict[str, float]) -> Iterator[Any]:
    """``items``, the time spent producing them (reading and decoding) added to ``seconds["read"]``."""
    while True:
        t0 = time.perf_counter()
        item = next(items, None)
        seconds["read"] += time.perf_counter() - t0
        if item is None:
            return
        yield item
