"""Start or join Ray: a local Ray on this machine by default, a cluster when an address is set."""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from jobs.ray_errors import report_our_errors

if TYPE_CHECKING:
    import ray

    from jobs.config import ComputeSpec, JobConfig
    from jobs.pieces import Piece
    from jobs.settings import Settings

log = logging.getLogger(__name__)

# A local Ray's raylet connects to its object store, which it starts on a thread of its own a
# moment before; where the store is not listening yet, Ray's default waits a whole second before
# trying again (raylet_client_connect_timeout_milliseconds: 1000, 10 attempts). On 2 cores that
# was 4 starts of 6, ray.init taking 3.6-3.7 s against 2.6-2.8. Tried every 50 ms instead, with
# as many more attempts, so the 10 s a connection may take stays as Ray has it.
LOCAL_RAY_CONFIG = {
    "raylet_client_connect_timeout_milliseconds": 50,
    "raylet_client_num_connect_attempts": 200,
}

# The environment a private Ray's processes start with, where this process's leaves a variable
# unset. pyarrow's allocator, mimalloc, gives memory a thread has freed back to the kernel once it
# has lain unused a while; an actor reads a batch, keeps it while it validates and scores it, then
# frees it, so the next batch's buffers came back page by page: 190k page faults and 0.5 s in the
# kernel over 10M rows on two threads, 10% of the time even once warm. Never purged, the memory
# stays with the process (as much as one batch per thread needs, not more as the data grows) and
# is used again: steady state +4.5% in six alternating pairs of whole runs (docs/benchmark.md).
# A running Ray's workers have their cluster's environment: the docker image sets the same.
LOCAL_RAY_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}


def ensure_ray(settings: Settings) -> None:
    """Initialise Ray once per process.

    Inside a Ray job (``ray job submit``, ``lakecast submit``, the DAG in cluster mode) Ray sets
    ``RAY_ADDRESS`` to its cluster and the job joins it. With no address this starts a private
    local Ray (``address="local"``), never silently joining some other Ray that happens to run on
    this machine.
    """
    import ray

    from jobs.yamlconf import ConfigError  # here: the image bench imports this module without pydantic

    if ray.is_initialized():
        return
    address = cluster_address(settings)
    if address and address.startswith("http"):
        # a Jobs API address belongs to the submitting side: ``lakecast submit`` or the DAG
        raise ConfigError(
            f"RAY_ADDRESS / ray.address {address} is a Ray Jobs API address: submit the job there with "
            "`lakecast submit` (or let the DAG do it); `lakecast run` runs here on a local Ray"
        )
    source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "the profile's ray.address"
    if address:
        answering(address, source)
    # No runtime_env: a job-wide one (even a few env_vars) keeps the workers Ray starts ahead of
    # the first driver from serving it, which cost a 10M-row job 1.7 s of startup. The actors get
    # the MLflow URIs in their options, and a local Ray's workers inherit this environment.
    try:
        if address:
            # a running Ray's config is its head's: Ray refuses one from a driver that joins it
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        else:
            start_private_ray(settings.ray.num_cpus)
    except ConnectionError:
        if address != "auto":
            raise
        raise RayUnreachable(
            f"no Ray runs on this machine for {source} 'auto' to join: start one (`ray start --head`), "
            "or leave RAY_ADDRESS and ray.address unset to start a private local Ray"
        ) from None
    except OSError as e:
        # a local Ray's sockets live in its session folder, <RAY_TMPDIR or TMPDIR>/ray/session_…: a
        # deep folder (a test runner's, a service's private /tmp) makes their paths too long
        found = re.search(r"AF_UNIX path length cannot exceed (\d+) bytes: (.+?)/ray/session_", str(e))
        if found is None:
            raise
        limit, folder = found.groups()
        raise ConfigError(
            f"cannot start a local Ray under {folder}: the paths of its sockets there would pass the "
            f"{limit} bytes a Unix socket's path may have; set RAY_TMPDIR to a shorter folder, such as /tmp"
        ) from None
    if not address:
        # at the process's exit, ahead of Ray's own handler (registered when Ray was imported, so
        # run after this one), which sleeps half a second and then waits out the monitor: an
        # Airflow task's process, a test session, a notebook end 1.5 s sooner
        atexit.unregister(stop_ray)
        atexit.register(stop_ray)
    log.info("Ray %s: %s", "cluster" if address else "local", ray.cluster_resources())


class RayUnreachable(ConnectionError):
    """No Ray answers at the address this process was to join; it may later, so a retry may pass."""


def answering(address: str, source: str, attempts: int = 3) -> None:
    """Fail within seconds when nothing listens at a Ray address (``host:port`` of its head, or
    ``ray://host:port`` of its client server).

    ``ray.init`` tries a head that does not answer for about 14 minutes (20 tries of a GCS
    client, each waiting 40 s for the cluster's id), printing a warning every few seconds: a head
    that is down, or a mistyped address, would hold an Airflow worker slot that long. Only the
    connection is tried here; whatever answers is left to Ray. Other forms (``auto``) are Ray's.

    Raises:
        RayUnreachable: naming the address, where it came from (``source``) and why, after
            ``attempts`` tries 1 and 2 s apart.
    """
    import socket
    import time

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    why = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(attempt)
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as conn:
                if not address.startswith("ray://"):
                    _not_http(conn, address, source)
            return
        except TimeoutError:
            why = "no answer within 5 s"
        except OSError as e:
            why = e.strerror or type(e).__name__
    raise RayUnreachable(
        f"no Ray answers at {address} ({source}; {why}, {attempts} tries): check that its head runs "
        "(`ray start --head` prints the address to join), or leave RAY_ADDRESS and ray.address unset "
        "to start a private local Ray"
    )


def _not_http(conn: Any, address: str, source: str) -> None:
    """A head's GCS speaks gRPC (HTTP/2); its dashboard, where the Jobs API is, speaks HTTP/1.
    Given the dashboard's port (8265) to join, Ray's client would wait on it as on a head that is
    down. One request tells them apart: a GCS answers it with HTTP/2's first frame."""
    conn.settimeout(2)
    try:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = conn.recv(5)
    except OSError:
        return  # no answer: leave the address to Ray
    if reply.startswith(b"HTTP/"):
        from jobs.yamlconf import ConfigError

        raise ConfigError(
            f"{address} ({source}) answers HTTP: that is a Ray dashboard's port, where `lakecast submit` "
            f"sends a job (http://{address}); `lakecast run` joins a Ray at its head's port (6379 unless "
            "`ray start --port` said otherwise)"
        )


def start_private_ray(num_cpus: int | None = None) -> None:
    """Start a private local Ray for this process, with :data:`LOCAL_RAY_CONFIG` and, for its
    processes, :data:`LOCAL_RAY_ENV` (they inherit this process's environment as it is while Ray
    starts). ``num_cpus`` None: every core."""
    import ray

    with env_defaults(LOCAL_RAY_ENV), _quiet(TOKEN_AUTH_LOGGER):
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _system_config=LOCAL_RAY_CONFIG,
        )


# Ray 2.60 starts a local Ray with token authentication unless RAY_AUTH_MODE says otherwise (a
# token in ~/.ray/auth_token, made the first time), and warns on each start that
# RAY_AUTH_MODE=disabled opts out. A private Ray is the job's own, started and stopped by it: the
# warning opened every run's log, the Airflow task's too, with nothing for the user to do. The
# default stays, without its warning; a RAY_AUTH_MODE the user sets is Ray's to follow, as before.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """The named logger's warnings left out for the block; its errors still pass."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def env_defaults(defaults: dict[str, str]) -> Iterator[None]:
    """``defaults`` set in ``os.environ`` where it has no such variable, for the block only."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def stop_ray() -> None:
    """Stop the private Ray this process started, or leave the running Ray it joined.

    ``ray.shutdown()`` sends each of a private Ray's processes SIGTERM and gives it a second to
    exit. Its autoscaler monitor always needs the whole second: every run's exit took 1.4 s, 1.0
    of them waiting on the monitor. A private Ray never scales, so its monitor has nothing to
    finish: it is killed at once, and the shutdown takes 0.4 s. Where Ray's internals have moved
    (they are not public), the shutdown is Ray's own.
    """
    import ray

    try:
        from ray._private.ray_constants import PROCESS_TYPE_MONITOR

        node = ray._private.worker._global_node  # set where this process started its Ray
        monitors = node.all_processes.get(PROCESS_TYPE_MONITOR, []) if node is not None and node.head else []
    except (ImportError, AttributeError):
        monitors = []
    for info in monitors:
        info.process.kill()
    ray.shutdown()


def cluster_address(settings: Settings) -> str | None:
    """The Ray this process joins: ``RAY_ADDRESS``, else the profile's ``ray.address``. None for
    a private local Ray: no address, or ``local``, Ray's own word for starting one (taken for a
    cluster's, it made a job whose actor no node can hold wait forever instead of failing)."""
    address = os.environ.get("RAY_ADDRESS") or settings.ray.address or None
    return None if address == "local" else address


def private_ray(settings: Settings) -> bool:
    """Whether this run starts (or started) a private local Ray, which never grows: no cluster address."""
    return cluster_address(settings) is None


def actor_gpus(job: JobConfig, settings: Settings) -> float:
    """The GPUs of each of the job's actors (``auto``: one where the nodes the actors may run on
    have GPUs, or where ``compute.label_selector`` or a fallback's picks them by their GPUs'
    model, else CPU actors), once it is known that a node can hold such an actor.

    Ray Data waits for an actor no node can hold, its progress log repeating "pending: 4 CPU",
    until the task's timeout kills it hours later. A private Ray never grows, so that is an error
    at once. A cluster's autoscaler may add a node that fits, so there it is a warning.

    Raises:
        ConfigError: on a private Ray, naming what the actor asks and what the nodes have.
    """
    import ray

    from jobs import labels
    from jobs.yamlconf import ConfigError

    compute = job.compute
    selectors = compute.selectors
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_labels = [n.get("Labels") or {} for n in nodes]
    allowed = [
        n["Resources"]
        for n, held in zip(nodes, node_labels, strict=True)
        if any(labels.matches(s, held) for s in selectors.values())
    ]
    has_gpus = sum(n.get("GPU", 0) for n in allowed) >= 1
    if compute.gpus_per_actor == "auto":
        gpus = 1.0 if has_gpus or any(map(labels.asks_for_accelerator, selectors.values())) else 0.0
    else:
        gpus = float(compute.gpus_per_actor)
    need = {"CPU": compute.cpus_per_actor} | ({"GPU": gpus} if gpus else {})
    if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in allowed):
        if compute.fallback_strategy and not any(labels.matches(compute.label_selector, n) for n in node_labels):
            log.info(
                "no node of this Ray is labelled %s (compute.label_selector): Ray places the actors by "
                "compute.fallback_strategy",
                labels.shown(compute.label_selector),
            )
        return gpus
    where = " or ".join(
        f"labelled {labels.shown(s)} (compute.{key})" if s else f"of any labels (compute.{key})"
        for key, s in selectors.items()
    )
    if not allowed:
        keys = dict.fromkeys(key for s in selectors.values() for key in s)  # each once, in the file's order
        message = f"{job.file}: the actors may run only on nodes {where}, and no node of this Ray is "
        message += f"({labels.held(keys, node_labels)})"
        advice = (
            "a private Ray's node has only the labels Ray gives it: run the job on a cluster that has such nodes "
            "(RAY_ADDRESS or the profile's ray.address), or leave compute.label_selector out"
        )
    else:
        largest = max(allowed, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        has = ", ".join(f"{largest.get(k, 0):g} {k}" for k in need)
        asked = " and ".join(f"{v:g} {k} (compute.{k.lower()}s_per_actor)" for k, v in need.items())
        which = f" {where}" if compute.label_selector else ""
        message = f"{job.file}: each actor asks for {asked}, and no node{which} of this Ray has that much"
        message += f" (the largest: {has})"
        if gpus and not has_gpus:
            advice = (
                "this machine's Ray has no GPU: set compute.gpus_per_actor to auto (GPU actors where there are GPUs, "
                "CPU actors elsewhere) or 0"
            )
        else:
            advice = "ask for less, or give the local Ray more (the profile's ray.num_cpus)"
    if private_ray(settings):
        raise ConfigError(f"{message}; {advice}")
    log.warning("%s; the job waits until the cluster's autoscaler adds a node that fits", message)
    return gpus


# An actor that dies (killed by Ray's memory monitor, a crash in a model's native code, its node
# lost) is restarted, and its task retried, this many times; Ray Data's default is forever, so an
# actor killed for lack of memory on every try held the run, and the cluster, until the Airflow
# task's timeout (jobs.ray_errors says what to change instead). Actor options only: a read task
# refuses them, so no read is fused into these actors (the CPU actors read their own pieces).
ACTOR_RESTARTS = 3


def map_on_actors(dataset: ray.data.Dataset, fn: type, *, spec: ComputeSpec, **kwargs: Any) -> ray.data.Dataset:
    """``dataset.map_batches(fn, **kwargs)`` on actors of the job file's ``compute`` (``spec``):
    each with its CPUs, on a node its label selector allows, restarted, and its tasks retried, at
    most :data:`ACTOR_RESTARTS` times, read when the pipeline is built so that the bound and the
    sentences of :mod:`jobs.ray_errors` are one setting.

    Ray 2.60 takes the bound only as actor options passed through ``map_batches``'s
    ``**ray_remote_args``, which it deprecates for removal in 2.64 with no named parameter for
    them yet (ray-project/ray#65227). Its warning would open every run's log, the Airflow task's
    too, with nothing for a user to change: it is left out here, where pyproject.toml's pin (ray
    below 2.61) keeps the options working.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        return dataset.map_batches(
            fn,
            **kwargs,
            num_cpus=spec.cpus_per_actor,
            **spec.placement,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
        )


def actors_read_and_write(gpus: float) -> bool:
    """CPU actors read, validate, score and write in one process (docs/adr/0002); a GPU actor gets
    its batches from CPU read tasks and hands them to CPU write tasks."""
    return gpus == 0


def actor_pool(
    job: JobConfig, settings: Settings, *, inputs: int | None = None, beside: float = 0.0, at_once: int = 1
) -> ray.data.ActorPoolStrategy:
    """The job's actor pool, its minimum size cut to what can start and be fed.

    Args:
        inputs: how many inputs the pool gets (one per piece where the actors read their own
            files, :mod:`jobs.pieces`): no more actors start than that, so a one-piece partition
            starts one.
        beside: CPUs the stages beside the actors need (the GPU actors' read and write tasks).
            The minimum leaves them room: actors holding every CPU of the cluster would wait
            forever for the reads.
        at_once: inputs each actor works on at the same time, a thread each (see
            :func:`files_at_once`).

    Raises:
        ConfigError: on a private Ray (which never grows), where even one actor leaves the stages
            beside it no room, naming the job file, the actor's CPUs and the Ray's.
    """
    import ray

    from jobs.yamlconf import ConfigError

    compute = job.compute
    low = compute.min_actors if inputs is None else min(compute.min_actors, inputs)
    if beside:
        cpus = ray.cluster_resources().get("CPU", 0.0)
        fits = int((cpus - beside) // compute.cpus_per_actor)
        if fits < 1 and private_ray(settings):
            raise ConfigError(
                f"{job.file}: a GPU actor asks for {compute.cpus_per_actor:g} CPU "
                f"(compute.cpus_per_actor), and the tasks beside it that read or write its rows need {beside:g}, "
                f"where this Ray has {cpus:g}: the reads would wait forever; ask for at most "
                f"{max(cpus - beside, 0):g}, or give the local Ray more (the profile's ray.num_cpus)"
            )
        if fits < low:
            log.warning(
                "compute.min_actors %d would leave the read and write tasks no CPU of the cluster's %g; "
                "starting %d actor(s)",
                compute.min_actors,
                cpus,
                max(fits, 1),
            )
            low = fits
    low = max(1, low)
    threads = {"max_concurrent_calls_per_actor": at_once, "enable_true_multi_threading": True} if at_once > 1 else {}
    return ray.data.ActorPoolStrategy(min_size=low, max_size=max(low, compute.max_actors), **threads)


def files_at_once(compute: ComputeSpec, files: int, *, gpus: float) -> int:
    """How many input files a CPU actor scores at the same time, each on a thread of its own: one
    per whole CPU it reserves, and no more than its share of the partition's ``files`` (counted
    as pieces, :func:`jobs.pieces.split_files`). A GPU actor (``gpus`` > 0) scores one batch at a
    time.

    One actor on two CPUs scoring two files on two threads streams as fast as two actors of one
    CPU each (reading, scoring and writing run off the GIL), and it is one process less to start
    and to hold: on a fresh 2-CPU Ray it was ready 3.2 s after the pipeline started against 4.1 s
    for two, and the job held 240 MiB less (docs/benchmark.md). With fewer files than CPUs, a
    file gets more threads instead: torch's and pyarrow's (see :func:`threads_per_file`)."""
    if not actors_read_and_write(gpus):
        return 1
    actors = max(1, min(compute.min_actors, files))
    return max(1, min(int(compute.cpus_per_actor), math.ceil(files / actors)))


def threads_per_file(compute: ComputeSpec, at_once: int) -> float:
    """The CPUs each of an actor's ``at_once`` files gets: its torch intra-op threads, and whether
    pyarrow decodes it on threads (:func:`decode_on_threads`)."""
    return compute.cpus_per_actor / at_once


def read_parquet_files(
    paths: list[str],
    *,
    filesystem: Any,
    columns: list[str],
    sizes: list[int] | None = None,
    dictionary: list[str] = (),
    num_cpus: float | None = None,
) -> ray.data.Dataset:
    """A Ray dataset over Parquet files the driver has already listed (a partition's files): a
    read task per file (:func:`read_pieces`). ``sizes`` in bytes are looked up when not given."""
    import pyarrow.fs as pafs

    from jobs.pieces import whole_files

    if sizes is None:
        fs = filesystem if filesystem is not None else pafs.LocalFileSystem()
        sizes = [info.size or 0 for info in fs.get_file_info(paths)]
    return read_pieces(
        whole_files(paths, sizes), filesystem=filesystem, columns=columns, dictionary=dictionary, num_cpus=num_cpus
    )


def read_pieces(
    pieces: list[Piece],
    *,
    filesystem: Any,
    columns: list[str],
    dictionary: list[str] = (),
    num_cpus: float | None = None,
) -> ray.data.Dataset:
    """A Ray dataset over pieces of Parquet files: whole files, runs of a large file's row
    groups, or small files read in turn (:func:`jobs.pieces.split_files`).

    One read task per piece, planned from the listing alone (see :mod:`jobs.parquet_source`: no
    sampling tasks, no footer-reading actors), reading only ``columns`` in slices of
    :data:`jobs.parquet_source.SLICE_ROWS` rows.

    A read that reserves fewer than two CPUs decodes on its own thread: pyarrow's pool would add
    threads to cores that every task and actor already keeps busy. With CPU actors that read on
    one CPU each, this raised a 10M-row job's steady state by 8% in each of three pairs.
    """
    import ray

    from jobs.parquet_source import ListedParquetDatasource

    report_our_errors()
    source = ListedParquetDatasource(
        pieces,
        filesystem=filesystem,
        columns=columns,
        dictionary=list(dictionary),
        threads=decode_on_threads(num_cpus),
    )
    return ray.data.read_datasource(source, override_num_blocks=max(1, len(pieces)), num_cpus=num_cpus)


def decode_on_threads(cpus: float | None) -> bool:
    """Whether a read that reserves ``cpus`` decodes on pyarrow's thread pool: with fewer than
    two, its threads would only contend with the tasks and actors that keep the other cores busy
    (see :func:`read_parquet_files`)."""
    return (cpus or 1) >= 2


def files_dataset(pieces: list[Piece], uri: Callable[[str], str]) -> ray.data.Dataset:
    """A dataset of one row per piece of input (a file, a run of a large file's row groups, or
    small files read in turn: :meth:`jobs.pieces.Piece.as_row`, with each file's ``uri(path)``
    for messages), a block each: what CPU actors that read their own files take, a piece per task.

    ``from_items`` builds its blocks in the driver. ``from_arrow`` runs a task per block for its
    metadata, which took the workers Ray had started ahead for the actors: the actors started
    1.6 s later."""
    import ray

    from jobs.pieces import largest_first

    report_our_errors()
    rows = [p.as_row(uri) for p in largest_first(pieces)]
    return ray.data.from_items(rows, override_num_blocks=len(rows))
