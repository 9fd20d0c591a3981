"""``compute.batch_size: auto``: the batch size chosen by measuring the model on the day's rows.

Too small a batch pays Ray Data's and PyTorch's per-call overhead on every few rows; too large a
batch stops fitting the CPU's caches (or wastes GPU memory) and coarsens the pool's load
balancing. Where the knee lies depends on the model, the machine and the device, so the job
measures it: it scores a sample of the partition's own rows at each candidate size with the
predictor the actors will run, with the actors' threads and device, and takes the smallest size
whose throughput is within 5% of the best.

A CPU actor that scores several files at once calls its predictor from as many threads side by
side, and the measurement does the same: each call's Python work between torch's holds the GIL,
so small batches cost more on two threads than on one. Measured on one thread, the demo's wide
challenger (128 and 64 hidden units) chose 4,096 rows, where the churn job's two threads scored
about 35% slower per row than one thread alone; measured on two it chose 8,192 (16,384 in a
later run, after the scorer's own changes), and at 8,192 the job's work streamed 2.33M rows/s
against 1.70-1.76M at 4,096 (docs/benchmark.md). The churn champion chooses 131,072 on two
threads (65,536 when the candidates stopped there).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.pieces import file_batches
from jobs.validation import ColumnRule, invalid_reasons
from models.predictor import ArrowScorer, BatchPredictor, PredictorOptions

log = logging.getLogger(__name__)

# Up to a CPU actor's read batch in rows (jobs.part_writer.READ_ROWS; a row group read whole can be
# larger, but the churn champion already scored half as fast at 262,144 as at 131,072), which is
# split into the batch size: the champion, capped at 65,536, was 27% faster at 131,072 on
# the actor's two threads (fewer calls, each releasing and taking back the GIL fewer times). A GPU
# actor's batch is also its device memory: its sizes stop at GPU_LARGEST.
CANDIDATES = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
GPU_LARGEST = 65536
ROUNDS = 3  # candidates measured round-robin, best of each kept: noise from neighbours hits all alike
ENOUGH_S = 0.03  # per candidate and round: repeat the call until this long has passed
TOLERANCE = 0.05


def sample_rows(
    paths: list[str],
    filesystem: Any,
    columns: list[str],
    rows: int,
    dictionary: list[str] = (),
    rules: Sequence[ColumnRule] = (),
    from_folders: Mapping[str, Mapping[str, Any]] | None = None,
) -> pa.Table:
    """Up to ``rows`` rows of the partition, from its first files (in batches, not whole files),
    read as the job reads them (:func:`jobs.pieces.file_batches`; ``dictionary``: the columns it
    reads dictionary-encoded; ``from_folders``: by file, the columns its folders name). Only
    rows that pass ``rules`` are kept: the actors score no others, and a model need not take them
    (a null where its signature requires a value)."""
    parts, have = [], 0
    for path in paths:
        batches = file_batches(
            path,
            filesystem,
            columns=columns,
            dictionary=[c for c in dictionary if c in columns],
            rows=rows,
            threads=True,
            from_folders=(from_folders or {}).get(path),
        )
        for batch in batches:
            part = pa.Table.from_batches([batch])
            parts.append(part.filter(pc.is_null(invalid_reasons(part, list(rules)))) if rules else part)
            have += parts[-1].num_rows
            if have >= rows:
                return pa.concat_tables(parts).slice(0, rows)
    return pa.concat_tables(parts) if parts else pa.table({})


def measure(predictor: Any, sample: pa.Table, candidates: list[int], at_once: int = 1) -> dict[int, float]:
    """rows/s of ``predictor(batch)`` at each batch size, best of :data:`ROUNDS` rounds, called
    from ``at_once`` threads side by side (as a CPU actor scoring that many files at once calls
    it), their rows summed."""
    best = dict.fromkeys(candidates, 0.0)
    predictor(sample.slice(0, min(candidates)))  # warm up: first-call allocations, lazy inits
    for _ in range(ROUNDS):
        for size in candidates:
            best[size] = max(best[size], _rate(predictor, sample.slice(0, size), at_once))
    return best


def _rate(predictor: Any, batch: pa.Table, at_once: int) -> float:
    """rows/s of ``at_once`` threads each calling ``predictor(batch)`` for :data:`ENOUGH_S`."""
    calls = [0] * at_once
    t0 = time.perf_counter()

    def call(i: int) -> None:
        while calls[i] == 0 or time.perf_counter() - t0 < ENOUGH_S:
            predictor(batch)
            calls[i] += 1

    if at_once == 1:
        call(0)
    else:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(at_once)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sum(calls) * batch.num_rows / (time.perf_counter() - t0)


def candidate_sizes(rows_in: int, gpus: float) -> list[int]:
    """The sizes to measure: none larger than the partition (the smallest at least), nor than
    :data:`GPU_LARGEST` on a GPU."""
    largest = min(rows_in, GPU_LARGEST if gpus > 0 else CANDIDATES[-1])
    return [c for c in CANDIDATES if c <= max(largest, CANDIDATES[0])]


def pick(throughput: dict[int, float]) -> int:
    """The smallest batch within :data:`TOLERANCE` of the fastest."""
    top = max(throughput.values())
    return min(size for size, rate in throughput.items() if rate >= (1 - TOLERANCE) * top)


def _measure_in_actor_resources(
    options: PredictorOptions, scorer: ArrowScorer | None, sample: pa.Table, candidates: list[int], at_once: int = 1
) -> dict[int, float]:
    predictor = BatchPredictor(replace(options, telemetry_dir=None), scorer)
    return measure(predictor, sample, candidates, at_once)


def choose(
    options: PredictorOptions,
    scorer: ArrowScorer | None,
    paths: list[str],
    *,
    filesystem: Any,
    columns: list[str],
    rows_in: int,
    cpus: float,
    gpus: float,
    dictionary: list[str] = (),
    rules: Sequence[ColumnRule] = (),
    at_once: int = 1,
    from_folders: Mapping[str, Mapping[str, Any]] | None = None,
    placement: Mapping[str, Any] | None = None,
) -> int:
    """Measure and return the batch size for this run (see the module's docstring).

    On CPU actors the measurement runs here, with the actors' thread count per file (``cpus``)
    and as many files at once (``at_once``: threads calling the predictor side by side); for GPU
    actors it runs as one Ray task given the same GPUs and CPUs as an actor, placed as the actors
    are (``ComputeSpec.placement``: their GPUs' model), since the driver may have no GPU (a GPU
    actor scores one batch at a time).
    """
    candidates = candidate_sizes(rows_in, gpus)
    sample = sample_rows(paths, filesystem, columns, max(candidates), dictionary, rules, from_folders)
    candidates = [c for c in candidates if c <= max(sample.num_rows, CANDIDATES[0])]
    t0 = time.perf_counter()
    if gpus > 0:
        import ray

        placed = {key: value for key, value in (placement or {}).items() if value}
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, **placed)(_measure_in_actor_resources)
        throughput = ray.get(remote.remote(options, scorer, sample, candidates))
    else:
        import torch

        threads = torch.get_num_threads()
        try:
            throughput = _measure_in_actor_resources(options, scorer, sample, candidates, at_once)
        finally:
            torch.set_num_threads(threads)
    size = pick(throughput)
    log.info(
        "batch_size auto: %d rows (measured in %.1f s on %s; rows/s by size: %s)",
        size,
        time.perf_counter() - t0,
        "a GPU" if gpus > 0 else f"{at_once} x {max(1, int(cpus))} CPU thread(s)",
        ", ".join(f"{s}: {r:,.0f}" for s, r in throughput.items()),
    )
    return size
