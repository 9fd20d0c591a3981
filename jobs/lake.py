"""The data lake: where tables live, how a date partition is laid out, read and committed.

Only this module knows paths. A table is a folder of Hive-style date partitions::

    <root>/<table>/ds=YYYY-MM-DD/part-*.parquet
    <root>/<table>/ds=YYYY-MM-DD/_manifest.json

Writers never write into a partition. They write into a staging folder of their own,
``<root>/_staging/<table>/ds=.../<run_id>/``, and :meth:`Lake.commit` swaps it in whole, so a
reader sees the previous partition or the new one, never a half-written mix.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


class LakeError(RuntimeError):
    """A partition is missing, empty or unreadable; the message names the path."""


@dataclass(frozen=True)
class DataFile:
    path: str
    size: int


@dataclass(frozen=True)
class Lake:
    """A lake rooted at a local directory or an ``s3://bucket/prefix`` URI."""

    root: str
    _fs: pafs.FileSystem | None = field(default=None, compare=False, repr=False)

    @cached_property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    @cached_property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem that Ray Data and pyarrow both read and write through."""
        if self._fs is not None:
            return self._fs
        if self.is_s3:
            import s3fs  # credentials and endpoint: the standard AWS chain and variables

            return pafs.PyFileSystem(pafs.FSSpecHandler(s3fs.S3FileSystem()))
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

    def partition_path(self, table: str, ds: dt.date) -> str:
        return f"{self.table_path(table)}/ds={ds.isoformat()}"

    def staging_path(self, table: str, ds: dt.date, run_id: str) -> str:
        return f"{self.base}/_staging/{table}/ds={ds.isoformat()}/{run_id}"

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def data_files(self, table: str, ds: dt.date) -> list[DataFile]:
        """The committed Parquet files of one partition, skipping ``_`` and ``.`` metadata.

        Raises:
            LakeError: the partition does not exist or holds no data file.
        """
        path = self.partition_path(table, ds)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise LakeError(f"partition {self.uri(path)} does not exist: no data for {table} on {ds}")
        files = self._list_data_files(path)
        if not files:
            raise LakeError(f"partition {self.uri(path)} holds no Parquet data files")
        return files

    def _list_data_files(self, path: str) -> list[DataFile]:
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(
            (
                DataFile(i.path, i.size or 0)
                for i in infos
                if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))
            ),
            key=lambda f: f.path,
        )

    def count_rows(self, files: list[DataFile]) -> list[int]:
        """Row counts from the Parquet footers, without reading any data page."""
        counts = []
        for f in files:
            try:
                counts.append(pq.ParquetFile(f.path, filesystem=self.fs).metadata.num_rows)
            except Exception as e:  # pyarrow raises several types for a damaged footer
                raise LakeError(f"cannot read Parquet file {self.uri(f.path)}: {e}") from e
        return counts

    def read_manifest(self, table: str, ds: dt.date) -> dict[str, Any] | None:
        path = f"{self.partition_path(table, ds)}/{MANIFEST}"
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read())

    def commit(self, staging: str, table: str, ds: dt.date, manifest: dict[str, Any]) -> str:
        """Publish a staged partition: write its manifest, then swap it in for the old one.

        Returns:
            the partition path.
        """
        with self.fs.open_output_stream(f"{staging}/{MANIFEST}") as f:
            f.write(json.dumps(manifest, indent=2, default=str).encode())
        target = self.partition_path(table, ds)
        self.fs.create_dir(self.table_path(table), recursive=True)
        trash = None
        if self.exists(target):
            trash = f"{self.base}/_trash/{table}/ds={ds.isoformat()}/{os.path.basename(staging)}"
            self.fs.create_dir(os.path.dirname(trash), recursive=True)
            self.fs.move(target, trash)
        self.fs.move(staging, target)
        if trash:
            self.fs.delete_dir(trash)
        log.info("committed %s", self.uri(target))
        return target

    def discard(self, staging: str) -> None:
        """Remove a staging folder that will not be committed (a failed or dry run)."""
        if self.exists(staging):
            self.fs.delete_dir(staging)
