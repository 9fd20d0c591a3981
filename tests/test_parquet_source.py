"""The source jobs read their listed files through: what it reads, how, and in what pieces."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import parquet_source
from jobs.pieces import largest_first, split_files
from jobs.ray_runtime import read_parquet_files, read_pieces
from jobs.settings import PROJECT_ROOT
from tests.conftest import DAY


def write_files(folder, rows_per_file: int, files: int) -> list[str]:
    paths = []
    for i in range(files):
        first = i * rows_per_file
        table = pa.table(
            {
                "id": pa.array(range(first, first + rows_per_file), pa.int64()),
                "plan": pa.array([("basic", "pro", None)[j % 3] for j in range(rows_per_file)]),
                "x": pa.array([float(j) for j in range(rows_per_file)]),
                "unread": pa.array(["y"] * rows_per_file),
            }
        )
        path = folder / f"part-{i}.parquet"
        pq.write_table(table, path, row_group_size=1000)
        paths.append(str(path))
    return paths


def test_reads_every_row_once_only_the_columns_asked(tmp_path, ray_local, monkeypatch):
    import ray

    # a task streams its file in slices, and Ray Data cuts the stream into blocks of at most
    # target_max_block_size: a large file never sits in memory whole
    monkeypatch.setattr(parquet_source, "SLICE_ROWS", 500)
    monkeypatch.setattr(ray.data.DataContext.get_current(), "target_max_block_size", 16 * 1024)
    paths = write_files(tmp_path, 2500, 3)
    dataset = read_parquet_files(paths, filesystem=None, columns=["id", "plan", "x"], dictionary=["plan"])
    blocks = [ray_block for ray_block in dataset.iter_batches(batch_format="pyarrow", batch_size=None)]
    table = pa.concat_tables(blocks)
    assert sorted(table["id"].to_pylist()) == list(range(7500))
    assert table.column_names == ["id", "plan", "x"]
    assert pa.types.is_dictionary(table.schema.field("plan").type)  # read as Parquet stores it
    assert table["plan"].null_count == 3 * len(range(2, 2500, 3))
    assert len(blocks) > len(paths) and max(b.num_rows for b in blocks) <= 1000


def test_a_large_file_is_split_into_runs_of_its_row_groups_and_small_files_are_read_together(tmp_path, caplog):
    """A partition that comes as one large file keeps every reader busy: it is read as runs of
    whole row groups of at least rows_per_file rows each, a short last run joined to the one
    before; a file under twice rows_per_file, or of one row group, stays whole. Files under
    rows_per_file are read in turn, a piece of about rows_per_file rows: neither a call of an
    actor nor an output file each."""
    from jobs.lake import DataFile

    def footer_of(name: str, groups: list[int]) -> tuple[DataFile, pq.FileMetaData]:
        table = pa.table({"id": pa.array(range(sum(groups)), pa.int64())})
        path = tmp_path / name
        with pq.ParquetWriter(path, table.schema) as w:
            start = 0
            for n in groups:
                w.write_table(table.slice(start, n))
                start += n
        return DataFile(str(path), path.stat().st_size), pq.read_metadata(path)

    files, footers = zip(
        footer_of("big.parquet", [400, 400, 700, 1_000, 300, 100]),
        footer_of("mid.parquet", [500, 500, 500]),  # 1,500 rows: under twice 1,000
        footer_of("one-group.parquet", [5_000]),
        *(footer_of(f"tiny-{i}.parquet", [300]) for i in range(5)),  # 1,500 rows in 5 files
        strict=True,
    )
    pieces = split_files(files, footers, rows_per_file=1_000)
    names = lambda p: tuple(path.rsplit("/", 1)[-1] for path in p.paths)  # noqa: E731
    assert [(names(p), p.row_groups, p.rows) for p in pieces] == [
        (("big.parquet",), (0, 1, 2), 1_500),
        (("big.parquet",), (3, 4, 5), 1_400),  # 1,000, then a run of 400 that is too short joins it
        (("mid.parquet",), None, 1_500),
        (("one-group.parquet",), None, 5_000),
        # small files read in turn until a piece holds 1,000 rows; the rest as the last piece
        (("tiny-0.parquet", "tiny-1.parquet", "tiny-2.parquet", "tiny-3.parquet"), None, 1_200),
        (("tiny-4.parquet",), None, 300),
    ]
    assert sum(p.size for p in pieces[:2]) == pytest.approx(files[0].size, abs=1)
    assert pieces[4].size == sum(f.size for f in files[3:7])
    assert [p.stem for p in pieces] == ["big-g0000", "big-g0003", "mid", "one-group", "tiny-0", "tiny-4"]
    # CPU actors take them largest first, so that the last ones taken are the smallest; pieces of
    # equal size in the partition's order
    assert [p.stem for p in largest_first(pieces)] == ["one-group", "big-g0000", "mid", "big-g0003", "tiny-0", "tiny-4"]
    # a large file in one row group cannot be split: the log says what would let it be
    assert "one-group.parquet holds 5000 rows in 1 row group(s): one thread reads and scores all of it" in caplog.text
    assert "mid.parquet" not in caplog.text


def test_the_read_tasks_of_pieces_read_each_row_of_a_split_file_once(tmp_path, ray_local):
    """GPU jobs read through this source: a large file split by its row groups becomes a read
    task per run, and together they read it whole."""
    from jobs.lake import DataFile

    [path] = write_files(tmp_path, 6_000, 1)  # row groups of 1,000
    f = DataFile(path, os.path.getsize(path))
    pieces = split_files([f], [pq.read_metadata(path)], rows_per_file=2_000)
    assert [p.row_groups for p in pieces] == [(0, 1), (2, 3), (4, 5)]
    dataset = read_pieces(pieces, filesystem=None, columns=["id"])
    ids = sorted(pa.concat_tables(dataset.iter_batches(batch_format="pyarrow", batch_size=None))["id"].to_pylist())
    assert ids == list(range(6_000))


def test_a_row_group_whose_columns_fit_the_budget_is_read_whole(tmp_path, monkeypatch):
    """The CPU actors' read (``whole_up_to``): a row group whose columns decode within the budget
    is one batch, however the file's groups differ in size; over the budget, or with a column
    whose width its type does not give (strings read as strings), batches of ``rows`` rows as
    before. Either way each row comes once, in order."""
    from jobs import pieces
    from jobs.pieces import file_batches

    table = pa.table(
        {
            "id": pa.array(range(260), pa.int64()),
            "x": pa.array([float(i) for i in range(260)]),
            "s": pa.array([("basic", "pro")[i % 2] for i in range(260)]),
        }
    )
    path = tmp_path / "groups.parquet"
    with pq.ParquetWriter(path, table.schema) as writer:
        for start, rows in ((0, 100), (100, 60), (160, 100)):  # three row groups
            writer.write_table(table.slice(start, rows))

    def batch_rows(columns, budget, *, dictionary=(), groups=None):
        batches = list(
            file_batches(
                str(path),
                None,
                columns=columns,
                dictionary=list(dictionary),
                rows=64,
                threads=False,
                row_groups=groups,
                whole_up_to=budget,
            )
        )
        first = 0 if groups is None else 100
        assert pa.Table.from_batches(batches).column("id").to_pylist() == list(range(first, 260))
        return [b.num_rows for b in batches]

    in_rows = [64, 64, 64, 64, 4]
    assert batch_rows(["id", "x"], 100 * 16) == [100, 60, 100]  # 16 bytes a row: the largest group fits
    assert batch_rows(["id", "x"], 100 * 16 - 1) == in_rows
    assert batch_rows(["id", "x"], 0) == in_rows
    assert batch_rows(["id", "s"], 1 << 30) == in_rows  # a string's width is its values'
    assert batch_rows(["id", "s"], 100 * 12, dictionary=["s"]) == [100, 60, 100]  # its indices: 4 bytes
    assert batch_rows(["id", "x"], 1 << 30, groups=[1, 2]) == [60, 100]
    assert batch_rows(["id", "missing"], 1 << 30) == in_rows  # a column the file lacks: as without a budget
    # a row group over the budget, and rows more than it holds (a table of many columns): fewer rows
    monkeypatch.setattr(pieces, "FEWEST_ROWS", 8)
    assert batch_rows(["id", "x"], 40 * 16) == [40] * 6 + [20]


def test_values_whose_width_is_their_own_are_read_a_few_rows_at_a_time_where_they_are_wide(tmp_path, monkeypatch):
    """Photos' bytes, 10 KB a row: a batch holds no more rows than the file stores in BATCH_BYTES,
    with or without a budget for whole row groups (the GPU path's read has none), and at least
    one; narrow strings keep their batches of ``rows`` rows."""
    from jobs import pieces
    from jobs.pieces import file_batches

    rng = np.random.default_rng(0)
    photos = [rng.bytes(10_000) for _ in range(40)]  # random: stored plain
    path = tmp_path / "photos.parquet"
    pq.write_table(pa.table({"id": np.arange(40), "photo": pa.array(photos, pa.binary())}), path)

    def batch_rows(columns, budget):
        batches = list(
            file_batches(str(path), None, columns=columns, dictionary=[], rows=16, threads=False, whole_up_to=budget)
        )
        assert [v.as_py() for b in batches for v in b.column(columns[-1])] == (
            photos if columns[-1] == "photo" else list(range(40))
        )
        return [b.num_rows for b in batches]

    assert batch_rows(["id", "photo"], 0) == [16, 16, 8]  # 64 MiB hold them all
    monkeypatch.setattr(pieces, "BATCH_BYTES", 100_000)
    assert batch_rows(["id", "photo"], 0) == [9, 9, 9, 9, 4]  # 10,017 bytes a row stored: 9 in 100,000
    assert batch_rows(["id", "photo"], 1 << 30) == [9, 9, 9, 9, 4]
    assert batch_rows(["id"], 0) == [16, 16, 8]  # no column of its own width: no cap
    monkeypatch.setattr(pieces, "BATCH_BYTES", 5_000)
    assert batch_rows(["id", "photo"], 0) == [1] * 40


def test_a_piece_of_wide_row_groups_is_read_ahead_a_run_of_them_at_a_time(tmp_path, monkeypatch):
    """pyarrow holds every column chunk it was asked for until the last batch: the row groups of a
    piece of photos are asked for in runs of at most READ_AHEAD_BYTES stored, and batches end
    with their run."""
    from jobs import pieces
    from jobs.pieces import file_batches, read_ahead_runs

    rng = np.random.default_rng(0)
    photos = [rng.bytes(10_000) for _ in range(40)]
    path = tmp_path / "photos.parquet"
    table = pa.table({"id": np.arange(40), "photo": pa.array(photos, pa.binary())})
    pq.write_table(table, path, row_group_size=8)  # five groups of about 80 KB
    metadata = pq.read_metadata(path)
    assert read_ahead_runs(metadata, ["id", "photo"], range(5), 170_000) == [[0, 1], [2, 3], [4]]
    assert read_ahead_runs(metadata, ["id", "photo"], [1, 2, 3], 50_000) == [[1], [2], [3]]  # a group at least
    assert read_ahead_runs(metadata, ["id"], range(5), 170_000) == [[0, 1, 2, 3, 4]]  # the columns read only
    assert read_ahead_runs(metadata, ["id", "photo"], [3], 1) == [[3]]

    monkeypatch.setattr(pieces, "BATCH_BYTES", 100_000)  # 9 rows a batch
    monkeypatch.setattr(pieces, "READ_AHEAD_BYTES", 100_000)  # a group a run
    batches = list(file_batches(str(path), None, columns=["id", "photo"], dictionary=[], rows=16, threads=False))
    assert [b.num_rows for b in batches] == [8] * 5
    assert pa.Table.from_batches(batches).equals(table)


@pytest.mark.parametrize("threads", [False, True])
def test_row_groups_read_a_page_at_a_time_give_the_same_rows_locally_and_from_s3(storage, monkeypatch, threads):
    """The read of a group larger than READ_AHEAD_BYTES (here every group: budgets scaled down)
    goes through a buffered stream of the file, on S3 as on a local disk: the same rows, in
    batches that end with their group."""
    from jobs import pieces
    from jobs.lake import Lake
    from jobs.pieces import file_batches

    rng = np.random.default_rng(1)
    table = pa.table({"id": np.arange(40), "photo": pa.array([rng.bytes(10_000) for _ in range(40)], pa.binary())})
    lake = Lake(storage.lake_root)
    folder = lake.partition_path("raw/photos", DAY)
    lake.make_dirs(folder)
    with lake.fs.open_output_stream(f"{folder}/part-0.parquet") as out:
        pq.write_table(table, out, row_group_size=16)  # groups of about 160 KB
    monkeypatch.setattr(pieces, "READ_AHEAD_BYTES", 50_000)
    monkeypatch.setattr(pieces, "STREAM_BUFFER", 16_384)
    monkeypatch.setattr(pieces, "BATCH_BYTES", 100_000)  # 9 rows a batch
    batches = list(
        file_batches(
            f"{folder}/part-0.parquet", lake.fs, columns=["id", "photo"], dictionary=[], rows=16, threads=threads
        )
    )
    assert [b.num_rows for b in batches] == [9, 7, 9, 7, 8]
    assert pa.Table.from_batches(batches).equals(table)


def test_a_row_group_larger_than_the_read_ahead_is_read_a_page_at_a_time(tmp_path):
    """pandas' ``to_parquet`` writes up to a million rows a row group, whatever their width: a
    file of 20,000 photos was one group of 2 GB, which pyarrow fetched whole before its first
    batch, and held. A group that stores more than READ_AHEAD_BYTES is read a page at a time
    instead: Arrow's memory at its peak stays under the group's size (about 30 MB of the
    decoder's whatever the group, here 64 MB; 160 MB fetched whole). With the budgets scaled
    down, in a process of its own, whose peak is the read's alone."""
    rng = np.random.default_rng(0)
    photos = [rng.bytes(10_000) for _ in range(6400)]
    path = tmp_path / "photos.parquet"
    pd.DataFrame({"id": np.arange(6400), "photo": photos}).to_parquet(path)
    group = pq.read_metadata(path).row_group(0)
    assert pq.read_metadata(path).num_row_groups == 1 and group.total_byte_size > 64e6
    read = (
        "import sys, pyarrow as pa\n"
        "from jobs import pieces\n"
        "pieces.READ_AHEAD_BYTES, pieces.BATCH_BYTES, pieces.STREAM_BUFFER = 1 << 20, 256 << 10, 64 << 10\n"
        "batches = pieces.file_batches(sys.argv[1], None, columns=['id', 'photo'], dictionary=[], "
        "rows=262_144, threads=False)\n"
        "print(sum(b.num_rows for b in batches), pa.default_memory_pool().max_memory())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", read, str(path)], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    rows, peak = map(int, out.stdout.split())
    assert rows == 6400
    assert peak < group.total_byte_size, f"Arrow held {peak:,} bytes to read a group of {group.total_byte_size:,}"
