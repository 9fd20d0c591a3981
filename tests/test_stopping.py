"""A run stopped from outside (jobs.stopping): the signals it takes, and what it lets finish.

The whole run stopped by Ctrl-C and by SIGTERM, on a local lake and on S3, is in test_faults.py."""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import os
import signal
import threading
import time

import pytest

from jobs import stopping, tracking
from jobs.ray_errors import QuietForOurErrors
from jobs.stopping import Stopped


@pytest.fixture
def handlers():
    """Signal handlers as they were before the test, put back after it."""
    before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    yield before
    for s, h in before.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_block_with_the_shells_status_and_the_handlers_come_back(sig, handlers):
    with pytest.raises(Stopped) as stopped, stopping.on_signals():
        signal.raise_signal(sig)
        pytest.fail("the signal did not stop the block")
    assert stopped.value.signum == sig
    assert stopped.value.exit_status == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
    assert str(stopped.value) == f"stopped by {sig.name}"
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == handlers


def test_a_second_signal_acts_as_before_the_block(handlers):
    """A user who will not wait for the cleanup: the second Ctrl-C or SIGTERM is the old handler's."""
    seen = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    with stopping.on_signals():
        with pytest.raises(Stopped):
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # while the first one's cleanup runs
    assert seen == [signal.SIGTERM]


class _StoppedWhileNamed:
    """A class attribute whose ``__set_name__`` is where the stop lands, as in a dataclass that a
    module being imported defines (Ray Data's ``ray.util.state``, in a run stopped in the suite)."""

    def __set_name__(self, owner: type, name: str) -> None:
        signal.raise_signal(signal.SIGINT)


def test_a_stop_that_lands_while_a_class_is_defined_is_the_stop(handlers, tmp_path):
    """Python 3.11 wraps it in a RuntimeError: the run said nothing of a stop, exited 1 with a
    traceback, and its MLflow run ended FAILED."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # puts the process's back

    store = f"sqlite:///{tmp_path}/mlflow.db"
    SqlAlchemyStore(store, str(tmp_path / "artifacts"))
    with _use_tracking_uri(store):
        with (
            pytest.raises(Stopped) as stopped,
            stopping.on_signals(said=lambda stop: f"the run was stopped by {stop.signal_name}"),
            mlflow.start_run() as run,
            tracking.killed_when_stopped(),
        ):

            class Defined:
                attribute = _StoppedWhileNamed()

        assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "KILLED"
    assert str(stopped.value) == "the run was stopped by SIGINT" and stopped.value.exit_status == 130


class _Finalized:
    """An object whose finalizer runs when the stop arrives, as the garbage collector's callbacks
    (SQLAlchemy's class registry) ran in a run stopped in the suite."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGTERM)


def test_a_stop_that_lands_in_a_finalizer_is_not_lost(handlers):
    """Python prints an exception raised in a finalizer and drops it: the stop is sent again."""
    with pytest.raises(Stopped) as stopped, stopping.on_signals():
        _Finalized()  # dropped at once: its finalizer runs here
        for _ in range(100):
            time.sleep(0.01)  # where the stop sent again lands
        pytest.fail("the stop was lost in the finalizer")
    assert stopped.value.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == handlers


@pytest.mark.parametrize("lock", ["module", "handler"])
def test_a_stop_that_lands_inside_logging_waits_until_its_lock_is_free(handlers, lock):
    """Raised while this thread holds logging's lock (the module's, or a handler's as it writes a
    line), the stop could leave it held, and every other thread waits forever at its next log
    line: a stopped run's cleanup, waiting on s3fs's thread, hung (on a loaded machine, in the
    suite). The stop lands once the lock is given back, and another thread can log meanwhile."""
    handler = logging.StreamHandler()
    held = logging._lock if lock == "module" else handler.lock
    logging.getLogger().addHandler(handler)
    given_back = False
    try:
        with pytest.raises(Stopped) as stopped, stopping.on_signals():
            with held:
                signal.raise_signal(signal.SIGTERM)  # deferred: this thread holds the lock
                time.sleep(0.05)
            given_back = True
            logged = threading.Thread(target=logging.getLogger("another.thread").debug, args=("a line",))
            logged.start()
            logged.join(5)
            assert not logged.is_alive(), "another thread could not log"
            for _ in range(100):
                time.sleep(0.01)  # where the stop sent again lands
            pytest.fail("the stop was lost")
    finally:
        logging.getLogger().removeHandler(handler)
    assert given_back, "the stop landed while the lock was held"
    assert stopped.value.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == handlers


def test_a_stop_during_the_commit_lets_the_run_finish(handlers, caplog):
    committed = False
    with caplog.at_level(logging.WARNING, logger="jobs.stopping"), stopping.on_signals():
        stopping.finish_first()
        signal.raise_signal(signal.SIGTERM)
        committed = True
    assert committed
    assert "SIGTERM received while committing: the run finishes first" in caplog.text
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == handlers
    stopping.finish_first()  # outside a block: nothing to hold, and no error


def test_a_stop_inside_a_call_to_mlflow_lands_when_the_call_returns(handlers, caplog):
    """A stop raised between two rows of a registry query left the query's SQLite lock held by
    its traceback: the write that ends the run KILLED waited 20 s for it and failed (a suite run)."""
    steps = []
    with caplog.at_level(logging.WARNING, logger="jobs.stopping"), pytest.raises(Stopped) as stopped:
        with stopping.on_signals(), stopping.held():
            with stopping.held():  # nested: the outermost block's end raises it
                signal.raise_signal(signal.SIGTERM)
                steps.append("the call went on")
            steps.append("and its caller")
        pytest.fail("the stop was lost")
    assert steps == ["the call went on", "and its caller"]
    assert stopped.value.signum == signal.SIGTERM
    assert "SIGTERM arrived during a call to MLflow: the run stops when the call returns" in caplog.text
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == handlers


def test_a_second_signal_inside_a_call_to_mlflow_does_not_wait(handlers):
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    with pytest.raises(Stopped), stopping.on_signals(), stopping.held():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
    assert seen == [signal.SIGINT]


def test_a_stop_held_until_the_commit_began_lets_the_run_finish(handlers):
    with stopping.on_signals():
        with stopping.held():
            signal.raise_signal(signal.SIGTERM)
            stopping.finish_first()
        committed = True
    assert committed


class _Down(http.server.BaseHTTPRequestHandler):
    """An MLflow server in trouble: every request answered 503, which MLflow's client retries."""

    asked: list[str] = []

    def _unavailable(self) -> None:
        self.asked.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.end_headers()

    do_GET = do_POST = do_PATCH = _unavailable

    def log_message(self, *args) -> None:
        pass


def test_a_stopped_run_asks_an_mlflow_server_that_is_down_once_and_stops(tmp_path, caplog):
    """MLflow's client retries for about 4 minutes: a stopped run waited that long on a server
    that went down, its partition lock held, past the grace Airflow gives a task before it kills
    it. It asks once, says the run stays RUNNING there, and the stop goes on."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # puts the process's back

    _Down.asked.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = f"sqlite:///{tmp_path}/mlflow.db"
    SqlAlchemyStore(store, str(tmp_path / "artifacts"))
    try:
        with _use_tracking_uri(store):
            started = mlflow.start_run()
            with (
                _use_tracking_uri(f"http://127.0.0.1:{server.server_port}"),  # the server goes down
                caplog.at_level(logging.WARNING, logger="jobs.tracking"),
                pytest.raises(Stopped),
                started,
                tracking.killed_when_stopped(),
            ):
                raise Stopped(signal.SIGTERM)
    finally:
        server.shutdown()
    assert len(_Down.asked) == 1, _Down.asked  # once, where MLflow's client asks 8 times
    assert "the stopped run could not be marked KILLED in MLflow, where it stays RUNNING" in caplog.text
    assert mlflow.active_run() is None
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # the client's patience back


def _rays(signum: int, frame) -> None:
    """What ray.init installs for SIGTERM as its first step."""
    raise SystemExit(signum)


def test_a_sigterm_while_ray_starts_is_a_stop(handlers):
    with pytest.raises(Stopped) as stopped, stopping.on_signals(), stopping.ray_starting():
        signal.signal(signal.SIGTERM, _rays)
        signal.raise_signal(signal.SIGTERM)
    assert stopped.value.exit_status == 143


def test_once_ray_is_up_sigterm_is_taken_back_and_rays_handler_is_kept_after(handlers):
    with stopping.on_signals():
        with stopping.ray_starting():
            signal.signal(signal.SIGTERM, _rays)
        with pytest.raises(Stopped):
            signal.raise_signal(signal.SIGTERM)
    # the process keeps Ray's handler, as it would have without lakecast's
    assert signal.getsignal(signal.SIGTERM) is _rays
    assert signal.getsignal(signal.SIGINT) is handlers[signal.SIGINT]


def test_off_the_main_thread_the_process_keeps_its_handlers(handlers):
    """An Airflow task or a notebook that runs a job on a thread: its main thread decides."""
    inside = {}

    def job() -> None:
        with stopping.on_signals():
            inside.update({s: signal.getsignal(s) for s in stopping.SIGNALS})

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert inside == handlers


def test_ray_datas_records_of_a_stopped_run_are_kept_back():
    """Ray Data logs "execution failed" as a stop unwinds its executor: the run's own sentence
    says what happened, and what was kept."""
    record = logging.LogRecord("ray.data", logging.INFO, __file__, 1, "Dataset execution failed", None, None)
    try:
        raise Stopped(signal.SIGTERM)
    except Stopped:
        assert not QuietForOurErrors().filter(record)


def test_ctrl_c_outside_a_run_is_one_line_and_the_shells_status(monkeypatch, capsys):
    """`lakecast compare`, `bench` or `demo` interrupted: no traceback to scroll past."""
    from jobs import cli

    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_validate", interrupted)
    assert cli.main(["validate"]) == 130
    assert capsys.readouterr().err == "lakecast: interrupted\n"


def test_a_stopped_comparison_says_it_wrote_nothing(monkeypatch, churn_job):
    """`lakecast compare` stopped while it scores (a whole one stopped by SIGTERM, by hand: 143 and
    this sentence): its MLflow run, report and verdict come after the scoring, all or none."""
    from jobs import ab

    def scoring(*args, **kwargs):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(ab, "_compare", scoring)
    with pytest.raises(Stopped) as stopped:
        ab.run_compare(churn_job, dt.date(2026, 11, 21))
    assert str(stopped.value) == (
        "the comparison of churn for 2026-11-21 was stopped by SIGTERM before its report: no MLflow run, "
        "report or verdict was written"
    )
    assert stopped.value.exit_status == 143


def test_a_stop_during_the_ab_bootstrap_does_not_wait_for_the_rest_of_its_resamples(handlers):
    """SIGTERM while the bootstrap's threads draw resamples (minutes of them, for a large labeled
    partition): the stop lands in the main thread, and each thread ends at its next resample, not
    at the end of its chunk of 25 (20 s at 10M rows on one thread) or of the bootstrap."""
    from jobs import abstats

    started, sent = [], []

    class Model:  # a resample of 0.1 s: a chunk of 2.5 s
        def metrics(self, w=None, scratch=None):
            started.append(time.monotonic())
            time.sleep(0.05)
            return {"accuracy": 0.5}

    def stop() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Timer(0.3, stop).start()
    with pytest.raises(Stopped), stopping.on_signals():
        abstats.resample((Model(), Model()), abstats.Resampler(100, None), 1000, seed=0, workers=2)
    assert started and not [t for t in started if t > sent[0] + 0.5]
    assert not [t for t in threading.enumerate() if t.name.startswith("bootstrap")]
