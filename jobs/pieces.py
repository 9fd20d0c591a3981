"""What a job's readers take: pieces of a partition of about ``output.rows_per_file`` rows each, so
that one large file keeps every actor busy and many small ones cost neither a call nor an output
file each; and the read of one file of a piece.

Without Ray imports: the driver plans its pieces from the footers it has read, before Ray starts.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import folder_columns
from jobs.lake import DataFile, LakeError, is_remote, uri_of

log = logging.getLogger(__name__)


class NamesClash(LakeError):
    """Two of a partition's files would name the predictions' files alike (:attr:`Piece.stem`), one
    replacing the other's rows. Waiting changes nothing: one of them must be renamed."""


@dataclass(frozen=True)
class Piece:
    """What one read task, or one call of a CPU actor, takes: a Parquet file whole, a run of a
    large file's row groups, or several small files one after the other (:func:`split_files`).

    A file is read on one thread, and each call of an actor, each read task, each output file
    costs the same whatever its rows. So a day written as one large file kept one thread busy
    while the others idled, and a day written as a thousand small files spent its time on calls
    and wrote a thousand small files. A piece is sized by ``output.rows_per_file`` instead."""

    paths: tuple[str, ...]  # one file, or several small ones read in turn
    size: int  # bytes on disk; a run of row groups counts its share of the file's
    rows: int | None = None  # from the footers, where the driver has read them
    row_groups: tuple[int, ...] | None = None  # of a single file: the run this piece is; None: whole files
    folder: str = ""  # where its first file lies below the partition's folder (``hr=13``); "": at its top
    # for each of its files, the columns it lacks that its folders name (jobs.folder_columns); None: none
    from_folders: tuple[dict[str, Any], ...] | None = None

    @property
    def path(self) -> str:
        return self.paths[0]

    @property
    def stem(self) -> str:
        """What the files written from this piece are named after: its first input file's name,
        after the folder it lies in below the partition's (``hr=13-part-0``: the hours of a day
        written in folders name their files alike), and where a file is split, the row group its
        run starts at."""
        stem = self.path.rsplit("/", 1)[-1].removesuffix(".parquet")
        if self.folder:
            stem = f"{self.folder.replace('/', '-')}-{stem}"
        return stem if self.row_groups is None else f"{stem}-g{self.row_groups[0]:04d}"

    def label(self, uri: str) -> str:
        """``uri`` (one of its files', for messages), with the row groups this piece reads of it."""
        if self.row_groups is None:
            return uri
        first, last = self.row_groups[0], self.row_groups[-1]
        return f"{uri} (row group {first})" if first == last else f"{uri} (row groups {first}-{last})"

    def as_row(self, uri: Callable[[str], str]) -> dict[str, Any]:
        """The piece as a row of the CPU actors' dataset (:func:`jobs.ray_runtime.files_dataset`),
        with each file's ``uri(path)`` for messages; :meth:`from_row` reads it back."""
        return {
            "paths": list(self.paths),
            "uris": [uri(path) for path in self.paths],
            "rows": self.rows,
            "size": self.size,
            "row_groups": None if self.row_groups is None else list(self.row_groups),
            "folder": self.folder,
            # as JSON: a dataset's column holds one type, where these are strings, numbers or none
            "from_folders": None if self.from_folders is None else json.dumps(self.from_folders),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> tuple[Piece, list[str]]:
        """The piece of a row :meth:`as_row` made, and its files' uris."""
        groups = None if row["row_groups"] is None else tuple(row["row_groups"])
        folders = None if row["from_folders"] is None else tuple(json.loads(row["from_folders"]))
        piece = cls(tuple(row["paths"]), row["size"], row["rows"], groups, row["folder"], folders)
        return piece, row["uris"]

    def describe(self, uris: Sequence[str]) -> str:
        """The piece's files (their ``uris``), for the actors' report of what they scored."""
        more = len(uris) - 1
        return self.label(uris[0]) + (f" and {more} more file(s)" if more else "")


def whole_files(paths: Sequence[str], sizes: Sequence[int]) -> list[Piece]:
    return [Piece((path,), size) for path, size in zip(paths, sizes, strict=True)]


def split_files(
    files: Sequence[DataFile],
    footers: Sequence[pq.FileMetaData],
    rows_per_file: int,
    from_folders: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Piece]:
    """A partition's files (``DataFile``: path and size) as the pieces its readers take, each of
    about ``rows_per_file`` rows or more: the unit of work is then what makes an output file
    (:func:`jobs.part_writer.slice_ends`), and no piece writes a small one unless the partition
    is small.

    - A file of at least twice ``rows_per_file`` rows is split into runs of whole row groups (a
      row group is Parquet's smallest unit a reader can start at) of at least ``rows_per_file``
      rows each, a short last run joined to the one before. In one row group, it stays whole.
    - Files of fewer than ``rows_per_file`` rows are read one after the other as one piece, in
      their order, until it holds ``rows_per_file`` rows; the last of these pieces may hold fewer.
    - Any other file is a piece of its own.

    ``from_folders``: by file, the columns it lacks that its folders name, with their values
    (:func:`jobs.validation.check_schema`); each piece carries its files'.
    """
    out: list[Piece] = []
    small: list[tuple[DataFile, int]] = []
    for f, footer in zip(files, footers, strict=True):
        if footer.num_rows < rows_per_file:
            small.append((f, footer.num_rows))
        else:
            out.extend(_runs(f, footer, rows_per_file))
    group: list[tuple[DataFile, int]] = []
    for f, rows in small:
        group.append((f, rows))
        if sum(n for _, n in group) >= rows_per_file:
            out.append(_together(group))
            group = []
    if group:
        out.append(_together(group))
    _named_apart(out)
    if from_folders:
        out = [replace(p, from_folders=tuple(dict(from_folders.get(path, {})) for path in p.paths)) for p in out]
    return out


def folder_values(pieces: Sequence[Piece]) -> dict[str, dict[str, Any]]:
    """By file, the columns the pieces' files lack that their folders name, with their values."""
    return {
        path: values
        for piece in pieces
        if piece.from_folders is not None
        for path, values in zip(piece.paths, piece.from_folders, strict=True)
        if values
    }


def _named_apart(pieces: Sequence[Piece]) -> None:
    """Refuses pieces whose output files would share a name (:attr:`Piece.stem`), where one would
    replace the other's: only a day in folders can name two so (``hr=13/part-0.parquet`` beside
    a file ``hr=13-part-0.parquet``)."""
    seen: dict[str, str] = {}
    for piece in pieces:
        other = seen.setdefault(piece.stem, piece.path)
        if other != piece.path:
            raise NamesClash(
                f"{other} and {piece.path} would both write the predictions' files {piece.stem}-*.parquet, one "
                "replacing the other's rows: rename one of them"
            )


def largest_first(pieces: Sequence[Piece]) -> list[Piece]:
    """``pieces`` in the order CPU actors should take them: the most rows first, pieces of equal
    size in the partition's order. Threads take the next piece as they finish one, so the job ends
    with the last pieces taken; when the large ones go first, those are the smallest, and no
    thread idles while another scores a large piece alone. A day of eight 1M-row files and one
    2M-row file in one row group, listed last: its steady window 1.19-1.28 s in the file order,
    1.10-1.19 s largest first (four alternating pairs, docs/benchmark.md)."""
    return sorted(pieces, key=lambda p: -(p.rows if p.rows is not None else 0))


def _together(files: list[tuple[DataFile, int]]) -> Piece:
    paths = tuple(f.path for f, _ in files)
    return Piece(paths, sum(f.size for f, _ in files), sum(n for _, n in files), folder=files[0][0].folder)


def _runs(f: DataFile, footer: pq.FileMetaData, rows_per_file: int) -> list[Piece]:
    """One file of at least ``rows_per_file`` rows: whole, or in runs of its row groups."""
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
        return [Piece((f.path,), f.size, footer.num_rows, folder=f.folder)]
    pieces = []
    for run in runs:
        n = sum(footer.row_group(g).num_rows for g in run)
        pieces.append(Piece((f.path,), round(f.size * n / footer.num_rows), n, tuple(run), f.folder))
    return pieces


def file_batches(
    source: str | pa.Buffer,
    filesystem: Any,
    *,
    columns: list[str],
    dictionary: list[str],
    rows: int,
    threads: bool,
    row_groups: Sequence[int] | None = None,
    whole_up_to: int = 0,
    from_folders: Mapping[str, Any] | None = None,
) -> Iterator[pa.RecordBatch]:
    """``columns`` of one Parquet file (or of ``row_groups`` of it), ``rows`` rows at a time;
    ``dictionary`` columns read dictionary-encoded. ``source``: the file's path, or its bytes
    already fetched (:func:`piece_batches`). The read of the GPU path's read tasks
    (jobs.parquet_source) and of the CPU actors (jobs.part_writer).

    ``whole_up_to``: where each row group's columns decode to at most this many bytes
    (:func:`decoded_bytes`), a batch is a whole row group instead. pyarrow's reader decodes a
    whole row group 12% faster than in batches of 262,144 rows: a batch that ends inside a data
    page has the page's other values copied into the next batch's buffers, and each batch's
    buffers grow as they fill (docs/benchmark.md). Where a row group is larger, a batch holds
    ``rows`` rows or as many as decode to this many bytes, if fewer (a table of a thousand
    columns), and never fewer than :data:`FEWEST_ROWS`.

    Whatever the budget, a batch of values whose width is their own (strings, bytes) holds no more
    rows than the file stores in :data:`BATCH_BYTES` (:func:`stored_bytes`): a column of photos'
    JPEG files, 100 KB a row, would otherwise be read 262,144 rows, 26 GB, at a time. Nor does a
    read hold much more ahead of its batches: row groups are asked for in runs of at most
    :data:`READ_AHEAD_BYTES` (:func:`read_ahead_runs`), and a group that stores more alone is read
    a page at a time (:data:`STREAM_BUFFER`).

    ``from_folders``: columns the file lacks and its folders name, with their values, added to each
    batch (:mod:`jobs.folder_columns`)."""
    if from_folders:
        read = [c for c in columns if c not in from_folders]
        batches = file_batches(
            source,
            filesystem,
            columns=read,
            dictionary=[c for c in dictionary if c in read],
            rows=rows,
            threads=threads,
            row_groups=row_groups,
            whole_up_to=whole_up_to,
        )
        for batch in batches:
            yield folder_columns.added(batch, from_folders, columns, dictionary)
        return
    if isinstance(source, pa.Buffer):
        opened = pa.BufferReader(source)
    else:
        opened = filesystem.open_input_file(source) if filesystem is not None else pa.OSFile(source)
    with opened as f:
        reader = pq.ParquetFile(f, read_dictionary=dictionary or None)
        groups = list(range(reader.num_row_groups) if row_groups is None else row_groups)
        group_rows = [reader.metadata.row_group(g).num_rows for g in groups]
        largest = max(group_rows, default=0)
        row_bytes = decoded_bytes(reader.schema_arrow, columns)  # infinite where a value's width is its own
        if whole_up_to and largest > rows and largest * row_bytes <= whole_up_to:
            # a group at a time: a batch of the largest group's rows would cut the next group's
            for g, n in zip(groups, group_rows, strict=True):
                yield from reader.iter_batches(
                    batch_size=max(n, 1), row_groups=[g], columns=columns, use_threads=threads
                )
            return
        if not math.isfinite(row_bytes):
            rows = min(rows, max(1, int(BATCH_BYTES // stored_bytes(reader.metadata, columns, groups))))
        elif whole_up_to and row_bytes * rows > whole_up_to:
            rows = max(FEWEST_ROWS, int(whole_up_to // row_bytes))
        streamed = None
        for run in read_ahead_runs(reader.metadata, columns, groups, READ_AHEAD_BYTES):
            source = reader
            if read_ahead_bytes(reader.metadata, columns, run) > READ_AHEAD_BYTES:  # a row group alone
                if streamed is None:
                    streamed = pq.ParquetFile(
                        f,
                        metadata=reader.metadata,
                        read_dictionary=dictionary or None,
                        pre_buffer=False,
                        buffer_size=STREAM_BUFFER,
                    )
                source = streamed
            yield from source.iter_batches(batch_size=rows, row_groups=run, columns=columns, use_threads=threads)


# the fewest rows a batch sized by its bytes holds: below, each batch's calls cost more than its rows
FEWEST_ROWS = 4096
# the most bytes a batch of rows whose values' widths are their own holds, as the file stores them
BATCH_BYTES = 64 << 20
# the most bytes of row groups a read asks for at once, which pyarrow fetches and holds ahead
READ_AHEAD_BYTES = 192 << 20
# a row group that stores more than READ_AHEAD_BYTES is read a page at a time through a buffer this
# size, not held whole: pandas' `to_parquet` writes up to 1M rows a group whatever their size, so
# 20,000 photos of 100 KB were one 2 GB group, and Arrow held 2.7 GiB to read them
STREAM_BUFFER = 8 << 20


def stored_bytes(metadata: pq.FileMetaData, columns: list[str], row_groups: Sequence[int]) -> float:
    """The bytes a row of ``columns`` takes in ``row_groups`` of the file, uncompressed, on
    average: about what plain values (a photo's bytes, free text) decode to, and less than what
    the file's dictionary-encoded strings do. At least one byte."""
    wanted = set(columns)
    total = rows = 0
    for g in row_groups:
        group = metadata.row_group(g)
        rows += group.num_rows
        total += sum(chunk.total_uncompressed_size for chunk in _chunks(group, wanted))
    return max(1.0, total / max(rows, 1))


def read_ahead_runs(
    metadata: pq.FileMetaData, columns: list[str], row_groups: Sequence[int], most_bytes: int
) -> list[list[int]]:
    """``row_groups`` in runs of consecutive groups whose ``columns`` the file stores in at most
    ``most_bytes`` (a group at least). pyarrow reads ahead every column chunk of the row groups it
    is asked for (``pre_buffer``: a few large requests to an object store) and holds them until
    the last batch: asked for a piece of photos whole, it held the piece's gigabytes (a 2 GB file
    of twenty 100 MB groups: 2.2 GiB of Arrow's memory at its peak, 0.56 GiB in runs)."""
    if len(row_groups) < 2:
        return [list(row_groups)]
    runs: list[list[int]] = [[]]
    held = 0
    for g in row_groups:
        size = read_ahead_bytes(metadata, columns, [g])
        if runs[-1] and held + size > most_bytes:
            runs.append([])
            held = 0
        runs[-1].append(g)
        held += size
    return runs


def read_ahead_bytes(metadata: pq.FileMetaData, columns: list[str], row_groups: Sequence[int]) -> int:
    """The bytes the file stores ``columns`` of ``row_groups`` in: what a read of them with
    ``pre_buffer`` fetches and holds."""
    wanted = set(columns)
    return sum(chunk.total_compressed_size for g in row_groups for chunk in _chunks(metadata.row_group(g), wanted))


def _chunks(group: pq.RowGroupMetaData, columns: set[str]) -> Iterator[pq.ColumnChunkMetaData]:
    """The column chunks of ``group`` that hold ``columns`` (a nested column's leaves too)."""
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema.split(".", 1)[0] in columns:
            yield chunk


def decoded_bytes(schema: pa.Schema, columns: list[str]) -> float:
    """The bytes a row of ``columns`` takes once decoded into Arrow, from their types (a
    dictionary-encoded column counts its indices: its few values are a dictionary's); infinity
    where a column's width is not its type's (strings read as themselves, nested types), so that
    the caller keeps its batches of rows. A column the file lacks, or holds twice, counts so too:
    the read then goes as it would without this estimate."""
    total = 0.0
    for name in columns:
        i = schema.get_field_index(name)
        if i < 0:
            return float("inf")
        t = schema.field(i).type
        if pa.types.is_dictionary(t):
            t = t.index_type
        try:
            total += t.bit_width / 8
        except ValueError:  # a type without a fixed width
            return float("inf")
    return total


# small files of a piece fetched ahead from an object store: at most this many at once, and about
# this many bytes (the piece's files are under output.rows_per_file rows each)
FETCH_AHEAD_FILES = 8
FETCH_AHEAD_BYTES = 64 << 20


def piece_batches(
    piece: Piece,
    filesystem: Any,
    *,
    columns: list[str],
    dictionary: list[str],
    rows: int,
    threads: bool,
    whole_up_to: int = 0,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(index of its file in piece.paths, batch)`` for each batch of ``rows`` rows of a piece
    (or of a row group, see :func:`file_batches`' ``whole_up_to``), its files read in turn.

    From an object store, each small file costs a few requests' latency before its first byte
    (the file's size, its footer, its columns): read in turn, 200 files of 10,000 rows on a local
    SeaweedFS spent 19 ms each before their rows. So the files after the one being read are
    fetched whole beforehand, a few at a time (:func:`_fetched_ahead`)."""
    sources: Iterable[str | pa.Buffer] = piece.paths
    if len(piece.paths) > 1 and is_remote(filesystem):
        ahead = max(1, min(FETCH_AHEAD_FILES, FETCH_AHEAD_BYTES * len(piece.paths) // max(piece.size, 1)))
        sources = _fetched_ahead(piece.paths, filesystem, ahead)
    each = iter(sources)
    for i, path in enumerate(piece.paths):
        try:
            batches = file_batches(
                next(each),
                filesystem,
                columns=columns,
                dictionary=dictionary,
                rows=rows,
                threads=threads,
                row_groups=piece.row_groups,
                whole_up_to=whole_up_to,
                from_folders=None if piece.from_folders is None else piece.from_folders[i],
            )
            for batch in batches:
                yield i, batch
        except (OSError, pa.ArrowInvalid) as e:  # after the run's checks: as a sentence, not a traceback
            where = uri_of(path, filesystem)
            raise LakeError(
                f"cannot read {where}: {e} (the run's checks read its footer: the file changed since, or is damaged "
                "past it)"
            ) from None


def _fetched_ahead(paths: Sequence[str], filesystem: Any, ahead: int) -> Iterator[pa.Buffer]:
    """Each file's bytes, in order, with up to ``ahead`` files fetched on threads meanwhile."""

    def fetch(path: str) -> pa.Buffer:
        with filesystem.open_input_file(path) as f:
            return f.read_buffer()

    with ThreadPoolExecutor(ahead, thread_name_prefix="fetch-ahead") as pool:
        pending = deque(pool.submit(fetch, path) for path in paths[:ahead])
        for path in paths[ahead:]:
            done = pending.popleft().result()
            pending.append(pool.submit(fetch, path))
            yield done
        while pending:
            yield pending.popleft().result()
