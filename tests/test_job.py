"""The Ray Data job end to end on a local Ray, real MLflow and the local lake."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray

from jobs.config import JobConfig
from jobs.failures import exit_status
from jobs.lake import LakeError
from jobs.predict import run_job
from models.registry import RegistryError
from tests.conftest import DAY, ROWS
from tests.scores import assert_scores_describe

OUT = "predictions/churn"


def read_output(lake):
    return pads.dataset(lake.partition_path(OUT, DAY), format="parquet").to_table()


@pytest.fixture(scope="module")
def first_run(settings, lake, registered, ray_local, churn_job):
    return run_job(churn_job, DAY, settings=settings)


def test_every_row_scored_once_with_lineage(first_run, lake, registered):
    table = read_output(lake)
    assert table.num_rows == ROWS == first_run.rows
    assert len(table["customer_id"].unique()) == ROWS
    assert set(table["model_name"].to_pylist()) == {"churn-classifier"}
    assert set(table["model_version"].to_pylist()) == {registered["champion"]}  # the number, not the alias
    assert set(table["scoring_run_id"].to_pylist()) == {first_run.run_id}
    assert table["scored_at"].null_count == 0


def test_every_output_column_is_required(first_run, lake):
    """A reader (or a data contract) can rely on no column holding a null: Parquet says so."""
    columns = read_output(lake).column_names
    for path in pads.dataset(lake.partition_path(OUT, DAY)).files:
        schema = pq.ParquetFile(path).schema  # a column's definition level 0: Parquet's "required"
        levels = {schema.column(i).name: schema.column(i).max_definition_level for i in range(len(schema))}
        assert levels == dict.fromkeys(columns, 0), path


def test_only_committed_files_and_manifest_in_partition(first_run, lake):
    names = sorted(p.rsplit("/", 1)[-1] for p in pads.dataset(lake.partition_path(OUT, DAY)).files)
    assert all(n.endswith(".parquet") for n in names)
    manifest = lake.read_manifest(OUT, DAY)
    assert manifest["scoring_run_id"] == first_run.run_id
    assert manifest["rows"] == ROWS
    assert sum(f["rows"] for f in manifest["output"]) == ROWS
    assert sorted(f["file"] for f in manifest["output"]) == names
    assert manifest["model"]["version"] == first_run.model.version
    # nothing of the run is left in staging, not even the day's empty folder
    for table in (OUT, "quarantine/churn"):
        assert not lake.exists(lake.staging_day(table, DAY)), table


def test_run_is_logged_to_mlflow(first_run, settings, churn_job, lake):
    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(first_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["job"] == "churn"
    assert run.data.params["date"] == DAY.isoformat()
    assert run.data.params["model_uri"] == first_run.model.uri
    assert run.data.params["compute.transparent_huge_pages"] == "False"  # the CPU actors turned them off
    assert run.data.metrics["rows"] == ROWS
    assert run.data.metrics["rows_per_s"] > 0
    # the startup split into its steps, which happen in this order
    m = run.data.metrics
    assert 0 < max(m["startup.ray_ready_s"], m["startup.checks_done_s"]) <= m["startup.pipeline_start_s"]
    assert m["startup.pipeline_start_s"] < m["startup.actor_ready_s"] <= m["startup_s"]
    # where the actors' time went, stage by stage, within the job's own time on its actors
    stages = {stage: m[f"actors.{stage}_s"] for stage in ("read", "validate", "score", "write")}
    threads = churn_job.compute.max_actors * int(run.data.params["compute.files_at_once"])
    assert all(t > 0 for t in stages.values()) and sum(stages.values()) < m["seconds"] * threads
    assert first_run.as_dict()["actor_seconds"] == pytest.approx(stages, abs=1e-3)
    # one piece on the actor's two CPUs: pyarrow's and torch's threads work on it beside the
    # scoring thread, whose CPU time is then not all of it, so no share of time on a core is
    # given (a piece per thread: the next test)
    assert threads == 1 and "actors.on_cpu_share" not in m and first_run.actor_on_cpu_share is None
    assert run.data.tags["lakecast.model_version"] == f"churn-classifier/{first_run.model.version}"
    # the night's score distribution, to chart across runs: the published scores', in the
    # metrics, the manifest and the run's result alike
    scores = {k.removeprefix("score."): v for k, v in m.items() if k.startswith("score.")}
    figures = {"mean", "std", "min", "max", "positive_rate", "p01", "p99", *(f"p{10 * i}" for i in range(1, 10))}
    # psi_vs_previous_day where the day before's partition was scored (see the next test)
    assert figures <= set(scores) <= figures | {"psi_vs_previous_day"}
    table = read_output(lake)
    assert_scores_describe(scores, table)
    assert lake.read_manifest(OUT, DAY)["scores"] == pytest.approx(scores)
    assert first_run.as_dict()["scores"] == pytest.approx(scores)
    contexts = {tag.value for d in run.inputs.dataset_inputs for tag in d.tags if tag.key == "mlflow.data.context"}
    assert contexts == {"input", "output"}


def _processes_with(marker: str) -> list[str]:
    """Processes whose environment holds ``marker`` (a Ray started by a process inherits it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80])
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return found


MARK = "LAKECAST_TEST_MARK"


def _marked_env() -> dict[str, str]:
    """This process's environment for a user's process: no RAY_ADDRESS (a private Ray, as a user
    has), and a mark of its own, which the processes of the Ray it starts inherit."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {MARK: uuid.uuid4().hex}


def _ray_left(env: dict[str, str]) -> list[str]:
    """The processes still carrying ``env``'s mark (:func:`_marked_env`) once they had 10 s to end."""
    marker = f"{MARK}={env[MARK]}"
    deadline = time.monotonic() + 10
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
def test_the_program_prints_its_result_and_leaves_no_ray_behind(first_run, home):
    """`lakecast` ends quickly once the job has committed (see jobs.cli.run): its output and
    exit status must be whole, and the Ray it started must be gone with it. A clean run's log
    holds no warning: Ray's about its token authentication's default and about the actors'
    restart options opened every run's, with nothing for the user to change."""
    lakecast = str(Path(sys.executable).with_name("lakecast"))
    # a user's shell, where Ray has not set RAY_AUTH_MODE as it does in this process once it starts
    env = {k: v for k, v in _marked_env().items() if k != "RAY_AUTH_MODE"}
    proc = subprocess.run(
        [lakecast, "run", "churn", "--date", DAY.isoformat(), "--json"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["rows"] == ROWS and result["committed"]
    warned = [line for line in proc.stderr.splitlines() if re.search("warn|deprecat", line, re.IGNORECASE)]
    assert not warned, "\n".join(warned)
    left = _ray_left(env)
    assert not left, f"still running after lakecast exited: {left}"

    bad = subprocess.run([lakecast, "run", "churn", "--date", "2026-02-30"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "YYYY-MM-DD, got '2026-02-30'" in bad.stderr


@pytest.mark.slow
def test_a_process_that_ends_after_using_ray_leaves_no_ray_behind(home):
    """An Airflow task's process, a notebook or a script that ran a job on a private Ray and ends
    the usual way: its exit handler (jobs.ray_runtime.stop_ray, ahead of Ray's own) stops every
    process of that Ray."""
    env = _marked_env()
    code = (
        "from jobs.ray_runtime import ensure_ray\n"
        "from jobs.settings import load_settings\n"
        "ensure_ray(load_settings())\n"
        "import ray.data\n"
        "assert ray.data.range(1000).count() == 1000\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    left = _ray_left(env)
    assert not left, f"still running after the process ended: {left}"


def test_rerun_replaces_the_partition(first_run, settings, lake, churn_job):
    second = run_job(churn_job, DAY, settings=settings, model_alias="challenger")
    table = read_output(lake)
    assert table.num_rows == ROWS  # replaced, not appended
    assert set(table["scoring_run_id"].to_pylist()) == {second.run_id}
    assert set(table["model_version"].to_pylist()) == {second.model.version} != {first_run.model.version}


def test_dry_run_publishes_nothing(first_run, settings, lake, churn_job):
    before = lake.read_manifest(OUT, DAY)
    result = run_job(churn_job, DAY, settings=settings, dry_run=True)
    assert not result.committed and result.rows == ROWS
    assert lake.read_manifest(OUT, DAY) == before


def test_batch_size_auto_measures_and_logs_its_choice(first_run, settings, churn_job):
    from jobs.batch_size import CANDIDATES

    compute = churn_job.compute.model_copy(update={"batch_size": "auto"})
    result = run_job(churn_job.model_copy(update={"compute": compute}), DAY, settings=settings, dry_run=True)
    assert result.rows == ROWS
    params = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result.run_id).data.params
    assert params["compute.batch_size"] == "auto"
    # a partition of 3,000 rows: no candidate beyond the first above it is worth measuring
    assert int(params["compute.batch_size_chosen"]) in [c for c in CANDIDATES if c <= 4096]


def test_missing_partition_is_a_clear_error(settings, lake, registered, churn_job):
    with pytest.raises(LakeError, match=r"raw/customers/ds=2020-01-01 does not exist"):
        run_job(churn_job, DAY.replace(year=2020, month=1, day=1), settings=settings)


def test_unknown_alias_is_a_clear_error(settings, lake, registered, churn_job):
    with pytest.raises(RegistryError, match=r"has no alias 'nightly' \(aliases: challenger→v\d+, champion→v\d+\)"):
        run_job(churn_job, DAY, settings=settings, model_alias="nightly")


def test_a_run_id_mlflow_does_not_hold_is_named_before_anything_is_scored(first_run, settings, lake, churn_job):
    """``--mlflow-run-id`` (the Airflow task's run, created before the job): one that MLflow lacks
    or has deleted is named with the store, and the partition stays as it was."""
    from jobs import tracking
    from jobs.yamlconf import ConfigError

    before = lake.read_manifest(OUT, DAY)
    store = settings.mlflow.tracking_uri
    with pytest.raises(ConfigError, match=rf"^--mlflow-run-id 0{{32}}: MLflow at {store} has no such run \(leave"):
        run_job(churn_job, DAY, settings=settings, mlflow_run_id="0" * 32)
    _, deleted = tracking.create_scoring_run(settings, churn_job.name, DAY)
    mlflow.MlflowClient(store).delete_run(deleted)
    with pytest.raises(ConfigError, match=rf"^--mlflow-run-id {deleted}: that run is deleted in MLflow at {store}; "):
        run_job(churn_job, DAY, settings=settings, mlflow_run_id=deleted)
    assert lake.read_manifest(OUT, DAY) == before


def test_unknown_model_names_the_registry_and_what_it_holds(settings, lake, registered, churn_job):
    job = churn_job.model_copy(update={"model": churn_job.model.model_copy(update={"name": "churn-clasifier"})})
    with pytest.raises(
        RegistryError,
        match=r"registered model 'churn-clasifier' not found in the MLflow registry at sqlite:///\S+/mlflow\.db "
        r"\(registered models: ([\w-]+, )*churn-classifier(, [\w-]+)*\)",  # with other modules' models
    ):
        run_job(job, DAY, settings=settings)


def test_an_mlflow_server_out_of_reach_is_worth_a_retry_not_a_missing_model(home, lake, capsys, monkeypatch):
    """Before, MLflow's client retried for 4 minutes, and lakecast then said the model was not in
    the registry, with the exit status that tells Airflow not to retry."""
    from jobs.cli import main
    from jobs.failures import EXIT_TRY_AGAIN
    from tests.s3server import free_ports

    port = free_ports(1)[0]  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    assert main(["run", "churn", "--date", DAY.isoformat(), "--dry-run"]) == EXIT_TRY_AGAIN
    assert time.monotonic() - t0 < 60  # MLflow's own retries wait about 4 minutes
    err = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert err == (
        f"lakecast: MLflow at http://127.0.0.1:{port} did not answer (Connection refused, 3 tries); check that the "
        "server runs and that the profile's mlflow.tracking_uri names it"
    ), err


def placed_as(job: JobConfig, **compute: object) -> JobConfig:
    """``job`` with these ``compute`` keys, checked as the job file's loading checks them (a label
    selector is kept as Ray reads it)."""
    return job.model_copy(update={"compute": type(job.compute).model_validate(job.compute.model_dump() | compute)})


@pytest.mark.timeout(180)  # an actor Ray cannot place waits for ever
def test_the_actors_run_on_the_nodes_their_label_selector_allows(settings, lake, registered, ray_local, churn_job):
    """``compute.label_selector`` reaches Ray as the actors' own: here this Ray's one node by its id,
    among others as a job file may write them (with a space after the comma, which Ray's scheduler
    would keep in the value), and not on a spot node (a label it lacks, which a negated selector
    allows, as Ray has it)."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    node = ray.get_runtime_context().get_node_id()
    written = {"ray.io/node-id": f"in(another-node, {node})", "ray.io/market-type": "!spot"}
    job = placed_as(churn_job, label_selector=written)
    result = run_job(job, DAY, settings=settings, dry_run=True)
    assert result.rows == ROWS
    params = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result.run_id).data.params
    assert params["compute.label_selector"] == f"ray.io/node-id: in(another-node,{node}), ray.io/market-type: !spot"
    # what Ray's GCS holds of the run's actor (a private Ray serves no state API over HTTP)
    tables = [
        gcs_pb2.ActorTableData.FromString(b) for b in state._connect_and_get_accessor().get_actor_table(None, None)
    ]
    held = [dict(t.label_selector) for t in tables if "ScoreAndWrite" in t.class_name]
    # Ray writes a set's values back in its own order
    assert any(
        {"ray.io/node-id": f"in({ids})", "ray.io/market-type": "!spot"} in held
        for ids in (f"another-node,{node}", f"{node},another-node")
    )


@pytest.mark.parametrize("compute", [{"cpus_per_actor": 4}, {"gpus_per_actor": 1}], ids=["cpus", "gpus"])
def test_an_actor_no_node_can_hold_is_refused_at_once(settings, lake, registered, ray_local, churn_job, compute):
    """Ray Data would wait for it until the task's timeout, hours later, printing "pending: 4 CPU"."""
    from jobs.yamlconf import ConfigError

    if ray.cluster_resources().get("GPU") and "gpus_per_actor" in compute:
        pytest.skip("this machine's Ray has a GPU")
    job = churn_job.model_copy(update={"compute": churn_job.compute.model_copy(update=compute)})
    asked = f"{job.compute.cpus_per_actor:g} CPU (compute.cpus_per_actor)"
    has = f"{ray.cluster_resources()['CPU']:g} CPU"
    advice = "ask for less, or give the local Ray more (the profile's ray.num_cpus)"
    if "gpus_per_actor" in compute:
        asked, has = f"{asked} and 1 GPU (compute.gpus_per_actor)", f"{has}, 0 GPU"
        advice = (
            "this machine's Ray has no GPU: set compute.gpus_per_actor to auto (GPU actors where there are GPUs, "
            "CPU actors elsewhere) or 0"
        )
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        run_job(job, DAY, settings=settings)
    assert time.monotonic() - t0 < 60
    assert str(raised.value) == (
        f"conf/jobs/churn.yaml: each actor asks for {asked}, and no node of this Ray has that much "
        f"(the largest: {has}); {advice}"
    )


@pytest.mark.timeout(180)  # an actor Ray cannot place waits for ever
def test_actors_no_node_of_their_selector_holds_run_where_their_fallback_strategy_allows(
    settings, lake, registered, ray_local, churn_job, caplog
):
    """Spot nodes first, else this node: a private Ray has no spot node, so Ray places the actors
    by ``compute.fallback_strategy``, and the run scores every row."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    node = ray.get_runtime_context().get_node_id()
    placed = {
        "label_selector": {"ray.io/market-type": "spot"},
        "fallback_strategy": [{"label_selector": {"ray.io/node-id": node}}],
    }
    job = placed_as(churn_job, **placed)
    with caplog.at_level(logging.INFO, logger="jobs"):
        result = run_job(job, DAY, settings=settings, dry_run=True)
    assert result.rows == ROWS
    assert (
        "no node of this Ray is labelled ray.io/market-type: spot (compute.label_selector): Ray places the actors "
        "by compute.fallback_strategy"
    ) in caplog.text
    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result.run_id)
    assert run.data.params["compute.fallback_strategy"] == f"ray.io/node-id: {node}"
    # the actor that scored, noted at its first batch, and the selector that placed it
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("actors.placed_by.")} == {
        "actors.placed_by.fallback_strategy.0.label_selector": 1.0
    }
    assert "the actors' nodes: 1 by compute.fallback_strategy.0.label_selector" in caplog.text
    tables = [
        gcs_pb2.ActorTableData.FromString(b) for b in state._connect_and_get_accessor().get_actor_table(None, None)
    ]
    fallbacks = [
        [
            (c.label_key, list(c.label_values))
            for o in t.fallback_strategy.options
            for c in o.label_selector.label_constraints
        ]
        for t in tables
        if "ScoreAndWrite" in t.class_name
    ]
    assert [("ray.io/node-id", [node])] in fallbacks


@pytest.mark.parametrize(
    ("placed", "where", "held"),
    [
        ({}, "labelled ray.io/market-type: spot (compute.label_selector)", "ray.io/market-type: none"),
        (
            {"fallback_strategy": [{"label_selector": {"zone": "in(a, b)"}}]},
            "labelled ray.io/market-type: spot (compute.label_selector) or labelled zone: in(a,b) "
            "(compute.fallback_strategy.0.label_selector)",
            "ray.io/market-type: none; zone: none",
        ),
    ],
    ids=["selector", "fallback"],
)
def test_actors_whose_labels_no_node_has_are_refused_at_once(
    settings, lake, registered, ray_local, churn_job, placed, where, held
):
    """A private Ray's node has only the labels Ray gives it: a spot node never comes."""
    from jobs.yamlconf import ConfigError

    job = placed_as(churn_job, **({"label_selector": {"ray.io/market-type": "spot"}} | placed))
    with pytest.raises(ConfigError) as raised:
        run_job(job, DAY, settings=settings)
    assert str(raised.value) == (
        f"conf/jobs/churn.yaml: the actors may run only on nodes {where}, and no node of this Ray is ({held}); a "
        "private Ray's node has only the labels Ray gives it: run the job on a cluster that has such nodes "
        "(RAY_ADDRESS or the profile's ray.address), or leave compute.label_selector out"
    )


def test_on_a_cluster_an_actor_no_node_holds_yet_waits_for_the_autoscaler(settings, ray_local, churn_job, caplog):
    from jobs.ray_runtime import actor_gpus

    job = churn_job.model_copy(update={"compute": churn_job.compute.model_copy(update={"cpus_per_actor": 64})})
    cluster = settings.model_copy(update={"ray": settings.ray.model_copy(update={"address": "ray-head:6379"})})
    assert actor_gpus(job, cluster) == (1.0 if ray.cluster_resources().get("GPU") else 0.0)
    assert "each actor asks for 64 CPU (compute.cpus_per_actor), and no node of this Ray has that much" in caplog.text
    assert "the job waits until the cluster's autoscaler adds a node that fits" in caplog.text


def test_on_a_cluster_a_gpu_model_no_node_has_yet_is_waited_for_on_a_gpu(settings, ray_local, churn_job, caplog):
    """Picked by their GPUs' model, the actors take a GPU (``gpus_per_actor: auto``) even where no
    node has one yet: the autoscaler adds an H100 node for them, not a CPU actor's."""
    from jobs.ray_runtime import actor_gpus

    selector = {"ray.io/accelerator-type": "H100"}
    job = churn_job.model_copy(update={"compute": churn_job.compute.model_copy(update={"label_selector": selector})})
    cluster = settings.model_copy(update={"ray": settings.ray.model_copy(update={"address": "ray-head:6379"})})
    if any(n["Labels"].get("ray.io/accelerator-type") == "H100" for n in ray.nodes()):
        pytest.skip("this machine's Ray has an H100")
    assert actor_gpus(job, cluster) == 1.0
    assert (
        "the actors may run only on nodes labelled ray.io/accelerator-type: H100 (compute.label_selector), and no "
        "node of this Ray is (ray.io/accelerator-type: "
    ) in caplog.text
    assert "the job waits until the cluster's autoscaler adds a node that fits" in caplog.text


@pytest.mark.parametrize("where", ["RAY_ADDRESS", "profile"])
def test_ray_address_local_is_a_private_ray(settings, ray_local, churn_job, monkeypatch, where):
    """``local`` is Ray's own word for "start a Ray of your own" (``ray.init(address="local")``):
    a job given it runs on a private Ray, whose actor no node can hold is refused at once, not
    waited for as a cluster's autoscaler would be."""
    from jobs.ray_runtime import actor_gpus, cluster_address, private_ray
    from jobs.yamlconf import ConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "local")
    else:
        settings = settings.model_copy(update={"ray": settings.ray.model_copy(update={"address": "local"})})
    assert cluster_address(settings) is None and private_ray(settings)
    job = churn_job.model_copy(update={"compute": churn_job.compute.model_copy(update={"cpus_per_actor": 64})})
    with pytest.raises(ConfigError, match="no node of this Ray has that much"):
        actor_gpus(job, settings)


def test_a_private_rays_workers_keep_the_memory_pyarrow_freed(ray_local, monkeypatch):
    """A private Ray's workers, the actors among them, start with pyarrow's allocator told to
    keep freed memory for the next batch (LOCAL_RAY_ENV), unless the environment says otherwise;
    the process that started Ray keeps its environment as it was."""
    import ray

    from jobs.ray_runtime import LOCAL_RAY_ENV, env_defaults

    @ray.remote(num_cpus=0)
    def environment(names: list[str]) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in names}

    names = list(LOCAL_RAY_ENV)
    assert ray.get(environment.remote(names)) == {name: os.environ.get(name, LOCAL_RAY_ENV[name]) for name in names}
    monkeypatch.delenv("MIMALLOC_PURGE_DELAY", raising=False)
    monkeypatch.setenv("LAKECAST_TEST_OWN", "mine")
    with env_defaults({"MIMALLOC_PURGE_DELAY": "-1", "LAKECAST_TEST_OWN": "theirs"}):
        assert os.environ["MIMALLOC_PURGE_DELAY"] == "-1" and os.environ["LAKECAST_TEST_OWN"] == "mine"
    assert "MIMALLOC_PURGE_DELAY" not in os.environ and os.environ["LAKECAST_TEST_OWN"] == "mine"


def test_cli_run_and_show(first_run, home, capsys):
    from jobs.cli import main

    assert main(["run", "churn", "--date", DAY.isoformat(), "--version", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == ROWS and result["model_version"] == 1 and result["committed"]
    assert main(["show", "churn", "--date", DAY.isoformat()]) == 0
    assert json.loads(capsys.readouterr().out)["scoring_run_id"] == result["run_id"]
    assert main(["show", "churn"]) == 0  # no date: the newest committed, this one
    assert json.loads(capsys.readouterr().out)["scoring_run_id"] == result["run_id"]
    assert main(["show", "churn", "--date", "1999-01-01"]) == 2  # a date not scored: which one is
    assert re.search(r"on 1999-01-01 \(the newest committed is \d{4}-\d\d-\d\d\)$", capsys.readouterr().err.strip())
    assert main(["run", "churn", "--date", "2026-02-30"]) == 2
    assert "YYYY-MM-DD, got '2026-02-30'" in capsys.readouterr().err


def test_small_input_files_make_one_output_file_named_after_the_first(first_run, lake):
    """The partition's files together hold fewer rows than output.rows_per_file: read in turn,
    they are one piece of work and one output file, not a small file each."""
    inputs = sorted(f.path.rsplit("/", 1)[-1].removesuffix(".parquet") for f in lake.data_files("raw/customers", DAY))
    outputs = sorted(p.rsplit("/", 1)[-1] for p in pads.dataset(lake.partition_path(OUT, DAY)).files)
    assert len(inputs) > 1 and outputs == [f"{inputs[0]}-0000.parquet"]


def test_a_partition_of_one_large_file_is_scored_by_pieces_of_its_row_groups(
    settings, registered, ray_local, churn_job, tmp_path
):
    """A producer that writes the day as one file (pandas' ``to_parquet`` does) still gets every
    thread of the actor: the file is split into runs of its row groups, each scored on its own
    into files named after where it starts, every row once."""
    from jobs import demo_data
    from jobs.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    folder = Path(lake.partition_path(demo_data.RAW_TABLE, DAY))
    folder.mkdir(parents=True)
    snapshot = demo_data.generate(ROWS, DAY)
    pq.write_table(snapshot, folder / "day.parquet", row_group_size=500)  # six row groups of 500
    output = churn_job.output.model_copy(update={"rows_per_file": 1_000})
    job = churn_job.model_copy(update={"output": output})
    assert job.compute.cpus_per_actor == 2 and job.compute.max_actors == 1
    result = run_job(job, DAY, settings=settings.model_copy(update={"lake_root": lake.root}))
    table = read_output(lake)
    assert result.rows == table.num_rows == len(table["customer_id"].unique()) == ROWS
    assert sorted(table["customer_id"].to_pylist()) == sorted(snapshot["customer_id"].to_pylist())
    names = sorted(p.rsplit("/", 1)[-1] for p in pads.dataset(lake.partition_path(OUT, DAY)).files)
    assert names == ["day-g0000-0000.parquet", "day-g0002-0000.parquet", "day-g0004-0000.parquet"]
    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result.run_id)
    params = run.data.params
    assert (params["input_files"], params["input_pieces"], params["compute.files_at_once"]) == ("1", "3", "2")
    assert_scores_describe(result.scores, table)
    # a piece per thread, each on its thread alone: of the stages' time, the share those threads
    # were on a core (the rest they waited for a core, for storage, for a lock). Pieces of 1,000
    # rows take milliseconds, of which a loaded machine (the suite's other worker) may leave the
    # threads any share: a fraction, and the same in MLflow as in the result.
    share = run.data.metrics["actors.on_cpu_share"]
    assert 0 < share <= 1 and result.actor_on_cpu_share == pytest.approx(share)


def test_the_gpu_pipeline_shape_writes_every_row_once(
    settings, registered, ray_local, churn_job, tmp_path, monkeypatch, caplog
):
    """GPU actors get batches from read tasks and hand them to write tasks (no GPU here: the same
    pipeline on CPU actors). The write tasks join the actors' small batches into files of at least
    ``output.rows_per_file`` rows, and write the challenger's shadow scores beside them, a file of
    the same name and rows for each. Two actors of a CPU each would hold both CPUs and starve the
    reads: one starts, and the log says why."""
    from jobs import demo_data, pipeline
    from jobs.lake import Lake

    monkeypatch.setattr(pipeline, "actors_read_and_write", lambda gpus: False)
    lake = Lake(str(tmp_path / "lake"))
    demo_data.write_partition(lake, demo_data.RAW_TABLE, DAY, demo_data.generate(ROWS, DAY), files=3)
    compute = {"min_actors": 2, "max_actors": 2, "cpus_per_actor": 1, "batch_size": 250}
    job = churn_job.model_copy(
        update={
            "compute": churn_job.compute.model_copy(update=compute),
            "output": churn_job.output.model_copy(update={"rows_per_file": 1_000, "passthrough": ["region"]}),
            "ab": churn_job.ab.model_copy(update={"shadow": True, "challenger_share": 0.3}),
        }
    )
    result = run_job(job, DAY, settings=settings.model_copy(update={"lake_root": lake.root}))
    table = read_output(lake)
    assert result.rows == table.num_rows == len(table["customer_id"].unique()) == ROWS
    assert set(table["scoring_run_id"].to_pylist()) == {result.run_id}
    assert set(table["model_version"].to_pylist()) == {registered["champion"], registered["challenger"]}  # canary
    regions = pads.dataset(lake.partition_path(demo_data.RAW_TABLE, DAY)).to_table(columns=["customer_id", "region"])
    carried = table.select(["customer_id", "region"]).sort_by("customer_id")
    assert carried.to_pylist() == regions.sort_by("customer_id").to_pylist()  # output.passthrough
    out, shadow = Path(lake.partition_path(OUT, DAY)), Path(lake.partition_path(job.shadow_table, DAY))
    names = sorted(p.name for p in out.glob("*.parquet"))
    assert sorted(p.name for p in shadow.glob("*.parquet")) == names
    rows = sorted(pq.read_metadata(out / name).num_rows for name in names)
    assert len(rows) > 1 and min(rows[1:]) >= 1_000  # no file of a batch: the last may hold less
    # file by file, the same customers in the same order, and the published score the shadow's
    # where the canary picked the challenger
    for name in names:
        scores, theirs = pq.read_table(out / name), pq.read_table(shadow / name)
        assert theirs["customer_id"].equals(scores["customer_id"])
        assert set(theirs["model_version"].to_pylist()) == {registered["challenger"]}
        assert set(theirs["scoring_run_id"].to_pylist()) == {result.run_id}
        canary = pc.equal(scores["model_version"], registered["challenger"])
        assert pc.filter(scores["churn_probability"], canary).equals(pc.filter(theirs["churn_probability"], canary))
    assert result.actor_seconds == {}  # the stages run in separate tasks: no split of an actor's time
    assert "compute.min_actors 2 would leave the read and write tasks no CPU" in caplog.text
    # the scores' distribution, and the shadow's, summarised by the write tasks as they wrote the
    # files: every row counted
    assert_scores_describe(result.scores, table)
    assert_scores_describe(lake.read_manifest(job.shadow_table, DAY)["scores"], pads.dataset(shadow).to_table())


def test_a_gpu_actor_that_leaves_its_reads_no_cpu_is_refused_at_once(
    settings, registered, ray_local, churn_job, tmp_path, monkeypatch
):
    """The churn job as shipped asks 2 CPUs an actor: on a GPU machine of 2 CPUs its one actor
    would hold both, and the read tasks beside it would wait forever. A private Ray never grows,
    so the run says so at once (the GPU pipeline's shape, on CPU actors here)."""
    import ray

    from jobs import demo_data, pipeline
    from jobs.lake import Lake
    from jobs.yamlconf import ConfigError

    monkeypatch.setattr(pipeline, "actors_read_and_write", lambda gpus: False)
    lake = Lake(str(tmp_path / "lake"))
    demo_data.write_partition(lake, demo_data.RAW_TABLE, DAY, demo_data.generate(1_000, DAY), files=1)
    cpus = ray.cluster_resources()["CPU"]
    job = churn_job.model_copy(update={"compute": churn_job.compute.model_copy(update={"cpus_per_actor": cpus})})
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"conf/jobs/churn\.yaml: a GPU actor asks for {cpus:g} CPU") as raised:
        run_job(job, DAY, settings=settings.model_copy(update={"lake_root": lake.root}))
    assert time.monotonic() - started < 60
    assert f"at most {cpus - 1:g}" in str(raised.value) and exit_status(raised.value) == 2
    assert not Path(lake.partition_path(OUT, DAY)).exists()


def test_a_night_whose_scores_moved_says_so(settings, registered, ray_local, churn_job, tmp_path, caplog):
    """Against the day before's deciles: the same customers score alike (a small index, no
    warning); when an upstream column changes its units, every row still passes and is scored,
    and the run logs the shift and warns. Where another model version scored the night (here the
    challenger, as after a promotion), the warning names both versions."""
    import datetime as dt

    import pyarrow.compute as pc

    from jobs import demo_data
    from jobs.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    here = settings.model_copy(update={"lake_root": lake.root})
    days = [DAY + dt.timedelta(days=i) for i in range(3)]
    snapshot = demo_data.generate(ROWS, DAY)
    charges = snapshot.schema.get_field_index("monthly_charges")
    in_cents = snapshot.set_column(charges, "monthly_charges", pc.multiply(snapshot["monthly_charges"], 100.0))
    for day, data in zip(days, [snapshot, snapshot, in_cents], strict=True):
        demo_data.write_partition(lake, demo_data.RAW_TABLE, day, data, files=2)
    runs = [run_job(churn_job, day, settings=here) for day in days[:2]]
    runs.append(run_job(churn_job, days[2], settings=here, model_version=registered["challenger"]))
    assert "psi_vs_previous_day" not in runs[0].scores  # no day before
    assert runs[1].scores["psi_vs_previous_day"] < 0.05
    assert runs[2].scores["psi_vs_previous_day"] > 0.25 and runs[2].quarantined == 0
    client = mlflow.MlflowClient(settings.mlflow.tracking_uri)
    assert client.get_run(runs[2].run_id).data.metrics["score.psi_vs_previous_day"] == pytest.approx(
        runs[2].scores["psi_vs_previous_day"]
    )
    assert f"{OUT}'s scores moved since {days[1]}: population stability index" in caplog.text
    assert caplog.text.count("scores moved since") == 1
    assert (
        f"; the day before was scored by v{registered['champion']} and tonight by v{registered['challenger']}, "
        "which can move them by itself"
    ) in caplog.text

    # a day before whose manifest is broken leaves tonight's run to publish, without the index
    (Path(lake.partition_path(OUT, days[2])) / "_manifest.json").write_text('{"scores": {"p10": "x"')
    fourth = days[2] + dt.timedelta(days=1)
    demo_data.write_partition(lake, demo_data.RAW_TABLE, fourth, snapshot, files=2)
    result = run_job(churn_job, fourth, settings=here)
    assert result.committed and "psi_vs_previous_day" not in result.scores and result.scores["mean"] > 0
    assert f"{OUT} ds={days[2]}: its manifest could not be read, so tonight is not compared with it" in caplog.text
    assert caplog.text.count("its manifest could not be read") == 1  # one warning for one broken file


def test_a_night_with_far_fewer_rows_says_so(settings, registered, ray_local, churn_job, tmp_path, caplog):
    """A producer that exported a third of the day passes every other check: each row is valid and
    scores as it should. Against the day before's published rows, the run warns, and publishes."""
    import datetime as dt

    from jobs import demo_data
    from jobs.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    here = settings.model_copy(update={"lake_root": lake.root})
    days = [DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)]
    snapshot = demo_data.generate(ROWS, DAY)
    for day, data in zip(days, [snapshot, snapshot.slice(0, ROWS // 3), snapshot], strict=True):
        demo_data.write_partition(lake, demo_data.RAW_TABLE, day, data, files=1)
    runs = [run_job(churn_job, day, settings=here) for day in days[:2]]
    runs.append(run_job(churn_job, days[2], settings=here, model_version=registered["challenger"]))
    assert all(run.committed for run in runs)
    client = mlflow.MlflowClient(settings.mlflow.tracking_uri)
    metrics = [client.get_run(run.run_id).data.metrics for run in runs]
    assert "rows_vs_previous_day" not in metrics[0]  # no day before
    assert metrics[1]["rows_vs_previous_day"] == pytest.approx((ROWS // 3) / ROWS)
    assert metrics[2]["rows_vs_previous_day"] == pytest.approx(ROWS / (ROWS // 3))
    assert (
        f"{OUT} ds={days[1]} has {ROWS // 3:,} rows, against {ROWS:,} the day before ({days[0]}): 33% as many. "
        "A partial or repeated export upstream? They are published all the same"
    ) in caplog.text
    assert f"{OUT} ds={days[2]} has {ROWS:,} rows, against {ROWS // 3:,} the day before ({days[1]}): 300% as many" in (
        caplog.text
    )
    assert caplog.text.count("A partial or repeated export upstream?") == 2


def test_an_input_column_that_went_empty_upstream_is_named(
    settings, registered, ray_local, churn_job, tmp_path, caplog
):
    """Each model input's share of nulls, from the footers, in MLflow, the manifest and the
    result; when a column the model takes as optional goes empty, every row still passes
    validation and is scored, and the run names the column against the day before."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc

    from jobs import demo_data
    from jobs.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    here = settings.model_copy(update={"lake_root": lake.root})
    days = [DAY, DAY + dt.timedelta(days=1)]
    snapshot = demo_data.generate(ROWS, DAY)
    column = snapshot.schema.get_field_index("satisfaction_score")
    emptied = snapshot.set_column(column, "satisfaction_score", pa.nulls(ROWS, pa.float64()))
    for day, data in zip(days, [snapshot, emptied], strict=True):
        demo_data.write_partition(lake, demo_data.RAW_TABLE, day, data, files=2)
    first, second = (run_job(churn_job, day, settings=here) for day in days)

    # the model's every input, each at the share of nulls its data has
    inputs = set(first.input_nulls)
    assert "satisfaction_score" in inputs and "customer_id" not in inputs and len(inputs) > 10
    for name, share in first.input_nulls.items():
        assert share == pytest.approx(pc.sum(pc.is_null(snapshot[name])).as_py() / ROWS), name
    assert 0.05 < first.input_nulls["satisfaction_score"] < 0.15
    assert second.input_nulls["satisfaction_score"] == 1.0 and second.quarantined == 0 and second.committed
    assert lake.read_manifest(OUT, days[1])["input_nulls"] == second.input_nulls
    metrics = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(second.run_id).data.metrics
    assert metrics["input.null_share.satisfaction_score"] == 1.0
    partition = lake.uri(lake.partition_path(demo_data.RAW_TABLE, days[1]))
    warning = (
        f"input column 'satisfaction_score' is 100.0% null in {partition}, "
        f"against {100 * first.input_nulls['satisfaction_score']:.1f}% the day before ({days[0]})"
    )
    assert warning in caplog.text and "scored without it (the model takes it as optional)" in caplog.text
    assert caplog.text.count("% null in ") == 1


def test_an_input_table_that_names_its_days_otherwise_is_read_where_it_lies(
    settings, lake, registered, ray_local, tmp_path, monkeypatch, capsys
):
    """Another team's table, laid out ``year=/month=/day=`` by its writer, with a ``ds=`` folder
    of the same date beside it that is not the day's rows: ``input.partition`` says where a day
    lies, and the run scores that folder, names it as its input and publishes under ``ds=``."""
    import datetime as dt

    from jobs import demo_data
    from jobs.cli import main
    from jobs.failures import EXIT_TRY_AGAIN
    from tests.jobfiles import conf_with_job

    name = "their_layout"
    monkeypatch.setenv(
        "LAKECAST_CONF", str(conf_with_job(tmp_path / "conf", name, input={"partition": "year=%Y/month=%m/day=%d"}))
    )
    table = lake.table_path(f"raw/{name}")
    day = f"{table}/year={DAY:%Y}/month={DAY:%m}/day={DAY:%d}"
    lake.fs.create_dir(day, recursive=True)
    pq.write_table(demo_data.generate(ROWS, DAY), f"{day}/part-0.parquet")
    lake.fs.create_dir(f"{table}/ds={DAY}")
    pq.write_table(demo_data.generate(7, DAY), f"{table}/ds={DAY}/part-0.parquet")

    assert main(["run", name, "--date", str(DAY)]) == 0, capsys.readouterr().err
    manifest = lake.read_manifest(f"predictions/{name}", DAY)
    assert manifest["rows"] == ROWS
    assert [f["path"] for f in manifest["input"]] == [f"{day}/part-0.parquet"]

    before = DAY - dt.timedelta(days=1)
    assert main(["run", name, "--date", str(before)]) == EXIT_TRY_AGAIN
    err = capsys.readouterr().err
    assert f"partition {table}/year={before:%Y}/month={before:%m}/day={before:%d} does not exist" in err, err


def test_a_day_written_in_hourly_folders_is_scored_whole(settings, lake, registered, ray_local, tmp_path, monkeypatch):
    """A producer that lands a day hour by hour (``ds=…/hr=00/`` to ``hr=23/``, the same file
    name in each, a marker and a writer's ``_temporary`` among them): every hour's rows are
    scored once, into files named after their hour, as Spark and Ray Data read such a day."""
    from jobs import demo_data
    from jobs.cli import main
    from tests.jobfiles import conf_with_job

    name, hours, per_hour = "hourly", 4, 1_000
    monkeypatch.setenv("LAKECAST_CONF", str(conf_with_job(tmp_path / "conf", name, output={"rows_per_file": per_hour})))
    day = lake.partition_path(f"raw/{name}", DAY)
    rows = demo_data.generate(hours * per_hour, DAY)
    for hour in range(hours):
        lake.fs.create_dir(f"{day}/hr={hour:02d}/_temporary", recursive=True)
        pq.write_table(rows.slice(hour * per_hour, per_hour), f"{day}/hr={hour:02d}/part-0.parquet")
        pq.write_table(rows.slice(0, 10), f"{day}/hr={hour:02d}/_temporary/part-0.parquet")  # not yet the day's
        (Path(day) / f"hr={hour:02d}" / "_SUCCESS").touch()

    assert main(["run", name, "--date", str(DAY)]) == 0
    manifest = lake.read_manifest(f"predictions/{name}", DAY)
    assert [f["path"] for f in manifest["input"]] == [f"{day}/hr={h:02d}/part-0.parquet" for h in range(hours)]
    assert sorted(f["file"] for f in manifest["output"]) == [f"hr={h:02d}-part-0-0000.parquet" for h in range(hours)]
    out = pq.read_table(lake.partition_path(f"predictions/{name}", DAY), columns=["customer_id"])
    assert sorted(out["customer_id"].to_pylist()) == sorted(rows["customer_id"].to_pylist())


def test_a_column_that_spark_keeps_in_folder_names_is_read_from_them(
    settings, lake, registered, ray_local, tmp_path, monkeypatch
):
    """Spark's ``partitionBy("ds", "region")`` writes ``region`` into the folders' names and leaves
    it out of the files: the rows are scored as they would be with the column in the files."""
    from jobs import demo_data
    from jobs.cli import main
    from tests.jobfiles import conf_with_job

    rows = demo_data.generate(ROWS, DAY)
    regions = ["north", "central"]  # categories the model knows: another would score as "unknown"
    rows = rows.set_column(rows.schema.get_field_index("region"), "region", pa.array(regions * (ROWS // 2)))

    def in_files(day: str) -> None:
        lake.fs.create_dir(day, recursive=True)
        pq.write_table(rows, f"{day}/part-0.parquet")

    def in_folders(day: str) -> None:
        for region in regions:
            lake.fs.create_dir(f"{day}/region={region}", recursive=True)
            part = rows.filter(pc.equal(rows["region"], region)).drop_columns(["region"])
            pq.write_table(part, f"{day}/region={region}/part-0.parquet")

    scores = {}
    for write in (in_files, in_folders):
        name = write.__name__
        monkeypatch.setenv("LAKECAST_CONF", str(conf_with_job(tmp_path / name, name)))
        write(lake.partition_path(f"raw/{name}", DAY))
        assert main(["run", name, "--date", str(DAY)]) == 0
        out = pq.read_table(
            lake.partition_path(f"predictions/{name}", DAY), columns=["customer_id", "churn_probability"]
        )
        scores[name] = dict(zip(out["customer_id"].to_pylist(), out["churn_probability"].to_pylist(), strict=True))
    keys = sorted(scores["in_files"])
    assert sorted(scores["in_folders"]) == keys  # batches cut otherwise: the same to float32's last digits
    assert [scores["in_folders"][k] for k in keys] == pytest.approx([scores["in_files"][k] for k in keys], abs=1e-6)
    # its share of nulls counted as the files' own columns are, beside them
    nulls = {name: lake.read_manifest(f"predictions/{name}", DAY)["input_nulls"] for name in scores}
    assert nulls["in_folders"]["region"] == 0.0 and nulls["in_folders"].keys() == nulls["in_files"].keys()


def test_passthrough_columns_are_copied_beside_the_key_as_they_are(
    settings, lake, registered, ray_local, tmp_path, monkeypatch
):
    """``output.passthrough``: input columns copied into the predictions, whether the model takes
    them (``plan_tier``, read dictionary-encoded) or not (a date with gaps, a float with NaN and
    infinities), or a column Spark keeps in the folders' names (``region``). They are never
    validated, so no value of theirs sets a row aside, and they keep their nulls."""
    import datetime as dt

    import numpy as np

    from jobs import demo_data
    from jobs.cli import main
    from models.predictor import prediction_columns
    from tests.jobfiles import conf_with_job

    name, regions = "carried", ["north", "central"]
    rows = demo_data.generate(ROWS, DAY)
    rows = rows.set_column(rows.schema.get_field_index("region"), "region", pa.array(regions * (ROWS // 2)))
    signup = [None if i % 7 == 0 else dt.date(2020, 1, 1) + dt.timedelta(days=i % 900) for i in range(ROWS)]
    value = np.where(np.arange(ROWS) % 11 == 0, np.inf, np.arange(ROWS) * 0.5)
    value[5] = np.nan
    rows = rows.append_column("signup_date", pa.array(signup, pa.date32()))
    rows = rows.append_column("lifetime_value", pa.array(value))
    day = lake.partition_path(f"raw/{name}", DAY)
    for region in regions:
        lake.fs.create_dir(f"{day}/region={region}", recursive=True)
        part = rows.filter(pc.equal(rows["region"], region)).drop_columns(["region"])
        pq.write_table(part, f"{day}/region={region}/part-0.parquet")
    carried = ["region", "signup_date", "lifetime_value", "plan_tier"]
    monkeypatch.setenv("LAKECAST_CONF", str(conf_with_job(tmp_path / "conf", name, output={"passthrough": carried})))

    assert main(["run", name, "--date", str(DAY)]) == 0

    out = pq.read_table(lake.partition_path(f"predictions/{name}", DAY))
    assert out.column_names[:6] == ["customer_id", *carried, "churn_probability"]
    assert out.column_names == prediction_columns("customer_id", "churn_probability", passthrough=carried)
    assert [f.name for f in out.schema if f.nullable] == carried  # lakecast's own columns stay required
    assert out.num_rows == ROWS  # no row set aside for its date or its value
    got = out.select(["customer_id", *carried]).sort_by("customer_id").to_pylist()
    want = rows.select(["customer_id", *carried]).sort_by("customer_id").to_pylist()
    assert [{k: v for k, v in row.items() if k != "lifetime_value"} for row in got] == [
        {k: v for k, v in row.items() if k != "lifetime_value"} for row in want
    ]
    np.testing.assert_array_equal([r["lifetime_value"] for r in got], [r["lifetime_value"] for r in want])
