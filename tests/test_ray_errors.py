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


def test_an_actor_killed_for_lack_of_memory_on_every_try_is_said_as_what_to_change():
    """Ray's memory monitor kills an actor whose model takes more memory than the node has, on
    each of its restarts (a run that tried forever held the cluster until the Airflow task's
    timeout). The driver gets Ray's OutOfMemoryError under Ray Data's SystemException; the user
    gets what to change, with the node and its memory as Ray gave them, and no retry."""
    from ray.data.exceptions import SystemException
    from ray.exceptions import OutOfMemoryError

    from jobs.failures import EXIT_FIX_FIRST, exit_status
    from jobs.ray_errors import ActorsOutOfMemory, find_ours

    ray_says = (  # as Ray 2.60 said it in a run whose model took 21 GB of this 23.5 GB machine
        "1 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 192.0.2.2, "
        "ID: 88ddd0f4b2537a0de8b28a2371ac4a6c0c5ff228bfd0d2b4acbad657) was 22.45GB used / 23.54GB limit (0.953681)"
    )
    try:
        try:
            raise OutOfMemoryError(ray_says)
        except OutOfMemoryError as killed:
            raise SystemException() from killed
    except SystemException as e:
        ours = find_ours(e)

    assert type(ours) is ActorsOutOfMemory
    assert str(ours) == (
        "Ray killed the actor scoring the rows for lack of memory on node 192.0.2.2 (22.45GB used of 23.54GB), on "
        "its first try and on each of its 3 restarts: score in smaller batches (compute.batch_size), or fewer at "
        "once on a node (compute.max_actors, compute.cpus_per_actor), or on nodes with more memory"
    )
    assert exit_status(ours) == EXIT_FIX_FIRST
