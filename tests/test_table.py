"""Output tables as Delta tables (pipeline/io/table.py): one row per key for every engine, commits that
never repeat a key (stale and concurrent committers), uncommitted files invisible and vacuumed, time travel."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.maintenance import maintain
from pipeline.io.table import KeyedTable, TableError
from tests.helpers.engines import ENGINES

SCHEMA = pa.schema([("key", pa.string()), ("score", pa.float64()), ("status", pa.string()),
                    ("embedding", pa.list_(pa.float32()))])


def rows(keys, score=1.0, status="ok") -> pa.Table:
    return pa.Table.from_pylist([{"key": k, "score": score + i, "status": status, "embedding": [float(i), 0.5]}
                                 for i, k in enumerate(keys)], schema=SCHEMA)


def scalar(df: pd.DataFrame) -> pd.DataFrame:
    return df[["key", "score", "status"]].sort_values("key").reset_index(drop=True)


def test_a_key_is_committed_once_even_by_a_committer_that_did_not_see_the_other(tmp_path):
    uri = str(tmp_path / "t")
    v0 = KeyedTable(uri).create(SCHEMA)
    a, orphan = KeyedTable(uri, since=v0), KeyedTable(uri, since=v0)  # both read the table at v0
    first = a.commit(rows(["k1", "k2"]))
    late = orphan.commit(rows(["k2", "k3"], score=10.0))  # k2 was committed after orphan's view
    again = orphan.commit(rows(["k3"], score=20.0))
    assert (first.version, first.num_rows) == (v0 + 1, 2)
    assert (late.num_rows, late.skipped) == (1, ("k2",))
    assert not again.created and again.skipped == ("k3",)
    t = KeyedTable(uri).read().to_pandas().set_index("key")
    assert sorted(t.index) == ["k1", "k2", "k3"]
    assert t.loc["k2", "score"] == 2.0 and t.loc["k3", "score"] == 11.0  # the first commit of each key stands


def test_concurrent_committers_lose_nothing_and_repeat_nothing(tmp_path):
    """Six actors commit overlapping batches at once while the driver compacts the table; every key ends
    up in exactly one row."""
    uri = str(tmp_path / "t")
    v0 = KeyedTable(uri).create(SCHEMA)
    universe = [f"video-{i:03d}" for i in range(60)]
    results: list = []
    errors: list = []

    def actor(worker: int) -> None:
        table = KeyedTable(uri, since=v0)
        try:
            for b in range(10):
                start = (worker * 7 + b * 5) % len(universe)
                batch = [universe[(start + j) % len(universe)] for j in range(6)]
                results.append(table.commit(rows(batch, score=worker * 100 + b)))
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    def compact() -> None:
        try:
            while any(t.is_alive() for t in threads):
                compactions.append(maintain(uri, vacuum=False)["optimize"])
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    compactions: list = []
    threads = [threading.Thread(target=actor, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    compactor = threading.Thread(target=compact)
    compactor.start()
    for t in threads:
        t.join()
    compactor.join()
    assert not errors, errors
    assert any(c["numFilesRemoved"] for c in compactions), "no compaction ran alongside the commits"
    table = KeyedTable(uri).read().to_pandas()
    covered = {universe[((w * 7 + b * 5) + j) % 60] for w in range(6) for b in range(10) for j in range(6)}
    assert len(table) == table["key"].nunique() == len(covered)
    assert sum(r.num_rows for r in results) == len(covered)
    assert max(r.attempts for r in results) > 1, "the committers never raced: the test proves nothing"


def test_an_uncommitted_file_is_invisible_to_every_engine_and_vacuum_removes_it(tmp_path):
    uri = str(tmp_path / "t")
    table = KeyedTable(uri)
    table.commit(rows(["a", "b"]))
    table.commit(rows(["c"], score=5.0))
    # A worker killed between writing its data file and committing it leaves this behind.
    committed = sorted(Path(uri).glob("*.parquet"))[0]
    stray = Path(uri) / "part-00000-0badc0de-0000-0000-0000-000000000000-c000.snappy.parquet"
    pq.write_table(rows(["a", "zombie"], score=99.0), stray)
    assert committed.exists() and stray.exists()
    ours = scalar(KeyedTable(uri).read().to_pandas())
    assert list(ours["key"]) == ["a", "b", "c"]
    for name, read in ENGINES.items():
        pd.testing.assert_frame_equal(scalar(read(uri)), ours, check_dtype=False, obj=name)
    dry = maintain(uri, optimize=False, retention_hours=0, dry_run=True)
    assert stray.name in dry["vacuum"]["files"] and stray.exists()
    done = maintain(uri, retention_hours=0)
    assert not stray.exists() and done["files_after"] == 1  # compacted into one file
    for name, read in ENGINES.items():
        pd.testing.assert_frame_equal(scalar(read(uri)), ours, check_dtype=False, obj=name)


def test_vacuum_keeps_young_files_by_default(tmp_path):
    """A file being written right now (younger than the retention, 7 days) survives a nightly vacuum."""
    uri = str(tmp_path / "t")
    KeyedTable(uri).commit(rows(["a"]))
    stray = Path(uri) / "part-in-flight.parquet"
    pq.write_table(rows(["b"]), stray)
    out = maintain(uri)
    assert stray.exists() and out["vacuum"]["removed"] == 0


def test_upsert_replaces_an_error_row_in_one_version(tmp_path):
    uri = str(tmp_path / "t")
    KeyedTable(uri).commit(rows(["a", "b"], status="error"))
    retry = KeyedTable(uri, since=KeyedTable(uri).version())
    r = retry.commit(rows(["b"], score=7.0), upsert=True)
    t = KeyedTable(uri).read().to_pandas().set_index("key")
    assert r.created and len(t) == 2
    assert t.loc["b", "status"] == "ok" and t.loc["b", "score"] == 7.0 and t.loc["a", "status"] == "error"


def test_time_travel_reads_a_version_or_a_time(tmp_path):
    uri = str(tmp_path / "catalog")
    catalog = KeyedTable(uri)
    v1 = catalog.overwrite(rows(["a", "b"], score=1.0))
    time.sleep(0.05)
    between = datetime.now(UTC)
    time.sleep(0.05)
    v2 = catalog.overwrite(rows(["a", "c"], score=3.0))
    assert scalar(catalog.read().to_pandas())["score"].tolist() == [3.0, 4.0]
    old = scalar(catalog.read(version=v1).to_pandas())
    assert old["key"].tolist() == ["a", "b"] and old["score"].tolist() == [1.0, 2.0]
    assert scalar(catalog.read(as_of=between.isoformat()).to_pandas()).equals(old)
    assert v2 == v1 + 1
    with pytest.raises(TableError, match="no version 99"):
        catalog.read(version=99)


def test_a_shard_store_is_refused_with_the_command_that_converts_it(tmp_path):
    legacy = tmp_path / "scores"
    shutil.copytree(Path(__file__).parent / "fixtures" / "store_v0" / "scores", legacy)
    with pytest.raises(TableError, match="securevqa migrate"):
        KeyedTable(str(legacy)).read()
    with pytest.raises(TableError, match="securevqa migrate"):
        KeyedTable(str(legacy)).commit(rows(["a"]))


def test_s3_commits_are_exclusive_and_every_engine_reads_one_row_per_key(s3_endpoint):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="tables")
    so = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    uri = "s3://tables/scores"
    v0 = KeyedTable(uri, so).create(SCHEMA)
    a, orphan = KeyedTable(uri, so, since=v0), KeyedTable(uri, so, since=v0)
    a.commit(rows(["k1", "k2"]))
    assert orphan.commit(rows(["k2", "k3"])).skipped == ("k2",)
    ours = scalar(KeyedTable(uri, so).read().to_pandas())
    assert ours["key"].tolist() == ["k1", "k2", "k3"]
    for name, read in ENGINES.items():
        pd.testing.assert_frame_equal(scalar(read(uri, s3_endpoint)), ours, check_dtype=False, obj=name)
