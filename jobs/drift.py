"""Tonight's run against the day before's: the rows published, the scores' distribution and the
inputs' share of nulls, compared with what the previous partition's manifest recorded. A model
whose input drifted keeps scoring; these warnings are how the people who own it hear of it. A
comparison never fails a run: a day before that is missing or unreadable only leaves tonight
uncompared.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from jobs import input_stats, score_stats
from jobs.config import JobConfig
from jobs.lake import DamagedManifest, Lake
from jobs.preflight import Preflight

log = logging.getLogger(__name__)

ROWS_ALERT = 2.0  # tonight's rows against the day before's: a warning at half as many, or twice as many


def day_before(lake: Lake, table: str, ds: dt.date) -> dict[str, Any]:
    """The manifest of the day before's partition of ``table``, which tonight's figures are
    compared with; empty where there is none or it cannot be read (with a warning: a comparison
    never fails the run)."""
    previous_day = ds - dt.timedelta(days=1)
    try:
        manifest = lake.read_manifest(table, previous_day)
    except (OSError, DamagedManifest) as e:
        log.warning(
            "%s ds=%s: its manifest could not be read, so tonight is not compared with it (%s)", table, previous_day, e
        )
        return {}
    return manifest if isinstance(manifest, dict) else {}


def rows_against(ds: dt.date, rows: int, before: dict[str, Any], *, table: str) -> float | None:
    """Tonight's published rows as a share of the day before's (None where it recorded none), with
    a warning at half as many or twice as many. A producer that exported part of the day, or the
    day twice, passes every other check: each row is valid, and scores as it should."""
    was = before.get("rows")
    if not isinstance(was, int) or isinstance(was, bool) or was <= 0:
        return None
    share = rows / was
    if not 1 / ROWS_ALERT < share < ROWS_ALERT:
        log.warning(
            "%s ds=%s has %s rows, against %s the day before (%s): %.0f%% as many. A partial or repeated export "
            "upstream? They are published all the same",
            table,
            ds,
            f"{rows:,}",
            f"{was:,}",
            ds - dt.timedelta(days=1),
            100 * share,
        )
    return share


def warn_of_emptier_inputs(ds: dt.date, job: JobConfig, pre: Preflight, before: dict[str, Any], uri: str) -> None:
    """A warning for each input column whose share of nulls in ``uri`` rose much since the day
    before's manifest ``before`` recorded it (:mod:`jobs.input_stats`)."""
    optional = {rule.name for rule in pre.rules if rule.nullable}
    for name, (was, now) in input_stats.rises(pre.input_nulls, before.get("input_nulls")).items():
        log.warning(
            "input column %r is %.1f%% null in %s, against %.1f%% the day before (%s): a change upstream? "
            "Rows with a null there are %s",
            name,
            100 * now,
            uri,
            100 * was,
            ds - dt.timedelta(days=1),
            "scored without it (the model takes it as optional)" if name in optional else "quarantined",
        )


def score_distribution(
    ds: dt.date,
    summaries: list[dict[str, Any]],
    before: dict[str, Any],
    *,
    table: str,
    version: int | None = None,
    classifies: bool = True,
    classes: Sequence[str] = (),
    what: str = "scores",
) -> dict[str, float]:
    """The figures of ``summaries`` (:func:`jobs.score_stats.merge`; a positive rate where the
    model ``classifies``; each class's share of the rows for a multiclass model's ``classes``),
    against those of the day before's manifest ``before`` of ``table`` where it has them; a
    warning when the scores (``what`` they are: an embedding's, its vectors' lengths), or the
    classes' shares, moved much since. ``version``: the model version that scored tonight's; where
    the day before's was another (the night after a promotion), the warning says so, as the likely
    cause."""
    day_before = ds - dt.timedelta(days=1)
    previous = before.get("scores")
    try:  # a comparison: yesterday's partition, whatever its state, never fails tonight's run
        scores = score_stats.merge(summaries, previous, classifies=classifies, classes=classes)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("%s ds=%s: its manifest's scores could not be compared with tonight's (%s)", table, day_before, e)
        previous, scores = None, score_stats.merge(summaries, classifies=classifies, classes=classes)
    shift = scores.get("psi_vs_previous_day")
    if shift is not None and shift > score_stats.PSI_ALERT:
        rates = (previous.get("positive_rate"), scores.get("positive_rate"))
        log.warning(
            "%s's %s moved since %s: population stability index %.2f against that day's deciles (above %g); "
            "median %.4g → %.4g%s%s",
            table,
            what,
            day_before,
            shift,
            score_stats.PSI_ALERT,
            previous["p50"],
            scores["p50"],
            f", positive rate {100 * rates[0]:.2f}% → {100 * rates[1]:.2f}%" if None not in rates else "",
            _model_changed(before, version),
        )
    moved = scores.get(score_stats.CLASS_PSI)
    if moved is not None and moved > score_stats.PSI_ALERT:
        share = score_stats.SHARE
        log.warning(
            "%s's predicted classes moved since %s: population stability index %.2f of their shares (above %g); %s%s",
            table,
            day_before,
            moved,
            score_stats.PSI_ALERT,
            ", ".join(f"{c} {100 * previous[share + c]:.1f}% → {100 * scores[share + c]:.1f}%" for c in classes),
            _model_changed(before, version),
        )
    return scores


def _model_changed(before: dict[str, Any], version: int | None) -> str:
    model = before.get("model")
    was = model.get("version") if isinstance(model, dict) else None
    if version is None or not isinstance(was, int) or was == version:
        return ""
    return f"; the day before was scored by v{was} and tonight by v{version}, which can move them by itself"
