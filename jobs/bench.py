"""``lakecast bench``: how close the job comes to what the machine allows and to a hand-written loop.

It generates its data once (``$LAKECAST_HOME/bench/lake``), then measures in one run:

1. IO only: read the job's input columns and write the job's output columns with no model
   (zeros for the scores), through Ray Data and through plain pyarrow (each file read whole, and
   streamed in batches as the job's actors read it), the best of them;
2. model only: the same network on feature tensors already in memory, all cores
   (the bound's two measures, each taken before the job and again after it, the best kept);
3. naive: what a user writes by hand in one process: pandas read, a torch loop over batches,
   pandas write;
4. the lakecast job itself, as ``lakecast run churn`` in a fresh process;
5. the job's own work without Ray: its CPU actors' read-validate-score-write code in plain
   processes shaped as its actors are (a process per actor, a thread per file it scores at
   once), each over its share of the files (:func:`hot_path`).

Steps 3 to 5 run ``rounds`` times, taking turns, and each of their figures is the best of its
rounds, as each of the bound's is the best of its passes and ways: on a machine whose speed
moves by a third within minutes, a bound that is a best of several against a job measured once
would charge the job with the noise. The report keeps every round's own figures too.

With the model on the CPU, reading, writing and the model share the cores, so the bound is
1 / (1/IO + 1/model); efficiency = steady-state rows/s of the job / bound, and vs_naive = naive
wall time / job wall time. Both whole jobs run as fresh processes and are timed from process
start to the last row committed. The fifth splits the efficiency in two, each timed from the
first scored batch: the job's work per row against the bound, then its steady state against that
work done without Ray.

Every step scores with the model version the job file's alias names, or the one ``alias`` names
(``lakecast bench --alias challenger``): how close the job comes to the bound depends on how much
of the work per row is the network's.

Against a running Ray (``RAY_ADDRESS`` or the profile's ``ray.address``) the Ray Data IO pass
goes first, so the job meets a Ray that has run Ray Data before, as a cluster that outlives its
jobs has; the job's workers then belong to that Ray and its peak memory counts the driver only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import bench_report, demo_data, foreground, huge_pages
from jobs.config import ComputeSpec, load_job
from jobs.lake import Lake
from jobs.settings import Settings
from models.predictor import FIRST_BATCH, Lineage, parquet_options

log = logging.getLogger(__name__)

DAY = dt.date(2026, 1, 1)
ROWS_PER_FILE = 1_000_000
JOB = "churn"
# the job, the naive loop and the job's work without Ray each run this many times, taking turns
ROUNDS = 3
SCORE_COLUMN = "churn_probability"
# one lineage for every IO-only file, as one run has: its columns are then built once per size,
# as the job's are (see models.predictor.prediction_table)
IO_LINEAGE = Lineage("model", 1, "0" * 32, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


@dataclass(frozen=True)
class Timed:
    seconds: float
    rows: int
    peak_rss_mb: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def prepare(lake: Lake, rows: int) -> list[str]:
    """The raw partition, generated once per size (a rerun with the same --rows reuses it)."""
    manifest = lake.read_manifest(demo_data.RAW_TABLE, DAY)
    if manifest is None or sum(f["rows"] for f in manifest["output"]) != rows:
        log.info("generating %d rows for the benchmark (once)", rows)
        parts = []
        for i, start in enumerate(range(0, rows, ROWS_PER_FILE)):
            n = min(ROWS_PER_FILE, rows - start)
            parts.append(demo_data.generate(n, DAY, seed=i, first_id=start))
        table = pa.concat_tables(parts)
        demo_data.write_partition(lake, demo_data.RAW_TABLE, DAY, table, files=len(parts))
    return [f.path for f in lake.data_files(demo_data.RAW_TABLE, DAY)]


def output_like(table: pa.Table) -> pa.Table:
    """What the job writes for ``table``'s rows, with no model: the key, a score and a prediction
    (zeros) and the lineage columns. IO only writes this, the job's own output, not a copy of its
    input: the input's 20-odd columns cost three times the job's write, and the job beat a
    "bound" that wrote them (efficiency 1.18 in one 10M-row run)."""
    import numpy as np

    from models.predictor import prediction_table

    return prediction_table(
        table.column(demo_data.KEY),
        np.zeros(table.num_rows, dtype=np.float32),
        key=demo_data.KEY,
        score_column=SCORE_COLUMN,
        threshold=0.5,
        lineage=IO_LINEAGE,
    )


def io_only_pyarrow(
    files: list[str], columns: list[str], out: Path, dictionary: list[str], *, streamed: bool = False
) -> Timed:
    """Read each file's input columns and write the job's output for it with pyarrow, one file per
    core at a time: the machine's IO with all cores (pyarrow reads and writes off the GIL; one
    file after another leaves cores idle while a file is written, and the bound would then be one
    the job can beat).

    ``streamed``: read a file a batch at a time on its own thread, as the CPU actors do (a row
    group, or :data:`jobs.part_writer.READ_ROWS` rows where a row group decodes to more than
    ``READ_BYTES``), rather than whole on pyarrow's threads. Neither way is always the faster
    (pyarrow's default allocator, mimalloc, backs a whole file's fresh buffers slowly), so the
    bench measures both and keeps the better."""
    from concurrent.futures import ThreadPoolExecutor

    from jobs.part_writer import READ_BYTES, READ_ROWS
    from jobs.pieces import file_batches

    out.mkdir(parents=True, exist_ok=True)

    def output(path: str) -> pa.Table:
        if not streamed:
            return output_like(pq.read_table(path, columns=columns, read_dictionary=dictionary))
        batches = file_batches(
            path, None, columns=columns, dictionary=dictionary, rows=READ_ROWS, threads=False, whole_up_to=READ_BYTES
        )
        return pa.concat_tables(output_like(pa.Table.from_batches([batch])) for batch in batches)

    def copy(i: int, path: str) -> int:
        written = output(path)
        pq.write_table(written, out / f"part-{i}.parquet", **parquet_options(written, key=demo_data.KEY))
        return written.num_rows

    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        rows = sum(pool.map(copy, range(len(files)), files))
    return Timed(time.perf_counter() - t0, rows)


def io_only_ray(files: list[str], columns: list[str], out: Path, dictionary: list[str]) -> Timed:
    from jobs.ray_runtime import read_parquet_files

    t0 = time.perf_counter()
    dataset = read_parquet_files(files, filesystem=None, columns=columns, dictionary=dictionary)
    # Ray Data's writer takes one set of options for all its files: the key's encoding, which
    # parquet_options picks from the key's values, stays Parquet's default here
    schema = output_like(pa.table({demo_data.KEY: pa.array([], pa.int64())})).schema
    dataset.map_batches(output_like, batch_format="pyarrow").write_parquet(
        str(out), min_rows_per_file=ROWS_PER_FILE, **parquet_options(schema)
    )
    return Timed(time.perf_counter() - t0, sum(pq.ParquetFile(f).metadata.num_rows for f in files))


SETTLE_PAUSE_BYTES = 64 << 20  # about 2.4M rows of the churn table: below, no pause (_settle)


def _settle(files: list[str]) -> None:
    """Start the next step from the same state as every other: the disk has written back the
    step before (its output, files just deleted), and the input is in the page cache.

    The development machine's VM drops cached file pages within minutes, and a step that read
    its input half out of the cache read it 50% slower (0.35 against 0.23 s per 1M-row file): the
    first step, the job, paid for the disk where the baselines after it did not.

    The second's pause after the sync lets the virtual disk finish what the sync handed it. At a
    size whose steps take a second or less (the tests' benches at 20,000 rows) it settled nothing
    worth measuring and added 9 s, a tenth of the bench: those skip it."""
    os.sync()
    if sum(os.path.getsize(path) for path in files) >= SETTLE_PAUSE_BYTES:
        time.sleep(1)
    for path in files:
        with open(path, "rb") as f:
            while f.read(1 << 23):
                pass


def _io_only_ray(
    settings: Settings, files: list[str], columns: list[str], scratch: Path, dictionary: list[str]
) -> Timed:
    import ray

    from jobs.ray_runtime import ensure_ray

    ensure_ray(settings)
    try:
        return io_only_ray(files, columns, scratch / "io-ray", dictionary)
    finally:
        ray.shutdown()  # a private Ray stops; a running one is only disconnected from


def bound_pass(
    files: list[str], model_uri: str, batch_size: int | None, scratch: Path, *, runs: int, huge_pages_off: bool
) -> dict[str, float]:
    """IO only (pyarrow, each file whole and streamed, each the best of ``runs``) and model only,
    in rows/s: one pass of the bound, taken in a fresh process (``python -m jobs.bench bound``)
    so that it reads under the job's actors' memory policy (transparent huge pages, the
    allocator's setting) while the bench's own process keeps the kernel's and the environment's.
    ``batch_size`` None (the job's is ``auto``, not chosen yet): IO only.

    The bound is measured before the job and again after it, and the best of both passes is kept:
    the machine's speed moves within minutes, and a bound measured in a slow stretch alone would
    flatter the job (one run's model only read 27M rows/s after the job where the first pass read
    63M)."""
    import mlflow

    if huge_pages_off:
        huge_pages.turn_off()
    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().arrow_scorer()
    return bound_figures(model, files, scratch, batch_size, runs=runs)


def bound_figures(
    model: Any, files: list[str], scratch: Path, batch_size: int | None, *, runs: int
) -> dict[str, float]:
    """One pass of the bound's measures, in rows/s: IO only by pyarrow, each file read whole and
    streamed (``io_whole``, ``io_streamed``: each the best of ``runs``), and model only
    (``model``; left out where ``batch_size`` is None)."""
    columns, categorical = input_columns(model)
    found = {
        f"io_{way}": max(
            io_only_pyarrow(
                files, columns, scratch / f"io-{way}-{i}", categorical, streamed=way == "streamed"
            ).rows_per_s
            for i in range(runs)
        )
        for way in ("whole", "streamed")
    }
    if batch_size:
        found["model"] = model_only(model, files, batch_size).rows_per_s
    return found


def input_columns(model: Any) -> tuple[list[str], list[str]]:
    """The columns the job reads for ``model`` (the key and its inputs), and those of them read
    dictionary-encoded, as the job reads its categorical columns."""
    return [demo_data.KEY, *model.input_columns], list(model.spec.categorical)


def model_only(model: Any, files: list[str], batch_size: int, passes: int = 5) -> Timed:
    """The network alone on its input tensors already in memory, with every core: the scorer's
    ``forward`` on what its ``inputs`` made of the first file, in the job's batch size.

    The best of ``passes`` passes: one pass over 1M rows lasts tens of milliseconds, and single
    passes read 28M to 67M rows/s on this shared machine."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    table = pq.read_table(files[0], columns=model.input_columns)
    numeric, codes, slots, sizes = model.inputs(table)
    batches = [
        (x, c, slots, sizes) for x, c in zip(numeric.split(batch_size, dim=1), codes.split(batch_size), strict=True)
    ]
    best = float("inf")
    with torch.inference_mode():
        model.forward(*batches[0])  # warm up, and the scorer picks the first layer's form
        for _ in range(passes):
            t0 = time.perf_counter()
            for batch in batches:
                torch.sigmoid(model.forward(*batch))
            best = min(best, time.perf_counter() - t0)
    return Timed(best, table.num_rows)


@dataclass(frozen=True)
class Peak:
    """Peak memory of a process tree, in MiB."""

    rss_mb: float  # summed RSS: pages shared between processes (Ray's object store) count in each
    pss_mb: float | None  # summed PSS: shared pages split between their processes (Linux only)


class MemorySampler:
    """Peak memory of a process and all its descendants (a private Ray's workers included).

    RSS every 0.25 s; PSS, which costs about 3 ms per process to read here, every second: a
    streaming job's memory plateaus for seconds, and sampling faster would take CPU from the job
    it measures (each sample walks every process on the machine to find the job's).
    """

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.rss = self.pss = 0
        self.has_pss = hasattr(psutil.Process, "memory_full_info") and sys.platform == "linux"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            procs = self._processes()
            self.rss = max(self.rss, self._sum(procs, lambda p: p.memory_info().rss))
            if self.has_pss and tick % 4 == 0:
                self.pss = max(self.pss, self._sum(procs, lambda p: p.memory_full_info().pss))
            tick += 1
            time.sleep(0.25)

    def _processes(self) -> list:
        import psutil

        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    @staticmethod
    def _sum(procs: list, measure: Callable[[Any], int]) -> int:
        import psutil

        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += measure(p)
        return total

    def stop(self) -> Peak:
        self._stop.set()
        self._thread.join()
        return Peak(self.rss / 2**20, self.pss / 2**20 if self.has_pss else None)


def timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, float, str, Peak]:
    """Run a fresh process; return (start unix time, wall seconds, stdout, peak memory)."""
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler(proc.pid)
    with foreground.stopped_with(proc):  # a bench stopped stops the job or loop it is timing
        out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    peak = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{err[-3000:]}")
    return start, seconds, out, peak


@dataclass(frozen=True)
class JobRun:
    """One run of the lakecast job as a fresh process (``lakecast run churn --json``)."""

    run_id: str
    model_uri: str  # the version it scored with
    seconds: float  # process start to the last row committed
    process_seconds: float  # process start to its exit
    startup_s: float  # process start to the first scored batch
    steady_rows_per_s: float  # first scored batch to the last row committed
    milestones_s: dict[str, float]  # the startup's steps, seconds from process start
    actor_seconds: dict[str, float]  # where the actors' time went, by stage
    peak: Peak
    on_cpu_share: float | None = None  # of the actors' time, their threads' on a core


def job_run(bin_dir: Path, env: dict[str, str], rows: int, alias: str | None = None) -> JobRun:
    argv = [str(bin_dir / "lakecast"), "run", JOB, "--date", DAY.isoformat(), "--json"]
    start, process_s, out, peak = timed_process(argv + (["--alias", alias] if alias else []), env)
    result = json.loads(out)
    return JobRun(
        run_id=result["run_id"],
        model_uri=result["model_uri"],
        seconds=result["committed_unix"] - start,
        process_seconds=process_s,
        startup_s=result["first_batch_unix"] - start,
        steady_rows_per_s=rows / (result["committed_unix"] - result["first_batch_unix"]),
        milestones_s={name: round(t - start, 2) for name, t in result["milestones_unix"].items()},
        actor_seconds=result.get("actor_seconds", {}),
        peak=peak,
        on_cpu_share=result.get("actor_on_cpu_share"),
    )


@dataclass(frozen=True)
class NaiveRun:
    """One run of the hand-written loop (:func:`naive`) as a fresh process."""

    seconds: float  # process start to the last row written
    process_seconds: float
    peak: Peak


def naive_run(scratch: Path, model_uri: str, batch_size: int, files: list[str], env: dict[str, str]) -> NaiveRun:
    argv = [sys.executable, "-m", "jobs.bench", "naive", str(scratch / "naive"), model_uri, str(batch_size), *files]
    start, process_s, out, peak = timed_process(argv, env)
    return NaiveRun(json.loads(out)["done_unix"] - start, process_s, peak)


def naive(files: list[str], out_dir: str, model_uri: str, batch_size: int) -> int:
    """The hand-written baseline: pandas read, a torch loop over batches, pandas write."""
    import mlflow
    import numpy as np
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    columns = model.arrow_scorer().input_columns
    os.makedirs(out_dir, exist_ok=True)
    rows = 0
    for i, path in enumerate(files):
        df = pd.read_parquet(path, columns=[demo_data.KEY, *columns])
        scores = [model.predict(None, df.iloc[s : s + batch_size]) for s in range(0, len(df), batch_size)]
        pred = pd.concat(scores, ignore_index=True)
        out = pd.DataFrame(
            {
                demo_data.KEY: df[demo_data.KEY].to_numpy(),
                SCORE_COLUMN: pred["probability"],
                "prediction": pred["prediction"],
                "model_uri": model_uri,
            }
        )
        out.to_parquet(f"{out_dir}/part-{i}.parquet", index=False)
        rows += len(out)
    return int(np.int64(rows))


def hot_path_shape(compute: ComputeSpec, files: int) -> tuple[int, int]:
    """``(processes, threads)`` of the hot path: the actors the job runs on this machine, each
    scoring as many files at once as an actor does, a thread each (files_at_once).

    The churn job's one actor of two CPUs scores two files on two threads of one process, and
    two threads sharing a process score about 10% slower than two processes (its GIL, its
    allocator; docs/benchmark.md): that is the job's design, not Ray's, so the hot path keeps it
    and the factor "steady state against the work without Ray" prices Ray alone."""
    from jobs.ray_runtime import files_at_once

    cpus = os.cpu_count() or 1
    actors = max(1, min(compute.max_actors, files, int(cpus // compute.cpus_per_actor)))
    return actors, files_at_once(compute, files, gpus=0)


@dataclass(frozen=True)
class HotRun:
    """One run of :func:`hot_path`."""

    timed: Timed  # from every process ready to the last file written
    stages: dict[str, float]  # seconds by stage, summed over the processes
    model_uris: set[str]  # the versions the processes scored with
    # from the first scored batch to the last file written: the window the job's steady state
    # takes, so that the two compare (the whole run also holds each process's first reads)
    steady: Timed
    on_cpu_share: float | None = None  # of the stages' time, the threads' on a core


def hot_path(
    scratch: Path, batch_size: int, env: dict[str, str], shape: tuple[int, int], alias: str | None = None
) -> HotRun:
    """The job's own work per row without Ray: plain processes shaped as the job's CPU actors
    (:func:`hot_path_shape`), each running the actors' :class:`jobs.part_writer.ScoreAndWrite`
    (read, validate, score, write), built as the job builds it, over its share of the
    partition's files.

    Timed from the moment every process is ready (model loaded, modules imported) to the last
    file written, and as the job's steady state is, from the first scored batch to the last file
    written: a perfect split, with nothing of Ray's in it. Between the bound and the latter lies
    the work the bound leaves out (validation, the features' conversion from Arrow, and the
    threads' cost where an actor scores files side by side); between it and the job's steady
    state, over the same window, what Ray costs (its processes beside the actors, and the rows'
    way back to the driver at the end). The whole run also holds each process's first row group
    read, which the job's steady state leaves before its window: set against the job's steady
    state, it would make Ray look cheaper than it is.

    Also returns the seconds the processes spent in each stage (jobs.part_writer.STAGES), summed,
    to set beside the job's own (its ``actor_seconds``), and the model versions the processes
    scored with. ``alias``: score with that alias of the job's model instead of the job file's."""
    import tempfile

    from jobs.part_writer import on_cpu_share, stage_seconds

    count, _ = shape
    argv = [sys.executable, "-m", "jobs.bench", "hot-path", str(scratch / "hot-path"), str(batch_size), str(count)]
    argv.append(alias or "")
    with contextlib.ExitStack() as stack:
        procs = []
        for index in range(count):
            err = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(
                [*argv, str(index)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
            stack.callback(proc.kill)
            procs.append((proc, err))
        for proc, err in procs:
            if proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                proc.wait()
                err.seek(0)
                raise RuntimeError(f"{' '.join(argv)} failed:\n{err.read()[-3000:]}")
        start = time.time()
        for proc, _ in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        done = [json.loads(proc.communicate()[0]) for proc, _ in procs]
    files = [row for d in done for row in d["files"]]
    end, rows = max(d["done_unix"] for d in done), sum(d["rows"] for d in done)
    first_batch = min((d["first_batch_unix"] for d in done if d["first_batch_unix"]), default=start)
    return HotRun(
        Timed(end - start, rows),
        stage_seconds(files),
        {d["model_uri"] for d in done},
        Timed(end - first_batch, rows),
        on_cpu_share(files),
    )


def hot_path_worker(out_dir: str, batch_size: int, count: int, alias: str | None, index: int) -> dict[str, Any]:
    """One process of :func:`hot_path`: files ``index``, ``index + count``, ... of the partition,
    as many at once as one of the job's actors scores, a thread each, with the model the job
    file names or its ``alias``."""
    from concurrent.futures import ThreadPoolExecutor

    from jobs import pipeline, preflight, telemetry
    from jobs.part_writer import ScoreAndWrite
    from jobs.pieces import largest_first
    from jobs.ray_runtime import files_at_once
    from jobs.settings import load_settings

    settings = load_settings()
    job = load_job(JOB)
    lake = Lake(settings.lake_root)
    pre = preflight.preflight(job, DAY, settings, lake, *preflight.model_selection(job, alias))
    staging, quarantine = f"{out_dir}/{index}", f"{out_dir}/{index}-quarantine"
    notes = telemetry.folder(staging)  # where the predictor notes its first scored batch, as the actors do
    for folder in (staging, quarantine, notes):
        os.makedirs(folder, exist_ok=True)
    # each process stands for one of the job's actors: it scores files_at_once files side by side,
    # each with the torch and pyarrow threads the job gives a file (threads_per_file)
    at_once = files_at_once(job.compute, len(pre.pieces), gpus=0)
    options = pipeline.predictor_options(
        job,
        lake,
        pre,
        settings=settings,
        run_id="0" * 32,
        started_at=dt.datetime.now(dt.UTC),
        telemetry_dir=notes,
        at_once=at_once,
    )
    actor = ScoreAndWrite(
        **pipeline.score_and_write_kwargs(
            job, lake, pre, options, staging=staging, quarantine=quarantine, batch_size=batch_size, at_once=at_once
        )
    )
    mine = largest_first(pre.pieces)[index::count]  # in the order the job's actors take them
    rows = sum(p.rows or 0 for p in mine)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    with ThreadPoolExecutor(at_once) as pool:  # files handed out as they finish, as Ray Data does
        done = list(pool.map(lambda p: actor.score_file(p, [lake.uri(f) for f in p.paths]), mine))
    done_unix = time.time()
    first_batch = telemetry.read(lake, staging).earliest.get(FIRST_BATCH)
    return {
        "rows": rows,
        "done_unix": done_unix,
        "first_batch_unix": first_batch,
        "files": done,
        "model_uri": pre.ref.uri,
    }


def run(
    settings: Settings, *, rows: int, json_path: Path | None, rounds: int = ROUNDS, alias: str | None = None
) -> dict[str, Any]:
    """The benchmark's report (and, with ``json_path``, its JSON, Markdown and chart files).
    ``alias``: measure that alias of the job's model (every step scores with the version it
    names) instead of the job file's."""
    import shutil

    import mlflow

    from jobs import tracking
    from jobs.demo import registered_aliases, train_and_register
    from jobs.ray_runtime import LOCAL_RAY_ENV, cluster_address, files_at_once
    from models.tabular import TabularScorer

    root = settings.home / "bench"
    lake = Lake(str(root / "lake"))
    job = load_job(JOB)
    tracking.configure(settings)
    if not {"champion", "challenger"} <= registered_aliases(settings, job.model.name).keys():
        demo_data.build_demo_lake(Lake(settings.lake_root), DAY, rows=1000, labeled_rows=50_000)
        train_and_register(settings, Lake(settings.lake_root), DAY - dt.timedelta(days=1), name=job.model.name)
    from jobs.preflight import model_selection, resolve_model

    # the model first: a misspelt --alias stops the bench before it generates 10M rows
    ref = resolve_model(mlflow.MlflowClient(), job, *model_selection(job, alias))
    model = mlflow.pyfunc.load_model(ref.uri).unwrap_python_model().arrow_scorer()
    assert isinstance(model, TabularScorer)
    files = prepare(lake, rows)
    columns, categorical = input_columns(model)
    scratch = root / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)

    env = {**os.environ, "LAKECAST_HOME": str(settings.home), "LAKECAST_LAKE_ROOT": lake.root}
    # the steps that stand for the job's actors (the bound's passes, the work without Ray) run under
    # the allocator's setting a private Ray gives them (LOCAL_RAY_ENV), where the environment has
    # none of its own; the naive loop keeps the environment as a user's script would
    actor_env = {**LOCAL_RAY_ENV, **env}

    def bound_process(batch: int | None, runs: int, name: str) -> dict[str, float]:
        argv = [sys.executable, "-m", "jobs.bench", "bound", str(scratch / name), ref.uri, str(batch or 0), str(runs)]
        argv += [str(int(not job.compute.transparent_huge_pages)), *files]
        return json.loads(timed_process(argv, actor_env)[2])

    bin_dir = Path(sys.executable).parent
    running_ray = cluster_address(settings)
    io_ray = None
    if running_ray:
        # A Ray that runs between jobs, as a production cluster does, has already run Ray Data
        # (its helper actors are up): the Ray Data IO pass goes first, then the job joins it.
        _settle(files)
        log.info("0/6 IO only through Ray Data on the running Ray at %s", running_ray)
        io_ray = _io_only_ray(settings, files, columns, scratch, categorical)
    _settle(files)
    log.info("1/6 the bound, first pass: IO only and model only (fresh process)")
    fixed_batch = job.compute.batch_size if job.compute.batch_size != "auto" else None
    first_pass = bound_process(fixed_batch, 1, "bound")
    shape = hot_path_shape(job.compute, len(files))
    job_runs: list[JobRun] = []
    naive_runs: list[NaiveRun] = []
    hot_runs: list[HotRun] = []
    batch_size = job.compute.batch_size
    for i in range(rounds):
        # the job, the naive loop and the work without Ray take turns, so that a slow stretch of
        # the machine falls on each of them alike rather than on whichever ran in it
        note = f" (round {i + 1} of {rounds})" if rounds > 1 else ""
        _settle(files)
        log.info("2/6 lakecast job (fresh process)%s", note)
        job_runs.append(job_run(bin_dir, env, rows, alias))
        if batch_size == "auto":  # the naive loop and the model alone get the size the job chose
            batch_size = int(mlflow.get_run(job_runs[0].run_id).data.params["compute.batch_size_chosen"])
        _settle(files)
        log.info("3/6 naive loop (fresh process)%s", note)
        naive_runs.append(naive_run(scratch, ref.uri, batch_size, files, env))
        _settle(files)
        log.info(
            "4/6 the job's own work without Ray (%d plain process(es) of %d thread(s), as its actors)%s", *shape, note
        )
        hot_runs.append(hot_path(scratch, batch_size, actor_env, shape, alias))
        if hot_runs[-1].timed.rows != rows:
            raise RuntimeError(f"the hot path read {hot_runs[-1].timed.rows} rows of the partition's {rows}")
        # every step must score the same version: an alias moved during the run would compare two models
        scored = {job_runs[-1].model_uri, *hot_runs[-1].model_uris}
        if scored != {ref.uri}:
            raise RuntimeError(
                f"the benchmark measured {ref.uri} but its steps scored with {', '.join(sorted(scored))}: "
                f"did the alias {ref.alias!r} move during the run?"
            )
    _settle(files)

    log.info("5/6 the bound, second pass: IO only and model only (fresh process)")
    # the best of two runs of each way to read: a baseline measured low would flatter the job
    second_pass = bound_process(batch_size, 2, "bound-2")
    if io_ray is None:
        _settle(files)
        log.info("6/6 IO only through Ray Data")
        if not job.compute.transparent_huge_pages:
            # under the memory policy of the job's actors (jobs/huge_pages.py), which the private
            # Ray started next inherits. What started before keeps the kernel's setting: the job's
            # driver, the naive loop, and a running Ray's workers (their IO pass was step 0).
            huge_pages.turn_off()
        io_ray = _io_only_ray(settings, files, columns, scratch, categorical)
    shutil.rmtree(scratch, ignore_errors=True)

    def best(name: str) -> float:  # over the two passes: the machine's best, never a slow stretch's
        return max(p[name] for p in (first_pass, second_pass) if name in p)

    def bound_of(io: float, model_rows_per_s: float) -> float:
        return 1 / (1 / io + 1 / model_rows_per_s)

    io_ways = {way: best(f"io_{way}") for way in ("whole", "streamed")}
    io_pa = max(io_ways.values())
    io_best = max(io_pa, io_ray.rows_per_s)
    model_rows_per_s = best("model")
    bound = bound_of(io_best, model_rows_per_s)
    # each pass's own bound, to see how far the machine moved during the run
    passes = {
        name: round(
            bound_of(
                max(p["io_whole"], p["io_streamed"], io_ray.rows_per_s),
                p.get("model", second_pass["model"]),
            )
        )
        for name, p in (("before_job", first_pass), ("after", second_pass))
    }
    report = {
        "rows": rows,
        "io_only_rows_per_s": round(io_best),
        "io_only_pyarrow_rows_per_s": round(io_pa),
        "io_only_pyarrow_whole_rows_per_s": round(io_ways["whole"]),
        "io_only_pyarrow_streamed_rows_per_s": round(io_ways["streamed"]),
        "io_only_ray_rows_per_s": round(io_ray.rows_per_s),
        "model_only_rows_per_s": round(model_rows_per_s),
        "bound_rows_per_s": round(bound),
        # the bound of each pass alone; the bound above takes each figure's best of the two
        "bound_rows_per_s_by_pass": passes,
        **best_of_rounds(rows, bound, job_runs, naive_runs, hot_runs),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "device": "cpu",
        },
        "settings": {
            "ray": f"running at {running_ray}" if running_ray else "private local Ray, started by the job",
            # the job's checks open MLflow's store: SQLite's costs about 0.7 s of imports, a server's none
            "mlflow": _mlflow_store(settings.mlflow.tracking_uri),
            "model": ref.uri,
            "alias": ref.alias,  # None where the job file fixes a version
            "batch_size": job.compute.batch_size if batch_size == job.compute.batch_size else f"auto: {batch_size}",
            "min_actors": job.compute.min_actors,
            "max_actors": job.compute.max_actors,
            "cpus_per_actor": job.compute.cpus_per_actor,
            "files_at_once": files_at_once(job.compute, len(files), gpus=0),
            # the job's own work without Ray: plain processes shaped as its actors
            "hot_path": {"processes": shape[0], "threads": shape[1]},
            "transparent_huge_pages": job.compute.transparent_huge_pages,
            "rounds": rounds,
        },
    }
    if json_path:
        bench_report.write(report, json_path, bench_report.markdown(report))
        bench_report.chart(report, json_path.with_suffix(".png"))
    return report


def best_of_rounds(
    rows: int, bound: float, job_runs: list[JobRun], naive_runs: list[NaiveRun], hot_runs: list[HotRun]
) -> dict[str, Any]:
    """The report's figures of the job, the naive loop and the job's work without Ray, from their
    rounds (a run of each per round, in turn), against ``bound``."""
    # Each of the job's figures is the best of its rounds, as each of the bound's is the best of
    # its passes and ways: the machine's best against the machine's best. Each figure's details
    # come from the round that gave it; memory is the worst round's.
    steadiest = max(job_runs, key=lambda r: r.steady_rows_per_s)
    fastest = min(job_runs, key=lambda r: r.seconds)
    first_to_score = min(job_runs, key=lambda r: r.startup_s)
    naive_best = min(naive_runs, key=lambda r: r.seconds)
    hot = max(hot_runs, key=lambda h: h.timed.rows_per_s)
    hot_steady = max(h.steady.rows_per_s for h in hot_runs)
    steady = steadiest.steady_rows_per_s
    return {
        "naive_rows_per_s": round(rows / naive_best.seconds),
        "lakecast_rows_per_s": round(rows / fastest.seconds),
        "steady_rows_per_s": round(steady),
        "hot_path_rows_per_s": round(hot.timed.rows_per_s),
        "hot_path_steady_rows_per_s": round(hot_steady),
        "efficiency": round(steady / bound, 3),
        # the efficiency's two factors, each over the same window as the job's steady state (from
        # the first scored batch): the job's work per row without Ray, then what Ray costs
        "hot_path_vs_bound": round(hot_steady / bound, 3),
        "steady_vs_hot_path": round(steady / hot_steady, 3),
        "vs_naive": round(naive_best.seconds / fastest.seconds, 3),
        "startup_s": round(first_to_score.startup_s, 2),
        "startup_milestones_s": first_to_score.milestones_s,
        # where the time went, in seconds summed over the processes: the job's actors, and the
        # same code without Ray (read, validate, score: features, model and output rows, write)
        "actor_seconds": steadiest.actor_seconds,
        "hot_path_seconds": {stage: round(t, 3) for stage, t in hot.stages.items()},
        # of those seconds, the share the threads were on a core: inside Ray they wait for one
        # while Ray's own processes run (docs/benchmark.md); None where a file runs on several
        "actor_on_cpu_share": _share(steadiest.on_cpu_share),
        "hot_path_on_cpu_share": _share(hot.on_cpu_share),
        "lakecast_seconds": round(fastest.seconds, 2),
        "naive_seconds": round(naive_best.seconds, 2),
        # process start to exit, for what the exit adds (Ray's shutdown, interpreter teardown)
        "lakecast_process_seconds": round(fastest.process_seconds, 2),
        "naive_process_seconds": round(naive_best.process_seconds, 2),
        "peak_rss_mb": round(max(r.peak.rss_mb for r in job_runs)),
        "naive_peak_rss_mb": round(max(r.peak.rss_mb for r in naive_runs)),
        "peak_pss_mb": _round(_worst(r.peak.pss_mb for r in job_runs)),
        "naive_peak_pss_mb": _round(_worst(r.peak.pss_mb for r in naive_runs)),
        # every round's own figures, against the same bound: how far the machine moved between them
        "rounds": [
            {
                "efficiency": round(j.steady_rows_per_s / bound, 3),
                "hot_path_vs_bound": round(h.steady.rows_per_s / bound, 3),
                "vs_naive": round(n.seconds / j.seconds, 3),
                "startup_s": round(j.startup_s, 2),
                "steady_rows_per_s": round(j.steady_rows_per_s),
                "hot_path_rows_per_s": round(h.timed.rows_per_s),
                "hot_path_steady_rows_per_s": round(h.steady.rows_per_s),
                "lakecast_seconds": round(j.seconds, 2),
                "naive_seconds": round(n.seconds, 2),
            }
            for j, n, h in zip(job_runs, naive_runs, hot_runs, strict=True)
        ],
    }


def _worst(values: Iterable[float | None]) -> float | None:
    """The largest of ``values``, or None where they are unknown (PSS off Linux)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _round(value: float | None) -> int | None:
    return None if value is None else round(value)


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _mlflow_store(uri: str) -> str:
    """Which MLflow store the job ran against, without credentials a URI may carry."""
    scheme = uri.split(":", 1)[0]
    return "tracking server" if scheme in ("http", "https") else f"{scheme} (embedded)"


if __name__ == "__main__":  # the benchmark's own subprocesses: the naive loop, the hot path
    if sys.argv[1:2] == ["naive"]:  # OUT_DIR MODEL_URI BATCH_SIZE FILE...
        written = naive(sys.argv[5:], sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.stdout.write(json.dumps({"rows": written, "done_unix": time.time()}) + "\n")
    elif sys.argv[1:2] == ["bound"]:  # SCRATCH MODEL_URI BATCH_SIZE (0: IO only) RUNS HUGE_PAGES_OFF FILE...
        found = bound_pass(
            sys.argv[7:],
            sys.argv[3],
            int(sys.argv[4]) or None,
            Path(sys.argv[2]),
            runs=int(sys.argv[5]),
            huge_pages_off=sys.argv[6] == "1",
        )
        sys.stdout.write(json.dumps(found) + "\n")
    elif sys.argv[1:2] == ["hot-path"]:  # OUT_DIR BATCH_SIZE COUNT ALIAS ("": the job file's) INDEX
        done = hot_path_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] or None, int(sys.argv[6]))
        sys.stdout.write(json.dumps(done) + "\n")
    else:
        raise SystemExit(
            "usage: python -m jobs.bench naive OUT_DIR MODEL_URI BATCH_SIZE FILE... | "
            "bound SCRATCH MODEL_URI BATCH_SIZE RUNS HUGE_PAGES_OFF FILE... | "
            "hot-path OUT_DIR BATCH_SIZE COUNT ALIAS INDEX"
        )
