"""The frame-repeat ranking target (TrainConfig.repeat_weight, docs/training.md "Run X"): a clip's frames held
as a frame-rate drop equal the training set's fps condition seen through the same clip, the target ranks a
clip above its held versions by the label drops, and the recipe, the CLI and the batch bases carry it."""

import dataclasses
import json
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch

from model.losses import LossConfig
from model.optim import build_optimizer
from model.frame_repeat import repeat_frames
from pipeline.demo.build import FRAME_DROP_CONDITIONS, FRAME_DROP_LEVELS, with_reference
from pipeline.demo.distortions import distort
from pipeline.demo.labels import CONDITION_MOS
from pipeline.training.config import DEMO_RECIPE, TrainConfig
from pipeline.training.loop import build_model, repeat_bases, train_step


def _video(frames: int = 48, seed: int = 0) -> torch.Tensor:
    """(T, 3, 8, 8) uint8 with every frame different."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (frames, 3, 8, 8), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("k,interval", [(2, 1), (4, 1), (4, 2)])
def test_held_frames_equal_the_frame_drop_condition_seen_through_the_clip(k, interval):
    video = _video()
    dropped, _ = distort("fps", video, float(k), Fraction(25), np.random.default_rng(0))
    f = k // interval
    for start in range(0, 2 * k, interval):  # clips start on a multiple of the sampling interval
        idx = start + interval * torch.arange(16)
        clip = video[idx].permute(1, 0, 2, 3)  # (C, T, H, W)
        held = repeat_frames(clip, f, (start // interval) % f)
        want = dropped[idx].permute(1, 0, 2, 3)
        first = (-(start // interval)) % f  # the first kept frame inside the clip; before it the kept one is outside
        assert torch.equal(held[:, first:], want[:, first:]), (start, k, interval)
        assert torch.equal(held[:, :first], clip[:, :1].expand(-1, first, -1, -1))
        distinct = len({bytes(held[:, t].flatten().numpy()) for t in range(16)})
        assert distinct in (16 // f, 16 // f + 1)


def test_phases_are_per_clip_and_bad_arguments_are_refused():
    clips = _video(8).permute(1, 0, 2, 3)[None, None].repeat(2, 3, 1, 1, 1, 1)  # (2, 3, C, T, H, W)
    phase = torch.tensor([[0, 1, 2], [3, 0, 1]])
    held = repeat_frames(clips, 4, phase)
    assert held.shape == clips.shape and held.dtype == clips.dtype
    for b in range(2):
        for c in range(3):
            assert torch.equal(held[b, c], repeat_frames(clips[b, c], 4, int(phase[b, c])))
    assert torch.equal(repeat_frames(clips, 1), clips)
    assert not torch.equal(held[0, 0], held[0, 1])  # different phases hold different frames
    with pytest.raises(ValueError, match="factor"):
        repeat_frames(clips, 0)
    with pytest.raises(ValueError, match="phase"):
        repeat_frames(clips, 2, torch.zeros(3, dtype=torch.long))


def test_the_recipe_levels_come_from_the_labels_and_name_the_built_conditions():
    clean = CONDITION_MOS[("clean", 0.0)]
    assert [k for k, _ in FRAME_DROP_LEVELS] == [2, 4]
    for k, drop in FRAME_DROP_LEVELS:
        assert drop == pytest.approx(clean - CONDITION_MOS[("fps", float(k))])
    rows = pd.DataFrame({"uri": ["c.mp4", "a.mp4", "b.mp4", "d.mp4"], "source": "s",
                         "distortion": ["clean", "fps", "fps", "blur"], "level": [0, 1, 2, 1]})
    named = with_reference(rows)["condition"].tolist()
    assert tuple(c for c, d in zip(named, rows["distortion"]) if d == "fps") == FRAME_DROP_CONDITIONS
    assert DEMO_RECIPE.repeat_levels == FRAME_DROP_LEVELS and DEMO_RECIPE.repeat_skip == FRAME_DROP_CONDITIONS
    assert DEMO_RECIPE.repeat_weight == 0  # off unless asked for


def test_the_config_round_trips_through_json_and_refuses_bad_levels():
    cfg = dataclasses.replace(DEMO_RECIPE, repeat_weight=0.5, repeat_clips=3, repeat_phase=0)
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.repeat_levels[0], tuple)
    with pytest.raises(ValueError, match="needs repeat_levels"):
        TrainConfig(repeat_weight=1.0)
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        TrainConfig(repeat_levels=((1, 0.5),))
    with pytest.raises(ValueError, match="repeat_clips"):
        TrainConfig(repeat_clips=0)
    with pytest.raises(ValueError, match="repeat_phase"):
        TrainConfig(repeat_phase=-1)


def test_the_cli_sets_the_target():
    from jobs.cli import build_parser, train_config

    args = build_parser().parse_args(["train", "--input", "m.csv", "--output", "o", "--recipe", "demo",
                                      "--repeat-weight", "2", "--repeat-clips", "3", "--repeat-phase", "0",
                                      "--repeat-pairs", "held"])
    cfg, _ = train_config(args, {})
    assert (cfg.repeat_weight, cfg.repeat_clips, cfg.repeat_levels) == (2.0, 3, FRAME_DROP_LEVELS)
    assert cfg.repeat_phase == 0 and DEMO_RECIPE.repeat_phase is None
    assert cfg.repeat_pairs == "held" and DEMO_RECIPE.repeat_pairs == "all"


def test_bases_leave_out_the_skipped_conditions_and_replay_from_the_generator():
    conditions = ["clean_0", "fps_1", "blur_2", "fps_2", None, "h264_1"]
    picks = [repeat_bases(conditions, ("fps_1", "fps_2"), 2, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(len(p) == 2 and not {1, 3} & set(p.tolist()) for p in picks)
    assert len({tuple(p.tolist()) for p in picks}) > 1  # drawn, not always the first two
    assert torch.equal(picks[0], repeat_bases(conditions, ("fps_1", "fps_2"), 2, torch.Generator().manual_seed(0)))
    assert len(repeat_bases(["fps_1"] * 4, ("fps_1",), 2, torch.Generator())) == 0


def _clips(b: int = 2, seed: int = 0) -> torch.Tensor:
    """(b, 1, 3, 16, 160, 160) uint8 tiny-cpu clips of a moving smooth texture (every frame different)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(b, 3, 1, 20, 20, generator=g), size=(1, 160, 176),
                                           mode="trilinear", align_corners=False)
    frames = torch.cat([base[..., k: k + 160] for k in range(16)], 2)
    return (frames * 200 + 20).round().to(torch.uint8)[:, None]


def test_a_step_with_the_target_equals_the_plain_step_when_off_and_trains_the_order_when_on():
    cfg = TrainConfig(preset="tiny-cpu", head_dropout=0.0)
    clips, mos = _clips(), torch.tensor([3.0, 3.0])  # tied labels: the margin loss is 0, only the target acts
    inter = torch.zeros(2, 8, build_model(cfg, seed=0).cfg.inter_dim)
    levels = FRAME_DROP_LEVELS

    def step(vqa, **kw):
        opt = build_optimizer(vqa, backbone_lr=1e-3, head_lr=1e-3)
        parts: dict[str, float] = {}
        loss = train_step(vqa, clips, inter, mos, opt, LossConfig(kind="margin", margin=0.1),
                          generator=torch.Generator().manual_seed(1), parts=parts, **kw)
        return loss, parts, vqa

    plain, _, a = step(build_model(cfg, seed=0))
    off, parts, b = step(build_model(cfg, seed=0), repeat_weight=0.0, repeat_levels=levels,
                         repeat_bases=torch.tensor([0, 1]))
    assert off == plain and "repeat" not in parts
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # a level no longer than the sampling interval is invisible, so nothing is added
    _, parts, _ = step(build_model(cfg, seed=0), repeat_weight=1.0, repeat_levels=((2, 0.64),),
                       repeat_bases=torch.tensor([0]), frame_interval=2)
    assert "repeat" not in parts

    vqa = build_model(cfg, seed=0)
    vqa.train()
    opt = build_optimizer(vqa, backbone_lr=3e-4, head_lr=1e-3)
    seen = []
    for i in range(30):
        parts = {}
        train_step(vqa, clips, inter, mos, opt, LossConfig(kind="margin", margin=0.1), parts=parts,
                   generator=torch.Generator().manual_seed(i), repeat_weight=1.0, repeat_levels=levels,
                   repeat_bases=torch.tensor([0, 1]))
        seen.append(parts["repeat"])
        assert parts["quality"] == 0.0
    assert np.mean(seen[-5:]) < 0.5 * np.mean(seen[:5]), seen
    vqa.eval()
    with torch.no_grad():  # held-out phases and guardian maps: the clip, then fps k 2, then fps k 4
        g = torch.Generator().manual_seed(100)
        versions = torch.cat([clips, repeat_frames(clips, 2, 1), repeat_frames(clips, 4, 3)])
        s = vqa(versions, inter.repeat(3, 1, 1), generator=g).mean(1).view(3, 2)
    assert (s[0] > s[1]).all() and (s[1] > s[2]).all(), s


def test_held_inter_embeddings_carry_the_target_to_the_inter_branch():
    """Still clips look the same held or not, so the target can only be met through the inter embedding:
    with `repeat_inter` giving each level its own embedding the hinge falls, without it it cannot."""
    cfg = TrainConfig(preset="tiny-cpu", head_dropout=0.0, freeze_backbone=True)
    still = _clips()[:, :, :, :1].expand(-1, -1, -1, 16, -1, -1).contiguous()
    mos = torch.tensor([3.0, 3.0])
    dim = build_model(cfg, seed=0).cfg.inter_dim
    g = torch.Generator().manual_seed(5)
    inter = torch.randn(2, 8, dim, generator=g)
    per_level = {k: torch.randn(2, 8, dim, generator=g) for k, _ in FRAME_DROP_LEVELS}
    asked = []

    def held(k):
        asked.append(k)
        return per_level[k]

    def run(repeat_inter):
        vqa = build_model(cfg, seed=0)
        vqa.train()
        opt = build_optimizer(vqa, backbone_lr=0.0, head_lr=3e-3)
        seen = []
        for i in range(25):
            parts = {}
            train_step(vqa, still, inter, mos, opt, LossConfig(kind="margin", margin=0.1), parts=parts,
                       generator=torch.Generator().manual_seed(i), repeat_weight=1.0, repeat_levels=FRAME_DROP_LEVELS,
                       repeat_bases=torch.tensor([0, 1]), repeat_inter=repeat_inter)
            seen.append(parts["repeat"])
        return seen

    reused = run(None)
    # held = base but for the guardian maps: nothing to learn
    assert np.mean(reused[-5:]) > 0.8 * np.mean(reused[:5]), reused
    with_held = run(held)
    assert asked[:2] == [k for k, _ in FRAME_DROP_LEVELS]  # called once per level, in video frames
    assert np.mean(with_held[-5:]) < 0.5 * np.mean(with_held[:5]), (with_held, reused)


def test_held_pairs_rank_the_held_versions_without_the_clip_itself():
    """repeat_pairs "held": the target compares fps k 2 with k 4 only, so the clip's own score (here moved by
    its own inter embedding) does not enter it; with "all" it does."""
    cfg = TrainConfig(preset="tiny-cpu", head_dropout=0.0, freeze_backbone=True)
    clips, mos = _clips(), torch.tensor([3.0, 3.0])
    dim = build_model(cfg, seed=0).cfg.inter_dim
    g = torch.Generator().manual_seed(7)
    per_level = {k: torch.randn(2, 8, dim, generator=g) for k, _ in FRAME_DROP_LEVELS}
    own = [torch.randn(2, 8, dim, generator=g) * s for s in (1.0, 5.0)]

    def repeat_part(pairs, inter):
        vqa = build_model(cfg, seed=0)
        vqa.eval()  # no dropout: two calls differ only by their inputs
        opt = build_optimizer(vqa, backbone_lr=0.0, head_lr=0.0)
        parts: dict[str, float] = {}
        train_step(vqa, clips, inter, mos, opt, LossConfig(kind="margin", margin=0.1), parts=parts,
                   generator=torch.Generator().manual_seed(3), repeat_weight=1.0, repeat_levels=FRAME_DROP_LEVELS,
                   repeat_bases=torch.tensor([0, 1]), repeat_inter=per_level.__getitem__, repeat_pairs=pairs)
        return parts["repeat"]

    held = [repeat_part("held", e) for e in own]
    both = [repeat_part("all", e) for e in own]
    assert held[0] == held[1] and both[0] != both[1], (held, both)
    with pytest.raises(ValueError, match="repeat_pairs"):
        TrainConfig(repeat_pairs="clean")
    with pytest.raises(ValueError, match="two or more"):
        TrainConfig(repeat_weight=1.0, repeat_levels=((2, 0.64),), repeat_pairs="held")


def test_held_inter_decodes_segments_as_stage_1_does_and_holds_them(tmp_path):
    from model import create_model, make_generator
    from pipeline.stages.batching import open_video
    from pipeline.stages.inference import inter_segments
    from pipeline.training.held_inter import HeldInter
    from tests.helpers.videos import write_video

    _, inter = create_model("tiny-cpu")
    inter.fastpath.difference_stem_()
    uri = write_video(tmp_path / "v.mp4", 64, 128, 96)  # every frame differs
    held = HeldInter(inter, phase=0)
    segments = held.segments([str(uri)])
    with open_video(str(uri), {}) as video:
        assert torch.equal(segments[0], inter_segments(video, inter))
    same = held.embed(segments, 1, make_generator(0))
    assert torch.allclose(same, inter(segments, generator=make_generator(0)), atol=1e-5)
    k2, k4 = held.embed(segments, 2, make_generator(0)), held.embed(segments, 4, make_generator(0))
    assert k2.shape == same.shape == (1, 8, inter.cfg.inter_dim)
    assert (k2 - same).norm() > 0.05 * same.norm() and (k4 - k2).norm() > 0.05 * same.norm()
    embed = held.for_bases([str(uri)], make_generator(0))
    assert torch.equal(embed(2), k2)


def test_held_inter_reads_the_frame_cache_and_decodes_what_it_left_out(tmp_path):
    from model import create_model
    from pipeline.training.frame_cache import FrameCache
    from pipeline.training.held_inter import HeldInter
    from tests.helpers.videos import write_video

    _, inter = create_model("tiny-cpu")
    a = str(write_video(tmp_path / "a.mp4", 40, 128, 96))
    b = str(write_video(tmp_path / "b.mp4", 48, 96, 128))
    decoded = HeldInter(inter).segments([a, b])
    cache = FrameCache(tmp_path / "frames", min_free_bytes=0)  # whatever this machine's disk has free
    cache.warm([a])
    cache.left_out.add(b)  # as if the disk had no room for it: read from its file
    held = HeldInter(inter, frame_cache=cache)
    opened = []
    real_open = cache.open
    cache.open = lambda uri: opened.append(uri) or real_open(uri)
    assert torch.equal(held.segments([a, b]), decoded)
    assert opened == [a, b] and cache.path(a).exists() and not cache.path(b).exists()
