"""Deepening a trained model (model/deepen.py): the deeper model scores as the original did, its new blocks
learn, and a run that deepens (`securevqa train --deepen`) builds, records and reloads that architecture."""

from __future__ import annotations

import json

import pytest
import torch

from jobs.cli import build_parser, train_config
from model import create_model, make_generator
from model.api import save_checkpoint
from model.deepen import deepen, deepened_config
from pipeline.training.config import TrainConfig
from pipeline.training.loop import build_model


def _trained_like(seed: int = 0):
    """tiny-cpu with every parameter perturbed, so that no weight is at its initial value (the GRPB fragment
    tables start at zero, and a zero table would hide a copy that skipped them)."""
    vqa, inter = create_model("tiny-cpu", init_seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in vqa.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return vqa, inter


def _inputs(vqa, batch: int = 2):
    s = vqa.cfg.sampling
    g = torch.Generator().manual_seed(7)
    clips = torch.randint(0, 256, (batch, 1, 3, s.clip_len, 160, 160), generator=g).float()
    inter = torch.randn(batch, s.inter_segments, vqa.cfg.inter_dim, generator=g)
    return clips, inter


def test_a_deepened_model_scores_every_clip_as_the_original_does():
    vqa, _ = _trained_like()
    before = {k: v.clone() for k, v in vqa.state_dict().items()}
    grown = deepen(vqa, (1, 2, 4, 2))
    assert grown.cfg.swin.depths == (1, 2, 4, 2) and grown.cfg.name == "tiny-cpu-deep1242"
    assert [len(stage.blocks) for stage in grown.intra.layers] == [1, 2, 4, 2]
    # appended blocks take the shift of their position: block i attends in shifted windows when i is odd
    assert [b.shifted for b in grown.intra.layers[2].blocks] == [False, True, False, True]
    clips, inter = _inputs(vqa)
    with torch.no_grad():
        a = vqa(clips, inter, generator=make_generator(3), return_features=True)
        b = grown(clips, inter, generator=make_generator(3), return_features=True)
    torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-6)  # per-clip scores
    torch.testing.assert_close(b[1], a[1], rtol=0, atol=1e-5)  # final intra features
    assert all(torch.equal(v, before[k]) for k, v in vqa.state_dict().items()), "deepen changed the original"
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in vqa.parameters())


def test_the_new_blocks_learn():
    vqa, _ = _trained_like()
    grown = deepen(vqa, (1, 1, 3, 1)).train()
    clips, inter = _inputs(vqa)
    pred = grown(clips, inter, generator=make_generator(0)).mean(1)
    ((pred - torch.tensor([1.0, 3.0])) ** 2).mean().backward()
    new = grown.intra.layers[2].blocks[2]
    # the zeroed outputs receive a gradient at once; what feeds them learns from the next step on
    assert new.attn.proj.weight.grad.abs().sum() > 0 and new.mlp.fc2.weight.grad.abs().sum() > 0
    old = grown.intra.layers[2].blocks[0]
    assert old.attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depths, message", [((1, 1, 2), "3 stages"), ((1, 1, 1, 1), "would remove blocks")])
def test_deepening_only_adds_blocks(depths, message):
    vqa, _ = _trained_like()
    with pytest.raises(ValueError, match=message):
        deepen(vqa, depths)
    with pytest.raises(ValueError, match=message):
        deepened_config(vqa.cfg, depths)


def test_a_deepened_checkpoint_loads_with_its_own_architecture(tmp_path):
    vqa, inter = _trained_like()
    grown = deepen(vqa, (1, 1, 3, 2))
    path = str(tmp_path / "deep.pt")
    save_checkpoint(path, grown, inter)
    loaded, _ = create_model("tiny-cpu", checkpoint=path)  # the checkpoint's config wins over the preset
    assert loaded.cfg == grown.cfg
    clips, inter_emb = _inputs(vqa, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clips, inter_emb, generator=make_generator(5)),
                                   grown(clips, inter_emb, generator=make_generator(5)), rtol=0, atol=0)


def test_a_run_that_deepens_builds_records_and_resumes_the_deeper_model(tmp_path):
    vqa, inter = _trained_like()
    init = str(tmp_path / "init.pt")
    save_checkpoint(init, vqa, inter)
    args = build_parser().parse_args(["train", "--input", "m.csv", "--output", "o", "--recipe", "demo",
                                      "--init", init, "--deepen", "1,1,4,2"])
    cfg, _ = train_config(args, {})
    assert cfg.deepen == (1, 1, 4, 2)
    # history.json and the checkpoints' metadata carry the config as JSON: a resumed run rebuilds the same model
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    model = build_model(again, seed=0)
    assert model.cfg.swin.depths == (1, 1, 4, 2)
    assert model.head.dropout.p == pytest.approx(cfg.head_dropout)
    clips, inter_emb = _inputs(vqa, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(clips, inter_emb, generator=make_generator(1)),
                                   vqa(clips, inter_emb, generator=make_generator(1)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("text", ["1,1,x,2", "1,0,2,1", ""])
def test_deepen_option_rejects_what_is_not_blocks_per_stage(text, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--input", "m.csv", "--output", "o", "--deepen", text])
    assert "blocks per stage" in capsys.readouterr().err
