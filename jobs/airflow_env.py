"""The environment under which lakecast runs Airflow commands on the embedded default.

``lakecast demo``, ``lakecast airflow ...`` and the tests all call Airflow through here, so the
scheduler, the UI and ``airflow dags test`` share one Airflow home and one dags folder.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from jobs.settings import PROJECT_ROOT, Settings

# How many tasks the embedded default's Airflow runs at once (its LocalExecutor forks as many
# workers when the scheduler starts; Airflow's default is 32). Each predict or compare task there
# starts a private Ray that takes every core and about 2 GiB at its peak (a 10M-row night): 32
# jobs due at 02:00 would start 32 Rays on one machine, more memory than a laptop has. At four,
# the nights queue in Airflow instead, and a sensor waiting in reschedule mode holds no slot.
LOCAL_PARALLELISM = 4
# Airflow's execution API imports Starlette's test client (through svcs), which warns, since
# Starlette moved to httpx2, in every `airflow dags test` and API server: nothing a user can act on
QUIET = ("ignore:Using `httpx` with `starlette.testclient` is deprecated:UserWarning",)


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home
    env = {
        **os.environ,
        "LAKECAST_HOME": str(settings.home),
        "LAKECAST_PROFILE": settings.profile,
        **({"LAKECAST_LAKE_ROOT": settings.lake_root} if "LAKECAST_LAKE_ROOT" in os.environ else {}),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # after the user's own filters, so that these win for their few messages
        "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *QUIET])),
    }
    # `airflow standalone` starts its scheduler, API server and the rest as `airflow ...` found on
    # PATH: put this venv's first, as activating it would, or they fail from a shell without it
    airflow = Path(airflow_bin())
    if airflow.is_absolute():
        env["PATH"] = os.pathsep.join([str(airflow.parent), env.get("PATH", os.defpath)])
    if settings.profile == "local":
        # One user on one machine: the UI needs no login. Production profiles leave this off.
        env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
        env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
        env.setdefault("AIRFLOW__CORE__PARALLELISM", str(LOCAL_PARALLELISM))
        port = env.get("AIRFLOW__API__PORT")
        if port and not ({"AIRFLOW__API__BASE_URL", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"} & env.keys()):
            # Tasks report to the API server at localhost:8080 unless the base URL says otherwise:
            # with only the port moved (8080 taken), every task failed with "Connection refused"
            env["AIRFLOW__API__BASE_URL"] = f"http://localhost:{port}"
    return env


def airflow_bin() -> str:
    """The ``airflow`` beside this interpreter (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "airflow"
    return str(beside) if beside.exists() else (shutil.which("airflow") or "airflow")


def run_airflow(settings: Settings, args: list[str], *, capture: bool = False) -> subprocess.CompletedProcess:
    """``airflow <args>``; with ``capture``, its output kept, else in the user's terminal, where a
    stop of lakecast stops it and every process it started (:mod:`jobs.foreground`)."""
    from jobs import foreground

    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    cmd = [airflow_bin(), *args]
    if capture:
        return subprocess.run(cmd, env=airflow_env(settings), text=True, capture_output=True, check=False)
    return subprocess.CompletedProcess(cmd, foreground.run(cmd, airflow_env(settings)))


def needs_database(settings: Settings) -> bool:
    """The embedded default's SQLite database has no Airflow schema yet: a new ``LAKECAST_HOME``
    (or one a crashed first command left an empty file in). A database set through
    ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` is the operator's to migrate."""
    if settings.profile != "local" or "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in os.environ:
        return False
    db = settings.airflow_home / "airflow.db"
    if not db.exists():
        return True
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone() is None
