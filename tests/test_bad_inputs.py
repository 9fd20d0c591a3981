"""A corpus of bad inputs, each with the outcome a user should get: a clear error that names the
file, column, key or value, or output that follows the job's validation policy. In every case
the predictions committed before stay as they were unless the run succeeded."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import commit, demo_data
from jobs.config import JobConfig
from jobs.failures import EXIT_TRY_AGAIN, exit_status
from jobs.lake import Lake, LakeError, NotLanded
from jobs.predict import run_job
from jobs.validation import InvalidInput
from tests.conftest import DAY
from tests.jobfiles import conf_with_job

N = 400


@dataclass(frozen=True)
class Case:
    id: str
    write: Callable[[Lake, str], None]  # writes the input partition of table
    error: type[Exception] | None = None
    match: str = ""  # regex on the error, or on the quarantine reasons
    scored: int | None = None
    quarantined: int = 0
    validation: dict = field(default_factory=dict)
    ready_marker: str | None = None  # the job file's input.ready_marker
    passthrough: tuple[str, ...] = ()  # the job file's output.passthrough


def good(rows: int = N) -> pa.Table:
    return demo_data.generate(rows, DAY)


def files(*tables: pa.Table, raw: dict[str, bytes] | None = None) -> Callable[[Lake, str], None]:
    """Write tables as separate Parquet files, as an outside producer would (no manifest)."""

    def write(lake: Lake, path: str) -> None:
        lake.fs.create_dir(path, recursive=True)
        for i, t in enumerate(tables):
            pq.write_table(t, f"{path}/part-{i}.parquet", filesystem=lake.fs)
        for name, data in (raw or {}).items():
            with lake.fs.open_output_stream(f"{path}/{name}") as f:
                f.write(data)

    return write


def in_folders(top: tuple[pa.Table, ...], folders: dict[str, pa.Table]) -> Callable[[Lake, str], None]:
    """Tables in folders of the partition (``region=eu``), as a writer partitioned by a second
    column leaves them, and ``top`` at its top level."""

    def write(lake: Lake, path: str) -> None:
        files(*top)(lake, path)
        for folder, table in folders.items():
            files(table)(lake, f"{path}/{folder}")

    return write


def replaced(table: pa.Table, column: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, values)


def every(k: int, value: object, column: str, t: pa.Table | None = None) -> pa.Table:
    """Set ``column`` to ``value`` in every k-th row."""
    t = t if t is not None else good()
    mask = pa.array(np.arange(t.num_rows) % k == 0)
    return replaced(t, column, pc.if_else(mask, pa.scalar(value, t.schema.field(column).type), t.column(column)))


def truncated() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(good(), sink)
    data = sink.getvalue().to_pybytes()
    return data[: len(data) // 2]


def dup_ids() -> pa.Table:
    t = good()
    ids = t.column("customer_id").to_numpy().copy()
    ids[:10] = ids[10:20]
    return replaced(t, "customer_id", pa.array(ids))


def retyped(column: str, type_: pa.DataType, t: pa.Table | None = None) -> pa.Table:
    """``column`` stored as ``type_``, as another writer stores it."""
    t = t if t is not None else good()
    return replaced(t, column, pc.cast(t.column(column), type_))


def spark_and_polars_numbers() -> pa.Table:
    """Money as Spark's decimal, a count and the key unsigned, as Polars writes them."""
    t = retyped("customer_id", pa.uint64(), retyped("tenure_months", pa.uint32()))
    charges = [None if v is None else decimal.Decimal(f"{v:.2f}") for v in t.column("monthly_charges").to_pylist()]
    return replaced(t, "monthly_charges", pa.array(charges, pa.decimal128(10, 2)))


QUARANTINE = {"max_invalid_share": 0.5}
CASES = [
    Case("corrupt_file", files(good(), raw={"part-9.parquet": b"PAR1 this is not parquet at all"}), LakeError,
         r"cannot read Parquet file .*/part-9\.parquet"),
    Case("truncated_file", files(good(), raw={"part-9.parquet": truncated()}), LakeError,
         r"cannot read Parquet file .*/part-9\.parquet"),
    Case("zero_byte_file", files(good(), raw={"part-9.parquet": b""}), LakeError, r"part-9\.parquet"),
    # not there yet: the DAG waits for it (airflow.wait_for_input_minutes), lakecast run exits 75
    Case("empty_partition", files(), NotLanded, r"holds no Parquet data files"),
    Case("missing_partition", lambda lake, path: None, NotLanded, r"ds=2026-11-21 does not exist"),
    Case("without_its_ready_marker", files(good()), NotLanded,
         r"ds=2026-11-21 has no _SUCCESS yet \(input\.ready_marker\)", ready_marker="_SUCCESS"),
    Case("with_its_ready_marker", files(good(), raw={"_SUCCESS": b""}), scored=N, ready_marker="_SUCCESS"),
    # a day written in folders is every file below its folder, as Spark reads it
    Case("rows_in_folders", in_folders((), {"region=eu": good(), "region=us": good()}), scored=2 * N),
    Case("a_folder_beside_the_files", in_folders((good(),), {"late": good()}), scored=2 * N),
    # Spark's partitionBy("ds", "region") keeps the column in the folders' names only, and writes
    # Hive's folder for a null: a value the model requires, so its rows are invalid
    Case("a_column_in_folder_names_only", in_folders((), {
        "region=north": good().drop_columns(["region"]),
        "region=south%20east": good().drop_columns(["region"]),
    }), scored=2 * N),
    Case("a_null_in_a_folder_name", in_folders((good(),), {
        "region=__HIVE_DEFAULT_PARTITION__": good().drop_columns(["region"])
    }), scored=N, quarantined=N, match=r"region: null", validation={"max_invalid_share": 0.5}),
    Case("a_key_in_a_folder_name", in_folders((), {"customer_id=7": good().drop_columns(["customer_id"])}),
         InvalidInput, r"customer_id=7/part-0\.parquet: missing column 'customer_id'$"),  # no entity's id
    Case("a_number_in_a_folder_name_that_is_none", in_folders((), {"tenure_months=abc": good().drop_columns(
        ["tenure_months"])}), InvalidInput, r"tenure_months=abc/part-0\.parquet: column 'tenure_months', from the "
         r"name of the folder it lies in: 'abc' is not a number, which the model expects"),
    Case("a_writers_temporary_folder", in_folders((good(),), {"_temporary": good(), ".hive-staging": good()}),
         scored=N),
    Case("missing_column", files(good(), good().drop_columns(["tenure_months"])), InvalidInput,
         r"part-1\.parquet: missing column 'tenure_months'"),
    # a column the job copies into its predictions, which one producer's file lacks
    Case("missing_passthrough_column", files(good().append_column("batch", pa.array(["a"] * N)), good()), InvalidInput,
         r"part-1\.parquet: missing column 'batch' \(listed in output\.passthrough\)$", passthrough=("batch",)),
    Case("zero_row_file", files(good(), good().slice(0, 0)), scored=N),
    # scoring nothing would replace the previous predictions with an empty partition
    Case("only_zero_row_files", files(good().slice(0, 0), good().slice(0, 0)), NotLanded,
         r"ds=2026-11-21 holds 2 Parquet file\(s\) and no row: no data for raw/bad_only_zero_row_files on 2026-11-21"),
    Case("every_row_quarantined", files(every(1, None, "contract_type")), scored=0, quarantined=N,
         match=r"contract_type: null", validation=QUARANTINE | {"max_invalid_share": 1.0}),
    Case("extra_columns", files(good().append_column("surprise", pa.array(["x"] * N))), scored=N),
    Case("wrong_dtype", files(replaced(good(), "age", pa.array(["forty"] * N))), InvalidInput,
         r"part-0\.parquet: column 'age' has type string, the model expects a number"),
    Case("all_null_optional_column", files(replaced(good(), "satisfaction_score", pa.nulls(N, pa.float64()))),
         scored=N),
    Case("all_null_required_column", files(replaced(good(), "region", pa.nulls(N, pa.string()))), InvalidInput,
         r"400 of 400 rows \(100\.00%\) failed validation, above the job's limit of 1%"),
    Case("nan_and_inf", files(every(4, float("inf"), "monthly_charges", every(5, float("nan"), "tenure_months"))),
         # NaN is a missing value: allowed where the signature allows nulls, not in tenure_months
         scored=N - 160, quarantined=160, match=r"monthly_charges: infinite|tenure_months: NaN", validation=QUARANTINE),
    # the scorer finds NaN as it converts the numbers, and refuses the batch for a check in full, which allows it here
    Case("nan_where_nulls_are_allowed", files(every(3, float("nan"), "satisfaction_score")), scored=N),
    Case("unseen_category_allowed", files(every(10, "quantum", "plan_tier")), scored=N),
    Case("unseen_category_listed", files(every(10, "quantum", "plan_tier")), scored=N - 40, quarantined=40,
         match=r"plan_tier: not an allowed category",
         validation=QUARANTINE | {"columns": {"plan_tier": {"categories": ["basic", "standard", "premium", "fiber"]}}}),
    Case("out_of_range", files(every(8, 150, "age")), scored=N - 50, quarantined=50, match=r"age: above 120",
         validation=QUARANTINE | {"columns": {"age": {"min": 18, "max": 120}}}),
    Case("null_with_fail_policy", files(every(50, None, "contract_type")), InvalidInput,
         r"invalid row\(s\) in a batch, e\.g\. customer_id=\d+: contract_type: null",
         validation={"on_invalid_rows": "fail"}),
    Case("too_many_invalid_rows", files(every(2, None, "contract_type")), InvalidInput,
         r"200 of 400 rows \(50\.00%\) failed validation"),
    # other writers' types, file by file: strings as string_view (Polars 1.38) or large_string, an
    # int32 key, Spark's decimals and Polars' unsigned integers; one output file joins the three
    Case("other_writers_types", files(retyped("region", pa.string_view(), retyped("contract_type", pa.large_string())),
                                      retyped("customer_id", pa.int32()), spark_and_polars_numbers()),
         scored=3 * N),
    # a column holding only nulls, as pandas stores an all-None column, has Arrow's null type
    Case("null_typed_columns", files(replaced(good(), "satisfaction_score", pa.nulls(N)),
                                     replaced(good(), "tenure_months", pa.nulls(N))),
         scored=N, quarantined=N, match=r"tenure_months: null", validation={"max_invalid_share": 1.0}),
    # one output file would join the two: named before Ray starts, not an actor's traceback
    Case("key_a_number_here_a_string_there", files(good(), retyped("customer_id", pa.string())), InvalidInput,
         r"part-1\.parquet: column 'customer_id' has type string, where .*/part-0\.parquet has int64: the files of a "
         r"partition must agree on each column's type"),
    Case("null_key", files(every(N, None, "customer_id")), scored=N - 1, quarantined=1, match=r"customer_id: null",
         validation=QUARANTINE),
    Case("duplicate_ids_kept", files(dup_ids()), scored=N),
    Case("duplicate_ids_fail", files(dup_ids()), InvalidInput, r"10 row\(s\) repeat a customer_id already seen",
         validation={"duplicate_keys": "fail"}),
    Case("very_long_strings", files(every(20, "x" * 5000, "region")), scored=N - 20, quarantined=20,
         match=r"region: longer than 1024", validation=QUARANTINE),
]  # fmt: skip


@pytest.fixture
def case_lake(settings, tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def make_job(base: JobConfig, case: Case) -> JobConfig:
    name = f"bad_{case.id}"
    return base.model_copy(update={
        "name": name,
        "input": base.input.model_copy(update={"table": f"raw/{name}", "ready_marker": case.ready_marker}),
        "output": base.output.model_copy(
            update={"table": f"predictions/{name}", "passthrough": list(case.passthrough)}
        ),
        "validation": base.validation.model_validate(case.validation),
    })  # fmt: skip


def commit_previous(lake: Lake, table: str) -> None:
    """A committed partition from an earlier night that a failed run must not touch."""
    staging = lake.staging_path(table, DAY, "previous")
    lake.fs.create_dir(staging, recursive=True)
    pq.write_table(pa.table({"customer_id": [1, 2, 3]}), f"{staging}/part-previous.parquet", filesystem=lake.fs)
    manifest = {"scoring_run_id": "previous", "output": [{"file": "part-previous.parquet", "rows": 3}]}
    commit.commit(lake, staging, table, DAY, manifest)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, case_lake: Lake, settings, registered, ray_local, churn_job):
    job = make_job(churn_job, case)
    lake = case_lake
    case.write(lake, lake.partition_path(job.input.table, DAY))
    commit_previous(lake, job.output.table)
    run_settings = settings.model_copy(update={"lake_root": lake.root})

    if case.error is not None:
        with pytest.raises(case.error, match=case.match) as raised:
            run_job(job, DAY, settings=run_settings)
        # our sentence, not Ray's wrapper of it (a subclass too, whose text is a traceback), and
        # without the retry advice Ray Data appends to an actor's error
        assert type(raised.value) is case.error and "Traceback" not in str(raised.value)
        assert "\n" not in str(raised.value), str(raised.value)
        assert lake.read_manifest(job.output.table, DAY)["scoring_run_id"] == "previous"
        assert pads.dataset(lake.partition_path(job.output.table, DAY)).count_rows() == 3
        return

    result = run_job(job, DAY, settings=run_settings)
    out = pads.dataset(lake.partition_path(job.output.table, DAY), format="parquet").to_table()
    assert out.num_rows == case.scored == result.rows - case.quarantined
    assert lake.read_manifest(job.output.table, DAY)["rows"] == case.scored  # committed, even when empty
    quarantine = lake.partition_path(f"quarantine/{job.name}", DAY)
    rejected = pads.dataset(quarantine, format="parquet").to_table() if case.quarantined else None
    assert lake.read_manifest(f"quarantine/{job.name}", DAY)["rows"] == case.quarantined
    if rejected is not None:
        assert rejected.num_rows == case.quarantined
        assert all(__import__("re").search(case.match, r) for r in rejected["reason"].to_pylist())
        # every input row is either scored or quarantined, exactly once
        scored_ids = [out["customer_id"].combine_chunks()] if out.num_rows else []  # no file, no schema
        both = pa.concat_arrays([*scored_ids, rejected["customer_id"].combine_chunks()])
        assert len(both.unique()) == N


def test_a_number_in_some_files_and_in_folder_names_for_others(case_lake, settings, registered, ray_local, churn_job):
    """A day where one writer kept ``num_devices`` (int64) in its file and another wrote it into
    folder names only (``num_devices=3/``, read as a number): the same rows score the same either
    way, so the folder's value reaches the model as the file's does."""
    rows = good().set_column(8, "num_devices", pa.array([3] * N, pa.int64()))
    moved = rows.set_column(0, "customer_id", pc.add(rows["customer_id"], 10 * N)).drop_columns(["num_devices"])
    job = make_job(churn_job, Case("number_in_files_and_folders", lambda lake, path: None))
    in_folders((rows,), {"num_devices=3": moved})(case_lake, case_lake.partition_path(job.input.table, DAY))

    result = run_job(job, DAY, settings=settings.model_copy(update={"lake_root": case_lake.root}))

    assert result.rows == 2 * N
    out = pads.dataset(case_lake.partition_path(job.output.table, DAY), format="parquet").to_table()
    score = dict(zip(out["customer_id"].to_pylist(), out["churn_probability"].to_pylist(), strict=True))
    in_file = [score[i] for i in rows["customer_id"].to_pylist()]
    from_folder = [score[i + 10 * N] for i in rows["customer_id"].to_pylist()]
    # to float32's last digits: the two files' rows may be scored in batches cut otherwise
    assert from_folder == pytest.approx(in_file, rel=1e-6) and len(set(in_file)) > 1


def test_a_key_stored_as_int32_in_one_file_and_int64_in_another_is_written_as_int64_in_every_file(
    case_lake, settings, registered, ray_local, churn_job
):
    """Two writers of one day, one storing the key and a count as int32, the other as int64, each
    file scored apart: every file of predictions, and of the rows set aside, gives both the type
    they widen to, as a file joining rows of both would, so a reader of the partition (Spark,
    pyarrow's datasets) finds one schema in it. The comparison reads a labeled table written so
    whole."""
    from jobs.ab import run_compare

    rows = 1_000  # output.rows_per_file's least: each file a piece of its own, written apart

    def two_writers(with_label: bool = False) -> list[pa.Table]:
        narrow, wide = (demo_data.generate(rows, DAY, with_label=with_label) for _ in range(2))
        narrow = retyped("customer_id", pa.int32(), retyped("num_devices", pa.int32(), narrow))
        wide = wide.set_column(0, "customer_id", pc.add(wide["customer_id"], 10 * rows))
        return [every(50, None, "contract_type", t) for t in (narrow, wide)]  # 20 rows of each set aside

    case = Case("int32_and_int64", lambda lake, path: None, validation=QUARANTINE, passthrough=("num_devices",))
    job = make_job(churn_job, case)
    job = job.model_copy(update={"output": job.output.model_copy(update={"rows_per_file": rows})})
    files(*two_writers())(case_lake, case_lake.partition_path(job.input.table, DAY))
    here = settings.model_copy(update={"lake_root": case_lake.root})

    assert run_job(job, DAY, settings=here).quarantined == 40

    widened = {job.output.table: ["customer_id", "num_devices"], f"quarantine/{job.name}": ["customer_id"]}
    for table, columns in widened.items():
        written = case_lake.data_files(table, DAY)
        assert len(written) == 2
        for f in written:
            schema = pq.read_schema(f.path)
            assert [schema.field(c).type for c in columns] == [pa.int64()] * len(columns), (f.path, schema)
    files(*two_writers(with_label=True))(case_lake, case_lake.partition_path(job.ab.labeled_table, DAY))
    assert run_compare(job, DAY, settings=here)["rows"] == 2 * rows - 40


def test_user_errors_from_the_command_line(home, registered, capsys):
    """One sentence each, and an exit status that tells a scheduler whether to try again."""
    from jobs.cli import main
    from jobs.failures import EXIT_FIX_FIRST, EXIT_TRY_AGAIN

    fix, again = EXIT_FIX_FIRST, EXIT_TRY_AGAIN
    cases = {
        ("run", "../../etc", "--date", "2026-11-21"): ("job name must be lower-case letters", fix),
        ("run", "churn", "--date", "2026-11-21/../../x"): ("date must be a calendar date as YYYY-MM-DD", fix),
        ("run", "churn", "--date", "tomorrow"): ("got 'tomorrow'", fix),
        ("run", "churn", "--date", "2026-11-21", "--alias", "no-such-alias"): ("has no alias 'no-such-alias'", fix),
        ("show", "churn", "--date", "1999-01-01"): ("no committed predictions for job 'churn' on 1999-01-01", fix),
        # outcomes not there yet: they may land, and the job file may say they land late
        ("compare", "churn", "--date", "1999-01-01"): (
            "no data for labeled/customers on 1999-01-01; where outcomes land days after the day they describe, "
            "set ab.label_delay_days in conf/jobs/churn.yaml",
            again,
        ),
        # the partition may still land: a retry can pass
        ("run", "churn", "--date", "1999-01-01"): ("no data for raw/customers on 1999-01-01", again),
    }
    for argv, (message, status) in cases.items():
        assert main(list(argv)) == status, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_model_version_below_one_is_refused_by_the_flag(command, capsys):
    """MLflow numbers versions from 1: ``--version 0`` is a slip, refused before anything starts
    (``submit`` passed it on as no version at all, scoring with the job file's alias)."""
    from jobs.cli import main

    with pytest.raises(SystemExit) as exited:
        main([command, "churn", "--date", "2026-11-21", "--version", "0"])
    assert exited.value.code == 2
    assert "argument --version: '0' is not a whole number of at least 1" in capsys.readouterr().err


def test_show_without_a_date_before_any_commit_says_so(home, tmp_path, monkeypatch, capsys):
    from jobs.cli import main
    from jobs.failures import EXIT_FIX_FIRST
    from tests.jobfiles import conf_with_job

    monkeypatch.setenv("LAKECAST_CONF", str(conf_with_job(tmp_path / "conf", "nothing_yet", ab=None)))
    assert main(["show", "nothing_yet"]) == EXIT_FIX_FIRST
    err = capsys.readouterr().err
    assert "no committed predictions for job 'nothing_yet' yet (none under " in err and "Traceback" not in err, err
    assert err.rstrip().endswith("predictions/nothing_yet)"), err
    assert main(["show", "nothing_yet", "--date", "2026-11-21"]) == EXIT_FIX_FIRST
    err = capsys.readouterr().err
    assert "no committed predictions for job 'nothing_yet' on 2026-11-21 (none yet under " in err, err

    # the A/B commands, on a job with no ab: section
    job = "nothing_yet"
    for argv in (["compare", job, "--date", "2026-11-21"], ["promote", job], ["rollback", job]):
        assert main(argv) == EXIT_FIX_FIRST, argv
        err = capsys.readouterr().err
        assert f"conf/jobs/nothing_yet.yaml has no ab: section, which lakecast {argv[0]} needs" in err, err


def lakecast(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """``lakecast ARGV`` as a user runs it in a terminal, on this session's home and a Ray of its
    own (no RAY_ADDRESS), with ``env`` added to the environment."""
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    command = [str(Path(sys.executable).with_name("lakecast")), *argv]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder of its own under /tmp, for RAY_TMPDIR: short, as a Ray's socket paths beneath it
    must be (pytest's tmp_path is too deep for them)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_partition_that_is_not_there_is_said_before_any_ray_starts(home, short_tmp):
    """`lakecast run` on a date whose partition has not landed, as a cron job or a user runs it:
    the sentence and the exit status that says to try again, and no Ray started for it (a
    private Ray's start is seconds of two busy cores, and would only delay the sentence)."""
    proc = lakecast("run", "churn", "--date", "1999-01-01", RAY_TMPDIR=str(short_tmp))
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"lakecast: partition {home}/lake/raw/customers/ds=1999-01-01 does not exist: no data for "
        "raw/customers on 1999-01-01"
    )
    assert list(short_tmp.iterdir()) == []  # a Ray writes its session here first thing


def test_a_temporary_folder_too_deep_for_rays_sockets_is_named(lake, registered, short_tmp):
    """A local Ray keeps its sockets under RAY_TMPDIR (or TMPDIR), and Linux limits a socket's
    path to 107 bytes: under a deep folder (a test runner's, a service's private /tmp) Ray cannot
    start. The run says which folder and what to set, not Ray's traceback, and nothing is written."""
    deep = short_tmp / ("d" * 60) / ("e" * 30)
    deep.mkdir(parents=True)
    before = lake.read_manifest("predictions/churn", DAY)
    proc = lakecast("run", "churn", "--date", DAY.isoformat(), RAY_TMPDIR=str(deep))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"lakecast: cannot start a local Ray under {deep}: the paths of its sockets there would pass the 107 "
        "bytes a Unix socket's path may have; set RAY_TMPDIR to a shorter folder, such as /tmp"
    )
    assert lake.read_manifest("predictions/churn", DAY) == before  # nothing published


def test_a_ray_address_where_no_ray_answers_fails_in_seconds(lake, registered):
    """RAY_ADDRESS naming a head that is down: Ray's own client would try for about 14 minutes,
    printing a warning every few seconds. The run says so with the status that asks for a retry,
    and publishes nothing."""
    from tests.s3server import free_ports

    port = free_ports(1)[0]  # nothing listens there
    before = lake.read_manifest("predictions/churn", DAY)
    proc = lakecast("run", "churn", "--date", DAY.isoformat(), RAY_ADDRESS=f"127.0.0.1:{port}")
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"lakecast: no Ray answers at 127.0.0.1:{port} (RAY_ADDRESS; Connection refused, 3 tries): check that its "
        "head runs (`ray start --head` prints the address to join), or leave RAY_ADDRESS and ray.address unset to "
        "start a private local Ray"
    )
    assert lake.read_manifest("predictions/churn", DAY) == before


def test_a_ray_address_that_is_a_dashboards_port_is_named_as_such(lake, registered):
    """The commonest mix-up of Ray's two addresses: the dashboard's port (8265, where the Jobs API
    is) given as the head's. Something answers there, so Ray's client would wait as long as for a
    head that is down."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        proc = lakecast("run", "churn", "--date", DAY.isoformat(), RAY_ADDRESS=address)
    finally:
        server.shutdown()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.rstrip().splitlines()[-1] == (
        f"lakecast: {address} (RAY_ADDRESS) answers HTTP: that is a Ray dashboard's port, where `lakecast submit` "
        f"sends a job (http://{address}); `lakecast run` joins a Ray at its head's port (6379 unless `ray start "
        "--port` said otherwise)"
    )


@pytest.mark.slow
def test_an_actors_error_reaches_the_terminal_as_one_sentence(settings, lake, registered, tmp_path):
    """`lakecast run` on a partition that breaks the job's fail policy, as a user runs it: the
    error raised in the actor ends the output as our sentence, without the tracebacks, the retry
    advice and the "open an issue on Ray" that Ray Data prints for an error it does not know."""
    conf = conf_with_job(tmp_path / "conf", "bad_cli", validation={"on_invalid_rows": "fail"})
    files(every(50, None, "contract_type"))(lake, lake.partition_path("raw/bad_cli", DAY))

    proc = lakecast("run", "bad_cli", "--date", DAY.isoformat(), LAKECAST_CONF=str(conf))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.rstrip().splitlines()[-1]
    assert re.fullmatch(
        r"lakecast: \S+/raw/bad_cli/ds=\S+\.parquet: \d+ invalid row\(s\) in a batch, e\.g\. customer_id=\d+: "
        r"contract_type: null \(validation\.on_invalid_rows is 'fail'; set it to 'quarantine' to score the rest\)",
        last,
    ), last
    for noise in ("Traceback", "open an issue", "Failed to apply UDF", "DataContext"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert lake.read_manifest("predictions/bad_cli", DAY) is None  # nothing published


def test_a_failed_run_gives_its_actors_cpus_back_while_its_error_is_held(
    case_lake, settings, registered, ray_local, churn_job
):
    """A process that lives on after a failed run (a notebook, ``airflow dags test``, a service
    calling run_job) keeps the error, and the next run needs the CPUs the failed run's actors
    held. Python's cyclic collector is off here: the run itself must let them go."""
    import gc

    import ray

    job = make_job(churn_job, Case("held", files(), validation={"on_invalid_rows": "fail"}))
    files(every(50, None, "contract_type"))(case_lake, case_lake.partition_path(job.input.table, DAY))
    gc.disable()
    try:
        with pytest.raises(InvalidInput, match=r"invalid row\(s\) in a batch") as raised:
            run_job(job, DAY, settings=settings.model_copy(update={"lake_root": case_lake.root}))
        total = ray.cluster_resources()["CPU"]
        deadline = time.monotonic() + 10
        while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == total, ray.available_resources()
        assert raised.value.__traceback__ is not None  # still held, and still printable
    finally:
        gc.enable()


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A folder on a tmpfs of 8 MiB, to fill: a disk that really runs out, where the machine
    lets the tests mount one (root, as in CI here)."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


# where the first write that finds the disk full goes: the CPU actors' scores, the challenger's
# shadow scores they write first (ab.shadow), the write tasks of the GPU pipeline's shape
FULL_DISK_WRITES = {
    "cpu_actors": r"_staging/predictions/bad_full_disk/\S+\.parquet",
    "shadow": r"_staging/predictions/bad_full_disk_shadow/\S+\.parquet",
    "gpu_shape": r"_staging/predictions/bad_full_disk/\S+",
}


@pytest.mark.parametrize("writer", FULL_DISK_WRITES)
def test_a_full_disk_fails_the_run_as_a_sentence_and_keeps_the_last_output(
    writer, small_disk, settings, registered, ray_local, churn_job, monkeypatch
):
    """The lake's disk fills up during a rerun: the run says which file it could not write, with
    the status that lets Airflow retry, and last night's committed predictions stay as they were."""
    from jobs import pipeline

    lake = Lake(str(small_disk / "lake"))
    job = make_job(churn_job, Case("full_disk", files()))
    if writer == "shadow":
        job = job.model_copy(update={"ab": job.ab.model_copy(update={"shadow": True})})
    if writer == "gpu_shape":  # no GPU here: the same pipeline on a CPU actor
        monkeypatch.setattr(pipeline, "actors_read_and_write", lambda gpus: False)
        job = job.model_copy(update={"compute": job.compute.model_copy(update={"cpus_per_actor": 1})})
    files(good(20_000))(lake, lake.partition_path(job.input.table, DAY))
    commit_previous(lake, job.output.table)
    run_settings = settings.model_copy(update={"lake_root": lake.root})
    committed = lake.partition_path(job.output.table, DAY)
    before = {p.name: p.read_bytes() for p in Path(committed).iterdir()}
    free = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 65_536))  # 64 KiB left

    with pytest.raises(
        LakeError, match=rf"cannot write \S+/{FULL_DISK_WRITES[writer]}: .*No space left on device"
    ) as raised:
        run_job(job, DAY, settings=run_settings)

    assert type(raised.value) is LakeError and exit_status(raised.value) == EXIT_TRY_AGAIN
    assert {p.name: p.read_bytes() for p in Path(committed).iterdir()} == before
    assert not [p for p in (small_disk / "lake" / "_staging").rglob("*") if p.is_file()]  # no half-written file left


def test_a_disk_that_fills_up_at_the_commit_keeps_the_last_output(small_disk):
    """The disk fills between the actors' last file and the commit's manifest: the same sentence,
    and the committed partition as it was."""
    lake = Lake(str(small_disk / "lake"))
    commit_previous(lake, "predictions/full")
    committed = Path(lake.partition_path("predictions/full", DAY))
    before = {p.name: p.read_bytes() for p in committed.iterdir()}
    staging = lake.staging_path("predictions/full", DAY, "tonight")
    lake.fs.create_dir(staging, recursive=True)
    pq.write_table(pa.table({"customer_id": [4, 5]}), f"{staging}/part-tonight.parquet")
    free = os.statvfs(small_disk)
    (small_disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize))

    manifest = {"scoring_run_id": "tonight", "output": [{"file": "part-tonight.parquet", "rows": 2}]}
    with pytest.raises(LakeError, match=r"cannot write \S+/_staging/\S+: .*No space left on device"):
        commit.commit(lake, staging, "predictions/full", DAY, manifest)

    assert {p.name: p.read_bytes() for p in committed.iterdir()} == before


def test_s3_that_refuses_the_credentials_or_lacks_the_bucket_is_not_retried(
    home, registered, s3_env, monkeypatch, capsys
):
    """A wrong secret or a bucket's typo fails the same way on every try: exit 2, not 75."""
    from jobs.cli import main
    from jobs.failures import EXIT_FIX_FIRST
    from tests.conftest import S3_BUCKET

    endpoint, key = s3_env.endpoint, s3_env.env["AWS_ACCESS_KEY_ID"]
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", f"s3://{S3_BUCKET}/lake")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["run", "churn", "--date", DAY.isoformat()]) == EXIT_FIX_FIRST
    # in brackets, what the store said: a listing's answer explains itself (the signature does not match)
    assert re.fullmatch(
        rf"lakecast: the lake s3://{S3_BUCKET}/lake at {re.escape(endpoint)} refused access key {key!r} "
        r"\(The request signature we calculated does not match .*\): check AWS_ACCESS_KEY_ID and "
        r"AWS_SECRET_ACCESS_KEY, and what the bucket's policy grants them",
        capsys.readouterr().err.splitlines()[-1],
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.env["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", "s3://no-such-bucket/lake")
    assert main(["run", "churn", "--date", DAY.isoformat()]) == EXIT_FIX_FIRST
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"lakecast: the lake s3://no-such-bucket/lake: bucket 'no-such-bucket' does not exist at {endpoint}"
    )


def test_read_only_s3_keys_are_refused_by_name_before_anything_is_written(
    home, registered, s3_env, monkeypatch, capsys
):
    from jobs.cli import main
    from jobs.failures import EXIT_FIX_FIRST
    from tests.conftest import S3_BUCKET
    from tests.s3server import READER_KEY, READER_SECRET

    root = f"s3://{S3_BUCKET}/read-only-{os.getpid()}"
    lake = Lake(root)
    demo_data.write_partition(lake, demo_data.RAW_TABLE, DAY, demo_data.generate(2_000, DAY), files=2)
    monkeypatch.setenv("LAKECAST_LAKE_ROOT", root)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER_SECRET)
    assert main(["run", "churn", "--date", DAY.isoformat()]) == EXIT_FIX_FIRST
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"lakecast: the lake {root} at {s3_env.endpoint} refused access key {READER_KEY!r} writing the lock "
        f"{root}/_locks/predictions/churn/ds={DAY}.lock (Access Denied.): check AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, and what the bucket's policy grants them"
    )
    written = lake.s3fs.find(root.removeprefix("s3://"))
    assert written and all("/raw/customers/" in path for path in written), written


def test_unreachable_s3_endpoint_fails_fast_and_clearly(monkeypatch):
    from tests.s3server import free_ports

    port = free_ports(1)[0]  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    lake = Lake("s3://lake/root")
    t0 = time.monotonic()
    with pytest.raises(LakeError, match=rf"cannot reach the lake s3://lake/root at http://127\.0\.0\.1:{port}"):
        lake.data_files("raw/customers", DAY)
    assert time.monotonic() - t0 < 60  # bounded retries, not minutes of waiting


def test_an_s3_endpoint_that_is_not_a_url_is_named_and_not_retried(monkeypatch):
    """``AWS_ENDPOINT_URL=127.0.0.1:8333`` (no scheme) came out of botocore's first request as an
    endpoint out of reach, exit 75, which Airflow would retry for nothing."""
    from jobs.lake import LakeAccessError

    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:8333")
    with pytest.raises(LakeAccessError) as raised:
        Lake("s3://lake/root").data_files("raw/customers", DAY)
    assert str(raised.value) == (
        "the lake s3://lake/root: AWS_ENDPOINT_URL is '127.0.0.1:8333', which is not a URL; write "
        "http://127.0.0.1:8333 (or https://)"
    )
    assert exit_status(raised.value) == 2


def test_manifest_names_what_was_committed(case_lake, settings, registered, ray_local, churn_job):
    lake = case_lake
    extra_columns = next(c for c in CASES if c.id == "extra_columns")  # a successful run
    job = make_job(churn_job, extra_columns)
    extra_columns.write(lake, lake.partition_path(job.input.table, DAY))
    result = run_job(job, DAY, settings=settings.model_copy(update={"lake_root": lake.root}))
    manifest = lake.read_manifest(job.output.table, DAY)
    assert manifest["job"] == job.name and manifest["date"] == DAY.isoformat()
    assert manifest["scoring_run_id"] == result.run_id
    assert manifest["model"]["version"] == result.model.version
    assert [i["path"].rsplit("/", 1)[-1] for i in manifest["input"]] == ["part-0.parquet"]
    assert manifest["rows"] == N and "churn_probability" in manifest["schema"]
    assert manifest["code_version"].startswith("0.1.0")
    assert dt.datetime.fromisoformat(manifest["ended_at"]) >= dt.datetime.fromisoformat(manifest["started_at"])
    json.dumps(manifest)
