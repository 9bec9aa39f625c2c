"""The training frame cache: exactly the decoder's frames, decoded once, and a training step through it
equal to one that decodes on the fly (same seed: same loss, same gradients)."""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.losses import LossConfig
from model.optim import build_optimizer
from pipeline.training.frame_cache import FrameCache
from pipeline.training.data import ClipDataset
from pipeline.training.config import TrainConfig
from pipeline.training.loop import build_model, train_step
from pipeline.io.video import VideoReader
from tests.helpers.videos import write_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("frame_cache")
    return [write_video(d / f"v{i}.mp4", num_frames=40 + 8 * i, width=240, height=176) for i in range(2)]


def test_frames_equal_the_decoders(clips, tmp_path):
    cache = FrameCache(tmp_path / "cache", min_free_bytes=0)
    rng = np.random.default_rng(0)
    for path in clips:
        with VideoReader(str(path)) as video:
            n = video.info.num_frames
            idx = np.concatenate([[0, n - 1, 3, 3], rng.integers(0, n, 20)])  # repeats and any order
            want = video.read(idx)
        got = cache.open(str(path))
        assert got.info.num_frames == n
        out = got.read(torch.from_numpy(idx))
        assert out.dtype == torch.uint8 and out.shape == want.shape
        assert torch.equal(out, want)
        with pytest.raises(IndexError):
            got.read([n])


def test_each_video_is_decoded_once_and_again_when_it_changes(clips, tmp_path):
    cache = FrameCache(tmp_path / "cache", min_free_bytes=0)
    uri = str(clips[0])
    assert cache.warm([uri, uri]) == 1
    entry = cache.path(uri)
    stamp = entry.stat().st_mtime_ns
    assert cache.warm([uri]) == 0 and cache.open(uri).info.num_frames == 40
    assert entry.stat().st_mtime_ns == stamp  # read back, not decoded again
    # the file changes (a new version of the video): a new entry, decoded from the new content
    write_video(uri, num_frames=24, width=240, height=176)
    os.utime(uri, ns=(stamp + 10**9, stamp + 10**9))
    assert cache.path(uri) != entry
    assert cache.open(uri).info.num_frames == 24
    write_video(uri, num_frames=40, width=240, height=176)  # restore the module's clip


def test_cached_step_equals_the_decoding_step(clips, tmp_path):
    rows = [{"video_id": p.stem, "uri": str(p), "mos": float(m), "inter_key": "k"} for p, m in zip(clips, (2.0, 4.0))]
    vqa = build_model(TrainConfig(preset="tiny-cpu"), seed=0)
    s = vqa.cfg.sampling
    emb = {"k": torch.randn(s.inter_segments, vqa.cfg.inter_dim, generator=torch.Generator().manual_seed(0))}
    plain = ClipDataset(rows, emb, s, 1, seed=5, salt="train", storage_options={})
    cached = ClipDataset(rows, emb, s, 1, seed=5, salt="train", storage_options={},
                         frame_cache=FrameCache(tmp_path / "cache", min_free_bytes=0))
    for epoch in (0, 3):
        plain.set_epoch(epoch), cached.set_epoch(epoch)
        batches = []
        for ds in (plain, cached):
            items = [ds[i] for i in range(len(rows))]
            batches.append((torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items]),
                            torch.tensor([it[2] for it in items])))
        assert torch.equal(batches[0][0], batches[1][0])  # the same fragments, offsets and frames

    results = []
    for clips_, inter, mos in batches:
        model = copy.deepcopy(vqa).train()
        opt = build_optimizer(model, backbone_lr=1e-3, head_lr=1e-3)
        torch.manual_seed(0)  # dropout and drop-path
        loss = train_step(model, clips_, inter, mos, opt, LossConfig(rank_zscore=True),
                          generator=torch.Generator().manual_seed(1), grad_clip=1.0)
        results.append((loss, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
                        model.state_dict()))
    (la, ga, sa), (lb, gb, sb) = results
    assert la == lb
    assert ga.keys() == gb.keys() and len(ga) > 10
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-7)


def test_a_cache_that_would_fill_its_disk_leaves_videos_to_the_decoder(clips, tmp_path, monkeypatch):
    import pipeline.training.frame_cache as fc

    uris = [str(p) for p in clips]
    with VideoReader(uris[0]) as video:
        first = video.info.num_frames * video.info.height * video.info.width * 3  # bytes of its cache entry
    # a disk with room for the first video above the default reserve (MIN_FREE_BYTES), not for both
    free = fc.MIN_FREE_BYTES + first + first // 2

    def usage(path):  # what the cache wrote is taken from the free space
        taken = sum(f.stat().st_size for f in (tmp_path / "cache").glob("*.npy"))
        return SimpleNamespace(total=10 * free, free=free - taken)

    monkeypatch.setattr(fc.shutil, "disk_usage", usage)
    cache = FrameCache(tmp_path / "cache")
    assert cache.reserve() == fc.MIN_FREE_BYTES  # 6% of this disk is less
    assert cache.warm(uris) == 1  # the second no longer fits once the first is written
    assert cache.left_out == {uris[1]}
    assert cache.open(uris[0]) is not None and cache.open(uris[1]) is None
    assert len(list((tmp_path / "cache").glob("*"))) == 1  # nothing half-written

    # items are the same with the full cache as without any (the left-out video read by its decoder)
    rows = [{"video_id": f"v{i}", "uri": u, "mos": 3.0, "inter_key": "k"} for i, u in enumerate(uris)]
    vqa = build_model(TrainConfig(preset="tiny-cpu"), seed=0)
    emb = {"k": torch.zeros(vqa.cfg.sampling.inter_segments, vqa.cfg.inter_dim)}
    plain = ClipDataset(rows, emb, vqa.cfg.sampling, 2, seed=3, salt="train", storage_options={})
    full = ClipDataset(rows, emb, vqa.cfg.sampling, 2, seed=3, salt="train", storage_options={}, frame_cache=cache)
    for i in range(len(rows)):
        assert torch.equal(plain[i][0], full[i][0])

    # an explicit reserve larger than the disk's free space: nothing is decoded at all
    none = FrameCache(tmp_path / "none", min_free_bytes=free + 1)
    assert none.warm(uris) == 0 and none.left_out == set(uris) and not list((tmp_path / "none").glob("*"))


def test_a_large_disk_keeps_the_share_ray_needs_free(clips, tmp_path, monkeypatch):
    import pipeline.training.frame_cache as fc

    gib = 2**30
    # stop 42's disk: 252 GiB with 11 GiB free; above 8 GiB, but Ray counts it full below 5% (12.6 GiB) free
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda path: SimpleNamespace(total=252 * gib, free=11 * gib))
    cache = FrameCache(tmp_path / "cache")
    assert cache.reserve() == int(fc.MIN_FREE_SHARE * 252 * gib) > 12.6 * gib
    assert cache.warm([str(clips[0])]) == 0 and cache.left_out == {str(clips[0])}
    # the same free space on a 100 GiB disk: 8 GiB is the larger reserve, and the video fits
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda path: SimpleNamespace(total=100 * gib, free=11 * gib))
    assert FrameCache(tmp_path / "small").warm([str(clips[0])]) == 1
    # an explicit reserve is kept as given
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda path: SimpleNamespace(total=252 * gib, free=11 * gib))
    assert FrameCache(tmp_path / "given", min_free_bytes=8 * gib).warm([str(clips[0])]) == 1


def test_a_video_that_cannot_fit_is_not_decoded_to_find_out(clips, tmp_path, monkeypatch):
    import pipeline.training.frame_cache as fc

    with VideoReader(str(clips[1])) as video:
        size = video.info.num_frames * video.info.height * video.info.width * 3
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda path: SimpleNamespace(total=10 * size, free=2 * size))
    decoded = []
    real = VideoReader.read
    monkeypatch.setattr(VideoReader, "read", lambda self, idx: decoded.append(len(idx)) or real(self, idx))
    cache = FrameCache(tmp_path / "cache", min_free_bytes=int(1.5 * size))  # free space above it, the entry not
    assert cache.warm([str(clips[1])]) == 0 and decoded == [] and cache.left_out == {str(clips[1])}
    assert FrameCache(tmp_path / "fits", min_free_bytes=size // 2).warm([str(clips[1])]) == 1 and decoded
