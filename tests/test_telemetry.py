"""The actors' time as the run's log and `lakecast run` print it."""

from __future__ import annotations

from jobs.telemetry import actor_time


def test_a_small_days_stages_are_told_apart():
    """A few thousand rows take hundredths of a second a stage: each is said, not "0.0 s" for all."""
    line = actor_time({"read": 0.0123, "validate": 0.0021, "score": 0.03, "write": 0.004})
    assert line == "read 0.012 s (25%), validate 0.002 s (4%), score 0.030 s (62%), write 0.004 s (8%)"
    line = actor_time({"read": 1.93, "validate": 0.2, "score": 0.45, "write": 12.34}, on_cpu=0.87)
    assert line == "read 1.9 s (13%), validate 0.20 s (1%), score 0.45 s (3%), write 12.3 s (83%); on a core 87% of it"
