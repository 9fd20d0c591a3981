"""Job files a test adds, as a user adds one: a copy of conf/ with one more file in jobs/."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from jobs.settings import PROJECT_ROOT


def conf_with_job(folder: Path, name: str, **sections: Any) -> Path:
    """``folder``, a copy of the project's conf/ (for LAKECAST_CONF) with ``jobs/<name>.yaml``:
    the churn job reading ``raw/<name>`` and writing ``predictions/<name>``, each of ``sections``
    merged into the section of that name (None removes it, a value that is no mapping replaces
    it: ``schedule``, ``timezone``)."""
    shutil.copytree(PROJECT_ROOT / "conf", folder)
    job = yaml.safe_load((folder / "jobs" / "churn.yaml").read_text())
    job["input"]["table"] = f"raw/{name}"
    job["output"]["table"] = f"predictions/{name}"
    for key, value in sections.items():
        if value is None:
            job.pop(key, None)
        elif isinstance(value, dict):
            job[key] = job.get(key, {}) | value
        else:
            job[key] = value
    (folder / "jobs" / f"{name}.yaml").write_text(yaml.safe_dump(job))
    return folder
