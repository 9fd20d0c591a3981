"""``lakecast bench --workload compare``: the A/B comparison's statistics on a night's labeled rows.

``lakecast compare`` scores the labeled partition with both versions in one Ray Data pass (the
scoring ``lakecast bench`` measures), then, in the driver, draws the paired bootstrap over the
scores: on a large partition the bootstrap is most of the task (the demo's 100,000 labeled rows
and 1,000 resamples: 3 s of scoring, then 13 s of statistics before this was tuned). This measures, in
one run, on generated labels and two models' scores (float32, as models give them, so with the
ties that brings):

1. lakecast's bootstrap, :func:`jobs.abstats.compare`: each resample a reweighting of the rows,
   on :func:`jobs.abstats.threads` threads; and the same on one thread;
2. the bootstrap as its definition reads and as one writes it by hand: each resample's rows
   drawn, and both models' metrics computed on those rows (the same :mod:`jobs.metrics`),
   timed over a few resamples and scaled to the same count.

``vs_resampling``: how many times sooner 1 ends than 2. Pure NumPy, without Ray, MLflow or
Airflow: ``python -m jobs.bench_compare --rows 1000000`` runs it as well.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs import abstats, bench_report
from jobs.argtypes import positive_int
from jobs.metrics import classification

ROWS = 1_000_000
RESAMPLES = 1000
BY_HAND = 10  # resamples the hand-written bootstrap is timed over


def labeled(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes (30% positive) and the scores of a champion and a somewhat better challenger."""
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.3).astype(np.int64)

    def scores(signal: float) -> np.ndarray:
        p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=rows))))
        return p.astype(np.float32).astype(np.float64)

    return y, scores(0.8), scores(0.9)


def by_hand(y: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0) -> float:
    """Seconds a resample takes when its rows are drawn and both models scored on them."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        classification(y[idx], a[idx]), classification(y[idx], b[idx])
    return (time.perf_counter() - start) / resamples


def lakecast_bootstrap(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int, workers: int
) -> tuple[float, dict[str, float]]:
    """Seconds of :func:`jobs.abstats.compare` on ``workers`` threads, and its interval of the
    difference in ROC AUC."""
    start = time.perf_counter()
    comparison = abstats.compare(
        y, a, b, task="classification", threshold=0.5, confidence=0.95, bootstrap=resamples, workers=workers
    )
    roc = comparison.differences["roc_auc"]
    return time.perf_counter() - start, {"diff": roc.diff, "low": roc.low, "high": roc.high}


def run(*, rows: int = ROWS, resamples: int = RESAMPLES, json_path: Path | None = None) -> dict[str, Any]:
    y, a, b = labeled(rows)
    threads = abstats.threads(rows, resamples)
    lakecast_bootstrap(y[:1000], a[:1000], b[:1000], abstats.CHUNK, 1)  # imports (SciPy's McNemar test) out of the way
    seconds, roc_auc = lakecast_bootstrap(y, a, b, resamples, threads)
    one_thread, roc_auc_one = lakecast_bootstrap(y, a, b, resamples, 1)
    same = np.array_equal(list(roc_auc_one.values()), list(roc_auc.values()), equal_nan=True)
    if not same:  # the chunks' seeds make the draws the same on any number of threads
        raise RuntimeError(f"the bootstrap on one thread gave {roc_auc_one}, on {threads}: {roc_auc}")
    per_resample = by_hand(y, a, b, min(BY_HAND, resamples))
    report = {
        "workload": "compare",
        "rows": rows,
        "resamples": resamples,
        "bootstrap_seconds": round(seconds, 3),
        "one_thread_seconds": round(one_thread, 3),
        "by_hand_seconds": round(per_resample * resamples, 3),
        "ms_per_resample": round(seconds / resamples * 1000, 3),
        "by_hand_ms_per_resample": round(per_resample * 1000, 3),
        "vs_resampling": round(per_resample * resamples / seconds, 2),
        "threads": threads,
        "threads_speedup": round(one_thread / seconds, 2),
        "roc_auc_difference": {k: round(v, 5) for k, v in roc_auc.items()},
        "machine": {
            "cpus": abstats.cpus(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "settings": {"task": "classification", "by_hand_resamples": min(BY_HAND, resamples), "chunk": abstats.CHUNK},
    }
    if json_path:
        bench_report.write(report, json_path, markdown(report))
    return report


def markdown(r: dict[str, Any]) -> str:
    rows = [
        (f"lakecast, {r['threads']} thread(s)", r["bootstrap_seconds"], r["ms_per_resample"]),
        ("lakecast, one thread", r["one_thread_seconds"], r["one_thread_seconds"] / r["resamples"] * 1000),
        ("by hand: each resample's rows drawn and scored", r["by_hand_seconds"], r["by_hand_ms_per_resample"]),
    ]
    roc = r["roc_auc_difference"]
    lines = [
        f"A/B bootstrap benchmark: {r['rows']:,} labeled rows, {r['resamples']:,} resamples, both models' "
        f"classification metrics, on {r['machine']['cpus']} CPUs",
        "",
        "| bootstrap | seconds | ms per resample |",
        "|---|---:|---:|",
        *[f"| {name} | {seconds:,.2f} | {ms:,.2f} |" for name, seconds, ms in rows],
        "",
        f"vs_resampling {r['vs_resampling']}, threads_speedup {r['threads_speedup']}; ROC AUC difference "
        f"{roc['diff']:+.4f} [{roc['low']:+.4f}, {roc['high']:+.4f}] (the by-hand time is "
        f"{r['settings']['by_hand_resamples']} resamples' scaled to {r['resamples']:,})",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=ROWS)
    parser.add_argument("--resamples", type=positive_int, default=RESAMPLES)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    report = run(rows=args.rows, resamples=args.resamples, json_path=Path(args.json) if args.json else None)
    sys.stdout.write(markdown(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
