"""A real Ray head for the cluster-mode tests: ``ray start --head --block`` with its dashboard.

Started in a session of its own so that stopping it (the whole process group) takes its raylet,
GCS, dashboard and job drivers with it, without ``ray stop`` (which would kill every Ray on the
machine, the tests' local one included).
"""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.s3server import free_ports
from tests.stack import stop_group


class RayHead:
    def __init__(self, workdir: Path, *, num_cpus: int = 2, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.num_cpus = num_cpus
        # every port of its own: a local Ray in the test process holds Ray's defaults (agent 52365, ...)
        ports = free_ports(8, start=22000, paired=False)
        self.gcs, self.dashboard, self.client = ports[:3]
        self.min_worker = max(ports) + 1  # workers take the 200 ports after the named ones
        self.agent_ports = dict(
            zip(
                (
                    "dashboard-agent-listen-port",
                    "dashboard-agent-grpc-port",
                    "runtime-env-agent-port",
                    "metrics-export-port",
                    "node-manager-port",
                ),
                ports[3:],
                strict=True,
            )
        )
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def auth_env(self) -> dict[str, str]:
        """Ray's token authentication, as a client of this head needs it."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.workdir / "auth_token")}

    @property
    def address(self) -> str:
        """The Jobs API address, as a user writes it in RAY_ADDRESS."""
        return f"http://127.0.0.1:{self.dashboard}"

    def start(self, timeout: float = 120) -> RayHead:
        bin_dir = Path(sys.executable).parent
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "auth_token").write_text(secrets.token_hex(32))
        env = {**os.environ, **self.env, **self.auth_env, "RAY_USAGE_STATS_ENABLED": "0"}
        env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"  # the job's `python` is this environment's
        env.pop("RAY_ADDRESS", None)
        cmd = [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs}",
            f"--ray-client-server-port={self.client}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard}",
            f"--min-worker-port={self.min_worker}",
            f"--max-worker-port={self.min_worker + 200}",
            *(f"--{name}={port}" for name, port in self.agent_ports.items()),
            f"--num-cpus={self.num_cpus}",
            "--object-store-memory=500000000",
            "--disable-usage-stats",
        ]
        log = open(self.workdir / "ray-head.log", "w")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                    return self
            except urllib.error.HTTPError:  # 401: up, and asking for Ray's auth token (the client sends it)
                return self
            except (OSError, http.client.HTTPException):  # not up yet
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray dashboard did not answer within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.workdir / "ray-head.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, grace=5)  # a throwaway head: no state to save
        self.proc = None
        # `ray start` wrote its address where a bare ray.init() looks for a running Ray; `ray stop`
        # would remove it, the group's kill does not: left there, it sends later Ray users on this
        # machine to a dead head
        from ray._common.utils import get_ray_address_file

        written = Path(get_ray_address_file(None))
        if written.is_file() and written.read_text().strip().endswith(f":{self.gcs}"):
            written.unlink(missing_ok=True)
