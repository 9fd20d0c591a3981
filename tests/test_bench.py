"""The benchmark runs end to end at a tiny size and reports every figure (timings are not
asserted: they live in the benchmark's report, not in the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KEYS = {
    "io_only_rows_per_s",
    "model_only_rows_per_s",
    "naive_rows_per_s",
    "lakecast_rows_per_s",
    "steady_rows_per_s",
    "hot_path_rows_per_s",
    "hot_path_steady_rows_per_s",
    "bound_rows_per_s",
    "efficiency",
    "hot_path_vs_bound",
    "steady_vs_hot_path",
    "vs_naive",
    "startup_s",
    "peak_rss_mb",
    "peak_pss_mb",
    "machine",
    "settings",
}


@pytest.fixture(scope="module")
def bench_home(tmp_path_factory) -> Path:
    """One LAKECAST_HOME for this module's benches: the first builds the demo lake, trains and
    registers the models and generates the data; the next reuse them."""
    return tmp_path_factory.mktemp("bench") / "home"


def bench(home: Path, out: Path, *args: str, rows: int = 20000, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKECAST_", "AIRFLOW", "MLFLOW_", "RAY_"))}
    env["LAKECAST_HOME"] = str(home)
    lakecast = str(Path(sys.executable).with_name("lakecast"))
    proc = subprocess.run(
        [lakecast, "bench", "--rows", str(rows), *args, "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def scoring_runs(home: Path) -> list:
    """The job's MLflow runs in ``home``'s store: the bench's job runs, one per round."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{home}/mlflow.db")
    experiment = client.get_experiment_by_name("lakecast/churn")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_bench_reports_every_figure(bench_home, tmp_path):
    """Every figure, measuring another alias than the job file's: the bound's model, the naive
    loop, the job and its work without Ray all score with the challenger's version (the bench
    fails if any step scored another). One bench for both: each costs about 45 s, and one round
    (how rounds combine is checked without running them, below)."""
    import mlflow

    out = tmp_path / "report.json"
    proc = bench(bench_home, out, "--rounds", "1", "--alias", "challenger")
    report = json.loads(out.read_text())
    assert report.keys() >= KEYS
    assert report["rows"] == 20000
    assert all(report[k] > 0 for k in KEYS - {"machine", "settings"})
    # PSS splits shared pages (Ray's object store) between processes: never above summed RSS
    assert report["peak_pss_mb"] <= report["peak_rss_mb"]
    assert report["settings"]["ray"] == "private local Ray, started by the job"
    assert report["settings"]["mlflow"] == "sqlite (embedded)"
    assert report["bound_rows_per_s"] <= min(report["io_only_rows_per_s"], report["model_only_rows_per_s"])
    # measured before the job and after it, each figure's best kept: never below either pass's
    passes = report["bound_rows_per_s_by_pass"]
    assert list(passes) == ["before_job", "after"] and all(v > 0 for v in passes.values())
    assert report["bound_rows_per_s"] >= max(passes.values()) - 1
    # IO only is the best way the machine has: pyarrow reading each file whole or in batches, or Ray Data
    ways = ("io_only_pyarrow_whole_rows_per_s", "io_only_pyarrow_streamed_rows_per_s", "io_only_ray_rows_per_s")
    assert report["io_only_rows_per_s"] == max(report[way] for way in ways) > 0
    # whole jobs end at their last row written; their processes exit after that
    assert 0 < report["lakecast_seconds"] <= report["lakecast_process_seconds"]
    assert 0 < report["naive_seconds"] <= report["naive_process_seconds"]
    assert report["vs_naive"] == pytest.approx(report["naive_seconds"] / report["lakecast_seconds"], rel=0.01)
    # the efficiency's two factors: the job's work per row without Ray, then what Ray costs, both
    # timed as the job's steady state is, from the first scored batch: the work without Ray's
    # window leaves its first read out, as the job's does, so it streams faster than its whole run
    assert report["hot_path_steady_rows_per_s"] > report["hot_path_rows_per_s"]
    assert report["hot_path_vs_bound"] == round(report["hot_path_steady_rows_per_s"] / report["bound_rows_per_s"], 3)
    factors = report["hot_path_vs_bound"] * report["steady_vs_hot_path"]
    # each of the three is rounded to 0.001: at this size the efficiency can be as small as 0.06,
    # where the rounding alone moves the product by more than 1%
    assert report["efficiency"] == pytest.approx(factors, rel=0.01, abs=0.0025)
    # one round of the job, the naive loop and the work without Ray (the best of several rounds:
    # test_each_figure_is_the_best_of_its_rounds), kept as the report's one round
    rounds = report["rounds"]
    assert report["settings"]["rounds"] == len(rounds) == 1
    assert rounds[0]["steady_rows_per_s"] == report["steady_rows_per_s"]
    assert rounds[0]["vs_naive"] == report["vs_naive"] and rounds[0]["startup_s"] == report["startup_s"]
    # the startup split into its steps, in the order they happen, ending at the first batch
    steps = report["startup_milestones_s"]
    assert list(steps) == ["job_start", "ray_ready", "checks_done", "pipeline_start", "actor_ready", "first_batch"]
    assert 0 < steps["job_start"] < max(steps["ray_ready"], steps["checks_done"]) <= steps["pipeline_start"]
    assert steps["pipeline_start"] < steps["actor_ready"] <= steps["first_batch"] == report["startup_s"]
    # where the time went, stage by stage, in the job's actors and in the same code without Ray
    for key in ("actor_seconds", "hot_path_seconds"):
        assert list(report[key]) == ["read", "validate", "score", "write"] and all(report[key].values())
    # at this size one file, on both of the actor's CPUs, pyarrow's and torch's threads beside
    # the scoring thread: no share of the time on a core is given (jobs.part_writer.on_cpu_share)
    assert report["actor_on_cpu_share"] is None and report["hot_path_on_cpu_share"] is None
    assert out.with_suffix(".png").stat().st_size > 1000
    table = out.with_suffix(".md").read_text()
    assert "| lakecast, steady state |" in table
    assert "| the job's own work without Ray, processes shaped as its actors |" in table
    assert "| the same, from its first scored batch |" in table
    # shaped as the churn job's one actor, which scores a file per CPU at once but no more files
    # than the partition has: at this size, one
    assert report["settings"]["hot_path"] == {"processes": 1, "threads": 1}
    assert "without Ray: 1 process of 1 thread, as the job's actors" in table
    assert "where the time went: the job's actors: read " in table
    assert "one round: each figure from one run of each" in table
    assert "efficiency" in proc.stdout
    # the version the alias names, in every step and in each round's job
    client = mlflow.MlflowClient(f"sqlite:///{bench_home}/mlflow.db")
    challenger = str(client.get_model_version_by_alias("churn-classifier", "challenger").version)
    assert challenger != str(client.get_model_version_by_alias("churn-classifier", "champion").version)
    assert report["settings"]["model"] == f"models:/churn-classifier/{challenger}"
    assert report["settings"]["alias"] == "challenger"
    assert f"model: models:/churn-classifier/{challenger} (challenger)" in table
    runs = scoring_runs(bench_home)
    assert [(r.data.params["model_alias"], r.data.params["model_version"]) for r in runs] == [
        ("challenger", challenger)
    ]


def test_each_figure_is_the_best_of_its_rounds_and_every_round_is_kept():
    """Each of the job's figures comes from its best round, as each of the bound's is the best of
    its passes: a slow stretch of the machine must not be charged to one side only. The details
    of a figure come from the round that gave it, memory is the worst round's, and the report
    keeps every round's own figures."""
    from jobs.bench import HotRun, JobRun, NaiveRun, Peak, Timed, best_of_rounds
    from jobs.bench_report import _rounds_line

    def job(seconds: float, startup: float, steady: float, rss: float, pss: float | None) -> JobRun:
        milestones = {"first_batch": startup}
        return JobRun(
            "run",
            "models:/m/2",
            seconds,
            seconds + 1,
            startup,
            steady,
            milestones,
            {"read": seconds},
            Peak(rss, pss),
            on_cpu_share=steady / 2_500_000,
        )

    # round 1: the steadiest job and the quicker start; round 2: the quicker job, the worst memory
    jobs = [job(10.0, 4.0, 2_000_000, 900, 500), job(9.0, 5.0, 1_500_000, 1000, None)]
    naive = [NaiveRun(12.0, 13.0, Peak(300, 200)), NaiveRun(11.0, 12.5, Peak(350, 250))]
    # the work without Ray: round 2 the quicker whole, round 1 the faster from its first scored batch
    hot = [
        HotRun(Timed(0.01, 20_000), {"read": 0.5}, {"m"}, Timed(0.00625, 20_000), 0.9),
        HotRun(Timed(0.008, 20_000), {"read": 0.4}, {"m"}, Timed(0.0064, 20_000), 0.95),
    ]

    figures = best_of_rounds(20_000, 4_000_000, jobs, naive, hot)

    assert figures["steady_rows_per_s"] == 2_000_000 and figures["actor_seconds"] == {"read": 10.0}
    assert (figures["lakecast_seconds"], figures["lakecast_process_seconds"]) == (9.0, 10.0)
    assert figures["startup_s"] == 4.0 and figures["startup_milestones_s"] == {"first_batch": 4.0}
    assert (figures["naive_seconds"], figures["naive_process_seconds"]) == (11.0, 12.5)
    assert figures["hot_path_rows_per_s"] == 2_500_000 and figures["hot_path_seconds"] == {"read": 0.4}
    # the share of those seconds on a core, from the same rounds as the seconds
    assert (figures["actor_on_cpu_share"], figures["hot_path_on_cpu_share"]) == (0.8, 0.95)
    assert figures["hot_path_steady_rows_per_s"] == 3_200_000
    assert figures["efficiency"] == 0.5 and figures["vs_naive"] == round(11 / 9, 3)
    # the efficiency's factors, over the job's steady window: 0.8 x 0.625 = 0.5
    assert (figures["hot_path_vs_bound"], figures["steady_vs_hot_path"]) == (0.8, 0.625)
    assert (figures["peak_rss_mb"], figures["peak_pss_mb"]) == (1000, 500)
    assert (figures["naive_peak_rss_mb"], figures["naive_peak_pss_mb"]) == (350, 250)
    assert [(r["efficiency"], r["vs_naive"], r["startup_s"]) for r in figures["rounds"]] == [
        (0.5, 1.2, 4.0),
        (0.375, round(11 / 9, 3), 5.0),
    ]
    assert [(r["hot_path_steady_rows_per_s"], r["hot_path_vs_bound"]) for r in figures["rounds"]] == [
        (3_200_000, 0.8),
        (3_125_000, 0.781),
    ]
    assert _rounds_line(figures) == (
        "each figure the best of 2 rounds, as the bound's are the best of theirs; round by round: "
        "efficiency 0.5, 0.375, vs_naive 1.2, 1.222, startup 4.0, 5.0 s"
    )


def test_image_bench_reports_the_gpu_figures_where_a_bare_gpu_machine_lacks_the_platform(tmp_path):
    """GPU machines come with torch, pyarrow and Pillow; the image bench must run there without the
    platform's pydantic, MLflow or Airflow beside Ray (its docstring says how). It runs here with
    them made unimportable (Ray Data's log records reach lakecast's console filter on the way),
    at a tiny size, and reports every figure."""
    code = (
        "import sys\n"
        "for m in ('pydantic', 'mlflow', 'airflow'): sys.modules[m] = None\n"
        "from jobs.bench_image import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKECAST_", "AIRFLOW", "MLFLOW_", "RAY_"))}
    out = tmp_path / "image.json"
    argv = ["--rows", "48", "--size", "64", "--batch-size", "16", "--home", str(tmp_path), "--json", str(out)]
    proc = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["rows"] == 48 and report["settings"]["image_size"] == 64
    for key in ("decode_only_rows_per_s", "model_only_rows_per_s", "bound_rows_per_s", "steady_rows_per_s"):
        assert report[key] > 0, key
    assert report["decode_only_rows_per_s"] == max(
        report["decode_only_ray_rows_per_s"], report["decode_only_pool_rows_per_s"]
    )
    assert report["vs_model_only"] == pytest.approx(report["steady_rows_per_s"] / report["model_only_rows_per_s"], 1e-2)
    assert "| lakecast pipeline, steady state |" in proc.stdout


def test_the_compare_bench_times_the_bootstrap_three_ways(tmp_path):
    """``lakecast bench --workload compare``: lakecast's bootstrap on its threads and on one, and
    the rows drawn and scored by hand, at a tiny size; the same draws on any number of threads."""
    out = tmp_path / "compare.json"
    proc = bench(tmp_path / "home", out, "--workload", "compare", "--resamples", "60", rows=5000)
    report = json.loads(out.read_text())
    assert (report["rows"], report["resamples"], report["settings"]["by_hand_resamples"]) == (5000, 60, 10)
    assert report["threads"] == min(report["machine"]["cpus"], 3)  # 60 resamples: 3 chunks of 25 at most
    for key in ("bootstrap_seconds", "one_thread_seconds", "by_hand_seconds"):
        assert report[key] > 0, key
    assert report["vs_resampling"] == pytest.approx(report["by_hand_seconds"] / report["bootstrap_seconds"], 5e-2)
    difference = report["roc_auc_difference"]
    assert difference["low"] < difference["diff"] < difference["high"]
    assert "| lakecast, one thread |" in proc.stdout and out.with_suffix(".md").exists()
    assert f"written: {out} (and its .md beside it)" in proc.stdout
    assert not (tmp_path / "home").exists()  # nothing generated on disk: the labels live in memory


def test_lakecast_bench_hands_the_image_workload_its_flags(home, tmp_path, monkeypatch, capsys):
    """``lakecast bench --workload image`` runs the image bench above in LAKECAST_HOME, with the
    command line's size and batch, and prints its table."""
    from jobs import bench_image, cli

    calls = []

    def run(home_dir, **kwargs):
        calls.append((home_dir, kwargs))
        return {"the": "report"}

    monkeypatch.setattr(bench_image, "run", run)
    monkeypatch.setattr(bench_image, "markdown", lambda report: f"table of {report}")
    argv = ["bench", "--workload", "image", "--rows", "48", "--image-size", "64", "--batch-size", "16"]
    assert cli.main([*argv, "--json", str(tmp_path / "image.json")]) == 0
    assert calls == [
        (home, {"rows": 48, "size": 64, "batch_size": 16, "json_path": tmp_path / "image.json"}),
    ]
    out = capsys.readouterr().out
    assert "table of {'the': 'report'}" in out
    assert f"written: {tmp_path / 'image.json'} (and its .md beside it)" in out  # no chart for images


def test_an_image_bench_of_one_batch_is_refused_before_it_starts(home, capsys):
    """Its steady state runs from the first scored batch: with one batch there is nothing to
    measure, and the report said 0 images/s and an efficiency of 0."""
    from jobs.cli import main

    assert main(["bench", "--workload", "image", "--rows", "64"]) == 2
    assert capsys.readouterr().err == (
        "lakecast: --rows 64 is one batch of --batch-size 256, and the steady state is measured from the first "
        "scored batch on: use --rows 512 or more, or --batch-size 32 or less\n"
    )
    assert not (home / "bench" / "image-lake").exists()


@pytest.mark.parametrize(
    ("compute", "files", "shape"),
    [
        ({"min_actors": 1, "max_actors": 1, "cpus_per_actor": 2}, 10, (1, 2)),  # the churn job's actor
        ({"min_actors": 2, "max_actors": 2, "cpus_per_actor": 1}, 10, (2, 1)),  # two actors of one CPU
        ({"min_actors": 1, "max_actors": 8, "cpus_per_actor": 1}, 10, (2, 1)),  # no more than the CPUs hold
        ({"min_actors": 1, "max_actors": 1, "cpus_per_actor": 2}, 1, (1, 1)),  # no more threads than files
    ],
)
def test_hot_path_is_shaped_as_the_jobs_actors(monkeypatch, compute, files, shape):
    from jobs.bench import hot_path_shape
    from jobs.config import ComputeSpec

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert hot_path_shape(ComputeSpec(**compute), files) == shape


def test_bench_stops_at_an_unknown_alias_before_it_generates_data(bench_home, tmp_path):
    out = tmp_path / "report.json"
    proc = bench(bench_home, out, "--alias", "chalenger", rows=30000, check=False)
    assert proc.returncode != 0
    assert "lakecast: registered model 'churn-classifier' has no alias 'chalenger'" in proc.stderr
    assert "aliases: challenger" in proc.stderr  # what the user meant is in the message
    assert "generating" not in proc.stderr and not out.exists()


def test_bench_checks_where_its_report_goes_before_it_measures(tmp_path, capsys):
    """A report path that cannot be written fails at once, not after minutes of measurements."""
    from jobs.cli import main

    blocker = tmp_path / "report"
    blocker.write_text("a file, where the report's folder would be")
    assert main(["bench", "--rows", "20000", "--json", str(blocker / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"lakecast: --json {blocker / 'r.json'}: {blocker} is a file, not a folder" in err
    assert main(["bench", "--rows", "20000", "--json", str(blocker / "deeper" / "r.json")]) == 2
    err += capsys.readouterr().err
    assert f"--json {blocker / 'deeper' / 'r.json'}: cannot write the report there (Not a directory)" in err
    assert "generating" not in err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["bench", "--rounds", "0"], "--rounds"),
        (["bench", "--rounds", "two"], "--rounds"),
        (["bench", "--rows", "0"], "--rows"),  # ran the default 10M rows
        (["bench", "--rows", "-1"], "--rows"),
        (["bench", "--workload", "image", "--batch-size", "0"], "--batch-size"),
        (["bench", "--workload", "image", "--image-size", "-224"], "--image-size"),
        (["bench", "--workload", "compare", "--resamples", "0"], "--resamples"),
        (["demo", "--rows", "0"], "--rows"),
    ],
)
def test_the_command_line_refuses_a_count_below_one(argv, flag, capsys):
    from jobs.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    assert f"argument {flag}: {argv[-1]!r} is not a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--rows", "--size", "--batch-size", "--actors-per-gpu", "--calls-per-actor"])
def test_the_image_bench_refuses_a_count_below_one(flag, capsys):
    from jobs.bench_image import main

    with pytest.raises(SystemExit) as e:
        main([flag, "0"])
    assert e.value.code == 2
    assert f"argument {flag}: '0' is not a whole number of at least 1" in capsys.readouterr().err


def test_the_image_bench_refuses_fewer_than_two_batches(capsys):
    from jobs.bench_image import main

    with pytest.raises(SystemExit) as e:
        main(["--rows", "300"])
    assert e.value.code == 2
    assert "--rows 300 is less than two batches of --batch-size 256" in capsys.readouterr().err


def test_a_figure_that_is_not_a_number_is_written_as_null(tmp_path):
    """One labeled row has one class, so no ROC AUC: the report stays JSON that any reader takes
    (``NaN`` is Python's, not JSON's), and the Markdown says ``nan``."""
    from jobs import bench_compare

    out = tmp_path / "compare.json"
    bench_compare.run(rows=1, resamples=25, json_path=out)
    report = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert report["roc_auc_difference"] == {"diff": None, "low": None, "high": None}
    assert "+nan [+nan, +nan]" in out.with_suffix(".md").read_text()
