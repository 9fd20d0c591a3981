"""When each step of a run's start was reached, where its actors' time went, and on what nodes.

The actors record their first events (ready, first batch) and their node's labels as small files
beside the staging folder, the one place every actor can write on any cluster; the driver reads
the earliest of each event, and each actor's node, once the pipeline is done. The figures land in
MLflow, ``lakecast run``'s output and the bench.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jobs import commit
from jobs.lake import Lake
from models.predictor import ACTOR_NODE, ACTOR_READY, FIRST_BATCH, TELEMETRY_SEPARATOR


def actor_time(seconds: dict[str, float], on_cpu: float | None = None) -> str:
    """``seconds`` by stage as a line for people: "read 1.9 s (48%), validate 0.20 s (5%), ...",
    and the share of it the actors' threads were on a core, where known."""
    total = sum(seconds.values()) or 1.0
    line = ", ".join(f"{stage} {_seconds(t)} s ({100 * t / total:.0f}%)" for stage, t in seconds.items())
    return line if on_cpu is None else f"{line}; on a core {100 * on_cpu:.0f}% of it"


def _seconds(t: float) -> str:
    """A small day's stages take hundredths of a second: "0.042", not "0.0" for each."""
    return f"{t:.1f}" if t >= 1 else f"{t:.2f}" if t >= 0.1 else f"{t:.3f}"


def folder(staging: str) -> str:
    """Beside the staging folder, never inside it: nothing here is ever committed."""
    return f"{staging}-telemetry"


@dataclass(frozen=True)
class Notes:
    """What the actors noted (see BatchPredictor): the earliest time of each event, and the labels
    of each scoring actor's node, once per actor process."""

    earliest: dict[str, float]
    nodes: list[dict[str, str]]


def read(lake: Lake, staging: str) -> Notes:
    """What the actors noted, then clean up."""
    where = folder(staging)
    earliest: dict[str, float] = {}
    nodes: dict[tuple[str, str], dict[str, str]] = {}
    for info in lake.entries(where):
        event, _, writer = info.base_name.partition(TELEMETRY_SEPARATOR)
        with lake.fs.open_input_stream(info.path) as f:
            text = f.read()
        if event == ACTOR_NODE:  # a canary's actor notes its node for each of its two predictors
            labels = json.loads(text)
            nodes[writer.split("-")[0], labels.get("ray.io/node-id", "")] = labels
        else:
            t = float(text)
            earliest[event] = min(t, earliest.get(event, t))
    commit.discard(lake, where)
    return Notes(earliest, list(nodes.values()))


def milestones(
    job_start: float, ray_ready: float | None, checks_done: float, pipeline_start: float, actors: dict[str, float]
) -> dict[str, float]:
    """When each step of the job's start was reached, in unix seconds: ``job_start`` and
    ``ray_ready`` from the driver, ``checks_done`` from :mod:`jobs.preflight`, ``pipeline_start``
    from :mod:`jobs.pipeline`, and ``actors``: what :func:`read` found.

    Ray's start and the input checks run side by side; the pipeline starts when both are done;
    then the first actor is ready (its worker started, the model on its device) and scores its
    first batch. On a cluster, a late ``actor_ready`` is the wait for a node (a GPU, say);
    locally it is the actor's imports. A missing one was not reached (no rows, say).
    """
    found = {
        "job_start": job_start,
        "ray_ready": ray_ready,
        "checks_done": checks_done,
        "pipeline_start": pipeline_start,
        "actor_ready": actors.get(ACTOR_READY),
        "first_batch": actors.get(FIRST_BATCH),
    }
    return {name: t for name, t in found.items() if t is not None}
