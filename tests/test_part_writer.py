"""The CPU actors' last step: a validated block scored in batches and written as one file."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs.parquet_source import SOURCE
from jobs.part_writer import ScoreAndWrite
from tests.conftest import DAY
from tests.test_predictor import make_predictor


@pytest.fixture(scope="module")
def raw_batch(lake) -> pa.Table:
    return pads.dataset(lake.partition_path("raw/customers", DAY), format="parquet").to_table().slice(0, 500)


@pytest.fixture
def writer(settings, registered, tmp_path):
    predictor = make_predictor(settings, registered["champion"])
    return ScoreAndWrite(
        type(predictor),
        {"options": predictor.options},
        key="customer_id",
        staging=str(tmp_path),
        filesystem=None,
        batch_size=64,  # several batches per block
    )


def tagged(batch: pa.Table, source: str) -> pa.Table:
    return batch.replace_schema_metadata({SOURCE: source.encode()})


def test_a_block_becomes_one_file_named_after_its_source(writer, raw_batch, tmp_path, settings, registered):
    written = writer(tagged(raw_batch, "part-7-0002"))
    assert written.to_pylist() == [{"file": written["file"][0].as_py(), "rows": raw_batch.num_rows}]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [written["file"][0].as_py()] and files[0].startswith("part-7-0002-")
    out = pq.read_table(tmp_path / files[0])
    # the same rows, in order, with the scores the predictor gives the whole block at once
    whole = make_predictor(settings, registered["champion"])(raw_batch)
    assert out["customer_id"].to_pylist() == raw_batch["customer_id"].to_pylist()
    assert out["churn_probability"].to_pylist() == pytest.approx(whole["churn_probability"].to_pylist(), abs=1e-6)
    # row groups a reader can skip on the key or the score; the one-value lineage strings need none
    group = pq.ParquetFile(tmp_path / files[0]).metadata.row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).is_stats_set for i in range(group.num_columns)}
    assert stats["customer_id"] and stats["churn_probability"] and stats["scored_at"]
    assert not stats["scoring_run_id"]


def test_a_retried_block_rewrites_its_file_and_pieces_of_a_slice_get_their_own(writer, raw_batch, tmp_path):
    block = tagged(raw_batch, "part-0-0000")
    first, again = writer(block), writer(block)  # Ray retries a task whose actor died
    assert first["file"] == again["file"]
    # Ray may cut one slice into several blocks: each keeps the slice's tag, none overwrites another
    halves = [writer(block.slice(0, 200)), writer(block.slice(200))]
    names = {first["file"][0].as_py(), *(h["file"][0].as_py() for h in halves)}
    assert len(names) == 3 and sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert sum(pq.read_metadata(tmp_path / n).num_rows for n in names) == 2 * raw_batch.num_rows


def test_a_block_with_no_valid_row_writes_nothing(writer, raw_batch, tmp_path):
    written = writer(tagged(raw_batch.slice(0, 0), "part-0-0000"))
    assert written.num_rows == 0 and list(tmp_path.iterdir()) == []
