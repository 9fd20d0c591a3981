"""``lakecast bench --workload image``: ResNet-50 on JPEG bytes stored in Parquet, the GPU workload.

The job's shape with a decode stage: Ray Data reads the Parquet files and decodes and crops the
JPEGs to uint8 pixels in the same CPU tasks, an actor pool of
:class:`models.image.ImageClassifier` (two actors per GPU by default, or one CPU actor)
classifies them, and Parquet is written. It measures, in one run:

1. decode only: read and decode with every core, no model (the CPU side's limit), the best of
   Ray Data and a plain process pool;
2. model only: the same network on uint8 pixels already in the device's memory;
3. the pipeline, whole (from submitting it to the last file written) and steady state (from the
   end of the first scored batch to the last file written).

On a GPU the bound is min(decode only, model only), since decoding and the network use different
processors; on the CPU they share the cores: 1 / (1/decode + 1/model). ``vs_model_only`` is the
steady state over the model alone: how much of the GPU the pipeline keeps busy.

It needs Ray, pyarrow, Pillow and torch, nothing of MLflow or Airflow, so it also runs on a bare
GPU machine: ``python -m jobs.bench_image --rows 100000 --json report.json``.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import bench_report
from jobs.argtypes import positive_int
from models.image import ImageClassifier, ImageOptions, decode_jpegs

log = logging.getLogger(__name__)

KEY = "image_id"
ROWS_PER_FILE = 1024  # a multiple of the batch size: no short batch per file, each a new shape for cuDNN


def _jpeg_file(args: tuple[Path, int, int, int]) -> int:
    """One Parquet file of random but image-like JPEGs: smooth colour fields with some grain."""
    from PIL import Image

    path, first, rows, side = args
    rng = np.random.default_rng(first)
    blobs = []
    for _ in range(rows):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
        grain = rng.normal(0, 6, (side, side, 3))
        img = Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    table = pa.table({KEY: pa.array(range(first, first + rows), pa.int64()), "image": pa.array(blobs, pa.binary())})
    pq.write_table(table, path, row_group_size=rows)
    return rows


def prepare(folder: Path, rows: int, size: int) -> list[str]:
    """The JPEG table, generated once per (rows, size) on every core."""
    target = folder / f"images-{rows}-{size}-{ROWS_PER_FILE}"
    done = target / "_done"
    if not done.exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        side = round(size * 8 / 7)  # stored as ImageNet evaluation expects: short side 8/7 of the crop
        work = [
            (target / f"part-{i:05d}.parquet", start, min(ROWS_PER_FILE, rows - start), side)
            for i, start in enumerate(range(0, rows, ROWS_PER_FILE))
        ]
        log.info("generating %d JPEGs of %dx%d (once)", rows, side, side)
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            assert sum(pool.map(_jpeg_file, work)) == rows
        done.touch()
    return sorted(str(p) for p in target.glob("part-*.parquet"))


def _decode_file(args: tuple[str, int]) -> int:
    path, size = args
    return len(decode_jpegs(pq.read_table(path, columns=[KEY, "image"]), key=KEY, size=size)[KEY])


def decode_only_pool(files: list[str], size: int, rows: int) -> float:
    """Read and decode with a plain process pool, a file per core at a time: the machine's decode
    rate with every core, without Ray Data's scheduling (its run alone read 9,900 to 11,600 images/s
    on an H100 machine's 16 cores where the pipeline itself decoded 10,500)."""
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        pool.submit(_decode_file, (files[0], size)).result()  # processes up, Pillow imported
        t0 = time.perf_counter()
        decoded = sum(pool.map(_decode_file, [(f, size) for f in files]))
        seconds = time.perf_counter() - t0
    assert decoded == rows, (decoded, rows)
    return rows / seconds


def _count(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"n": np.array([len(batch[KEY])])}


def decode_only(files: list[str], size: int, rows: int) -> float:
    from jobs.ray_runtime import read_parquet_files

    t0 = time.perf_counter()
    dataset = read_parquet_files(files, filesystem=None, columns=[KEY, "image"])
    decoded = dataset.map_batches(decode_jpegs, fn_kwargs={"key": KEY, "size": size}, batch_format="pyarrow")
    counted = sum(int(row["n"]) for row in decoded.map_batches(_count, batch_format="numpy").iter_rows())
    assert counted == rows, (counted, rows)
    return rows / (time.perf_counter() - t0)


def model_only(options: ImageOptions, size: int, batch_size: int, seconds: float = 10.0) -> float:
    """The network alone on pixels already on its device: what the pipeline can at best reach."""
    import torch

    model = ImageClassifier(options)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=generator)
    step = model.resident(pixels.to(model.device))
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    for _ in range(3):  # warm up: cuDNN picks its kernels
        step()
    sync()
    t0, batches = time.perf_counter(), 0
    while batches < 3 or time.perf_counter() - t0 < seconds:
        step()
        batches += 1
        if model.device.type != "cuda" and batches >= 3:
            break
    sync()
    return batches * batch_size / (time.perf_counter() - t0)


def pipeline(
    files: list[str],
    out: Path,
    options: ImageOptions,
    *,
    size: int,
    batch_size: int,
    gpus: int,
    actors_per_gpu: int,
    calls_per_actor: int,
    rows: int,
) -> tuple[float, float, float]:
    """The job's shape; returns (whole rows/s, steady rows/s, seconds to the first scored batch).

    The decode runs in the read's task, a whole file at a time: with no ``batch_size`` Ray Data
    fuses the two, so the compressed bytes never pass through the object store (a decode stage of
    its own, with a batch size, is a second operator that Ray Data gives only part of the CPUs).
    """
    import ray

    from jobs.ray_runtime import read_parquet_files

    t0 = time.perf_counter()
    start = time.time()
    dataset = read_parquet_files(files, filesystem=None, columns=[KEY, "image"])
    decoded = dataset.map_batches(decode_jpegs, fn_kwargs={"key": KEY, "size": size}, batch_format="pyarrow")
    scored = decoded.map_batches(
        ImageClassifier,
        fn_constructor_kwargs={"options": options},
        batch_format="numpy",
        batch_size=batch_size,
        # calls in flight per actor (2 by default), each on its own CUDA stream: a batch's copy to the GPU
        # overlaps the previous batch's convolutions; several actors per GPU share its feeding
        compute=ray.data.ActorPoolStrategy(
            size=max(1, gpus * actors_per_gpu),
            max_concurrent_calls_per_actor=calls_per_actor,
            enable_true_multi_threading=True,
        ),
        num_gpus=1 / actors_per_gpu if gpus else 0,
        num_cpus=options.num_threads,
        udf_modifying_row_count=False,
    )
    scored.write_parquet(str(out), min_rows_per_file=ROWS_PER_FILE * 10)
    whole_s = time.perf_counter() - t0
    end = time.time()
    result = pq.ParquetDataset(str(out)).read(columns=[KEY, "scored_unix"])
    if result.num_rows != rows or len(np.unique(result.column(KEY).to_numpy())) != rows:
        raise RuntimeError(f"the image pipeline wrote {result.num_rows} rows for {rows} images")
    stamps = result.column("scored_unix").to_numpy()
    first = stamps.min()
    after_first = int((stamps > first).sum())
    return rows / whole_s, after_first / (end - first), first - start


def too_few_batches(rows: int, batch_size: int) -> str | None:
    """Why ``rows`` images cannot be measured at ``batch_size``, or None where they can. The steady
    state runs from the first scored batch to the last: with one batch there is none to measure,
    and the report said 0 images/s."""
    if rows >= 2 * batch_size:
        return None
    return (
        f"--rows {rows} is {'one batch' if rows <= batch_size else 'less than two batches'} of --batch-size "
        f"{batch_size}, and the steady state is measured from the first scored batch on: use --rows "
        f"{2 * batch_size} or more, or --batch-size {max(1, rows // 2)} or less"
    )


def run(
    home: Path,
    *,
    rows: int,
    size: int = 224,
    batch_size: int = 256,
    dtype: str | None = "bfloat16",
    actors_per_gpu: int = 2,
    calls_per_actor: int = 2,
    pinned: bool = False,
    cuda_graphs: bool = True,
    json_path: Path | None = None,
) -> dict[str, Any]:
    import ray
    import torch

    root = home / "bench"
    files = prepare(root / "image-lake", rows, size)
    scratch = root / "image-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    gpus = torch.cuda.device_count()
    cpus = os.cpu_count() or 1
    # on a GPU one core feeds the actor; on the CPU the actor gets half the cores, decoding the rest
    threads = 1 if gpus else max(1, cpus // 2)
    options = ImageOptions(
        key=KEY,
        dtype=dtype if gpus else None,
        num_threads=threads,
        warmup=(batch_size, size) if gpus else None,
        pinned=pinned,
        cuda_graphs=calls_per_actor if gpus and cuda_graphs else 0,  # a graph per call in flight
    )
    from jobs.ray_runtime import start_private_ray, stop_ray

    start_private_ray()  # the job's private Ray, as ensure_ray starts it
    try:
        log.info("1/3 image pipeline: read → decode (CPU tasks) → ResNet-50 (%s) → write", "GPU" if gpus else "CPU")
        whole, steady, startup = pipeline(
            files,
            scratch / "out",
            options,
            size=size,
            batch_size=batch_size,
            gpus=gpus,
            actors_per_gpu=actors_per_gpu,
            calls_per_actor=calls_per_actor,
            rows=rows,
        )
        log.info("2/3 decode only")
        decode_ray = decode_only(files, size, rows)
    finally:
        stop_ray()
    decode_pool = decode_only_pool(files, size, rows)
    decode = max(decode_ray, decode_pool)
    log.info("3/3 model only")
    torch.set_num_threads(threads)
    model = model_only(options, size, batch_size)
    shutil.rmtree(scratch, ignore_errors=True)
    bound = min(decode, model) if gpus else 1 / (1 / decode + 1 / model)
    report = {
        "workload": "image",
        "rows": rows,
        "decode_only_rows_per_s": round(decode, 1),
        "decode_only_ray_rows_per_s": round(decode_ray, 1),
        "decode_only_pool_rows_per_s": round(decode_pool, 1),
        "model_only_rows_per_s": round(model, 1),
        "bound_rows_per_s": round(bound, 1),
        "lakecast_rows_per_s": round(whole, 1),
        "steady_rows_per_s": round(steady, 1),
        "efficiency": round(steady / bound, 3),
        "vs_model_only": round(steady / model, 3),
        "startup_s": round(startup, 2),
        "machine": {
            "cpus": cpus,
            "gpus": gpus,
            "gpu": torch.cuda.get_device_name(0) if gpus else None,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "settings": {
            "model": "ResNet-50, random weights (models/resnet.py)",
            "image_size": size,
            "batch_size": batch_size,
            "dtype": options.dtype or "float32",
            "channels_last": options.channels_last,
            "actor_threads": threads,
            "actors_per_gpu": actors_per_gpu if gpus else None,
            "calls_per_actor": calls_per_actor,
            "pinned": pinned,
            "cuda_graphs": options.cuda_graphs,
            "ray_data_op_reservation": ray.data.DataContext.get_current().op_resource_reservation_enabled,
        },
    }
    if json_path:
        bench_report.write(report, json_path, markdown(report))
    return report


def markdown(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    device = f"{m['gpus']}x {m['gpu']}" if m["gpus"] else "CPU"
    rows = [
        (
            "decode only (read + JPEG decode, all cores; best of Ray Data and a process pool)",
            r["decode_only_rows_per_s"],
        ),
        ("model only (pixels on the device)", r["model_only_rows_per_s"]),
        ("bound", r["bound_rows_per_s"]),
        ("lakecast pipeline, whole", r["lakecast_rows_per_s"]),
        ("lakecast pipeline, steady state", r["steady_rows_per_s"]),
    ]
    lines = [
        f"Image benchmark: {r['rows']:,} JPEGs, ResNet-50 at {s['image_size']}px, batch {s['batch_size']}, "
        f"{s['dtype']}, on {device} and {m['cpus']} CPUs",
        "",
        "| measure | images/s |",
        "|---|---:|",
        *[f"| {name} | {value:,.0f} |" for name, value in rows],
        "",
        f"vs model only {r['vs_model_only']}, efficiency {r['efficiency']}, startup {r['startup_s']} s",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_image", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=50_000)
    parser.add_argument("--size", type=positive_int, default=224)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--dtype", default="bfloat16", help="on a GPU: bfloat16, float16 or float32")
    parser.add_argument("--actors-per-gpu", type=positive_int, default=2, help="classifier actors sharing each GPU")
    parser.add_argument("--calls-per-actor", type=positive_int, default=2, help="batches in flight per actor")
    parser.add_argument("--pinned", action="store_true", help="copy each batch into pinned memory first")
    parser.add_argument(
        "--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="launch the network op by op"
    )
    parser.add_argument("--home", default=os.environ.get("LAKECAST_HOME", ".lakecast"))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if why := too_few_batches(args.rows, args.batch_size):
        parser.error(why)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = run(
        Path(args.home),
        rows=args.rows,
        size=args.size,
        batch_size=args.batch_size,
        dtype=None if args.dtype == "float32" else args.dtype,
        actors_per_gpu=args.actors_per_gpu,
        calls_per_actor=args.calls_per_actor,
        pinned=args.pinned,
        cuda_graphs=args.cuda_graphs,
        json_path=Path(args.json) if args.json else None,
    )
    sys.stdout.write(markdown(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
