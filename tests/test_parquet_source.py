"""The source jobs read their listed files through: what it reads, how, and in what pieces."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import parquet_source
from jobs.ray_runtime import read_parquet_files


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
