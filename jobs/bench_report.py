"""The benchmark's report as people read it: a Markdown summary and a bar chart beside the JSON
(:func:`jobs.bench.run` writes all three)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def write(report: dict[str, Any], json_path: Path, markdown_text: str) -> None:
    """A bench's report as JSON at ``json_path``, and as Markdown beside it (``.md``).

    A figure that is not a number (a ROC AUC over one row's single class) is written as ``null``:
    Python's ``NaN`` is not JSON, and ``jq`` or a browser refuses the whole file for it.
    """
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False))
    json_path.with_suffix(".md").write_text(markdown_text)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _shape(hot_path: dict[str, int]) -> str:
    processes, threads = hot_path["processes"], hot_path["threads"]
    return f"{processes} process{'es' if processes > 1 else ''} of {threads} thread{'s' if threads > 1 else ''}"


def markdown(r: dict[str, Any]) -> str:
    from jobs.telemetry import actor_time

    rows = [
        ("IO only (best of pyarrow whole, streamed, Ray Data)", r["io_only_rows_per_s"]),
        ("model only (tensors in memory)", r["model_only_rows_per_s"]),
        ("bound 1/(1/IO + 1/model)", r["bound_rows_per_s"]),
        ("naive loop, whole job", r["naive_rows_per_s"]),
        ("lakecast, whole job", r["lakecast_rows_per_s"]),
        ("lakecast, steady state", r["steady_rows_per_s"]),
        ("the job's own work without Ray, processes shaped as its actors", r["hot_path_rows_per_s"]),
        ("the same, from its first scored batch", r["hot_path_steady_rows_per_s"]),
    ]
    lines = [f"Benchmark: {r['rows']:,} rows on {r['machine']['cpus']} CPUs", "", "| measure | rows/s |", "|---|---:|"]
    lines += [f"| {name} | {value:,} |" for name, value in rows]
    lines += [
        "",
        f"efficiency {r['efficiency']}, vs_naive {r['vs_naive']}, startup {r['startup_s']} s, "
        f"peak memory: PSS {r['peak_pss_mb']} MiB, summed RSS {r['peak_rss_mb']} MiB "
        f"(naive: PSS {r['naive_peak_pss_mb']} MiB, RSS {r['naive_peak_rss_mb']} MiB)",
        f"efficiency = {r['hot_path_vs_bound']} (the job's work per row against the bound: validation, "
        f"features) x {r['steady_vs_hot_path']} (its steady state against that work without Ray: "
        f"{_shape(r['settings']['hot_path'])}, as the job's actors), both from the first scored batch",
        "where the time went: "
        + "; ".join(
            f"{who}: {actor_time(r[key], r.get(share))}"
            for who, key, share in (
                ("the job's actors", "actor_seconds", "actor_on_cpu_share"),
                ("without Ray", "hot_path_seconds", "hot_path_on_cpu_share"),
            )
            if r.get(key)
        ),
        _rounds_line(r),
        "startup, seconds from process start: "
        + ", ".join(f"{name.replace('_', ' ')} {t}" for name, t in r["startup_milestones_s"].items()),
        f"Ray: {r['settings']['ray']}"
        + (
            "; the job's workers belong to it, so its memory is not in the peak RSS"
            if r["settings"]["ray"].startswith("running")
            else ""
        ),
        f"MLflow: {r['settings']['mlflow']}",
        f"model: {r['settings']['model']}" + (f" ({r['settings']['alias']})" if r["settings"].get("alias") else ""),
        "",
    ]
    return "\n".join(lines)


def _rounds_line(r: dict[str, Any]) -> str:
    rounds = r["rounds"]
    if len(rounds) == 1:
        return "one round: each figure from one run of each"

    def each(key: str) -> str:
        return ", ".join(str(x[key]) for x in rounds)

    return (
        f"each figure the best of {len(rounds)} rounds, as the bound's are the best of theirs; round by round: "
        f"efficiency {each('efficiency')}, vs_naive {each('vs_naive')}, startup {each('startup_s')} s"
    )


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    names = [
        "IO only",
        "model only",
        "bound",
        "naive",
        "lakecast\nwhole",
        "lakecast\nsteady",
        "no Ray\nwhole",
        "no Ray\nsteady",
    ]
    keys = [
        "io_only_rows_per_s",
        "model_only_rows_per_s",
        "bound_rows_per_s",
        "naive_rows_per_s",
        "lakecast_rows_per_s",
        "steady_rows_per_s",
        "hot_path_rows_per_s",
        "hot_path_steady_rows_per_s",
    ]
    fig, ax = plt.subplots(figsize=(9, 4))
    bars = ax.bar(names, [r[k] for k in keys], color=["#999", "#999", "#555", "#c66", "#36c", "#36c", "#9bd", "#9bd"])
    ax.bar_label(bars, labels=[f"{r[k] / 1e6:.2f}M" for k in keys])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v else "0"))
    ax.axhline(r["bound_rows_per_s"], color="#555", linewidth=0.8, linestyle="--")  # the steady state against it
    ax.set_ylabel("rows/s")
    ax.set_ylim(top=max(r[k] for k in keys) * 1.15)  # room for the bar labels under the title
    ax.set_title(
        f"lakecast bench, {r['rows']:,} rows, {r['machine']['cpus']} CPUs: "
        f"efficiency {r['efficiency']}, vs naive {r['vs_naive']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
