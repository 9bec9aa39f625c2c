"""The preparation stage's one-pass path (pipeline/stages/prepare.py): the same model inputs as the
earlier two-pass path, bounded bytes, a faithful round trip between the Ray Data stages, and keyed reads."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from bench.legacy_prepare import inter_segments_float, intra_clips_by_clip
from model import create_model, make_generator
from pipeline.io.keyed_read import locate, read_located
from pipeline.io.table import KeyedTable
from pipeline.io.video import VideoReader
from pipeline.stages.prepare import decode_prepared, encode_prepared, inter_input, prepare_video
from tests.helpers import videos as tv

SAMPLING = create_model("tiny")[0].cfg.sampling


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # 70 frames: 4 intra parts of 17 frames wrap around (repeats), segments overlap; odd size, not 224-aligned
    return tv.write_video(tmp_path_factory.mktemp("prep") / "v.mp4", 70, 300, 250)


def test_one_pass_gives_the_two_pass_intra_clips_exactly_and_inter_frames_within_one_level(clip):
    with VideoReader(clip, threads=1) as v:
        old_clips = intra_clips_by_clip(v, SAMPLING, 4, make_generator(3))
        old_inter = inter_segments_float(v, SAMPLING)
    with VideoReader(clip, threads=1) as v:
        p = prepare_video(v, SAMPLING, inter=True, clips=4, generator=make_generator(3))
    assert torch.equal(torch.from_numpy(p.clips), old_clips)
    new_inter = inter_input(torch.from_numpy(p.inter_frames), torch.from_numpy(p.inter_index))
    assert new_inter.shape == old_inter.shape == (16, 3, 32, 224, 224)
    diff = (new_inter - old_inter).abs()
    assert diff.max() <= 1.0 and diff.mean() < 0.4
    assert len(p.inter_frames) == len(np.unique(p.inter_index)) <= 70  # each distinct frame once


def test_small_frames_are_upsampled_as_before(tmp_path):
    path = tv.write_video(tmp_path / "small.mp4", 40, 96, 64)  # below 224: the grid lies on the upsampled frame
    with VideoReader(path, threads=1) as v:
        old = intra_clips_by_clip(v, SAMPLING, 2, make_generator(1))
        new = prepare_video(v, SAMPLING, inter=False, clips=2, generator=make_generator(1))
    assert torch.equal(torch.from_numpy(new.clips), old)


def test_bytes_per_video_do_not_grow_with_the_source_resolution(tmp_path):
    sizes = {}
    for w, h in ((320, 240), (1280, 720)):
        frames = torch.randint(0, 256, (40, h, w, 3), dtype=torch.uint8)
        p = prepare_video(frames, SAMPLING, inter=True, clips=4, generator=make_generator(0))
        sizes[w] = p.nbytes
        assert p.inter_frames.dtype == p.clips.dtype == np.uint8
    assert sizes[320] == sizes[1280]
    # 40 distinct inter frames of 224x224x3 + 4 clips of 3x32x224x224 + the index: no float, no full frame
    assert sizes[1280] == 40 * 224 * 224 * 3 + 4 * 3 * 32 * 224 * 224 + 16 * 32 * 4


def test_the_round_trip_between_stages_keeps_inputs_and_the_generator(clip):
    g = make_generator(11)
    with VideoReader(clip, threads=1) as v:
        p = prepare_video(v, SAMPLING, inter=True, clips=2, generator=g)
    emb = np.arange(32, dtype=np.float32).reshape(16, 2)
    record = encode_prepared({"key": "k", "status": "ok", "fps": 25.0}, p, g, emb)
    row, back, g2, emb2 = decode_prepared(record)
    assert row == {"key": "k", "status": "ok", "fps": 25.0}
    assert np.array_equal(back.clips, p.clips) and np.array_equal(back.inter_frames, p.inter_frames)
    assert np.array_equal(back.inter_index, p.inter_index) and np.array_equal(emb2, emb)
    # the model stage draws the guardian maps from where the preparation stopped
    assert torch.equal(torch.randint(0, 2, (64,), generator=g2), torch.randint(0, 2, (64,), generator=g))
    row, back, g3, emb3 = decode_prepared(encode_prepared({"key": "bad", "status": "error"}))
    assert back is None and g3 is None and emb3 is None


def test_replay_does_not_depend_on_batching(clip):
    """Each video's draws come from its own generator: preparing it alone or after others is the same."""
    def clips_for(seed_keys):
        out = {}
        for key, seed in seed_keys:
            with VideoReader(clip, threads=1) as v:
                out[key] = prepare_video(v, SAMPLING, inter=False, clips=2, generator=make_generator(seed)).clips
        return out
    alone = clips_for([("b", 2)])
    batch = clips_for([("a", 1), ("b", 2)])
    assert np.array_equal(alone["b"], batch["b"]) and not np.array_equal(batch["a"], batch["b"])


def test_a_keyed_read_reads_only_the_located_row_groups_and_survives_a_vacuumed_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from pipeline.io import table as T

    monkeypatch.setattr(T, "ROW_GROUP_ROWS", 4)  # small row groups: 10 rows a commit make 3 of them
    table = KeyedTable(str(tmp_path / "cache"))
    table.create(pa.schema([("key", pa.string()), ("status", pa.string()), ("x", pa.int64())]))
    for c in range(3):
        keys = [f"k{c}_{i}" for i in range(10)]
        table.commit(pa.table({"key": keys, "status": ["ok", "error"] * 5, "x": [100 * c + i for i in range(10)]}))
    located = locate(table, ["k0_1", "k2_9", "k2_8", "nope"])
    assert set(located) == {"k0_1", "k2_9", "k2_8"}
    assert located["k0_1"].endswith("#0") and located["k2_9"].endswith("#2") and located["k2_8"].endswith("#2")
    assert set(locate(table, status="ok")) == {f"k{c}_{i}" for c in range(3) for i in range(0, 10, 2)}
    f = located["k2_9"].rpartition("#")[0]
    assert pq.ParquetFile(f).metadata.num_row_groups == 3
    reads = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups",
                        lambda self, rgs, **kw: reads.append(list(rgs)) or real(self, rgs, **kw))
    got = read_located(table, located.values(), ["key", "x"], keys=located).to_pylist()
    assert sorted((r["key"], r["x"]) for r in got) == [("k0_1", 1), ("k2_8", 208), ("k2_9", 209)]
    assert sorted(reads) == [[0], [2]]  # one row group of each file, nothing else
    gone = [str(tmp_path / "cache" / "part-gone.parquet") + "#0"]  # compacted and vacuumed since
    assert read_located(table, gone, ["key", "x"], keys=["k1_3"]).to_pylist() == [{"key": "k1_3", "x": 103}]


def test_a_cold_video_is_decoded_once_for_both_branches_and_a_warm_one_never_decodes_inter_frames(tmp_path,
                                                                                                  monkeypatch):
    """The score stage in-process (as its Ray Data tasks and actor would run it): cold, one decoding pass
    gives the embedding (committed to the cache) and the score; warm, the inter frames are not decoded."""
    import pandas as pd

    from pipeline.io.storage import make_key
    from pipeline.stages.driver import keyed_manifest
    from pipeline.stages.inter import INTER_SCHEMA
    from pipeline.stages.options import ModelSpec, RunOptions
    from pipeline.stages.scoring import Scorer
    from tests.helpers.micro import micro_checkpoint

    video = tv.write_video(tmp_path / "v.mp4", 40, 96, 64)
    spec = ModelSpec(checkpoint=str(micro_checkpoint(tmp_path / "micro.pt")))
    v = spec.versions()
    rows = keyed_manifest(pd.DataFrame({"video_id": ["v"], "uri": [str(video)]}), v["score"], {}, extra=(2,))
    rows["inter_key"] = [make_key(u, c, v["inter"]) for u, c in zip(rows["uri"], rows["content_key"])]
    cache = str(tmp_path / "cache")
    KeyedTable(cache).create(INTER_SCHEMA)
    visits = []
    real = VideoReader.visit
    monkeypatch.setattr(VideoReader, "visit", lambda self, idx, fn: visits.append(len(np.unique(idx))) or real(self, idx, fn))

    def run():
        stage = Scorer(spec, cache, RunOptions(seed=0, clips=2), v["score"], inter_version=v["inter"],
                       sampling=v["sampling"], compute_inter=True)
        stage.setup()
        prepared = stage.prepare(rows)
        return prepared, stage.process(prepared)

    cold, cold_rows = run()
    assert len(visits) == 1  # one decoding pass for both branches
    assert cold["inter_frames"].iloc[0] is not None and cold_rows[0]["status"] == "ok"
    assert KeyedTable(cache).read().num_rows == 1  # the embedding committed with the score
    visits.clear()
    warm, warm_rows = run()
    assert warm["inter_frames"].iloc[0] is None and warm["embedding"].iloc[0] is not None
    # warm decodes only the intra clips' frames: fewer than the cold pass (which needed every frame)
    assert len(visits) == 1 and visits[0] < 40
    assert warm_rows[0]["score"] == pytest.approx(cold_rows[0]["score"], abs=1e-6)  # same seed, same score


@pytest.mark.slow  # a fresh interpreter: torch warns about a read-only array once per process
def test_read_only_frames_give_the_same_inputs_without_a_warning():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import types, numpy as np, torch
        from model import create_model, make_generator
        from pipeline.stages.prepare import prepare_video
        s = create_model("tiny")[0].cfg.sampling
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (40, 120, 200, 3), dtype=np.uint8)
        frames.flags.writeable = False  # as the frame cache's memory map
        src = types.SimpleNamespace(info=types.SimpleNamespace(num_frames=40, height=120, width=200),
                                    visit=lambda idx, fn: [fn(int(i), frames[int(i)]) for i in np.unique(idx)])
        a = prepare_video(src, s, inter=True, clips=2, generator=make_generator(1))
        b = prepare_video(torch.from_numpy(frames.copy()), s, inter=True, clips=2, generator=make_generator(1))
        assert np.array_equal(a.clips, b.clips) and np.array_equal(a.inter_frames, b.inter_frames)
        print("same")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "same" and "not writable" not in r.stderr, r.stderr[-2000:]
