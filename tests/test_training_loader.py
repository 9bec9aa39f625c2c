"""The training and validation loaders: decoding processes that inherit nothing of the training process's
threads (no lock held at fork time can hang them), and one packed table of inter embeddings per dataset."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils.data import Dataset

from pipeline.io.video import VideoReader
from pipeline.training.config import TrainConfig
from pipeline.training.data import ClipDataset, make_loader
from pipeline.training.loop import build_model
from tests.helpers.videos import write_video

# Held by a thread of the test process while loader processes start: a process forked from it copies the lock
# held, forever (the state a decoder's thread leaves behind: docs/training.md "Loader processes").
BUSY = threading.Lock()


class NeedsTheLock(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        with BUSY:
            return i


@pytest.mark.slow
def test_loader_processes_do_not_inherit_a_lock_held_by_another_thread():
    release = threading.Event()
    holder = threading.Thread(target=lambda: (BUSY.acquire(), release.wait(), BUSY.release()), daemon=True)
    holder.start()
    try:
        while not BUSY.locked():
            pass
        # a forked loader process waits on the copied lock until the timeout raises
        loader = make_loader(NeedsTheLock(), 2, batch_size=2, timeout=60)
        assert sorted(torch.cat(list(loader)).tolist()) == [0, 1, 2, 3]
    finally:
        release.set()
        holder.join()


@pytest.mark.slow
def test_clips_decode_in_loader_processes_after_this_process_decoded(tmp_path):
    # the hang of PyAV 18.1.1: the training process decodes (the read-out standardisation), then starts loaders
    paths = [write_video(tmp_path / f"v{i}.mp4", num_frames=32, width=240, height=176) for i in range(2)]
    for p in paths:
        with VideoReader(str(p)) as video:
            video.read(list(range(video.info.num_frames)))
    cfg = build_model(TrainConfig(preset="tiny-cpu"), seed=0).cfg
    s = cfg.sampling
    g = torch.Generator().manual_seed(0)
    # rows share and differ in their inter keys, and the embeddings differ in their number of segments
    emb = {"a": torch.randn(s.inter_segments, cfg.inter_dim, generator=g),
           "b": torch.randn(s.inter_segments + 2, cfg.inter_dim, generator=g)}
    rows = [{"video_id": f"r{j}", "uri": str(paths[j % 2]), "mos": float(j), "inter_key": "ab"[j // 2]}
            for j in range(4)]
    ds = ClipDataset(rows, emb, s, 1, seed=3, salt="val", storage_options={})
    here = [ds[i] for i in range(len(ds))]
    got = list(make_loader(ds, 2, batch_size=1, timeout=120))
    assert len(got) == 4
    for (clips, inter, mos, idx), want in zip(got, here):
        assert torch.equal(clips[0], want[0])  # the same clips whichever process decodes them
        assert torch.equal(inter[0], emb[rows[int(idx)]["inter_key"]]) and torch.equal(inter[0], want[1])
        assert float(mos) == want[2]
    with pytest.raises(KeyError, match="no inter embedding for \\['c'\\]"):
        ClipDataset([{**rows[0], "inter_key": "c"}], emb, s, 1, seed=3, salt="val", storage_options={})
