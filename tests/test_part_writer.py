"""What a CPU actor does with an input file, or a run of a large file's row groups: read it a batch
at a time, set invalid rows aside, score the rest and write files of scores of about
``rows_per_file`` input rows each."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import part_writer
from jobs.part_writer import ScoreAndWrite, slice_ends, slices
from jobs.pieces import Piece
from jobs.validation import REASON, ColumnRule, InvalidInput, RowValidator
from tests.conftest import DAY
from tests.test_predictor import make_predictor, with_values

AGE = ColumnRule(name="age", kind="number", nullable=False, min=18, max=120)
READ_BYTES = part_writer.READ_BYTES  # the actors' own, before a test sets another


@pytest.fixture(scope="module")
def raw(lake) -> pa.Table:
    return pads.dataset(lake.partition_path("raw/customers", DAY), format="parquet").to_table().slice(0, 500)


@pytest.fixture
def folders(tmp_path):
    staging, quarantine = tmp_path / "staging", tmp_path / "quarantine"
    staging.mkdir(), quarantine.mkdir()
    return staging, quarantine


@pytest.fixture
def writer(settings, registered, folders, monkeypatch):
    """Reads 64 rows at a time and scores them 48 at a time: batches straddle the 200-row slices."""
    monkeypatch.setattr(part_writer, "READ_ROWS", 64)
    monkeypatch.setattr(part_writer, "READ_BYTES", 0)  # not a row group at a time
    predictor = make_predictor(settings, registered["champion"])

    def build(
        policy: str = "quarantine", dictionary: tuple[str, ...] = (), rules: tuple[ColumnRule, ...] = (AGE,)
    ) -> ScoreAndWrite:
        staging, quarantine = folders
        return ScoreAndWrite(
            type(predictor),
            {"options": predictor.options},
            validator=RowValidator(list(rules), policy, "customer_id", None, str(quarantine)),
            columns=["customer_id", *predictor.model.input_columns],
            dictionary=list(dictionary),
            staging=str(staging),
            filesystem=None,
            batch_size=48,
            rows_per_file=200,
            score_column="churn_probability",
        )

    return build


def files_of(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run(writer: ScoreAndWrite, *paths, row_groups: list[int] | None = None) -> pa.Table:
    """The actor's call as the job makes it (jobs.ray_runtime.files_dataset): a piece of input
    (a file, a run of its row groups, or several files) with its row count from the footers."""
    metas = [pq.read_metadata(path) for path in paths]
    rows = sum(
        meta.num_rows if row_groups is None else sum(meta.row_group(g).num_rows for g in row_groups) for meta in metas
    )
    size = sum(os.path.getsize(p) for p in paths)
    piece = Piece(tuple(str(p) for p in paths), size, rows, None if row_groups is None else tuple(row_groups))
    return writer(pa.Table.from_pylist([piece.as_row(lambda path: f"file://{path}")]))


def test_a_file_becomes_files_of_about_rows_per_file_rows_named_after_it(
    writer, raw, tmp_path, folders, settings, registered
):
    pq.write_table(raw, tmp_path / "part-7.parquet")
    t0 = time.perf_counter()
    done = run(writer(), tmp_path / "part-7.parquet").to_pylist()
    elapsed = time.perf_counter() - t0
    # 500 rows at 200 a file: two files of 250, not a third of 100
    names = ["part-7-0000.parquet", "part-7-0001.parquet"]
    assert [pq.read_metadata(tmp_path / "staging" / n).num_rows for n in names] == [250, 250]
    [row] = done
    assert (row["file"], row["rows"], row["quarantined"]) == (f"file://{tmp_path}/part-7.parquet", 500, 0)
    # where the actor's time went: every stage took some, and together no more than the call
    seconds = [row[f"{stage}_s"] for stage in part_writer.STAGES]
    assert all(t > 0 for t in seconds) and sum(seconds) <= elapsed
    staging, quarantine = folders
    assert files_of(staging) == names and files_of(quarantine) == []
    out = pa.concat_tables(pq.read_table(staging / n) for n in names)
    # the same rows, in order, with the scores the predictor gives the whole table at once
    whole = make_predictor(settings, registered["champion"])(raw)
    assert out["customer_id"].to_pylist() == raw["customer_id"].to_pylist()
    assert out["churn_probability"].to_pylist() == pytest.approx(whole["churn_probability"].to_pylist(), abs=1e-6)
    # row groups a reader can skip on the key or the score; the one-value lineage strings need none
    group = pq.ParquetFile(staging / names[0]).metadata.row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).is_stats_set for i in range(group.num_columns)}
    assert stats["customer_id"] and stats["churn_probability"] and stats["scored_at"]
    assert not stats["scoring_run_id"]


def test_a_row_group_that_fits_is_read_as_one_batch_into_the_same_files(writer, raw, tmp_path, folders, monkeypatch):
    """Where a row group's columns decode to at most READ_BYTES, the actor reads it as one batch
    (faster: docs/benchmark.md): the same files, rows and scores as reading it 64 rows at a time."""
    pq.write_table(raw, tmp_path / "part-1.parquet", row_group_size=300)  # groups of 300 and 200 rows
    staging = folders[0]
    # the categories read dictionary-encoded, as the job reads them: a string's width is its values'
    categorical = tuple(
        c for c in raw.column_names if pa.types.is_string(raw.schema.field(c).type) and c != "customer_id"
    )
    run(writer(dictionary=categorical), tmp_path / "part-1.parquet")
    in_rows = {n: pq.read_table(staging / n) for n in files_of(staging)}
    for name in in_rows:
        (staging / name).unlink()
    monkeypatch.setattr(part_writer, "READ_BYTES", READ_BYTES)
    read, piece_batches = [], part_writer.piece_batches

    def counted(*args, **kwargs):
        for i, batch in piece_batches(*args, **kwargs):
            read.append(batch.num_rows)
            yield i, batch

    monkeypatch.setattr(part_writer, "piece_batches", counted)
    run(writer(dictionary=categorical), tmp_path / "part-1.parquet")
    assert read == [300, 200]
    whole = {n: pq.read_table(staging / n) for n in files_of(staging)}
    assert whole.keys() == in_rows.keys()
    for name, table in whole.items():
        assert table["customer_id"].equals(in_rows[name]["customer_id"])
        scores = table["churn_probability"].to_pylist()
        assert scores == pytest.approx(in_rows[name]["churn_probability"].to_pylist(), abs=1e-6)


def test_a_retried_file_rewrites_the_same_files(writer, raw, tmp_path, folders):
    pq.write_table(raw, tmp_path / "part-0.parquet")
    first = run(writer(), tmp_path / "part-0.parquet")
    before = {n: pq.read_table(folders[0] / n) for n in files_of(folders[0])}
    again = run(writer(), tmp_path / "part-0.parquet")  # Ray retries a task whose actor died
    assert again.select(["file", "rows", "quarantined"]).equals(first.select(["file", "rows", "quarantined"]))
    assert {n: pq.read_table(folders[0] / n) for n in files_of(folders[0])}.keys() == before.keys()
    assert sum(pq.read_metadata(folders[0] / n).num_rows for n in before) == raw.num_rows


def test_invalid_rows_go_to_one_quarantine_file_per_slice(writer, raw, tmp_path, folders):
    # row 10 is too young, row 260 too; every row of the second slice (250-499) is too old
    ages = raw["age"].to_pylist()
    ages[250:] = [150] * 250
    ages[10], ages[260] = 3, 2
    bad = raw.set_column(raw.schema.get_field_index("age"), "age", pa.array(ages, raw.schema.field("age").type))
    pq.write_table(bad, tmp_path / "part-1.parquet")
    done = run(writer(), tmp_path / "part-1.parquet")
    staging, quarantine = folders
    assert (done["rows"].to_pylist(), done["quarantined"].to_pylist()) == ([249], [251])
    # a slice with no valid row writes no file of scores
    assert files_of(staging) == ["part-1-0000.parquet"]
    assert files_of(quarantine) == ["q-part-1-0000.parquet", "q-part-1-0001.parquet"]
    rejected = pa.concat_tables(pq.read_table(quarantine / n) for n in files_of(quarantine))
    keys = raw["customer_id"].to_pylist()
    assert rejected["customer_id"].to_pylist() == [keys[10], *keys[250:]]
    reasons = rejected[REASON].to_pylist()
    assert all(r.startswith("age: ") for r in reasons) and reasons[0] != reasons[1]  # too young, too old
    scored = pa.concat_tables(pq.read_table(staging / n) for n in files_of(staging))
    assert pc.count_distinct(scored["customer_id"]).as_py() == 249 and keys[10] not in scored["customer_id"].to_pylist()


def test_a_file_whose_predictions_pass_file_bytes_ends_early_and_the_slice_goes_on(
    writer, raw, tmp_path, folders, monkeypatch
):
    """An actor holds a file's predictions until it writes them, and 1M rows of an embedding of
    768 float32 are 3 GB: where what a file holds passes FILE_BYTES, it is written at that batch,
    and the slice goes on in a file numbered next, its invalid rows with it. Here every batch
    passes it (FILE_BYTES 1): the 64-row reads, cut at the 250-row slice's end, make nine files,
    each row once and in order, and the summary is the same as the two files' of the default."""
    ages = raw["age"].to_pylist()
    ages[10] = 3
    bad = raw.set_column(raw.schema.get_field_index("age"), "age", pa.array(ages, raw.schema.field("age").type))
    pq.write_table(bad, tmp_path / "part-7.parquet")
    staging, quarantine = folders
    [whole] = run(writer(), tmp_path / "part-7.parquet").to_pylist()
    assert files_of(staging) == ["part-7-0000.parquet", "part-7-0001.parquet"]
    for f in [*staging.iterdir(), *quarantine.iterdir()]:
        f.unlink()

    monkeypatch.setattr(part_writer, "FILE_BYTES", 1)
    [row] = run(writer(), tmp_path / "part-7.parquet").to_pylist()

    names = [f"part-7-{i:04d}.parquet" for i in range(9)]
    assert files_of(staging) == names and files_of(quarantine) == ["q-part-7-0000.parquet"]
    assert [pq.read_metadata(staging / n).num_rows for n in names] == [63, 64, 64, 58, 6, 64, 64, 64, 52]
    keys = raw["customer_id"].to_pylist()
    out = pa.concat_tables(pq.read_table(staging / n) for n in names)
    assert out["customer_id"].to_pylist() == keys[:10] + keys[11:]
    assert pq.read_table(quarantine / "q-part-7-0000.parquet")["customer_id"].to_pylist() == [keys[10]]
    assert (row["rows"], row["quarantined"]) == (whole["rows"], whole["quarantined"]) == (499, 1)
    assert [row[k] for k in ("score_mean", "score_m2")] == pytest.approx([whole["score_mean"], whole["score_m2"]])


class _Encoder:
    """A user's encoder, as the actor's predictor: each row's key and a vector of 1,000 float32
    (4 KB a row), the row's age in every place."""

    refuses_non_finite = frozenset()

    def __call__(self, batch: pa.Table) -> pa.Table:
        ages = batch["age"].to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ages, 1000)), 1000)
        return pa.table({"customer_id": batch["customer_id"], "embedding": vectors})


def test_wide_predictions_are_scored_and_written_a_file_s_bytes_at_a_time(raw, tmp_path, folders, monkeypatch):
    """An embedding of 768 float32 is 3 KB a row: 1M rows of them, a file's, held until it was
    written, took an actor to 6.8 GiB. Where the job's predictions are wide (``prediction_bytes``),
    the actor scores no more rows at once than a quarter of FILE_BYTES of them hold, and each file
    ends once its predictions pass FILE_BYTES: here 400 KB, with reads of 250 rows (1 MB of
    vectors). No file holds more than a quarter past it, and every row is written once, in order."""
    monkeypatch.setattr(part_writer, "READ_ROWS", 1000)
    monkeypatch.setattr(part_writer, "FILE_BYTES", 400_000)
    monkeypatch.setattr(part_writer, "FEWEST_ROWS", 1)
    pq.write_table(raw, tmp_path / "part-2.parquet")
    staging, quarantine = folders
    writer = ScoreAndWrite(
        _Encoder,
        {},
        validator=RowValidator([], "quarantine", "customer_id", None, str(quarantine)),
        columns=["customer_id", "age"],
        dictionary=[],
        staging=str(staging),
        filesystem=None,
        batch_size=48,
        rows_per_file=200,
        score_column="embedding",
        prediction_bytes=4000,
    )
    [row] = run(writer, tmp_path / "part-2.parquet").to_pylist()

    assert row["rows"] == 500
    sizes = [pq.read_metadata(staging / name).num_rows for name in files_of(staging)]
    assert sum(sizes) == 500 and max(sizes) <= 125, sizes  # 100 rows of vectors are FILE_BYTES
    out = pa.concat_tables(pq.read_table(staging / name) for name in files_of(staging))
    assert out["customer_id"].to_pylist() == raw["customer_id"].to_pylist()
    assert out["embedding"].type == pa.list_(pa.float32(), 1000)
    # the GPU pipeline's write tasks join the actors' batches up to a file's bytes of them too
    assert (part_writer.file_rows(200, 4000), part_writer.file_rows(200, 0)) == (100, 200)


def test_nan_and_infinity_left_to_the_scorer_are_set_aside_as_the_checks_would(writer, raw, tmp_path, folders, caplog):
    """The actor's checks leave the search for NaN and infinity in the model's numbers to the
    scorer, which finds them as it converts them, and a batch the scorer refuses is checked in
    full. So an infinite charge (row 100, in the second batch read) and a NaN one (row 400, after
    it) are set aside, each with its reason; a NaN satisfaction score (row 300), which the model
    takes as missing, is scored as a null there would be; and every other row is scored as it is
    without them."""
    charges, satisfaction = raw["monthly_charges"].to_pylist(), raw["satisfaction_score"].to_pylist()
    charges[100], charges[400], satisfaction[300] = float("inf"), float("nan"), float("nan")

    pq.write_table(
        with_values(raw, monthly_charges=charges, satisfaction_score=satisfaction), tmp_path / "messy.parquet"
    )
    rules = (ColumnRule("monthly_charges", "number", nullable=False), ColumnRule("satisfaction_score", "number"))
    with caplog.at_level("INFO", logger="jobs.part_writer"):
        done = run(writer(rules=rules), tmp_path / "messy.parquet")
    assert (done["rows"].to_pylist(), done["quarantined"].to_pylist()) == ([498], [2])
    assert [r.getMessage() for r in caplog.records if r.name == "jobs.part_writer"] == [
        "NaN or infinity in monthly_charges: this actor checks every batch for them from now on, before scoring it"
    ]
    staging, quarantine = folders
    rejected = pa.concat_tables(pq.read_table(quarantine / n) for n in files_of(quarantine))
    keys = raw["customer_id"].to_pylist()
    assert rejected["customer_id"].to_pylist() == [keys[100], keys[400]]
    assert rejected[REASON].to_pylist() == ["monthly_charges: infinite", "monthly_charges: NaN"]
    scored = pa.concat_tables(pq.read_table(staging / n) for n in files_of(staging))

    satisfaction[300] = None
    kept = [i for i in range(raw.num_rows) if i not in (100, 400)]
    pq.write_table(with_values(raw, satisfaction_score=satisfaction).take(kept), tmp_path / "clean.parquet")
    for name in files_of(staging):
        (staging / name).unlink()
    run(writer(rules=rules), tmp_path / "clean.parquet")
    clean = pa.concat_tables(pq.read_table(staging / n) for n in files_of(staging))
    assert scored["customer_id"].equals(clean["customer_id"])
    np.testing.assert_allclose(scored["churn_probability"], clean["churn_probability"], rtol=1e-6)


def test_under_the_fail_policy_an_invalid_row_names_its_file(writer, raw, tmp_path, folders):
    ages = raw["age"].to_pylist()
    ages[300] = 7
    bad = raw.set_column(raw.schema.get_field_index("age"), "age", pa.array(ages, raw.schema.field("age").type))
    pq.write_table(bad, tmp_path / "part-2.parquet")
    with pytest.raises(InvalidInput) as e:
        run(writer("fail"), tmp_path / "part-2.parquet")
    key = raw["customer_id"][300].as_py()
    assert str(e.value).startswith(f"file://{tmp_path}/part-2.parquet: 1 invalid row(s)") and f"={key!r}" in str(
        e.value
    )


def test_one_actor_scores_two_files_at_once_as_it_scores_them_one_after_the_other(writer, raw, tmp_path, folders):
    """An actor with two CPUs gets two files at a time, each on a thread of Ray's (the job's
    files_at_once): the same instance serves both calls, and nothing of one file's may end up in
    the other's output or counts."""
    from concurrent.futures import ThreadPoolExecutor

    inputs = {f"part-{i}": raw.slice(start, 100 + 10 * i) for i, start in enumerate(range(0, 400, 100))}
    for stem, table in inputs.items():
        pq.write_table(table, tmp_path / f"{stem}.parquet")
    actor = writer()
    with ThreadPoolExecutor(2) as pool:
        done = [
            row
            for result in pool.map(lambda stem: run(actor, tmp_path / f"{stem}.parquet"), inputs)
            for row in result.to_pylist()
        ]
    assert [(row["file"], row["rows"]) for row in done] == [
        (f"file://{tmp_path}/{stem}.parquet", table.num_rows) for stem, table in inputs.items()
    ]
    staging, _ = folders
    for stem, table in inputs.items():
        assert files_of(staging).count(f"{stem}-0000.parquet") == 1
        out = pq.read_table(staging / f"{stem}-0000.parquet")
        assert out["customer_id"].to_pylist() == table["customer_id"].to_pylist()


@pytest.mark.parametrize(
    ("cpus", "min_actors", "files", "at_once", "threads_each"),
    [
        (2, 1, 10, 2, 1),  # the churn job on two cores: a file per CPU, torch on one thread each
        (2, 1, 1, 1, 2),  # one file: it gets both CPUs' threads instead
        (1, 2, 10, 1, 1),
        (0.5, 1, 10, 1, 0.5),
        (8, 2, 6, 3, 8 / 3),  # no more files at once than an actor's share of them
    ],
)
def test_a_cpu_actor_scores_a_file_per_cpu_at_once(cpus, min_actors, files, at_once, threads_each):
    from jobs.config import ComputeSpec
    from jobs.ray_runtime import files_at_once, threads_per_file

    compute = ComputeSpec(cpus_per_actor=cpus, min_actors=min_actors, max_actors=max(2, min_actors))
    assert files_at_once(compute, files, gpus=0) == at_once
    assert threads_per_file(compute, at_once) == pytest.approx(threads_each)
    assert files_at_once(compute, files, gpus=1) == 1  # a GPU actor takes a batch at a time


def test_slices_cut_the_batches_that_straddle_two():
    batches = [(tag, pa.record_batch({"x": list(range(n))})) for tag, n in (("a", 5), ("b", 7), ("c", 3))]
    pieces = [(i, tag, piece.num_rows) for i, tag, piece in slices(batches, [4, 8, 12, 15])]
    assert pieces == [(0, "a", 4), (1, "a", 1), (1, "b", 3), (2, "b", 4), (3, "c", 3)]


@pytest.mark.parametrize(
    ("rows", "rows_per_file", "sizes"),
    [
        (1_000_000, 1_000_000, [1_000_000]),
        (1_048_576, 1_000_000, [1_048_576]),  # pyarrow's row group: one file, no 48,576-row one
        (2_500_000, 1_000_000, [1_250_000, 1_250_000]),
        (300, 1_000, [300]),  # fewer rows than a file's: one smaller file
        (1_999, 1_000, [1_999]),
        (3_000, 1_000, [1_000, 1_000, 1_000]),
    ],
)
def test_output_files_hold_between_rows_per_file_and_twice_it(rows, rows_per_file, sizes):
    ends = slice_ends(rows, rows_per_file)
    assert [b - a for a, b in zip([0, *ends], ends, strict=False)] == sizes


def test_a_piece_of_a_large_file_scores_its_row_groups_only_into_files_named_after_them(writer, raw, tmp_path, folders):
    """A large file split by its row groups (jobs.pieces.split_files): the actor given row groups
    2-3 reads those rows alone, and its files' names say where they started, so that the pieces
    of one file never write over each other."""
    pq.write_table(raw, tmp_path / "big.parquet", row_group_size=100)  # five row groups of 100
    done = run(writer(), tmp_path / "big.parquet", row_groups=[2, 3]).to_pylist()
    assert [(row["file"], row["rows"]) for row in done] == [(f"file://{tmp_path}/big.parquet (row groups 2-3)", 200)]
    staging, _ = folders
    assert files_of(staging) == ["big-g0002-0000.parquet"]
    out = pq.read_table(staging / "big-g0002-0000.parquet")
    assert out["customer_id"].to_pylist() == raw["customer_id"].to_pylist()[200:400]
    assert Piece((str(tmp_path / "big.parquet"),), 1, 200, (4,)).label("x") == "x (row group 4)"


def test_small_files_read_in_turn_make_files_of_rows_per_file_named_after_the_first(writer, raw, tmp_path, folders):
    """Small files of one piece (jobs.pieces.split_files) are read one after the other into files
    of about rows_per_file rows, as one file of theirs would be: not a file each. One producer
    wrote the key as int32, the next as int64; the output holds the wider."""
    key = raw.schema.get_field_index("customer_id")
    narrow = raw.slice(0, 120).set_column(key, "customer_id", raw["customer_id"].slice(0, 120).cast(pa.int32()))
    parts = {"a": narrow, "b": raw.slice(120, 200), "c": raw.slice(320, 180)}
    for stem, table in parts.items():
        pq.write_table(table, tmp_path / f"{stem}.parquet")
    [row] = run(writer(), *(tmp_path / f"{stem}.parquet" for stem in parts)).to_pylist()
    assert (row["file"], row["rows"]) == (f"file://{tmp_path}/a.parquet and 2 more file(s)", 500)
    staging, _ = folders
    assert files_of(staging) == ["a-0000.parquet", "a-0001.parquet"]  # 500 rows at 200 a file
    out = pa.concat_tables(pq.read_table(staging / n) for n in files_of(staging))
    assert out.schema.field("customer_id").type == pa.int64()
    assert out["customer_id"].to_pylist() == raw["customer_id"].to_pylist()

    ages = raw["age"].to_pylist()
    ages[330] = 7  # in c.parquet, the piece's third file
    bad = raw.set_column(raw.schema.get_field_index("age"), "age", pa.array(ages, raw.schema.field("age").type))
    pq.write_table(bad.slice(320, 180), tmp_path / "c.parquet")
    with pytest.raises(InvalidInput, match=r"/c\.parquet: 1 invalid row"):
        run(writer("fail"), *(tmp_path / f"{stem}.parquet" for stem in parts))


def test_batches_of_small_files_are_checked_and_scored_together(writer, raw, tmp_path, folders):
    """Files of 20 rows, read 64 rows at a time: three files' batches go through the checks and
    the scorer as one (their cost is per batch as well as per row). A bad row then names the
    files that batch joined."""
    stems = [f"f{i}" for i in range(5)]
    ages = raw["age"].to_pylist()
    ages[25] = 7  # in f1
    bad = raw.set_column(raw.schema.get_field_index("age"), "age", pa.array(ages, raw.schema.field("age").type))
    for i, stem in enumerate(stems):
        pq.write_table(raw.slice(20 * i, 20), tmp_path / f"{stem}.parquet")
    [row] = run(writer(), *(tmp_path / f"{stem}.parquet" for stem in stems)).to_pylist()
    assert row["rows"] == 100
    out = pq.read_table(folders[0] / "f0-0000.parquet")
    assert out["customer_id"].to_pylist() == raw["customer_id"].to_pylist()[:100]
    pq.write_table(bad.slice(20, 20), tmp_path / "f1.parquet")
    with pytest.raises(
        InvalidInput, match=rf"^one of file://{tmp_path}/f0\.parquet to file://{tmp_path}/f2\.parquet: 1"
    ):
        run(writer("fail"), *(tmp_path / f"{stem}.parquet" for stem in stems))


def test_batches_of_other_schemas_or_too_many_rows_are_not_joined():
    from jobs.part_writer import joined

    small = pa.record_batch({"x": pa.array([1, 2], pa.int64())})
    other = pa.record_batch({"x": pa.array([3], pa.int32())})
    full = pa.record_batch({"x": pa.array(range(4), pa.int64())})
    batches = [(0, small), (1, small), (2, other), (3, full), (4, small), (5, small), (6, small)]
    assert [(files, b.num_rows) for files, b in joined(batches, 4)] == [
        ((0, 1), 4),
        ((2, 2), 1),
        ((3, 3), 4),
        ((4, 5), 4),
        ((6, 6), 2),
    ]


def test_batches_of_wide_rows_are_joined_up_to_their_bytes():
    """Small files of photos: joined as long as the batch stays within the bytes, whatever its rows."""
    from jobs.part_writer import joined

    photos = pa.record_batch({"photo": pa.array([b"x" * 1000] * 3, pa.binary())})  # 3,016 bytes of buffers
    batches = [(i, photos) for i in range(5)]
    assert [(files, b.num_rows) for files, b in joined(batches, 100, most_bytes=7000)] == [
        ((0, 1), 6),
        ((2, 3), 6),
        ((4, 4), 3),
    ]


def test_an_invalid_row_in_a_piece_names_its_file_and_row_groups(writer, raw, tmp_path):
    ages = raw["age"].to_pylist()
    ages[420] = 7
    bad = raw.set_column(raw.schema.get_field_index("age"), "age", pa.array(ages, raw.schema.field("age").type))
    pq.write_table(bad, tmp_path / "big.parquet", row_group_size=100)
    run(writer("fail"), tmp_path / "big.parquet", row_groups=[0, 1])  # row 420 is not in these
    with pytest.raises(InvalidInput, match=r"big\.parquet \(row groups 3-4\): 1 invalid row"):
        run(writer("fail"), tmp_path / "big.parquet", row_groups=[3, 4])


# a fresh interpreter: the switch holds for the rest of a process's life
ACTOR_IN_A_PROCESS = """
import sys
from jobs.huge_pages import turned_off
from jobs.part_writer import ScoreAndWrite
class Predictor(dict):
    refuses_non_finite = frozenset()
ScoreAndWrite(Predictor, {}, validator=None, columns=[], dictionary=[], staging="", filesystem=None,
              batch_size=1, rows_per_file=1, score_column="s", huge_pages=sys.argv[1] == "on")
print(turned_off())
"""


STATUS = Path("/proc/self/status")


@pytest.mark.skipif(
    not STATUS.exists() or "THP_enabled:" not in STATUS.read_text(),
    reason="the kernel does not report transparent huge pages per process",
)
def test_an_actor_turns_transparent_huge_pages_off_for_its_process_unless_the_job_keeps_them():
    def turned_off(setting: str) -> str:
        argv = [sys.executable, "-c", ACTOR_IN_A_PROCESS, setting]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    assert turned_off("off") == "True"
    assert turned_off("on") == "False"


def test_the_share_of_the_actors_time_on_a_core():
    """Of the stages' seconds, the share the scoring threads' CPU time covers; none where a piece
    also ran on pyarrow's and torch's threads, which a thread's CPU time leaves out."""
    from jobs.part_writer import on_cpu_share

    def piece(cpu: float) -> dict[str, float]:
        return {"read_s": 0.5, "validate_s": 0.1, "score_s": 0.3, "write_s": 0.1, "cpu_s": cpu}

    assert on_cpu_share([piece(0.9), piece(0.7)]) == pytest.approx(0.8)
    assert on_cpu_share([piece(0.9), piece(float("nan"))]) is None
    assert on_cpu_share([]) is None
