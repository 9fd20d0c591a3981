"""The data lake: where tables live, how a date partition is laid out, read and committed.

Only this module knows paths. A table is a folder of Hive-style date partitions::

    <root>/<table>/ds=YYYY-MM-DD/part-*.parquet
    <root>/<table>/ds=YYYY-MM-DD/_manifest.json

The tables lakecast writes are laid out so; a table it only reads may name its days otherwise
(``dt=YYYYMMDD``, ``year=YYYY/month=MM/day=DD``: :mod:`jobs.day_folders`).

Writers never write into a partition. They write into a staging folder of their own,
``<root>/_staging/<table>/ds=.../<run_id>/``, and :mod:`jobs.commit` publishes it whole. Where a
partition has a manifest, lakecast reads exactly the files it names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs import day_folders

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"  # the marker Spark and Hadoop write last; lakecast writes it into every partition it commits
FOOTER_THREADS = 16  # footers read at once from S3: each is a small ranged GET, bound by latency


class LakeError(RuntimeError):
    """A partition is missing, empty or unreadable; the message names the path."""


class NotLanded(LakeError):
    """The partition is not there yet, or not whole: no folder, no data file, files and no row,
    or no ready marker (``input.ready_marker``). Its producer may still be writing it, so a wait
    or a retry can help; the DAG's input check waits for it (``airflow.wait_for_input_minutes``)."""


class LakeAccessError(LakeError):
    """The lake's store refuses lakecast's credentials, its bucket does not exist, or its endpoint
    is not a URL: unlike a partition that has not landed yet, trying again changes nothing."""


class EmptyPartition(LakeError):
    """A partition its producer calls whole (a ready marker, a manifest) holds no row. Waiting
    changes nothing: the producer must write the day again."""


class DayElsewhere(LakeError):
    """The day's folder is not where the job looks, but its table holds a folder of that day named
    otherwise (``dt=20261205/`` where the job reads ``ds=2026-12-05/``): the table's writer names
    its days so. Waiting changes nothing; the job file must say where a day lies."""


class DamagedManifest(LakeError):
    """A partition's ``_manifest.json`` is not one lakecast wrote: lakecast writes it whole, last,
    so something else changed it. Waiting changes nothing; a rerun of that partition replaces it."""


def is_remote(filesystem: Any) -> bool:
    """Whether ``filesystem`` (pyarrow's; None: local) is an object store, not this machine's disk."""
    return filesystem is not None and filesystem.type_name != "local"


def uri_of(path: str, filesystem: Any) -> str:
    """A path inside ``filesystem`` as a user would type it, for the messages of code that holds a
    filesystem and no :class:`Lake` (Ray's actors and tasks)."""
    return f"s3://{path}" if is_remote(filesystem) else path


@contextmanager
def writing(path: str, filesystem: Any) -> Iterator[None]:
    """A file of a run that the store cannot hold or refuses (a full disk, S3 failing or refusing
    the write), as a sentence naming it: pyarrow's ``OSError`` reached the user as a traceback,
    from an actor as Ray's, and exited as a bug would. A full disk or a failing store may pass on
    a retry; a refusal will not. The committed partition stays as it was."""
    try:
        yield
    except OSError as e:
        where = uri_of(path, filesystem)
        if isinstance(e, PermissionError):
            raise LakeAccessError(f"cannot write {where}: {e}; lakecast needs to write below the lake's root") from None
        raise LakeError(f"cannot write {where}: {e}; nothing was published") from None


@dataclass(frozen=True)
class FolderWriter:
    """Writes Parquet files into one folder of a run (``writer(table, name, **pq.write_table's
    options)``), a file the store cannot hold as :func:`writing`'s sentence: the actors' scores,
    quarantined rows and shadow scores. Code in ``models/`` that writes a run's files (the
    challenger's shadow scores) cannot import ``jobs``, so it is handed one."""

    folder: str
    filesystem: Any = None  # pyarrow's; None: this machine's disk

    def __call__(self, table: Any, name: str, **options: Any) -> None:
        path = f"{self.folder}/{name}"
        with writing(path, self.filesystem):
            pq.write_table(table, path, filesystem=self.filesystem, **options)


@dataclass(frozen=True)
class DataFile:
    path: str
    size: int
    folder: str = ""  # where it lies below its partition's folder (``hr=13``); "": at its top


@dataclass(frozen=True)
class Lake:
    """A lake rooted at a local directory or an ``s3://bucket/prefix`` URI."""

    root: str
    _fs: pafs.FileSystem | None = field(default=None, compare=False, repr=False)

    @cached_property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @cached_property
    def s3fs(self):
        """The s3fs filesystem behind :attr:`fs` for an ``s3://`` root.

        Credentials and endpoint come from the standard AWS chain and variables
        (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), never from YAML.
        Retries are bounded so an unreachable endpoint fails in seconds, not minutes.
        """
        import s3fs

        endpoint = self._endpoint_url
        if endpoint and not endpoint.startswith(("http://", "https://")):
            # botocore's "Invalid endpoint" came out of the first request, as if S3 were out of reach
            variable = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
            raise LakeAccessError(
                f"the lake {self.root}: {variable} is {endpoint!r}, which is not a URL; write http://{endpoint} "
                "(or https://)"
            )
        # Values set in this process travel inside the pickled filesystem to Ray workers, which
        # may not share this environment; where unset, s3fs falls back to the standard chain.
        env = os.environ.get
        return s3fs.S3FileSystem(
            key=env("AWS_ACCESS_KEY_ID"),
            secret=env("AWS_SECRET_ACCESS_KEY"),
            token=env("AWS_SESSION_TOKEN"),
            endpoint_url=endpoint,
            client_kwargs={"region_name": env("AWS_REGION") or env("AWS_DEFAULT_REGION") or "us-east-1"},
            config_kwargs={
                "connect_timeout": 5,
                "read_timeout": 120,
                "retries": {"max_attempts": 3, "mode": "standard"},
            },
        )

    @cached_property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem that Ray Data and pyarrow both read and write through."""
        if self._fs is not None:
            return self._fs
        if self.is_s3:
            return pafs.PyFileSystem(pafs.FSSpecHandler(self.s3fs))
        return pafs.LocalFileSystem()

    @cached_property
    def base(self) -> str:
        """The root as a path inside :attr:`fs` (no scheme)."""
        if self.is_s3:
            return self.root.removeprefix("s3://").rstrip("/")
        return os.path.abspath(self.root)

    def uri(self, path: str) -> str:
        """A path inside :attr:`fs` as a user would type it."""
        return f"s3://{path}" if self.is_s3 else path

    def table_path(self, table: str) -> str:
        return f"{self.base}/{table}"

    def partition_path(self, table: str, ds: dt.date, layout: str = day_folders.DEFAULT) -> str:
        """The day's folder of ``table``; ``layout``: how the table names it (:mod:`jobs.day_folders`)."""
        return f"{self.table_path(table)}/{day_folders.folder(layout, ds)}"

    def partition_uri(self, table: str, ds: dt.date, layout: str = day_folders.DEFAULT) -> str:
        """:meth:`partition_path` as a user would type it, for messages and lineage."""
        return self.uri(self.partition_path(table, ds, layout))

    def staging_day(self, table: str, ds: dt.date) -> str:
        """Where the runs for ``ds`` of ``table`` stage their output, a folder per run."""
        return f"{self.base}/_staging/{table}/ds={ds.isoformat()}"

    def staging_path(self, table: str, ds: dt.date, run_id: str) -> str:
        return f"{self.staging_day(table, ds)}/{run_id}"

    def exists(self, path: str) -> bool:
        return self._info(path).type != pafs.FileType.NotFound

    def make_dirs(self, *paths: str) -> None:
        """Folders a run writes into, where the lake has folders: S3 has none to make (a key's
        prefixes exist once an object is under them), and s3fs's mkdir would only ask whether the
        bucket exists, a round trip each."""
        if self.is_s3:
            return
        for path in paths:
            self.fs.create_dir(path, recursive=True)

    @property
    def _endpoint_url(self) -> str | None:
        """The S3 endpoint from the environment; None: AWS's own."""
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    @property
    def _endpoint(self) -> str:
        """The endpoint as the errors name it."""
        return self._endpoint_url or "the default AWS endpoint"

    def _info(self, path: str) -> pafs.FileInfo:
        with self._asking():
            return self.fs.get_file_info(path)

    @contextmanager
    def _asking(self) -> Iterator[None]:
        """S3's errors for a look at the lake as sentences: a refusal naming the key, an endpoint
        that does not answer naming the lake."""
        try:
            yield
        except (NotADirectoryError, LakeError):  # a file where a folder was looked for, or ours already said
            raise
        except PermissionError as e:  # s3fs's word for HTTP 403
            if not self.is_s3:
                raise
            raise self.refused(e) from None
        except Exception as e:  # botocore and aiohttp raise many types for an unreachable endpoint
            if not self.is_s3:
                raise
            raise LakeError(f"cannot reach the lake {self.root} at {self._endpoint}: {e}") from e

    def refused(self, e: PermissionError, doing: str = "") -> LakeAccessError:
        """The error for the store refusing lakecast ``doing`` something (S3's 403, a folder's
        mode): it names who was refused, and where to look."""
        doing = f" {doing}" if doing else ""
        if not self.is_s3:
            return LakeAccessError(f"the lake {self.root} refused{doing}: {e}; lakecast needs to write below it")
        key = os.environ.get("AWS_ACCESS_KEY_ID")
        who = f"access key {key!r}" if key else "the credentials of the AWS chain"
        return LakeAccessError(
            f"the lake {self.root} at {self._endpoint} refused {who}{doing} ({e}): check AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, and what the bucket's policy grants them"
        )

    def _missing(self, path: str, what: str) -> LakeError:
        """The error for a partition that is not there: on S3, first whether its bucket is."""
        if self.is_s3:
            bucket = self.base.split("/", 1)[0]
            if self._info(bucket).type == pafs.FileType.NotFound:
                return LakeAccessError(f"the lake {self.root}: bucket {bucket!r} does not exist at {self._endpoint}")
        return NotLanded(f"partition {self.uri(path)} does not exist: {what}")

    def _elsewhere(self, table: str, ds: dt.date, layout: str, path: str) -> DayElsewhere | None:
        """Where the day's folder is missing: a folder of the table's that names the same day
        otherwise (the date written ``2026-12-05`` or ``20261205`` in its name), with the day's
        folder that would read it; None where the table holds none. One listing, on the error's
        path only."""
        names = [
            i.base_name
            for i in self.entries(self.table_path(table))
            if i.type == pafs.FileType.Directory and not i.base_name.startswith(("_", "."))
        ]
        for form in ("%Y-%m-%d", "%Y%m%d"):
            day = ds.strftime(form)
            for name in names:
                theirs = name.replace(day, form)
                if day in name and theirs != layout:
                    return DayElsewhere(
                        f"partition {self.uri(path)} does not exist, but {self.uri(self.table_path(table))} holds "
                        f"{name}/ for {ds}: its writer names a day's folder {theirs!r}, where the job reads "
                        f"{layout!r}. Set the day's folder in the job file (input.partition; ab.labeled_partition "
                        "for the comparison's labeled table)"
                    )
        return None

    def data_files(
        self, table: str, ds: dt.date, *, ready_marker: str | None = None, layout: str = day_folders.DEFAULT
    ) -> list[DataFile]:
        """The committed Parquet files of one partition, skipping ``_`` and ``.`` metadata. A day
        its writer laid out in folders (``hr=00/`` to ``hr=23/``, Spark's ``partitionBy("ds",
        "region")``) is every file below its folder, as Spark and Ray Data read it: reading the top
        level alone would leave those rows unscored.

        A partition lakecast committed may name no file: a run whose every row was quarantined,
        under ``max_invalid_share: 1``, publishes an empty one.

        ``ready_marker``: a file (``_SUCCESS``) that the partition's producer writes once every data
        file is in place. Without it the partition is not whole yet, unless lakecast committed it
        (its manifest is the same promise). ``layout``: how the table names a day's folder
        (:mod:`jobs.day_folders`).

        Raises:
            NotLanded: the partition does not exist, holds no data file and no manifest, or lacks
                its ready marker.
            LakeError: its manifest names files it lacks.
        """
        return self._landed(table, ds, ready_marker, layout)[0]

    def committed(self, table: str, ds: dt.date) -> tuple[list[DataFile], dict[str, Any]] | None:
        """A partition lakecast committed: its files and its manifest, each read once; None where
        the partition has no manifest.

        Raises:
            LakeError: as :meth:`data_files` does.
        """
        files, _, manifest = self._landed(table, ds, None, day_folders.DEFAULT)
        return None if manifest is None else (files, manifest)

    def _landed(
        self, table: str, ds: dt.date, ready_marker: str | None, layout: str
    ) -> tuple[list[DataFile], str | None, dict[str, Any] | None]:
        """:meth:`data_files`; what says they are the whole day (``MANIFEST`` or the ready
        marker's name; None: nothing does); and the partition's manifest, where it has one."""
        path = self.partition_path(table, ds, layout)
        files, folders = self._listing(path)
        if not files and not folders and self._info(path).type == pafs.FileType.NotFound:
            # a listing does not say whether a folder is there: asked only when it found nothing
            missing = self._missing(path, f"no data for {table} on {ds}")
            if isinstance(missing, NotLanded):  # not there yet, unless the day lies under another name
                missing = self._elsewhere(table, ds, layout, path) or missing
            raise missing
        manifest = self.read_manifest(table, ds, layout)
        if manifest is not None:  # exactly the committed files, whatever else the folder holds
            named = {f["file"] for f in manifest["output"]}
            files = [f for f in files if os.path.basename(f.path) in named]
            missing = named - {os.path.basename(f.path) for f in files}
            if missing:
                raise LakeError(f"partition {self.uri(path)} lacks files its manifest names: {sorted(missing)}")
            return files, MANIFEST, manifest
        if folders:  # a day written in folders (hr=00/ to hr=23/, region=eu/): every one is the day's
            files = self._files_below(path)
            shown = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")
            log.info("%s: %d Parquet file(s), in its folders (%s) too", self.uri(path), len(files), shown)
        if not files:
            raise NotLanded(f"partition {self.uri(path)} holds no Parquet data files")
        if ready_marker and not self.exists(f"{path}/{ready_marker}"):
            raise NotLanded(
                f"partition {self.uri(path)} has no {ready_marker} yet (input.ready_marker): its producer writes "
                f"that file last, once every data file is in place, and the {len(files)} Parquet file(s) there "
                "may be only part of the day"
            )
        return files, ready_marker or None, None

    def input_footers(
        self, table: str, ds: dt.date, *, ready_marker: str | None = None, layout: str = day_folders.DEFAULT
    ) -> tuple[list[DataFile], list[pq.FileMetaData]]:
        """A partition to score: its data files and their footers.

        Raises:
            LakeError: as :meth:`data_files` and :meth:`footers` do, and for files that hold no
                row, which would otherwise replace the day's predictions with an empty partition.
                That is :class:`NotLanded` unless a ready marker or a manifest says the
                partition is whole: a producer may create its files before it fills them.
        """
        files, whole_by, _ = self._landed(table, ds, ready_marker, layout)
        footers = self.footers(files)
        if not any(footer.num_rows for footer in footers):
            where = self.partition_uri(table, ds, layout)
            said = f"partition {where} holds {len(files)} Parquet file(s) and no row"
            if not whole_by:
                raise NotLanded(f"{said}: no data for {table} on {ds}")
            raise EmptyPartition(
                f"{said}, and its {whole_by} says that is the whole day: no data for {table} on {ds}. Scoring it would "
                "replace the day's predictions with none, so they stay as they are; once the producer has written "
                "the day's rows, a rerun scores them"
            )
        return files, footers

    def list_data_files(self, path: str) -> list[DataFile]:
        return self._listing(path)[0]

    def entries(self, path: str, *, recursive: bool = False) -> list[pafs.FileInfo]:
        """What ``path`` holds (nothing where it does not exist), listed afresh.

        s3fs keeps a listing for the life of the process, and every ``Lake`` of a process shares
        one s3fs: it keeps its own writes' listings true, never another process's. So a second
        look at a partition, as the input sensor takes in ``airflow dags test``, saw the first
        look's files and never the producer's ``_SUCCESS`` written since. What this listing finds
        is kept for the looks that follow at once (a marker, a manifest)."""
        if self.is_s3:
            self.s3fs.invalidate_cache(path)
            if recursive:  # and the listings it kept of the folders below, which a recursive one may use
                below = f"{path.rstrip('/')}/"
                for cached in [key for key in self.s3fs.dircache if key.startswith(below)]:
                    self.s3fs.dircache.pop(cached, None)
        with self._asking():  # S3 has no empty folders: a prefix with no object does not exist
            return self.fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))

    def _files_below(self, path: str) -> list[DataFile]:
        """The data files at any depth of ``path``, in the order of their paths, each with the
        folder it lies in below ``path``; none below a folder whose name starts with ``_`` or ``.``
        (a writer's ``_temporary``, a marker's folder)."""
        files = []
        for info in self.entries(path, recursive=True):
            relative = info.path[len(path) :].strip("/").split("/")
            if info.type == pafs.FileType.File and not any(part.startswith(("_", ".")) for part in relative):
                files.append(DataFile(info.path, info.size or 0, "/".join(relative[:-1])))
        return sorted(files, key=lambda f: f.path)

    def _listing(self, path: str) -> tuple[list[DataFile], list[str]]:
        """The data files in ``path`` and the names of its folders, both without the ``_`` and ``.``
        ones (markers, manifests, a writer's temporary folders)."""
        infos = [i for i in self.entries(path) if not i.base_name.startswith(("_", "."))]
        files = sorted(
            (DataFile(i.path, i.size or 0) for i in infos if i.type == pafs.FileType.File), key=lambda f: f.path
        )
        return files, sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def footers(self, files: list[DataFile]) -> list[pq.FileMetaData]:
        """Each file's Parquet footer: its row count, and its row groups' column statistics.

        Raises:
            LakeError: a file is unreadable (zero bytes, truncated, not Parquet), naming it.
        """

        def footer(f: DataFile) -> pq.FileMetaData:
            try:
                return pq.ParquetFile(f.path, filesystem=self.fs).metadata
            except Exception as e:  # pyarrow raises several types for a damaged footer
                raise LakeError(f"cannot read Parquet file {self.uri(f.path)}: {e}") from e

        if not self.is_s3 or len(files) < 2:
            return [footer(f) for f in files]
        # each footer is a round trip to S3: side by side, 200 files at 20 ms a request took 0.55 s
        # instead of 5.2 (docs/benchmark.md, "S3's round trips")
        with ThreadPoolExecutor(min(FOOTER_THREADS, len(files))) as pool:
            return list(pool.map(footer, files))

    def newest_committed(self, table: str) -> dt.date | None:
        """The date of ``table``'s newest partition that lakecast committed (it holds its
        manifest), or None."""
        return self.newest_holding(table, MANIFEST)

    def newest_holding(self, table: str, name: str) -> dt.date | None:
        """The date of ``table``'s newest ``ds=`` partition that holds the file ``name`` (a
        manifest, a report), or None. A folder whose name is not ``ds=`` and a date is not a
        partition."""
        dates = []
        for info in self.entries(self.table_path(table)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("ds="):
                with contextlib.suppress(ValueError):
                    dates.append(dt.date.fromisoformat(info.base_name.removeprefix("ds=")))
        # newest first, one look each: a year of nights on S3 is not a year of requests
        newest_first = sorted(dates, reverse=True)
        return next((ds for ds in newest_first if self.exists(f"{self.partition_path(table, ds)}/{name}")), None)

    def read_manifest(self, table: str, ds: dt.date, layout: str = day_folders.DEFAULT) -> dict[str, Any] | None:
        """The partition's manifest; None where it has none (not committed by lakecast).

        Raises:
            DamagedManifest: it is not JSON, or names no files as lakecast's manifests do.
        """
        path = f"{self.partition_path(table, ds, layout)}/{MANIFEST}"
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            text = f.read()
        try:
            manifest = json.loads(text)
            files = [entry["file"] for entry in manifest["output"]]
        except (ValueError, TypeError, KeyError) as e:
            why = f"not valid JSON ({e})" if isinstance(e, ValueError) else "it names no output files"
            raise DamagedManifest(
                f"{self.uri(path)} is not a manifest lakecast wrote: {why}. lakecast writes it whole, so "
                "something else changed it; a rerun of that date replaces the partition with its manifest"
            ) from None
        if not all(isinstance(name, str) for name in files):
            raise DamagedManifest(f"{self.uri(path)} is not a manifest lakecast wrote: its output files are not names")
        return manifest
