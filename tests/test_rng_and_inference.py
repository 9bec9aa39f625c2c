"""Randomness policy (fresh by default, replayable on request) and scoring of decoded frames."""

import torch

from model import create_model, make_generator
from model.transforms import grid_fragments, guardian_map, resize_frames, skip_sample_indices
from pipeline.stages.inference import inter_segments, score_frames
from pipeline.demo.synthetic import moving_pattern
from tests.helpers.micro import micro_model


def test_no_generator_means_fresh_entropy_not_torchs_default_seed():
    # torch's default generator replays the same stream in every process; ours must not.
    torch.manual_seed(0)
    a = guardian_map()
    torch.manual_seed(0)
    b = guardian_map()
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    ia = skip_sample_indices(10_000, num_clips=4)
    torch.manual_seed(0)
    ib = skip_sample_indices(10_000, num_clips=4)
    assert not torch.equal(ia, ib)


def test_seeded_generators_replay():
    v = torch.randint(0, 256, (64, 240, 320, 3), dtype=torch.uint8)
    a = grid_fragments(v, layout="THWC", generator=make_generator(7))
    b = grid_fragments(v, layout="THWC", generator=make_generator(7))
    assert torch.equal(a, b)


def test_inter_segments_equal_direct_resize():
    frames = moving_pattern(num_frames=40, height=120, width=160)
    _, inter = create_model("tiny")
    seg = inter_segments(frames, inter)
    assert seg.shape == (16, 3, 32, 224, 224)
    # rate = 40 // 16 = 2: segment 3 covers frames 6..37, segment 15 repeats the last frame
    direct = resize_frames(frames[6:38], size=224, layout="THWC", dtype=torch.uint8)
    assert torch.equal(seg[3], direct.float())
    last = resize_frames(frames[-1:], size=224, layout="THWC", dtype=torch.uint8)
    assert torch.equal(seg[15][:, -1], last[:, 0].float())
    # the uint8 resize stays within one level of the float one (docs/capacity.md: the embeddings' error)
    exact = resize_frames(frames[6:38], size=224, layout="THWC")
    assert (seg[3] - exact).abs().max() <= 1.0


def test_score_frames_replays_with_a_seed_and_skips_fast_pathway_with_cached_embedding():
    # the micro model: every branch, milliseconds a forward (the tiny preset took 15 s of CPU here)
    vqa, inter = micro_model()
    s = vqa.cfg.sampling
    assert 12 < s.clip_len * s.frame_interval and 48 < s.fragment_size
    frames = moving_pattern(num_frames=12, height=48, width=64)  # short (wraps) and small (upsampled)
    a = score_frames(frames, vqa, inter, num_clips=2, generator=make_generator(3))
    b = score_frames(frames, vqa, inter, num_clips=2, generator=make_generator(3))
    assert a == b and len(a.clip_scores) == 2
    calls = []
    inter.register_forward_hook(lambda *args: calls.append(1))
    emb = torch.zeros(s.inter_segments, vqa.cfg.inter_dim)
    score_frames(frames, vqa, inter, num_clips=1, generator=make_generator(3), inter_embedding=emb)
    assert not calls, "a cached inter embedding must skip the fast pathway"
