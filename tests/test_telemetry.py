"""The actors' time as the run's log and `lakecast run` print it, and what they note of their start
and their nodes."""

from __future__ import annotations

import json

import pyarrow.fs as pafs

from jobs import labels, telemetry
from jobs.lake import Lake
from jobs.telemetry import actor_time


def test_a_small_days_stages_are_told_apart():
    """A few thousand rows take hundredths of a second a stage: each is said, not "0.0 s" for all."""
    line = actor_time({"read": 0.0123, "validate": 0.0021, "score": 0.03, "write": 0.004})
    assert line == "read 0.012 s (25%), validate 0.002 s (4%), score 0.030 s (62%), write 0.004 s (8%)"
    line = actor_time({"read": 1.93, "validate": 0.2, "score": 0.45, "write": 12.34}, on_cpu=0.87)
    assert line == "read 1.9 s (13%), validate 0.20 s (1%), score 0.45 s (3%), write 12.3 s (83%); on a core 87% of it"


def test_each_actors_node_is_counted_once_by_the_selector_that_placed_it(tmp_path):
    """A canary's actor holds two predictors, each noting its node at its first batch: one actor.
    Each node counts for the first selector it matches, in the order Ray tries them."""
    lake = Lake(str(tmp_path))
    where = telemetry.folder("predictions/_staging/run")
    lake.make_dirs(where)
    spot, on_demand = {"ray.io/node-id": "a1", "market": "spot"}, {"ray.io/node-id": "b2", "market": "on-demand"}
    notes = {
        "actor-node--101-aaaa": spot,
        "actor-node--101-bbbb": spot,  # the same actor's second predictor
        "actor-node--101-cccc": on_demand,  # pid 101 on another node: another actor
        "actor-node--102-dddd": on_demand,
        "actor-node--103-eeee": {"ray.io/node-id": "c3", "market": "gone"},
    }
    for name, node in notes.items():
        with lake.fs.open_output_stream(f"{where}/{name}") as f:
            f.write(json.dumps(node).encode())
    for name, t in {"first-batch--101-ffff": 12.5, "first-batch--102-gggg": 11.0}.items():
        with lake.fs.open_output_stream(f"{where}/{name}") as f:
            f.write(repr(t).encode())
    read = telemetry.read(lake, "predictions/_staging/run")
    assert read.earliest == {"first-batch": 11.0}
    selectors = {"label_selector": {"market": "spot"}, "fallback_strategy.0.label_selector": {"market": "!gone"}}
    assert labels.placed_by(selectors, read.nodes) == {
        "label_selector": 1,
        "fallback_strategy.0.label_selector": 2,
        "none": 1,
    }
    assert lake.fs.get_file_info(where).type == pafs.FileType.NotFound  # cleaned up
