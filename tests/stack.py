"""The production stack of docker/compose.yaml, run natively for the end-to-end test.

PostgreSQL from Debian's package, ``mlflow server``, and Airflow's api-server, scheduler,
dag-processor and triggerer: the same programs and subcommands as the compose services, on
127.0.0.1 with ports of their own. Every process starts in a session of its own and is stopped,
with its children, by :meth:`Service.stop`, also when a test fails.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

BIN = Path(sys.executable).parent
COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "compose.yaml"


def compose() -> dict:
    """docker/compose.yaml, parsed, every ``${VAR:?message}`` and ``${VAR:-default}`` given a value
    as docker/.env gives it."""
    text = re.sub(r"\$\{([A-Z_]+)(:[?-][^}]*)?\}", lambda m: f"test-{m.group(1).lower()}", COMPOSE.read_text())
    return yaml.safe_load(text)


def own_settings(service: str) -> dict[str, str]:
    """The environment compose gives ``service`` beyond the stack's shared one (``x-lakecast-env``,
    whose addresses and keys the native stack has its own of)."""
    parsed = compose()
    shared = parsed["x-lakecast-env"]
    return {k: str(v) for k, v in parsed["services"][service]["environment"].items() if k not in shared}


def cmdline(process: psutil.Process) -> list[str]:
    """A process's command line as ``ps`` shows it (Airflow and Ray name their workers so), or []
    once it has ended."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian's postgresql package puts it."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package (apt-get install postgresql)")
    return found


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, service: Service | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service is not None and service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    tail = service.log_tail() if service else ""
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s\n{tail}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500


def stop_group(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM, grace: float = 20) -> None:
    """Signal a process started with ``start_new_session`` and all its children; SIGKILL after ``grace``."""
    stop_groups([proc], sig, grace)


def stop_groups(procs: list[subprocess.Popen], sig: signal.Signals = signal.SIGTERM, grace: float = 20) -> None:
    """:func:`stop_group` for several processes at once: they shut down side by side, not in turn.

    Whatever a leader leaves behind in its group (a worker it forked) is killed at the end.
    """
    groups = [proc.pid for proc in procs]
    for s, wait in ((sig, grace), (signal.SIGKILL, 5)):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, s)
        deadline = time.monotonic() + wait
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        procs = [p for p in procs if p.poll() is None]
        if not procs:
            break
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


class Service:
    """One long-running program with its log in ``logdir``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        logdir: Path,
        user: str | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=open(self.log_path, "w"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, sig: signal.Signals = signal.SIGTERM, grace: float = 20) -> None:
        stop_group(self.proc, sig, grace)


class Postgres:
    """A throwaway PostgreSQL cluster on loopback, trust authentication, owned by the ``postgres``
    user when the tests run as root (the server refuses to run as root)."""

    def __init__(self, port: int, logdir: Path) -> None:
        self.port = port
        self.logdir = logdir
        self.dir = Path(tempfile.mkdtemp(prefix="lakecast-pg-"))  # not under pytest's 0700 root folder
        self.user = "postgres" if os.geteuid() == 0 else None
        self.service: Service | None = None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://lakecast@127.0.0.1:{self.port}/{database}"

    def start(self) -> Postgres:
        data = self.dir / "data"
        if self.user:
            shutil.chown(self.dir, self.user)
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        subprocess.run(
            [*prefix, pg_bin("initdb"), "-D", str(data), "-U", "lakecast", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        argv = [pg_bin("postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.dir)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "fsync=off"]
        self.service = Service("postgres", argv, env=dict(os.environ), logdir=self.logdir, user=self.user)
        wait_until(self._ready, timeout=60, what="PostgreSQL", service=self.service)
        for db in ("airflow", "mlflow"):
            self.psql(f"CREATE DATABASE {db}")
        return self

    def psql(self, sql: str) -> None:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "lakecast", "-d", "postgres", "-c", sql],
            check=True,
            capture_output=True,
        )

    def _ready(self) -> bool:
        cmd = ["pg_isready", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(cmd, capture_output=True).returncode == 0

    def stop(self) -> None:
        if self.service:
            self.service.stop(signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(self.dir, ignore_errors=True)


class Airflow:
    """Airflow 3 as compose runs it: PostgreSQL metadata, LocalExecutor, four server processes."""

    def __init__(self, home: Path, *, port: int, db_url: str, env: dict[str, str], logdir: Path) -> None:
        self.home = home
        self.port = port
        self.logdir = logdir
        self.password = "e2e-admin-password"
        home.mkdir(parents=True, exist_ok=True)
        (home / "passwords.json").write_text(json.dumps({"admin": self.password}))
        self.env = {
            **os.environ,
            **env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parent.parent / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API_AUTH__JWT_SECRET": "e2e-jwt-secret-not-for-production",
            "AIRFLOW__API__SECRET_KEY": "e2e-secret-key-not-for-production",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
        self.services: list[Service] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def start(self) -> Airflow:
        self.cli("db", "migrate")
        for name, args in (
            ("airflow-apiserver", ["api-server", "--port", str(self.port), "--host", "127.0.0.1", "--workers", "1"]),
            ("airflow-scheduler", ["scheduler"]),
            ("airflow-dag-processor", ["dag-processor"]),
            ("airflow-triggerer", ["triggerer"]),
        ):
            self.services.append(Service(name, [str(BIN / "airflow"), *args], env=self.env, logdir=self.logdir))
        wait_until(
            lambda: http_ok(f"{self.url}/api/v2/monitor/health"),
            timeout=180,
            what="the Airflow API server",
            service=self.services[0],
        )
        return self

    def token(self) -> str:
        body = json.dumps({"username": "admin", "password": self.password}).encode()
        req = urllib.request.Request(
            f"{self.url}/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["access_token"]

    def api(self, path: str, token: str, *, root: str = "/api/v2") -> dict | str:
        req = urllib.request.Request(f"{self.url}{root}{path}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    def ui(self, path: str, token: str) -> dict | str:
        """The Airflow UI's own API, where it reads what the REST API does not serve (a partitioned
        Dag run's pending keys)."""
        return self.api(path, token, root="/ui")

    def post(self, path: str, token: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"{self.url}/api/v2{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    def stop(self) -> None:
        # a throwaway stack: its servers' graceful shutdown took 10-15 s of every test session
        stop_groups([service.proc for service in self.services], grace=5)
