"""The lake on a local folder and on a real S3 server: the same job, the same guarantees."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from jobs import commit, demo_data, failures
from jobs.commit import CommitConflict
from jobs.lake import Lake, LakeError
from jobs.predict import run_job
from tests.conftest import DAY

ROWS = 2_000
OUT = "predictions/churn"


@pytest.fixture
def lake_with_input(storage) -> Lake:
    lake = Lake(storage.lake_root)
    demo_data.write_partition(lake, demo_data.RAW_TABLE, DAY, demo_data.generate(ROWS, DAY), files=3)
    return lake


def files_under(lake: Lake, path: str) -> list[str]:
    """Every file below ``path`` (SeaweedFS, unlike AWS S3, keeps emptied folders: count files)."""
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [i.path for i in lake.fs.get_file_info(selector) if i.type == pafs.FileType.File]


def read(lake: Lake, table: str = OUT):
    files = [f.path for f in lake.data_files(table, DAY)]
    return pads.dataset(files, filesystem=lake.fs, format="parquet").to_table()


def test_job_end_to_end_and_rerun(storage, lake_with_input, registered, ray_local, churn_job):
    lake = lake_with_input
    first = run_job(churn_job, DAY, settings=storage)
    table = read(lake)
    assert table.num_rows == ROWS and len(table["customer_id"].unique()) == ROWS
    assert set(table["scoring_run_id"].to_pylist()) == {first.run_id}
    assert first.output == lake.uri(lake.partition_path(OUT, DAY))

    second = run_job(churn_job, DAY, settings=storage, model_alias="challenger")
    table = read(lake)
    assert table.num_rows == ROWS
    assert set(table["scoring_run_id"].to_pylist()) == {second.run_id}
    # the folder holds only the committed files and the manifest: readers that skip _ files agree
    listed = lake.list_data_files(lake.partition_path(OUT, DAY))
    assert sorted(f.path for f in listed) == sorted(f.path for f in lake.data_files(OUT, DAY))
    assert lake.read_manifest(OUT, DAY)["scoring_run_id"] == second.run_id
    assert lake.exists(f"{lake.partition_path(OUT, DAY)}/_SUCCESS")  # for readers that wait for it
    assert files_under(lake, f"{lake.base}/_staging") == []


def test_a_damaged_manifest_is_named_and_a_rerun_replaces_it(
    storage, lake_with_input, registered, ray_local, churn_job
):
    """lakecast writes a partition's manifest whole and last: one that does not parse was changed by
    something else. Reading it says so (a retry would not help); a rerun of the date puts it right."""
    from jobs.failures import EXIT_FIX_FIRST, exit_status
    from jobs.lake import DamagedManifest

    lake = lake_with_input
    run_job(churn_job, DAY, settings=storage)
    path = f"{lake.partition_path(OUT, DAY)}/_manifest.json"
    for damage, why in ((b'{"broken', "not valid JSON"), (b"[]", "it names no output files")):
        with lake.fs.open_output_stream(path) as f:
            f.write(damage)
        with pytest.raises(DamagedManifest) as raised:
            lake.read_manifest(OUT, DAY)
        assert str(raised.value).startswith(f"{lake.uri(path)} is not a manifest lakecast wrote: {why}")
        assert exit_status(raised.value) == EXIT_FIX_FIRST
        with pytest.raises(DamagedManifest):  # a job that reads the partition as its input
            lake.input_footers(OUT, DAY)

    rerun = run_job(churn_job, DAY, settings=storage)
    assert lake.read_manifest(OUT, DAY)["scoring_run_id"] == rerun.run_id
    table = read(lake)
    assert table.num_rows == ROWS and set(table["scoring_run_id"].to_pylist()) == {rerun.run_id}


def test_a_second_writer_is_refused_and_loses_nothing(storage, lake_with_input, registered, ray_local, churn_job):
    lake = lake_with_input
    first = run_job(churn_job, DAY, settings=storage)
    held, release = threading.Event(), threading.Event()

    def other_run() -> None:
        with commit.partition_lock(lake, OUT, DAY, job="churn"):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(
            CommitConflict, match=r"predictions/churn ds=2026-11-21 is being written by job churn on host"
        ) as refused:
            run_job(churn_job, DAY, settings=storage, model_alias="challenger")
        if lake.is_s3:  # a lock that outlives a run killed outright: the sentence says which, and until when
            assert f"its lock {lake.uri(commit._lock_path(lake, OUT, DAY))} expires at 20" in str(refused.value)
        else:  # a flock goes with its process
            assert "expires" not in str(refused.value)
    finally:
        release.set()
        thread.join()
    assert set(read(lake)["scoring_run_id"].to_pylist()) == {first.run_id}


@pytest.mark.parametrize("storage", ["s3"], indirect=True)
def test_an_expired_s3_lock_is_taken_over_and_a_foreign_one_is_named(storage, caplog):
    """S3 has no flock: a run killed outright leaves its lock until it expires, and a lock object
    lakecast did not write never would; the first is taken over, the second named."""
    lake = Lake(storage.lake_root)
    path = commit._lock_path(lake, OUT, DAY)
    lake.make_dirs(path.rsplit("/", 1)[0])

    def leave(body: bytes) -> None:
        with lake.fs.open_output_stream(path) as f:
            f.write(body)

    leave(json.dumps({"job": "churn", "host": "lost", "expires": "2020-01-01T00:00:00+00:00"}).encode())
    with commit.partition_lock(lake, OUT, DAY, job="churn"):
        assert json.loads(lake.s3fs.cat_file(path))["host"] != "lost"
    assert "taking over the expired lock" in caplog.text and not lake.exists(path)

    for body, says in ((b"held", "Expecting value"), (b'{"job": "churn"}', "no expires")):
        leave(body)
        with pytest.raises(commit.DamagedLock) as refused, commit.partition_lock(lake, OUT, DAY, job="churn"):
            pytest.fail("a lock nobody can read was taken")
        assert str(refused.value).startswith(f"{lake.uri(path)} is not a lock lakecast wrote ({says}")
        assert "delete it and run again" in str(refused.value)
        assert failures.exit_status(refused.value) == failures.EXIT_FIX_FIRST
        assert lake.s3fs.cat_file(path) == body  # left for a person to look at


def test_leftovers_of_dead_runs_are_ignored_then_removed(storage, lake_with_input, caplog):
    lake = lake_with_input
    raw = demo_data.RAW_TABLE
    partition = lake.partition_path(raw, DAY)
    committed = sorted(f.path for f in lake.data_files(raw, DAY))
    # what a run killed mid-commit on S3 leaves: a copied file the manifest does not name,
    # and its staging folder
    orphan = f"{partition}/part-dead-run-00000.parquet"
    with lake.fs.open_output_stream(orphan) as f:
        f.write(b"half a file")
    staging = lake.staging_path(raw, DAY, "dead-run")
    lake.fs.create_dir(staging, recursive=True)
    with lake.fs.open_output_stream(f"{staging}/x.parquet") as f:
        f.write(b"x")

    assert sorted(f.path for f in lake.data_files(raw, DAY)) == committed  # readers see the commit
    with commit.partition_lock(lake, raw, DAY, job="test"):
        commit.recover(lake, raw, DAY)
    assert not lake.exists(orphan)
    assert files_under(lake, staging) == []
    assert sorted(f.path for f in lake.list_data_files(partition)) == committed
    assert "removing staging left by dead runs" in caplog.text

    # a rewrite on S3 that died after it took _SUCCESS away: the folder holds exactly the
    # committed files again, so the marker comes back
    lake.fs.delete_file(f"{partition}/_SUCCESS")
    with commit.partition_lock(lake, raw, DAY, job="test"):
        commit.recover(lake, raw, DAY)
    assert lake.exists(f"{partition}/_SUCCESS")

    # what a clean commit leaves is no dead run's: SeaweedFS, like a local folder, keeps the empty
    # folders of a staging it emptied, and the next run must not warn of them
    caplog.clear()
    lake.fs.create_dir(lake.staging_path(raw, DAY, "committed-run"), recursive=True)
    with commit.partition_lock(lake, raw, DAY, job="test"):
        commit.recover(lake, raw, DAY)
    assert "left by dead runs" not in caplog.text


def test_a_run_removes_what_dead_runs_left_for_each_of_its_tables(
    storage, lake_with_input, registered, ray_local, churn_job, caplog
):
    """A killed run leaves staging for its predictions, its quarantine and its shadow; the next run
    removes all three before it scores (on S3 the three are looked at side by side)."""
    lake = lake_with_input
    tables = (churn_job.output.table, churn_job.quarantine_table, churn_job.shadow_table)
    for table in tables:
        staging = lake.staging_path(table, DAY, "dead-run")
        lake.fs.create_dir(staging, recursive=True)
        with lake.fs.open_output_stream(f"{staging}/part-0.parquet") as f:
            f.write(b"half a file")
    caplog.set_level("WARNING")
    result = run_job(churn_job, DAY, settings=storage)
    assert result.rows == ROWS and read(lake).num_rows == ROWS
    assert files_under(lake, f"{lake.base}/_staging") == []
    for table in tables:
        left = lake.uri(f"{lake.base}/_staging/{table}/ds={DAY}")
        assert f"removing staging left by dead runs: {left}" in caplog.text


def test_footers_of_many_files_come_in_file_order_and_a_damaged_one_is_named(storage):
    """On S3 the footers are read side by side: the counts still line up with the files, and the
    error names the one file that is not Parquet."""
    lake = Lake(storage.lake_root)
    part = lake.partition_path("raw/many", DAY)
    lake.fs.create_dir(part, recursive=True)
    counts = [n * 10 + 1 for n in range(20)]
    for i, n in enumerate(counts):
        pq.write_table(pa.table({"k": list(range(n))}), f"{part}/part-{i:02d}.parquet", filesystem=lake.fs)
    files = lake.data_files("raw/many", DAY)
    assert [f.path.rsplit("/", 1)[-1] for f in files] == [f"part-{i:02d}.parquet" for i in range(20)]
    assert [footer.num_rows for footer in lake.footers(files)] == counts
    with lake.fs.open_output_stream(f"{part}/part-07.parquet") as out:
        out.write(b"PAR1 not parquet")
    with pytest.raises(LakeError, match=rf"cannot read Parquet file {lake.uri(part)}/part-07\.parquet: "):
        lake.footers(lake.data_files("raw/many", DAY))


def test_interrupted_local_swap_is_restored(settings, tmp_path):
    """Where the filesystem lacks RENAME_EXCHANGE, a crash between the two renames parks the
    old partition in _trash; the next run puts it back before anything else."""
    lake = Lake(str(tmp_path / "lake"))
    demo_data.write_partition(lake, "t", DAY, demo_data.generate(100, DAY), files=1)
    partition = lake.partition_path("t", DAY)
    parked = f"{lake.base}/_trash/t/ds={DAY}/run-x"
    lake.fs.create_dir(f"{lake.base}/_trash/t/ds={DAY}", recursive=True)
    lake.fs.move(partition, parked)
    with pytest.raises(LakeError, match="does not exist"):
        lake.data_files("t", DAY)
    with commit.partition_lock(lake, "t", DAY, job="test"):
        commit.recover(lake, "t", DAY)
    assert read(lake, "t").num_rows == 100


def test_a_day_its_writer_names_otherwise_is_pointed_to_not_waited_for(storage):
    """A table whose writer names its days ``dt=20261121/`` while the job reads ``ds=``: the day is
    there, so waiting for it changes nothing. The error names the folder that holds it and the
    day's folder that reads it, and a retry is not worth it (exit 2). A table without that day, in
    any name, stays a partition not there yet."""
    from jobs.lake import DayElsewhere, NotLanded

    lake = Lake(storage.lake_root)
    table = lake.table_path("raw/theirs")
    for folder in (f"dt={DAY:%Y%m%d}", "dt=20261120"):
        lake.make_dirs(f"{table}/{folder}")
        pq.write_table(demo_data.generate(10, DAY), f"{table}/{folder}/part-0.parquet", filesystem=lake.fs)
    with pytest.raises(DayElsewhere) as raised:
        lake.input_footers("raw/theirs", DAY)
    assert str(raised.value) == (
        f"partition {lake.uri(table)}/ds=2026-11-21 does not exist, but {lake.uri(table)} holds dt=20261121/ for "
        "2026-11-21: its writer names a day's folder 'dt=%Y%m%d', where the job reads 'ds=%Y-%m-%d'. Set the day's "
        "folder in the job file (input.partition; ab.labeled_partition for the comparison's labeled table)"
    )
    assert failures.exit_status(raised.value) == 2
    assert len(lake.input_footers("raw/theirs", DAY, layout="dt=%Y%m%d")[0]) == 1
    # a table of lakecast's own, read by a job that expects the writer's nested folders
    demo_data.write_partition(lake, OUT, DAY, demo_data.generate(10, DAY), files=1)
    with pytest.raises(DayElsewhere, match=r"holds ds=2026-11-21/ for 2026-11-21: .* 'ds=%Y-%m-%d', where the job "
                       r"reads 'year=%Y/month=%m/day=%d'"):  # fmt: skip
        lake.input_footers(OUT, DAY, layout="year=%Y/month=%m/day=%d")
    with pytest.raises(NotLanded, match=r"ds=2026-11-22 does not exist: no data for raw/theirs on 2026-11-22$"):
        lake.input_footers("raw/theirs", DAY + dt.timedelta(days=1))


def test_a_partition_is_not_whole_before_its_ready_marker(storage):
    """A producer that writes its files one by one, then ``_SUCCESS``: with ``input.ready_marker``
    nothing reads the part it has written so far; a partition lakecast committed needs no marker
    (its manifest says the same)."""
    from jobs.lake import NotLanded

    lake = Lake(storage.lake_root)
    partition = lake.partition_path("raw/landing", DAY)
    lake.fs.create_dir(partition, recursive=True)
    with pytest.raises(NotLanded, match=r"ds=2026-11-21 does not exist|holds no Parquet data files"):
        lake.input_footers("raw/landing", DAY, ready_marker="_SUCCESS")  # S3 has no empty folder
    pq.write_table(demo_data.generate(100, DAY), f"{partition}/part-0.parquet", filesystem=lake.fs)
    expected = (
        rf"partition {lake.uri(partition)} has no _SUCCESS yet \(input\.ready_marker\): its producer writes that "
        r"file last, once every data file is in place, and the 1 Parquet file\(s\) there may be only part of the day"
    )
    with pytest.raises(NotLanded, match=expected):
        lake.input_footers("raw/landing", DAY, ready_marker="_SUCCESS")
    assert len(lake.input_footers("raw/landing", DAY)[0]) == 1  # a job that sets no marker reads it
    pq.write_table(demo_data.generate(50, DAY), f"{partition}/part-1.parquet", filesystem=lake.fs)
    with lake.fs.open_output_stream(f"{partition}/_SUCCESS"):
        pass
    files, footers = lake.input_footers("raw/landing", DAY, ready_marker="_SUCCESS")
    assert [f.path.rsplit("/", 1)[1] for f in files] == ["part-0.parquet", "part-1.parquet"]
    assert sum(f.num_rows for f in footers) == 150

    demo_data.write_partition(lake, "raw/committed", DAY, demo_data.generate(10, DAY), files=1)
    assert len(lake.input_footers("raw/committed", DAY, ready_marker="_SUCCESS")[0]) == 1


def test_the_newest_committed_partition_is_the_newest_with_a_manifest(storage):
    """What ``lakecast show JOB`` prints with no date, the morning after: the newest partition
    lakecast committed. A newer folder without a manifest (another writer's files, a partition
    being written by hand) and a folder whose name is no date are passed over."""
    import datetime as dt

    lake = Lake(storage.lake_root)
    table = "predictions/newest"
    assert lake.newest_committed(table) is None
    for ds in (DAY - dt.timedelta(days=1), DAY, DAY - dt.timedelta(days=2)):
        demo_data.write_partition(lake, table, ds, demo_data.generate(10, ds), files=1)
    for folder in (lake.partition_path(table, DAY + dt.timedelta(days=1)), f"{lake.table_path(table)}/ds=latest"):
        lake.make_dirs(folder)
        pq.write_table(demo_data.generate(10, DAY), f"{folder}/part-0.parquet", filesystem=lake.fs)
    assert lake.newest_committed(table) == DAY


def write_from_another_process(root: str, path: str, data: bytes) -> None:
    """What a producer does: write into the lake from a process of its own, through a client of its own."""
    code = (
        "import sys; from jobs.lake import Lake\n"
        "lake = Lake(sys.argv[1]); lake.make_dirs(sys.argv[2].rsplit('/', 1)[0])\n"
        "with lake.fs.open_output_stream(sys.argv[2]) as f: f.write(sys.stdin.buffer.read())"
    )
    subprocess.run([sys.executable, "-c", code, root, path], input=data, check=True, cwd=Path(__file__).parents[1])


def test_each_look_at_a_partition_sees_what_its_producer_wrote_since_the_last(storage):
    """The input sensor looks again and again; under ``airflow dags test`` each look is in the same
    process. A look lists the partition afresh: s3fs would otherwise answer from the first look's
    listing, and the ``_SUCCESS`` its producer wrote since would never be seen."""
    from jobs.lake import NotLanded

    lake = Lake(storage.lake_root)
    partition = lake.partition_path("raw/late", DAY)
    sink = pa.BufferOutputStream()
    pq.write_table(demo_data.generate(100, DAY), sink)
    write_from_another_process(storage.lake_root, f"{partition}/part-0.parquet", sink.getvalue().to_pybytes())
    with pytest.raises(NotLanded, match=r"has no _SUCCESS yet"):
        Lake(storage.lake_root).input_footers("raw/late", DAY, ready_marker="_SUCCESS")
    write_from_another_process(storage.lake_root, f"{partition}/part-1.parquet", sink.getvalue().to_pybytes())
    write_from_another_process(storage.lake_root, f"{partition}/_SUCCESS", b"")
    files, footers = Lake(storage.lake_root).input_footers("raw/late", DAY, ready_marker="_SUCCESS")
    assert [f.path.rsplit("/", 1)[-1] for f in files] == ["part-0.parquet", "part-1.parquet"]
    assert sum(footer.num_rows for footer in footers) == 200


def test_files_with_no_row_are_not_landed_until_the_partition_says_it_is_whole(storage):
    """A producer may create its files before it fills them: zero rows without a marker may yet
    land, and is waited for; zero rows behind its marker is the day's data, and an error."""
    from jobs.lake import NotLanded

    lake = Lake(storage.lake_root)
    partition = lake.partition_path("raw/empty", DAY)
    lake.fs.create_dir(partition, recursive=True)
    pq.write_table(demo_data.generate(10, DAY).slice(0, 0), f"{partition}/part-0.parquet", filesystem=lake.fs)
    with pytest.raises(NotLanded, match=r"holds 1 Parquet file\(s\) and no row"):
        lake.input_footers("raw/empty", DAY)
    with lake.fs.open_output_stream(f"{partition}/_SUCCESS"):
        pass
    with pytest.raises(LakeError, match=r"holds 1 Parquet file\(s\) and no row, and its _SUCCESS says") as raised:
        lake.input_footers("raw/empty", DAY, ready_marker="_SUCCESS")
    assert not isinstance(raised.value, NotLanded)
    assert "the day's predictions with none, so they stay as they are" in str(raised.value)
    assert failures.exit_status(raised.value) == failures.EXIT_FIX_FIRST  # the producer's to fix, not a retry's


def test_a_piece_of_small_files_reads_each_row_once_in_order(storage, monkeypatch):
    """From S3 the files after the one being read are fetched ahead, a few at a time
    (jobs.pieces.piece_batches): the rows still come file by file, in order, each once."""
    from jobs import pieces

    monkeypatch.setattr(pieces, "FETCH_AHEAD_FILES", 3)
    lake = Lake(storage.lake_root)
    partition = lake.partition_path("raw/small", DAY)
    lake.fs.create_dir(partition, recursive=True)
    for i in range(10):
        table = pa.table({"id": pa.array(range(100 * i, 100 * i + 100), pa.int64()), "x": [float(i)] * 100})
        pq.write_table(table, f"{partition}/part-{i:02d}.parquet", filesystem=lake.fs)
    files, footers = lake.input_footers("raw/small", DAY)
    [piece] = pieces.split_files(files, footers, rows_per_file=5_000)
    assert len(piece.paths) == 10 and piece.size == sum(f.size for f in files)
    read = list(pieces.piece_batches(piece, lake.fs, columns=["id"], dictionary=[], rows=64, threads=False))
    assert [i for i, _ in read] == sorted(i for i, _ in read) and {i for i, _ in read} == set(range(10))
    assert pa.concat_arrays([b.column(0) for _, b in read]).to_pylist() == list(range(1_000))


def test_a_file_that_changed_after_the_checks_is_named_when_read(storage):
    """A producer rewrites a file after the run's checks read its footer (here: half of it, where
    the checks saw it whole): the read names the file, as the checks would have, not a traceback."""
    from jobs import pieces

    lake = Lake(storage.lake_root)
    partition = lake.partition_path("raw/changed", DAY)
    lake.fs.create_dir(partition, recursive=True)
    for i in range(3):
        table = pa.table({"id": pa.array(range(100 * i, 100 * i + 100), pa.int64())})
        pq.write_table(table, f"{partition}/part-{i}.parquet", filesystem=lake.fs)
    files, footers = lake.input_footers("raw/changed", DAY)
    [piece] = pieces.split_files(files, footers, rows_per_file=5_000)
    with lake.fs.open_input_stream(f"{partition}/part-1.parquet") as f:
        whole = f.read()
    with lake.fs.open_output_stream(f"{partition}/part-1.parquet") as f:
        f.write(whole[: len(whole) // 2])

    with pytest.raises(LakeError, match=r"cannot read \S*/raw/changed/ds=\S+/part-1\.parquet: .*changed since"):
        list(pieces.piece_batches(piece, lake.fs, columns=["id"], dictionary=[], rows=64, threads=False))


def test_rows_in_folders_of_a_partition_are_read_and_a_writers_temporary_skipped(storage):
    """On S3 a folder is a common prefix: a partition written by Spark's ``partitionBy("ds",
    "region")`` holds no file of its own, and its rows are all below it; a folder beside the
    files is the day's too. A writer's ``_temporary`` folder, at any depth, is skipped."""
    from jobs import pieces

    lake = Lake(storage.lake_root)
    partition = lake.partition_path("raw/by_region", DAY)
    for region in ("eu", "us"):
        for sub in ("", "/_temporary/0"):
            lake.fs.create_dir(f"{partition}/region={region}{sub}", recursive=True)
            pq.write_table(
                demo_data.generate(10, DAY), f"{partition}/region={region}{sub}/part-0.parquet", filesystem=lake.fs
            )
    found = lambda: [(f.folder, f.path.removeprefix(partition)) for f in lake.input_footers("raw/by_region", DAY)[0]]  # noqa: E731
    assert found() == [("region=eu", "/region=eu/part-0.parquet"), ("region=us", "/region=us/part-0.parquet")]
    pq.write_table(demo_data.generate(10, DAY), f"{partition}/part-0.parquet", filesystem=lake.fs)
    assert found()[0] == ("", "/part-0.parquet") and len(found()) == 3

    split = pieces.split_files(*lake.input_footers("raw/by_region", DAY), rows_per_file=10)
    assert [p.stem for p in split] == ["part-0", "region=eu-part-0", "region=us-part-0"]  # the output files' names
    pq.write_table(demo_data.generate(10, DAY), f"{partition}/region=eu-part-0.parquet", filesystem=lake.fs)
    with pytest.raises(
        pieces.NamesClash, match=r"region=eu-part-0\.parquet and \S+/region=eu/part-0\.parquet would"
    ) as e:
        pieces.split_files(*lake.input_footers("raw/by_region", DAY), rows_per_file=10)
    assert failures.exit_status(e.value) == failures.EXIT_FIX_FIRST  # renamed, not retried

    other = lake.partition_path("raw/spark", DAY)
    lake.fs.create_dir(f"{other}/_temporary/0", recursive=True)
    pq.write_table(demo_data.generate(10, DAY), f"{other}/part-0.parquet", filesystem=lake.fs)
    pq.write_table(demo_data.generate(10, DAY), f"{other}/_temporary/0/part-1.parquet", filesystem=lake.fs)
    assert [f.path.rsplit("/", 1)[1] for f in lake.input_footers("raw/spark", DAY)[0]] == ["part-0.parquet"]


def test_success_is_never_there_while_old_and_new_files_lie_together(storage, monkeypatch):
    """A reader that waits for ``_SUCCESS`` (Spark's marker, another team's sensor) reads exactly
    one committed version: on S3, where a rewrite copies its new files in beside the old ones,
    the marker is gone from before the first copy until after the last old file is deleted."""
    lake = Lake(storage.lake_root)
    demo_data.write_partition(lake, "t", DAY, demo_data.generate(100, DAY), files=2)
    partition = lake.partition_path("t", DAY)
    assert lake.exists(f"{partition}/_SUCCESS")
    old = {f.path for f in lake.data_files("t", DAY)}
    seen = []
    if lake.is_s3:
        for step in ("copy", "pipe_file", "rm"):
            real = getattr(lake.s3fs, step)

            def spy(*args, _real=real, _step=step, **kwargs):
                seen.append((_step, lake.exists(f"{partition}/_SUCCESS")))
                return _real(*args, **kwargs)

            monkeypatch.setattr(lake.s3fs, step, spy)
    demo_data.write_partition(lake, "t", DAY, demo_data.generate(60, DAY), files=3)
    monkeypatch.undo()
    if lake.is_s3:  # new files in, the manifest, the stale files out: no marker meanwhile
        first_copy = [step for step, _ in seen].index("copy")
        assert seen[first_copy : first_copy + 3] == [("copy", False), ("pipe_file", False), ("rm", False)], seen
    new = {f.path for f in lake.data_files("t", DAY)}
    assert len(new) == 3 and not new & old
    assert {f.path for f in lake.list_data_files(partition)} == new
    assert lake.exists(f"{partition}/_SUCCESS")


def test_the_columns_a_files_folders_name():
    """As Spark writes them: ``name=value`` folders, values escaped (``south%20east``), Hive's
    folder for a null; other folders name none."""
    from jobs.folder_columns import named, typed

    assert named("hr=13/region=south%20east/late") == {"hr": "13", "region": "south east"}
    assert named("region=__HIVE_DEFAULT_PARTITION__") == {"region": None} and named("") == {}
    assert (typed("13", "number"), typed("TRUE", "boolean"), typed("13", "string"), typed(None, "number")) == (
        13.0,
        True,
        "13",
        None,
    )
    with pytest.raises(ValueError, match=r"'yes' is not true or false, which the model expects"):
        typed("yes", "boolean")
