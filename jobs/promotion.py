"""Moving the ``champion`` alias, with evidence and an audit trail.

MLflow keeps no history of aliases, so every move is recorded twice: as tags on the model
versions, and as an append-only audit log in the lake: one immutable JSON object per event under
``<lake>/audit/<job>/`` (S3 has no append; a folder of events is appended to by adding files).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import uuid
from typing import Any

from jobs import tracking
from jobs.ab import DamagedReport, ab_spec, latest_report
from jobs.config import JobConfig
from jobs.lake import Lake
from jobs.settings import Settings, load_settings
from models.registry import resolve

log = logging.getLogger(__name__)

PREVIOUS = "previous-champion"


class PromotionRefused(RuntimeError):
    """The evidence does not support the move; the message says why and how to override."""


def _who() -> str:
    return os.environ.get("AIRFLOW_CTX_DAG_OWNER") or os.environ.get("USER") or getpass.getuser()


def audit(lake: Lake, job: JobConfig, event: dict[str, Any]) -> str:
    when = dt.datetime.now(dt.UTC)
    event = {"job": job.name, "at": when.isoformat(), "by": _who(), **event}
    folder = f"{lake.base}/audit/{job.name}"
    lake.make_dirs(folder)
    path = f"{folder}/{when.strftime('%Y%m%dT%H%M%S%f')}-{event['action']}-{uuid.uuid4().hex[:6]}.json"
    with lake.fs.open_output_stream(path) as f:
        f.write(json.dumps(event, indent=2).encode())
    return lake.uri(path)


def read_audit(lake: Lake, job: JobConfig) -> list[dict[str, Any]]:
    infos = lake.entries(f"{lake.base}/audit/{job.name}")
    events = []
    for info in sorted(infos, key=lambda i: i.base_name):
        with lake.fs.open_input_stream(info.path) as f:
            events.append(json.loads(f.read()))
    return events


def _evidence(lake: Lake, job: JobConfig, champion: int, challenger: int) -> tuple[dict | None, list[str]]:
    """The latest comparison report, and what in it speaks against moving ``champion``."""
    try:
        report = latest_report(lake, job)
    except DamagedReport as e:
        return None, [str(e)]
    if report is None:
        return None, [f"no comparison report for {job.name} yet (run: lakecast compare {job.name} --date D)"]
    compared = (report["champion"]["version"], report["challenger"]["version"])
    if compared != (champion, challenger):
        return report, [
            f"the latest report ({report['date']}) compared v{compared[0]} with v{compared[1]}, "
            f"but the aliases now point to v{champion} and v{challenger}"
        ]
    if report["verdict"] != "promote":
        return report, [
            f"the latest verdict ({report['date']}) is {report['verdict']!r}: " + "; ".join(map(str, report["reasons"]))
        ]
    return report, []


def promote(job: JobConfig, *, settings: Settings | None = None, force: bool = False, reason: str = "") -> dict:
    """Move ``champion`` to the challenger's version if the latest verdict is ``promote``."""
    spec = ab_spec(job, "promote")
    settings = settings or load_settings()
    lake = Lake(settings.lake_root)
    client = tracking.configure(settings)
    champion = resolve(client, job.model.name, alias=spec.champion)
    challenger = resolve(client, job.model.name, alias=spec.challenger)
    if champion.version == challenger.version:
        raise PromotionRefused(
            f"{spec.champion} and {spec.challenger} are both version {champion.version}: nothing to do"
        )
    report, problems = _evidence(lake, job, champion.version, challenger.version)
    if problems and not force:
        raise PromotionRefused(" ".join(problems) + ". Use --force to promote anyway (the audit log records it).")
    client.set_registered_model_alias(job.model.name, PREVIOUS, str(champion.version))
    client.set_registered_model_alias(job.model.name, spec.champion, str(challenger.version))
    now = dt.datetime.now(dt.UTC).isoformat()
    client.set_model_version_tag(job.model.name, str(challenger.version), "lakecast.promoted_at", now)
    client.set_model_version_tag(job.model.name, str(champion.version), "lakecast.demoted_at", now)
    event = {
        "action": "promote",
        "model": job.model.name,
        "from_version": champion.version,
        "to_version": challenger.version,
        "forced": bool(problems),
        "overridden": problems,
        "why": reason or ("forced: " + " ".join(problems) if problems else "latest verdict: promote"),
        "report": report.get("lake_path") if report else None,
    }
    event["audit_path"] = audit(lake, job, event)
    log.info("promoted %s: champion v%d → v%d", job.model.name, champion.version, challenger.version)
    return event


def rollback(job: JobConfig, *, settings: Settings | None = None, reason: str = "") -> dict:
    """Move ``champion`` back to ``previous-champion``."""
    spec = ab_spec(job, "rollback")
    settings = settings or load_settings()
    lake = Lake(settings.lake_root)
    client = tracking.configure(settings)
    from models.registry import RegistryError

    try:
        previous = resolve(client, job.model.name, alias=PREVIOUS)
    except RegistryError as e:
        raise PromotionRefused(f"nothing to roll back to: {e}") from None
    current = resolve(client, job.model.name, alias=spec.champion)
    client.set_registered_model_alias(job.model.name, spec.champion, str(previous.version))
    client.delete_registered_model_alias(job.model.name, PREVIOUS)
    now = dt.datetime.now(dt.UTC).isoformat()
    client.set_model_version_tag(job.model.name, str(current.version), "lakecast.rolled_back_at", now)
    event = {
        "action": "rollback",
        "model": job.model.name,
        "from_version": current.version,
        "to_version": previous.version,
        "forced": False,
        "why": reason or "rollback",
        "report": None,
    }
    event["audit_path"] = audit(lake, job, event)
    log.info("rolled back %s: champion v%d → v%d", job.model.name, current.version, previous.version)
    return event
