"""argparse types shared by the command lines (``lakecast`` and ``python -m jobs.bench_image``).

Kept apart from :mod:`jobs.cli` so that the image bench, which runs on bare GPU machines, imports
no more than argparse for them."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number of at least 1: a count of rows, rounds, pixels or actors, or a model version,
    where 0 or less would fail later and far from the flag (``--rows 0`` ran the default 10M rows;
    ``lakecast submit --version 0`` scored with the job file's alias)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value
