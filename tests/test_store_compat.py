"""Stores written before the Delta format stay usable: tests/fixtures/store_v0 holds an inter cache and a
score table in the shard-store format (written by commit bf3e76f, the same format as the code before
the Delta change; `make_store_v0.py` beside them says how), on two small videos with the micro model.
`securevqa migrate` converts them in place; the new code then reads the same rows, derives the same
keys (so a re-run skips every video) and computes the same rows."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.io.storage import make_key
from jobs.cli import main as cli
from pipeline.io.migrate import read_shard_store
from pipeline.io.table import KeyedTable
from pipeline.stages.driver import StageActor, keyed_manifest, load_table, pending_rows
from pipeline.stages.inter import InterExtractor
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.stages.scoring import Scorer

FIXTURE = Path(__file__).parent / "fixtures" / "store_v0"
SEED, CLIPS = 5, 2  # what make_store_v0.py ran with


@pytest.fixture
def store(tmp_path, monkeypatch) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A copy of the fixture as the working directory (its rows name the videos by relative URIs), with
    each video's mtime put back to what its rows recorded (a git checkout sets new ones)."""
    d = tmp_path / "store_v0"
    shutil.copytree(FIXTURE, d)
    monkeypatch.chdir(d)
    before = {name: read_shard_store(name).to_pandas() for name in ("inter", "scores")}
    assert cli(["migrate", "inter", "scores"]) == 0
    assert not (d / "inter" / "_manifests").exists() and not (d / "scores" / "data").exists()
    inter, scores = load_table("inter"), load_table("scores")
    for name, table in (("inter", inter), ("scores", scores)):  # the same rows, keys and columns
        pd.testing.assert_frame_equal(table.sort_values("key").reset_index(drop=True), before[name],
                                      check_dtype=False)
    for uri, ck in zip(inter["uri"], inter["content_key"]):
        ns = int(re.search(r"mtime_ns=(\d+)", ck).group(1))
        os.utime(uri, ns=(ns, ns))
    return inter, scores


def test_old_store_reads_and_its_keys_are_the_new_codes(store):
    inter, scores = store
    assert len(inter) == len(scores) == 2 and (scores["status"] == "ok").all()
    spec = ModelSpec(checkpoint="micro.pt")
    versions = spec.versions()
    # The inter frames are now resized on uint8 (pipeline/stages/prepare.py): a new inter version, so the
    # old cache's embeddings are computed again once; the intra model and its score keys are unchanged.
    assert set(inter["inter_version"]) != {versions["inter"]}
    assert set(scores["model_version"]) == {versions["score"]}
    manifest = scores[["video_id", "uri", "mos", "dataset"]]
    rows = keyed_manifest(manifest, versions["inter"], {})
    todo, skipped = pending_rows(rows, KeyedTable("inter"), retry_errors=False)
    assert len(todo) == 2 and skipped == 0
    rows = keyed_manifest(manifest, versions["score"], {}, extra=(CLIPS,))
    todo, skipped = pending_rows(rows, KeyedTable("scores"), retry_errors=False)
    assert todo.empty and skipped == 2
    assert list(scores["inter_key"]) == [make_key(u, c, inter["inter_version"].iloc[0])
                                         for u, c in zip(scores["uri"], scores["content_key"])]


def test_new_code_computes_the_same_rows(store):
    inter, scores = store
    spec = ModelSpec(checkpoint="micro.pt")
    versions = spec.versions()
    manifest = scores[["video_id", "uri", "mos", "dataset"]]
    rows = keyed_manifest(manifest, versions["inter"], {})
    StageActor(InterExtractor(spec, RunOptions(seed=SEED), versions["inter"]), "new_inter")(rows)
    rows = keyed_manifest(manifest, versions["score"], {}, extra=(CLIPS,))
    rows["inter_key"] = [make_key(u, c, versions["inter"]) for u, c in zip(rows["uri"], rows["content_key"])]
    StageActor(Scorer(spec, "new_inter", RunOptions(seed=SEED, clips=CLIPS), versions["score"]), "new_scores")(rows)
    old_i, new_i = inter.set_index("uri"), load_table("new_inter").set_index("uri")  # new inter keys (uint8 resize)
    old_s, new_s = scores.set_index("key"), load_table("new_scores").set_index("key")
    assert list(new_i.columns) == list(old_i.columns) and list(new_s.columns) == list(old_s.columns)
    for u in old_i.index:  # within the uint8 resize's error (docs/capacity.md)
        old, new = np.asarray(old_i.loc[u, "embedding"]), np.asarray(new_i.loc[u, "embedding"])
        assert np.linalg.norm(new - old) <= 3e-2 * np.linalg.norm(old)  # the random micro model: ~1%
    for k in old_s.index:
        np.testing.assert_allclose(new_s.loc[k, "clip_scores"], old_s.loc[k, "clip_scores"], rtol=1e-3, atol=1e-5)
        assert new_s.loc[k, "score"] == pytest.approx(old_s.loc[k, "score"], rel=1e-3)
