"""The ``lakecast`` command line.

Errors a user can act on print one sentence and exit with status 2 where something must change
first (a bad job file, an unknown alias, rows that fail validation) or 75 where trying again
may pass (a partition not there yet, storage or the cluster out of reach); see
:mod:`jobs.failures`. A run stopped by Ctrl-C or SIGTERM says so and exits 130 or 143
(:mod:`jobs.stopping`). A traceback means a bug in lakecast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging.config
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from jobs.argtypes import positive_int
from jobs.config import JOB_NAME, job_files, jobs_dir, load_job, load_job_files, parse_date
from jobs.failures import EXIT_FIX_FIRST, exit_status, mlflow_failure, user_errors
from jobs.settings import conf_dir, load_settings
from jobs.stopping import Stopped
from jobs.yamlconf import ConfigError, read_yaml

log = logging.getLogger("jobs.cli")


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _job_file(arg: str) -> Path:
    """A path as given, or a job's name (``churn``) as every other command takes it."""
    if re.fullmatch(JOB_NAME, arg) and not os.path.exists(arg):
        return jobs_dir() / f"{arg}.yaml"
    return Path(os.path.abspath(arg))


def cmd_validate(args: argparse.Namespace) -> int:
    load_settings()
    paths = [_job_file(arg) for arg in args.files] or job_files()
    jobs, errors = load_job_files(paths)
    for path in paths:
        if path in errors:  # one line per problem, each marked, so that grep and a reader see them all
            _out("\n".join(f"invalid {line}" for line in str(errors[path]).splitlines()))
        else:
            _out(f"ok      {path} → DAG {jobs[path].dag_id}")
    where = "" if args.files else f" in {conf_dir() / 'jobs'}"
    _out(f"{len(paths) - len(errors)} valid, {len(errors)} invalid job file(s){where}")
    return 1 if errors else 0


def cmd_run(args: argparse.Namespace) -> int:
    from jobs import input_stats, score_stats
    from jobs.predict import run_job
    from jobs.telemetry import actor_time

    job = load_job(args.job)
    result = run_job(
        job,
        parse_date(args.date),
        model_alias=args.alias,
        model_version=args.version,
        dry_run=args.dry_run,
        mlflow_run_id=args.mlflow_run_id,
    )
    _emit_result(args, result.as_dict())
    if args.json:
        _out(json.dumps(result.as_dict(), indent=2))
    else:
        verb = "checked (dry run, nothing published)" if args.dry_run else "scored"
        rows = f"{result.rows - result.quarantined:,} of {result.rows:,}" if result.quarantined else f"{result.rows:,}"
        _out(
            f"{verb} {rows} rows of {job.name} {result.ds} in {result.seconds:.1f} s "
            f"({result.rows_per_s:,.0f} rows/s) with {result.model.uri}"
        )
        _out(f"predictions: {result.output}")
        if canary := result.ab.get("canary"):
            share = f"{100 * canary['share']:g}% of the {job.input.key}s"
            _out(f"canary:      {canary['uri']} scored {share} (variant {canary['alias']})")
        if shadow := result.ab.get("shadow"):
            _out(f"shadow:      {shadow['uri']} scored every row into {shadow['table']}")
        if result.quarantined:
            where = f" → {result.quarantine}" if result.quarantine else " (dry run: not kept)"
            _out(f"quarantined: {result.quarantined:,} invalid rows, not scored{where}")
        if result.input_nulls:
            _out(f"inputs:      {input_stats.describe(result.input_nulls)}")
        if result.scores:
            label = "norms:" if job.model.task == "embedding" else "scores:"  # an embedding's: its vectors' lengths
            _out(f"{label:<13}{score_stats.describe(result.scores)}")
        _out(f"MLflow run:  {result.run_id}")
        if result.actor_seconds:
            _out(f"actors:      {actor_time(result.actor_seconds, result.actor_on_cpu_share)}")
    return 0


def _emit_result(args: argparse.Namespace, result: dict) -> None:
    """For a submitted job: the result as one marked line, which the submitting side parses."""
    if getattr(args, "emit_result", False):
        from jobs.submit import RESULT_MARKER

        _out(RESULT_MARKER + json.dumps(result, default=str))


def cmd_submit(args: argparse.Namespace) -> int:
    """``lakecast run`` on the Ray cluster of the profile, followed to its end from here."""
    from jobs import submit

    settings = load_settings()
    address = args.address or settings.ray.address
    if not submit.is_jobs_api(address):
        raise ConfigError(
            f"lakecast submit needs a Ray Jobs API address such as http://head:8265 (--address, RAY_ADDRESS or "
            f"ray.address in profile {settings.profile!r}); got {address or 'none'}"
        )
    job = load_job(args.job)
    ds = parse_date(args.date)
    run_args = submit.run_argv(job.name, ds.isoformat(), alias=args.alias, version=args.version, dry_run=args.dry_run)
    key = f"cli:{job.name}:{ds}:{dt.datetime.now(dt.UTC).isoformat()}:{os.getpid()}"
    sub = submit.submit_new(
        address,
        key=key,
        base=submit.submission_base(key, job=job.name, command="run", ds=ds.isoformat()),
        args=run_args,
        settings=settings,
        metadata={"job": job.name, "date": ds.isoformat(), "submitted_by": "lakecast submit"},
    )
    _out(f"submitted {sub.submission_id}: {sub.dashboard_url}")
    try:
        timeout_s = job.airflow.timeout_minutes * 60
        status, logs = submit.follow(address, sub.submission_id, timeout_s=timeout_s, on_line=_out)
    except KeyboardInterrupt:
        submit.stop(address, sub.submission_id)
        _out(f"interrupted: stopping Ray job {sub.submission_id}")
        return 130
    if status != "SUCCEEDED":
        code = submit.driver_exit_code(address, sub.submission_id)
        raise submit.job_failed(address, sub.submission_id, status, "", logs, code)
    result = submit.result_from_logs(logs) or {}
    _out(f"{sub.submission_id} succeeded: {result.get('rows', '?')} rows → {result.get('output', '?')}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from jobs.lake import Lake

    job = load_job(args.job)
    lake = Lake(load_settings().lake_root)
    if args.date is None:  # the newest: what a user looks at the morning after
        ds = lake.newest_committed(job.output.table)
        if ds is None:
            table = lake.uri(lake.table_path(job.output.table))
            raise ConfigError(f"no committed predictions for job {job.name!r} yet (none under {table})")
    else:
        ds = parse_date(args.date)
    manifest = lake.read_manifest(job.output.table, ds)
    if manifest is None:
        newest = lake.newest_committed(job.output.table)
        where = (
            f"the newest committed is {newest}"
            if newest
            else f"none yet under {lake.uri(lake.table_path(job.output.table))}"
        )
        raise ConfigError(f"no committed predictions for job {job.name!r} on {ds} ({where})")
    _out(json.dumps(manifest, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.airflow_env import airflow_bin
    from jobs.demo import run_demo

    settings = load_settings()
    result = run_demo(
        settings,
        ds=parse_date(args.date),
        rows=args.rows,
        labeled_rows=args.labeled_rows,
        retrain=args.retrain,
        run=not args.no_run,
    )
    s = result.summary
    if args.no_run:
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(s["aliases"].items()))
        _out(f"lakecast demo: lake {s['lake']} holds {result.rows:,} rows for {result.ds}; models {aliases}")
        _out(f'run it: airflow dags trigger lakecast__churn --conf \'{{"date": "{result.ds}"}}\'')
        return 0
    home = settings.home
    _out()
    _out(
        f"lakecast demo: scored {int(s['rows']):,} rows for {result.ds} in {s['seconds']:.1f} s "
        f"({s['rows_per_s']:,.0f} rows/s) with {s['model_uri']}"
    )
    _out(f"  predictions  {s['output']}")
    _out(f"  MLflow run   {s['run_id']} (experiment lakecast/churn)")
    _out(f"  state        {home}  (delete it to start over)")
    _out()
    # the same state: the home, and the lake when it is not the one inside it (S3)
    state = f"LAKECAST_HOME={home}"
    if lake_root := os.environ.get("LAKECAST_LAKE_ROOT"):
        state += f" LAKECAST_LAKE_ROOT={lake_root}"
    _out("Open the UIs on the same state:")
    _out(f"  Airflow  {state} .venv/bin/lakecast airflow standalone   → http://localhost:8080")
    _out(f"  MLflow   {state} .venv/bin/lakecast mlflow-ui             → http://localhost:5000")
    _out(f"  (airflow itself: {airflow_bin()}; Airflow on another port: AIRFLOW__API__PORT=8081 before its command)")
    return 0


def cmd_airflow(args: argparse.Namespace) -> int:
    """Any Airflow command; on a new embedded home it first creates Airflow's database, which
    every command but ``standalone`` and ``db …`` would otherwise refuse to run without."""
    from jobs.airflow_env import needs_database, run_airflow

    settings = load_settings()
    if args.args[:1] == ["standalone"]:
        # Airflow's API server logs a taken port and stops, while the scheduler and the rest run on
        # without a UI, their tasks unable to report
        port = int(os.environ.get("AIRFLOW__API__PORT", "8080"))
        _port_free(
            os.environ.get("AIRFLOW__API__HOST", "0.0.0.0"),
            port,
            "Airflow's UI and API",
            f"run it as AIRFLOW__API__PORT={port + 1} lakecast airflow standalone",
        )
    if args.args[:1] not in (["db"], ["standalone"]) and needs_database(settings):
        sys.stderr.write(f"lakecast: creating Airflow's database in {settings.airflow_home} (airflow db migrate)\n")
        migrate = run_airflow(settings, ["db", "migrate"], capture=True)
        if migrate.returncode:
            sys.stderr.write(migrate.stdout[-3000:] + migrate.stderr[-3000:])
            return migrate.returncode
    return run_airflow(settings, args.args).returncode


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from jobs import foreground

    settings = load_settings()
    if settings.mlflow.tracking_uri.startswith(("http://", "https://")):
        from jobs.tracking import ui_base

        # a tracking server serves its own UI: `mlflow ui` cannot open a server as its store
        uri = settings.mlflow.tracking_uri
        _out(f"lakecast's MLflow is the tracking server {uri}: open its UI at {ui_base(settings)}")
        return 0
    from jobs.tracking import write_ahead

    _port_free(args.host, args.port, "the MLflow UI", f"pass --port {args.port + 1}")
    # the UI reads while jobs write: a store it creates starts in the mode that lets them
    write_ahead(settings.mlflow.tracking_uri)
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    cmd = [
        mlflow_bin,
        "ui",
        "--backend-store-uri",
        settings.mlflow.tracking_uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    if settings.mlflow.artifact_root:
        # experiments created through this server (a user's `mlflow.set_experiment`) keep their
        # artifacts under the profile's root, as lakecast's own do, and clients on this machine
        # write them there directly: lakecast's jobs read the store, not this server
        cmd += ["--default-artifact-root", settings.mlflow.artifact_root, "--no-serve-artifacts"]
    # MLflow's server starts four workers and seven job consumers (its GenAI features' background
    # jobs, which lakecast does not use) by default: 14 s to answer and 2.5 GiB, against 6.5 s and
    # 250 MiB for one worker and no jobs, on 2 cores. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings
    # the jobs back.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} | os.environ
    return foreground.run(cmd, env)


def _port_free(host: str, port: int, what: str, hint: str) -> None:
    """Say at once that ``what`` cannot listen on ``port``. MLflow's and Airflow's servers log it
    among their start-up lines: MLflow's then exits 0, as if it had served and stopped."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"cannot serve {what} on {host}:{port}: {e.strerror} (another server there?); {hint}, or stop "
                "what listens there"
            ) from None


def cmd_compare(args: argparse.Namespace) -> int:
    from jobs.ab import run_compare
    from jobs.ab_report import markdown

    report = run_compare(load_job(args.job), parse_date(args.date))
    _emit_result(args, report)
    _out(json.dumps(report, indent=2, default=str) if args.json else markdown(report))
    _out(f"report: {report['lake_path']} (MLflow run {report['mlflow_run_id']})")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from jobs.promotion import promote

    event = promote(load_job(args.job), force=args.force, reason=args.reason)
    forced = " (forced)" if event["forced"] else ""
    _out(
        f"{event['model']}: champion v{event['from_version']} → v{event['to_version']}{forced}; "
        f"previous-champion = v{event['from_version']}; audit: {event['audit_path']}"
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from jobs.promotion import rollback

    event = rollback(load_job(args.job), reason=args.reason)
    _out(f"{event['model']}: champion v{event['from_version']} → v{event['to_version']}; audit: {event['audit_path']}")
    return 0


def _writable(path: Path) -> Path:
    """``path``, once its folder exists and takes files: checked before a benchmark, whose
    minutes of measurements would otherwise end in a traceback when the report is written."""
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"--json {path}: {path.parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".lakecast-"):
            pass
    except OSError as e:
        raise ConfigError(f"--json {path}: cannot write the report there ({e.strerror or e})") from None
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    json_path = _writable(Path(args.json)) if args.json else None
    if args.workload == "image":
        from jobs import bench_image

        rows = args.rows or 50_000
        if why := bench_image.too_few_batches(rows, args.batch_size):
            raise ConfigError(why)
        report = bench_image.run(
            load_settings().home,
            rows=rows,
            size=args.image_size,
            batch_size=args.batch_size,
            json_path=json_path,
        )
        _out(bench_image.markdown(report))
    elif args.workload == "compare":
        from jobs import bench_compare

        rows = args.rows or bench_compare.ROWS
        report = bench_compare.run(rows=rows, resamples=args.resamples, json_path=json_path)
        _out(bench_compare.markdown(report))
    else:
        from jobs.bench import ROUNDS, run
        from jobs.bench_report import markdown

        rounds = args.rounds or ROUNDS
        report = run(
            load_settings(), rows=args.rows or 10_000_000, json_path=json_path, rounds=rounds, alias=args.alias
        )
        _out(markdown(report))
    if args.json:
        beside = ".md and .png" if args.workload == "tabular" else ".md"
        _out(f"written: {args.json} (and its {beside} beside it)")
    return 0


def _scoring_arguments(p: argparse.ArgumentParser) -> None:
    """What ``run`` and ``submit`` share: the job, the date, the model override, dry run."""
    p.add_argument("job", help="job name: conf/jobs/<job>.yaml")
    p.add_argument("--date", required=True, help="partition date YYYY-MM-DD")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--alias", help="model alias to use instead of the job file's")
    group.add_argument("--version", type=positive_int, help="fixed model version to use (MLflow numbers them from 1)")
    p.add_argument("--dry-run", action="store_true", help="score and check, but publish nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakecast",
        description="Score a date's Parquet partition with an MLflow model on Ray, and publish the "
        "predictions to the lake. Jobs are the YAML files under conf/jobs/.",
        epilog="Exit status: 0 done; 1 validate found an invalid job file; 2 something must change "
        "first (a job file, an alias, the input's rows); 75 trying again may pass (input not there "
        "yet, storage or cluster out of reach); 130 or 143 stopped by Ctrl-C or SIGTERM, before any commit.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()

    p = sub.add_parser("demo", help="build the demo lake and models, run the churn DAG once")
    p.add_argument("--rows", type=positive_int, default=200_000, help="raw rows to score (default 200,000)")
    p.add_argument("--labeled-rows", type=positive_int, default=100_000, help="labeled rows per day (default 100,000)")
    p.add_argument("--date", default=yesterday, help="partition date YYYY-MM-DD (default: yesterday)")
    p.add_argument("--retrain", action="store_true", help="train and register new model versions")
    p.add_argument("--no-run", action="store_true", help="only build the lake and register the models")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run a job's Ray Data prediction for one date")
    _scoring_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--mlflow-run-id", help="log into this (already created) MLflow run instead of a new one")
    p.add_argument("--emit-result", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="run a job on the Ray cluster through the Jobs API and follow it")
    _scoring_arguments(p)
    p.add_argument("--address", help="Ray Jobs API, http://head:8265 (default: the profile's ray.address)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("validate", help="check job files (default: all of conf/jobs/)")
    p.add_argument("files", nargs="*", help="job files to check, as paths or job names")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("show", help="print the manifest of a committed predictions partition")
    p.add_argument("job", help="job name: conf/jobs/<job>.yaml")
    p.add_argument("--date", help="the partition's date (default: the newest committed)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compare", help="A/B: score the labeled table with champion and challenger, decide")
    p.add_argument("job", help="job name: conf/jobs/<job>.yaml")
    p.add_argument("--date", required=True, help="the labeled partition's date YYYY-MM-DD (ab.labeled_table)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the Markdown report")
    p.add_argument("--emit-result", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("promote", help="move champion to the challenger if the latest verdict is promote")
    p.add_argument("job", help="job name: conf/jobs/<job>.yaml")
    p.add_argument("--force", action="store_true", help="promote whatever the verdict (recorded in the audit)")
    p.add_argument("--reason", default="", help="why, for the audit log")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="move champion back to previous-champion")
    p.add_argument("job", help="job name: conf/jobs/<job>.yaml")
    p.add_argument("--reason", default="", help="why, for the audit log")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("bench", help="measure the job against IO, the model alone and a hand-written loop")
    p.add_argument(
        "--workload",
        choices=["tabular", "image", "compare"],
        default="tabular",
        help="the churn MLP, ResNet-50 on JPEGs, or the A/B comparison's bootstrap",
    )
    p.add_argument(
        "--rows",
        type=positive_int,
        help="rows to score (default 10,000,000 tabular, 50,000 images, 1,000,000 labeled rows to compare)",
    )
    p.add_argument("--json", help="write the report as JSON here (a .md beside it, and a .png for tabular)")
    p.add_argument(
        "--rounds",
        type=positive_int,
        help="tabular: run the job, the naive loop and the work without Ray this many times each, "
        "taking turns, and keep each figure's best (default 3)",
    )
    p.add_argument(
        "--alias",
        help="tabular: measure this alias of the job's model (e.g. challenger) instead of the job file's",
    )
    p.add_argument("--image-size", type=positive_int, default=224, help="image workload: crop size in pixels")
    p.add_argument("--batch-size", type=positive_int, default=256, help="image workload: images per batch")
    p.add_argument(
        "--resamples", type=positive_int, default=1000, help="compare workload: bootstrap resamples (ab.bootstrap)"
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("airflow", help="run an airflow command on lakecast's Airflow home and dags")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser("mlflow-ui", help="serve the MLflow UI on lakecast's tracking store")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default: 1, for one user's browser)")
    p.set_defaults(func=cmd_mlflow_ui)
    return parser


def configure_logging() -> None:
    """``conf/logging.yaml`` (:func:`logging.config.dictConfig`'s schema), or INFO to stderr.

    Raises:
        ConfigError: the file is not YAML, or dictConfig refuses it.
    """
    path = conf_dir() / "logging.yaml"
    if not path.is_file():
        logging.basicConfig(level=logging.INFO)
        return
    try:
        logging.config.dictConfig(read_yaml(path))
    except (ValueError, TypeError, AttributeError, ImportError) as e:
        if isinstance(e, ConfigError):
            raise
        # dictConfig says which handler or logger, its cause says what was wrong with it
        why = f"{e}: {e.__cause__}" if e.__cause__ else str(e)
        raise ConfigError(f"{path}: not a logging configuration (Python's logging.config schema): {why}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging()
        return args.func(args)
    except ConfigError as e:
        sys.stderr.write(f"lakecast: {e}\n")
        return EXIT_FIX_FIRST
    except Stopped as e:  # Ctrl-C or SIGTERM during a run: jobs.stopping
        sys.stderr.write(f"lakecast: {e}\n")
        return e.exit_status
    except KeyboardInterrupt:  # Ctrl-C anywhere else
        sys.stderr.write("lakecast: interrupted\n")
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `lakecast ... | head`: the reader has gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if isinstance(e, user_errors()):
            sys.stderr.write(f"lakecast: {e}\n")
            return exit_status(e)
        if failure := mlflow_failure(e):
            sentence, status = failure
            sys.stderr.write(f"lakecast: {sentence}\n")
            return status
        raise


def run(argv: list[str] | None = None) -> NoReturn:
    """The `lakecast` program: :func:`main`, then a quick exit.

    When main returns, what a command does is done and durable: a job has committed, logged to
    MLflow and printed its result. Python's exit after that took 2.6 to 3 s of each `lakecast
    run` on 2 cores: Ray's exit handler sleeps half a second for late log lines before it stops
    Ray (1.3 s, its autoscaler monitor waiting out its second of grace), then tearing down an
    interpreter that holds Ray's core worker, MLflow and pyarrow took 0.9 s. So Ray is stopped
    (or left, when it runs on its own) at once, without the monitor's second
    (:func:`jobs.ray_runtime.stop_ray`), the other exit handlers run as usual (logging's,
    MLflow's, temporary folders'), and the process ends without the teardown. An exception
    still ends the process the usual way.
    """
    import atexit

    code = main(argv)
    if "ray" in sys.modules:
        from jobs.ray_runtime import stop_ray

        stop_ray()  # a private Ray's processes stopped, a running Ray's left; no-op without one
    atexit._run_exitfuncs()  # what interpreter exit runs, in the same (reverse) order
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
