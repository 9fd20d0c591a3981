"""Publishing a partition safely: one writer at a time, all or nothing, and cleanup after crashes.

The guarantees, and what each rests on:

* **One writer per partition.** A run holds the partition's lock from before it reads until it
  has committed. Locally the lock is ``flock`` on ``_locks/<table>/ds=<date>.lock``: the kernel
  releases it when the process dies, so a killed run never blocks the next one. On S3 it is an
  object created with a conditional PUT (``If-None-Match: *``) holding the owner and an expiry;
  a lock past its expiry (a run killed without cleanup) is taken over.
* **All or nothing, local.** The staged folder is swapped with the partition folder in one
  ``renameat2(RENAME_EXCHANGE)`` call: a reader sees the old files or the new ones. Where the
  filesystem lacks it, two renames, with the old partition parked in ``_trash/`` so that
  :func:`recover` can put it back if the process dies in between.
* **All or nothing, S3 (no rename there).** New files are copied in under new names, then
  ``_manifest.json`` is written: that single PUT is the commit point. Old files are deleted after.
  lakecast's readers use the manifest's file list, so they see exactly one committed version;
  a reader that lists the folder can see old and new files together for the seconds between the
  first copy and the last delete. :func:`recover` deletes files no manifest names.
* **``_SUCCESS`` for readers that wait for it** (Spark's and Hadoop's marker, which other
  teams' jobs and sensors look for, and lakecast's own ``input.ready_marker``). Locally it is in
  the staged folder, so it appears with the partition. On S3 it is deleted before the first copy
  and written after the last delete: while it is there, the folder holds exactly the committed
  files. :func:`recover` writes it again where a run died in between.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any

import pyarrow.fs as pafs

from jobs.lake import MANIFEST, SUCCESS, DamagedManifest, Lake, LakeError, writing

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class CommitConflict(RuntimeError):
    """Another run holds the partition; this one stopped before writing anything."""


class DamagedLock(LakeError):
    """An S3 lock object that lakecast did not write: it names no expiry, so no run would ever
    take it over. Someone deletes it; waiting changes nothing."""


def _owner(job: str, lease_s: float) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "job": job,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,
        "since": now.isoformat(),
        "expires": (now + dt.timedelta(seconds=lease_s)).isoformat(),
    }


def _lock_path(lake: Lake, table: str, ds: dt.date) -> str:
    return f"{lake.base}/_locks/{table}/ds={ds.isoformat()}.lock"


def _conflict(table: str, ds: dt.date, owner: dict[str, Any] | None, *, lock_uri: str | None = None) -> CommitConflict:
    """The partition is another run's. ``lock_uri``: an S3 lock, which outlives a run killed
    without its cleanup (SIGKILL, a lost host) until it expires; the sentence says how to go on."""
    who = (
        f"job {owner.get('job')} on host {owner.get('host')} (pid {owner.get('pid')}) since {owner.get('since')}"
        if owner
        else "another run"
    )
    dead = (
        f" If that run died without its cleanup (killed outright, its host lost), its lock {lock_uri} "
        f"expires at {owner.get('expires')}; deleting the lock lets a run go on sooner."
        if lock_uri and owner and owner.get("expires")
        else ""
    )
    return CommitConflict(
        f"{table} ds={ds} is being written by {who}; this run stopped before writing anything. "
        f"Try again when that run has finished.{dead}"
    )


@contextmanager
def partition_lock(lake: Lake, table: str, ds: dt.date, *, job: str, lease_s: float = 4 * 3600) -> Iterator[None]:
    """Hold the partition's write lock, or raise :class:`CommitConflict` at once."""
    path = _lock_path(lake, table, ds)
    owner = _owner(job, lease_s)
    if lake.is_s3:
        with _s3_lock(lake, path, owner, table, ds):
            yield
        return
    import fcntl

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as e:
        raise lake.refused(e, "the partition's lock") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = os.pread(fd, 4096, 0)
            raise _conflict(table, ds, json.loads(held) if held else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _held(body: bytes, uri: str) -> tuple[dict[str, Any], dt.datetime]:
    """An S3 lock's owner and expiry.

    Raises:
        DamagedLock: the object is not a lock lakecast wrote, so it would never expire.
    """
    try:
        held = json.loads(body)
        expires = dt.datetime.fromisoformat(held["expires"])
        if expires.tzinfo is None:
            raise ValueError("no time zone")
    except (ValueError, TypeError, KeyError) as e:
        raise DamagedLock(
            f"{uri} is not a lock lakecast wrote ({'no expires' if isinstance(e, KeyError) else e}), so it "
            "never expires: if no run is writing that partition, delete it and run again"
        ) from None
    return held, expires


@contextmanager
def _s3_lock(lake: Lake, path: str, owner: dict[str, Any], table: str, ds: dt.date) -> Iterator[None]:
    s3 = lake.s3fs
    bucket, key = path.split("/", 1)
    body = json.dumps(owner).encode()
    for _ in range(5):
        try:
            s3.call_s3("put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            break
        except PermissionError as e:
            raise lake.refused(e, f"writing the lock {lake.uri(path)}") from None
        except OSError as e:
            if "pre-condition" not in str(e) and "PreconditionFailed" not in str(e):
                raise LakeError(f"cannot create the lock {lake.uri(path)}: {e}") from e
        try:  # the lock exists: whose is it?
            held, expires = _held(s3.cat_file(path), lake.uri(path))
        except FileNotFoundError:
            time.sleep(0.2)  # released meanwhile: try again
            continue
        if held.get("token") == owner["token"]:
            break  # our own PUT: its response was lost and the client's retry met our lock
        if expires > dt.datetime.now(dt.UTC):
            raise _conflict(table, ds, held, lock_uri=lake.uri(path))
        log.warning("taking over the expired lock of %s", held)
        s3.rm_file(path)
    else:
        raise _conflict(table, ds, None)
    try:
        yield
    finally:
        s3.rm_file(path)


def recover(lake: Lake, table: str, ds: dt.date) -> None:
    """Undo what a dead run left behind; call it while holding the partition lock.

    Removes staging folders of the partition (only the lock holder writes there, so any found are
    from dead runs), restores a partition parked in ``_trash/`` by an interrupted local commit, and
    deletes data files that the committed manifest does not name.
    """
    target = lake.partition_path(table, ds)
    staging_root = lake.staging_day(table, ds)
    trash_root = _trash_day(lake, table, ds)
    if lake.exists(staging_root):
        left = lake.entries(staging_root, recursive=True)
        if any(i.type == pafs.FileType.File for i in left):  # not just empty folders (older commits left them)
            log.warning("removing staging left by dead runs: %s", lake.uri(staging_root))
        lake.fs.delete_dir(staging_root)
    if lake.exists(trash_root):
        parked = sorted(i.path for i in lake.entries(trash_root))
        if parked and not lake.exists(target):
            log.warning("restoring %s from an interrupted commit", lake.uri(target))
            lake.fs.move(parked[-1], target)
        lake.fs.delete_dir(trash_root)
    try:
        manifest = lake.read_manifest(table, ds)
    except DamagedManifest as e:
        # this run replaces the partition whole, the files the manifest would have named with it
        log.warning("%s", e)
        manifest = None
    if manifest is not None:
        named = {f["file"] for f in manifest["output"]}
        for f in lake.list_data_files(target):
            if os.path.basename(f.path) not in named:
                log.warning("removing %s: not in the committed manifest", lake.uri(f.path))
                lake.fs.delete_file(f.path)
        if not lake.exists(f"{target}/{SUCCESS}"):  # an S3 commit that died after it took the marker away
            _mark_done(lake, target)


def recover_tables(lake: Lake, tables: Sequence[str], ds: dt.date) -> None:
    """:func:`recover` for each of a run's ``tables`` (its predictions, quarantine and shadow).

    On S3 side by side: each looks at a few keys in turn, a round trip each, before the pipeline
    can start (behind 20 ms of latency, 0.36 s for the three one after the other)."""
    if not lake.is_s3 or len(tables) < 2:
        for table in tables:
            recover(lake, table, ds)
        return
    with ThreadPoolExecutor(len(tables), thread_name_prefix="recover") as pool:
        for done in [pool.submit(recover, lake, table, ds) for table in tables]:
            done.result()


def commit(lake: Lake, staging: str, table: str, ds: dt.date, manifest: dict[str, Any]) -> str:
    """Publish ``staging`` as the partition; call it while holding the partition lock.

    Returns:
        the partition path.
    """
    target = lake.partition_path(table, ds)
    lake.make_dirs(lake.table_path(table))
    if lake.is_s3:
        _commit_s3(lake, staging, target, manifest)
    else:
        with writing(staging, lake.fs):
            _write_manifest(lake, staging, manifest)
            _mark_done(lake, staging)
        _swap_local(lake, staging, target, table, ds)
        _drop_empty_day(lake, staging)
    log.info("committed %s", lake.uri(target))
    return target


def _drop_empty_day(lake: Lake, staging: str) -> None:
    """The day's folder in staging (``_staging/<table>/ds=…``), once the run's last folder in it
    is gone: a local lake kept an empty one a night and table, a year's nights 365 of them in each
    table's staging. Only the partition lock's holder writes in it; S3 keeps no empty folders."""
    if not lake.is_s3:
        with suppress(OSError):  # not empty yet (the run's telemetry), or gone already
            os.rmdir(os.path.dirname(staging))


def _write_manifest(lake: Lake, folder: str, manifest: dict[str, Any]) -> None:
    with lake.fs.open_output_stream(f"{folder}/{MANIFEST}") as f:
        f.write(json.dumps(manifest, indent=2, default=str).encode())


def _mark_done(lake: Lake, folder: str) -> None:
    with lake.fs.open_output_stream(f"{folder}/{SUCCESS}"):
        pass  # empty, as Spark's


def _swap_local(lake: Lake, staging: str, target: str, table: str, ds: dt.date) -> None:
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the previous partition
        return
    trash = f"{_trash_day(lake, table, ds)}/{os.path.basename(staging)}"
    os.makedirs(os.path.dirname(trash), exist_ok=True)
    os.rename(target, trash)
    os.rename(staging, target)
    shutil.rmtree(os.path.dirname(trash))


def _trash_day(lake: Lake, table: str, ds: dt.date) -> str:
    """Where a local commit without renameat2 parks the partition it replaces, for :func:`recover`
    to put back should the commit die between its two renames."""
    return f"{lake.base}/_trash/{table}/ds={ds.isoformat()}"


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    return renameat2(_AT_FDCWD, a.encode(), _AT_FDCWD, b.encode(), _RENAME_EXCHANGE) == 0


def _commit_s3(lake: Lake, staging: str, target: str, manifest: dict[str, Any]) -> None:
    s3 = lake.s3fs
    entries = lake.entries(target)  # one listing: whether the partition exists, and its files
    old = [i.path for i in entries if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))]
    if entries:  # the folder is about to hold old and new files together (S3 deletes a missing key quietly)
        s3.rm_file(f"{target}/{SUCCESS}")
    new_names = {f["file"] for f in manifest["output"]}
    # names are unique per run, so copies never overwrite committed files. As lists, s3fs copies
    # side by side and deletes in bulk requests: 200 files behind 20 ms of latency took 1.2 s to
    # copy instead of 21, 0.1-0.2 s to delete instead of 5 (docs/benchmark.md, "S3's round trips")
    if new_names:
        names = sorted(new_names)
        s3.copy([f"{staging}/{name}" for name in names], [f"{target}/{name}" for name in names])
    s3.pipe_file(f"{target}/{MANIFEST}", json.dumps(manifest, indent=2, default=str).encode())  # commit point
    stale = [path for path in old if os.path.basename(path) not in new_names]
    if stale:
        s3.rm(stale)
    _mark_done(lake, target)
    if s3.exists(staging):  # an empty staging folder is no object at all on S3
        s3.rm(staging, recursive=True)


def discard(lake: Lake, staging: str) -> None:
    """Remove a staging folder that will not be committed (a failed or dry run)."""
    try:
        if lake.exists(staging):
            lake.fs.delete_dir(staging)
        _drop_empty_day(lake, staging)
    except OSError as e:  # cleanup must not hide the error that brought us here
        log.warning("could not remove %s (the next run removes it): %s", lake.uri(staging), e)
