"""The declared stage (pipeline/stages/stage.py) and its rows (pipeline/stages/rows.py): schemas from
column groups, rows from schemas, and one actor for every stage (issue 14 point 2)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.io.table import KeyedTable
from pipeline.security.attack import CLEAN_SCHEMA, RESULT_SCHEMA, Attacker, CleanScorer
from pipeline.stages.driver import StageActor, pending_rows
from pipeline.stages.inter import INTER_SCHEMA, InterExtractor
from pipeline.stages.options import RunOptions
from pipeline.stages.rows import IDENTITY_COLUMNS, STATUS_COLUMNS, build_row, row_schema
from pipeline.stages.scoring import SCORE_SCHEMA, Scorer
from pipeline.stages.stage import Stage


def test_row_schema_refuses_a_column_twice():
    with pytest.raises(ValueError, match="status"):
        row_schema(IDENTITY_COLUMNS, STATUS_COLUMNS, [("status", pa.string())])


def test_build_row_fills_every_column_and_refuses_unknown_ones():
    schema = row_schema(IDENTITY_COLUMNS, STATUS_COLUMNS, [("score", pa.float64())])
    row = build_row(schema, {"key": "k", "score": 1.5})
    assert list(row) == schema.names and row["score"] == 1.5 and row["error"] is None
    with pytest.raises(KeyError, match="scroe"):
        build_row(schema, {"key": "k", "scroe": 1.5})


@pytest.mark.parametrize("stage,schema", [(InterExtractor, INTER_SCHEMA), (Scorer, SCORE_SCHEMA),
                                          (CleanScorer, CLEAN_SCHEMA), (Attacker, RESULT_SCHEMA)])
def test_every_stage_is_a_declared_stage(stage, schema):
    assert issubclass(stage, Stage) and stage.schema is schema and stage.name
    assert schema.names[:4] == ["key", "video_id", "uri", "content_key"]
    assert {"status", "error", "error_code"} <= set(schema.names)


class _Double(Stage):
    """A toy stage: doubles `x`; a negative `x` is that row's failure."""

    name = "double"
    schema = row_schema(IDENTITY_COLUMNS, [("y", pa.float64())], STATUS_COLUMNS)

    def setup(self) -> None:
        self.factor = 2.0  # what an actor builds once (a model, in the real stages)

    def process(self, batch: pd.DataFrame) -> list[dict]:
        rows = []
        for r in batch.itertuples(index=False):
            if r.x < 0:
                rows.append(self.new_row(r, status="error", error="negative", error_code="error"))
            else:
                rows.append(self.new_row(r, y=self.factor * r.x))
        return rows


def test_stage_actor_sets_up_once_processes_and_commits_one_shard(tmp_path):
    batch = pd.DataFrame({"key": ["a", "b"], "video_id": ["1", "2"], "uri": ["u1", "u2"],
                          "content_key": ["c1", "c2"], "x": [1.5, -1.0]})
    actor = StageActor(_Double(RunOptions(threads=1)), str(tmp_path / "out"))
    summary = actor(batch)
    assert summary.to_dict("list") == {"key": ["a", "b"], "status": ["ok", "error"]}
    table = KeyedTable(str(tmp_path / "out")).read().to_pandas().set_index("key")
    assert table.loc["a", "y"] == 3.0 and table.loc["b", "error"] == "negative"
    assert list(table.reset_index().columns) == _Double.schema.names
    assert KeyedTable(str(tmp_path / "out")).version() == 1


def test_retry_errors_replaces_the_failed_row_and_keeps_one_row_per_key(tmp_path):
    """--retry-errors: the driver hands only the failed keys to the actors, and their commit replaces
    the error row in the same table version (no reader sees the key twice)."""
    out = str(tmp_path / "out")
    batch = pd.DataFrame({"key": ["a", "b"], "video_id": ["1", "2"], "uri": ["u1", "u2"],
                          "content_key": ["c1", "c2"], "x": [1.5, -1.0]})
    StageActor(_Double(RunOptions(threads=1)), out)(batch)
    reader = KeyedTable(out)
    todo, skipped = pending_rows(batch.assign(x=[1.5, 4.0]), reader, retry_errors=True)
    assert list(todo["key"]) == ["b"] and skipped == 1
    assert pending_rows(batch, KeyedTable(out), retry_errors=False)[0].empty  # without the flag: all done
    StageActor(_Double(RunOptions(threads=1, retry_errors=True)), out, since=reader.read_version)(todo)
    table = KeyedTable(out).read().to_pandas()
    assert sorted(table["key"]) == ["a", "b"]
    assert table.set_index("key").loc["b", "y"] == 8.0 and (table["status"] == "ok").all()


def test_new_row_takes_the_identity_from_the_manifest_row():
    r = SimpleNamespace(key="k", video_id=7, uri="s3://b/v.mp4", content_key="etag")
    row = _Double(RunOptions()).new_row(r, y=1.0)
    assert row == {"key": "k", "video_id": "7", "uri": "s3://b/v.mp4", "content_key": "etag", "y": 1.0,
                   "status": "ok", "error": None, "error_code": None}
