"""Where CPU actors keep the challenger's shadow scores (``ab.shadow``) until they write them:
``<output.table>_shadow``, beside the predictions. The predictor
(:class:`models.predictor.RoutedPredictor`) hands each batch's challenger scores to
:class:`PerFile`, which writes them as a file per output file, of the same name and rows.
Written a batch at a time, a 10M-row night made 160 shadow files beside the predictions' 10.
(GPU actors' shadow goes with their batches to Ray Data's write tasks: :mod:`jobs.write_tasks`.)
"""

from __future__ import annotations

import threading

import pyarrow as pa

from jobs.lake import FolderWriter
from models.predictor import parquet_options


class PerFile:
    """The batches of an output file held until :meth:`write` (the CPU actors'). An actor scores
    a file per thread at once (:func:`jobs.ray_runtime.files_at_once`), so each thread keeps its
    own; built in the actor (a thread's store does not travel)."""

    def __init__(self, writer: FolderWriter, *, key: str) -> None:
        self.writer, self.key = writer, key
        self._local = threading.local()

    def __call__(self, table: pa.Table) -> None:
        self._batches().append(table)

    def write(self, name: str) -> pa.Table | None:
        """This thread's batches since the last call, as the file ``name``, returned for its
        summary (:mod:`jobs.score_stats`); none: no file, None."""
        batches = self._batches()
        if not batches:
            return None
        table = pa.concat_tables(batches, promote_options="permissive")
        batches.clear()
        self.writer(table, name, **parquet_options(table, key=self.key))
        return table

    def _batches(self) -> list[pa.Table]:
        if not hasattr(self._local, "batches"):
            self._local.batches = []
        return self._local.batches
