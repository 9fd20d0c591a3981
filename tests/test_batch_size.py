"""How ``batch_size: auto`` picks among measured sizes, and what it measures on."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.batch_size import measure, pick, sample_rows
from jobs.validation import ColumnRule


def test_the_smallest_size_within_five_percent_of_the_fastest_wins():
    assert pick({1024: 100.0, 2048: 190.0, 4096: 200.0, 8192: 201.0}) == 4096  # 190 < 0.95 * 201
    assert pick({1024: 100.0, 2048: 200.0, 4096: 150.0}) == 2048
    assert pick({1024: 10.0}) == 1024


def test_cpu_actors_measure_up_to_their_read_batch_and_gpu_actors_less():
    """A CPU actor scores slices of the batch it reads (READ_ROWS rows where a row group is not
    read whole), and larger batches measured slower; a GPU actor's batch is also device memory,
    so its sizes stop sooner."""
    from jobs.batch_size import GPU_LARGEST, candidate_sizes
    from jobs.part_writer import READ_ROWS

    assert max(candidate_sizes(10_000_000, gpus=0)) == READ_ROWS
    assert max(candidate_sizes(10_000_000, gpus=1)) == GPU_LARGEST < READ_ROWS
    assert max(candidate_sizes(20_000, gpus=0)) == 16384  # none larger than the partition
    assert candidate_sizes(10, gpus=0) == [1024]


def test_per_call_overhead_favours_large_batches():
    import time

    def predictor(batch: pa.Table) -> None:  # a fixed cost per call, as Ray Data and torch have
        time.sleep(0.002)

    sample = pa.table({"x": range(4096)})
    rates = measure(predictor, sample, [256, 1024, 4096])
    assert rates[256] < rates[1024] < rates[4096]
    assert pick(rates) == 4096


def test_it_measures_as_many_callers_side_by_side_as_an_actor_has_files_at_once():
    """A CPU actor scoring two files at once calls its predictor from two threads; ``at_once``
    measures it so, and counts both threads' rows."""
    import threading
    import time

    lock, inside, most = threading.Lock(), [0], [0]

    def predictor(batch: pa.Table) -> None:  # a wait that overlaps, as torch's kernels do
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.002)
        with lock:
            inside[0] -= 1

    sample = pa.table({"x": range(1024)})
    alone = measure(predictor, sample, [1024])[1024]
    assert most[0] == 1
    side_by_side = measure(predictor, sample, [1024], at_once=2)[1024]
    assert most[0] == 2
    assert side_by_side > 1.5 * alone


def test_the_sample_comes_from_the_first_row_groups(tmp_path):
    for i in range(3):
        pq.write_table(
            pa.table({"id": range(i * 1000, (i + 1) * 1000), "x": [1.0] * 1000}),
            tmp_path / f"{i}.parquet",
            row_group_size=400,
        )
    paths = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    sample = sample_rows(paths, None, ["id"], 1500)
    assert sample.column_names == ["id"] and sample["id"].to_pylist() == list(range(1500))
    assert sample_rows(paths, None, ["id"], 10_000).num_rows == 3000


def test_the_sample_holds_only_rows_the_actors_would_score(tmp_path):
    """A model whose signature requires a column is never given its nulls, measured or not."""
    x = [None if i % 3 == 0 else float(i) for i in range(1000)]
    pq.write_table(pa.table({"id": range(1000), "x": x}), tmp_path / "0.parquet", row_group_size=100)
    sample = sample_rows(
        [str(tmp_path / "0.parquet")], None, ["id", "x"], 500, rules=[ColumnRule("x", "number", False)]
    )
    assert sample.num_rows == 500 and sample["x"].null_count == 0
    assert sample["id"].to_pylist() == [i for i in range(1000) if i % 3][:500]


def test_the_sample_has_the_columns_its_folders_name(tmp_path):
    """A column Spark keeps in the folders' names (jobs.folder_columns) is in the sample, as the
    actors read it, in the columns' order."""
    (tmp_path / "region=eu").mkdir()
    path = str(tmp_path / "region=eu" / "0.parquet")
    pq.write_table(pa.table({"id": range(100)}), path)
    sample = sample_rows([path], None, ["region", "id"], 50, ["region"], from_folders={path: {"region": "eu"}})
    assert sample.column_names == ["region", "id"] and sample.num_rows == 50
    assert sample["region"].type == pa.dictionary(pa.int32(), pa.string())
    assert sample["region"].to_pylist() == ["eu"] * 50
