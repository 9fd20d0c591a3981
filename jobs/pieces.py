"""What a job's readers take: a partition's Parquet files whole, or a large one in runs of its row
groups, so that one big file keeps every actor busy; and the read of one such piece.

Without Ray imports: the driver plans its pieces from the footers it has read, before Ray starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """What one read task, or one call of a CPU actor, takes: a Parquet file whole, or a run of
    its row groups.

    A partition often comes as one large file (``DataFrame.to_parquet`` writes one), and a file
    is read on one thread: split by its row groups, it keeps every actor and thread busy instead
    of one (:func:`split_files`)."""

    path: str
    size: int  # bytes on disk; a run of row groups counts its share of the file's
    rows: int | None = None  # from the footer, where the driver has read it
    row_groups: tuple[int, ...] | None = None  # None: the whole file

    @property
    def stem(self) -> str:
        """What the files written from this piece are named after: the input file's name, and
        where a file is split, its first row group."""
        stem = self.path.rsplit("/", 1)[-1].removesuffix(".parquet")
        return stem if self.row_groups is None else f"{stem}-g{self.row_groups[0]:04d}"

    def label(self, uri: str) -> str:
        """``uri`` (the file's, for messages), and which of its row groups this piece is."""
        if self.row_groups is None:
            return uri
        first, last = self.row_groups[0], self.row_groups[-1]
        return f"{uri} (row group {first})" if first == last else f"{uri} (row groups {first}-{last})"


def whole_files(paths: Sequence[str], sizes: Sequence[int]) -> list[Piece]:
    return [Piece(path, size) for path, size in zip(paths, sizes, strict=True)]


def split_files(files: Sequence[Any], footers: Sequence[pq.FileMetaData], rows_per_file: int) -> list[Piece]:
    """A partition's files (``DataFile``: path and size) as the pieces its readers take.

    A file of at least twice ``rows_per_file`` rows is split into runs of whole row groups (a row
    group is Parquet's smallest unit a reader can start at) of at least ``rows_per_file`` rows
    each: the unit of work is then what makes an output file, and a piece never writes a tiny one.
    A file of one row group, or fewer rows, stays whole."""
    out: list[Piece] = []
    for f, footer in zip(files, footers, strict=True):
        runs: list[list[int]] = [[]]
        rows = 0
        for group in range(footer.num_row_groups):
            if rows >= rows_per_file:
                runs.append([])
                rows = 0
            runs[-1].append(group)
            rows += footer.row_group(group).num_rows
        if rows < rows_per_file and len(runs) > 1:  # a short last run joins the one before
            runs[-2].extend(runs.pop())
        if footer.num_rows < 2 * rows_per_file or len(runs) < 2:
            if footer.num_rows >= 2 * rows_per_file:
                log.warning(
                    "%s holds %d rows in %d row group(s): one thread reads and scores all of it; written in row "
                    "groups of about %d rows (pyarrow's row_group_size), it would be scored in pieces side by side",
                    f.path,
                    footer.num_rows,
                    footer.num_row_groups,
                    rows_per_file,
                )
            out.append(Piece(f.path, f.size, footer.num_rows))
            continue
        for run in runs:
            n = sum(footer.row_group(g).num_rows for g in run)
            out.append(Piece(f.path, round(f.size * n / footer.num_rows), n, tuple(run)))
    return out


def file_batches(
    path: str,
    filesystem: Any,
    *,
    columns: list[str],
    dictionary: list[str],
    rows: int,
    threads: bool,
    row_groups: Sequence[int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """``columns`` of one Parquet file (or of ``row_groups`` of it), ``rows`` rows at a time;
    ``dictionary`` columns read dictionary-encoded. The read of the GPU path's read tasks
    (jobs.parquet_source) and of the CPU actors (jobs.part_writer)."""
    with filesystem.open_input_file(path) if filesystem is not None else pa.OSFile(path) as f:
        reader = pq.ParquetFile(f, read_dictionary=dictionary or None)
        groups = None if row_groups is None else list(row_groups)
        yield from reader.iter_batches(batch_size=rows, row_groups=groups, columns=columns, use_threads=threads)
