"""Where the challenger's shadow scores go (``ab.shadow``): ``<output.table>_shadow``, beside the
predictions. The predictor (:class:`models.predictor.RoutedPredictor`) hands each batch's
challenger scores to one of these.

CPU actors write their shadow as they write their predictions: a file per output file, of the
same name (:class:`PerFile`). Written a batch at a time, a 10M-row night made 160 shadow files
beside the predictions' 10, and named each by hashing its content, a second Parquet encoding of
every batch. GPU actors hand their predictions to Ray Data's write tasks and keep no files of
their own, so theirs is a file per batch, named by its content so that a retried batch rewrites
its file rather than adding a second (:class:`PerBatch`).
"""

from __future__ import annotations

import hashlib
import threading

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.lake import FolderWriter
from models.predictor import parquet_options


class PerBatch:
    """Each batch's scores as a file of its own, named after its rows (the GPU actors')."""

    def __init__(self, writer: FolderWriter) -> None:
        self.writer = writer

    def __call__(self, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table.drop_columns(["scored_at"]), sink)  # the same rows, whenever scored
        name = hashlib.sha1(sink.getvalue().to_pybytes()).hexdigest()[:20]
        self.writer(table, f"s-{name}.parquet", **parquet_options(table.column_names))


class PerFile:
    """The batches of an output file held until :meth:`write` (the CPU actors'). An actor scores
    a file per thread at once (:func:`jobs.ray_runtime.files_at_once`), so each thread keeps its
    own; built in the actor (a thread's store does not travel)."""

    def __init__(self, writer: FolderWriter) -> None:
        self.writer = writer
        self._local = threading.local()

    def __call__(self, table: pa.Table) -> None:
        self._batches().append(table)

    def write(self, name: str) -> None:
        """This thread's batches since the last call, as the file ``name``; none: no file."""
        batches = self._batches()
        if not batches:
            return
        table = pa.concat_tables(batches, promote_options="permissive")
        batches.clear()
        self.writer(table, name, **parquet_options(table.column_names))

    def _batches(self) -> list[pa.Table]:
        if not hasattr(self._local, "batches"):
            self._local.batches = []
        return self._local.batches
