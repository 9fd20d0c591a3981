"""The console filter that keeps Ray Data's records of our errors back (jobs.ray_errors)."""

from __future__ import annotations

import logging
import subprocess
import sys

from jobs.ray_errors import QuietForOurErrors
from jobs.validation import InvalidInput


def record(message: str, logger: str = "ray.data") -> logging.LogRecord:
    return logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None, None)


def test_ray_datas_records_of_our_error_are_kept_back_and_others_pass():
    quiet = QuietForOurErrors()
    try:
        raise InvalidInput("part-0.parquet: 3 invalid row(s)")
    except InvalidInput:
        assert not quiet.filter(record("Exception occurred in user code"))
    try:
        raise KeyError("a bug of ours or Ray's keeps its traceback")
    except KeyError:
        assert quiet.filter(record("Exception occurred in Ray Data or Ray Core internal code"))
    assert quiet.filter(record("Registered dataset logger"))


def test_our_own_records_pass_while_our_error_is_handled():
    """A handler that takes Ray Data's records and lakecast's both (Airflow's task logging, pytest's
    capture) kept back lakecast's warning that a day's manifest is damaged, logged as it handles
    that error."""
    from jobs.lake import DamagedManifest

    quiet = QuietForOurErrors()
    try:
        raise DamagedManifest("…/_manifest.json is not a manifest lakecast wrote")
    except DamagedManifest:
        assert quiet.filter(record("its manifest could not be read", logger="jobs.drift"))
        assert not quiet.filter(record("Exception occurred in user code"))


def test_the_end_of_a_dataset_passes_without_loading_our_error_classes():
    """Ray Data logs that a dataset finished from the handler of its iterator's StopIteration, at
    the end of every run's steady window: the filter let it pass only after importing every error
    class of lakecast's (jobs.submit among them), 15 ms of the driver's before the commit."""
    script = (
        "import logging, sys\n"
        "from jobs.ray_errors import QuietForOurErrors\n"
        "try:\n"
        "    raise StopIteration\n"
        "except StopIteration:\n"
        "    r = logging.LogRecord('ray.data', logging.INFO, '', 1, 'Execution finished', None, None)\n"
        "    assert QuietForOurErrors().filter(r)\n"
        "print('jobs.submit' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
