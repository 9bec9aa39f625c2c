"""Texture statistics (model/pretext.py): each statistic moves the way its degradation says, cells tile
like the final Swin tokens, and the training target reaches the backbone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.config import get_config
from model.losses import LossConfig
from model.optim import build_optimizer
from model.pretext import STATISTICS, TextureHead, texture_statistics, token_cell
from pipeline.training.config import TrainConfig
from pipeline.training.loop import build_model, train_step

K = {name: i for i, name in enumerate(STATISTICS)}


def _textured(n: int = 2, t: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(n, 3, t, size, size) uint8: smooth random texture, slowly moving, not flat anywhere."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, 1, size // 8, size // 8, generator=g), size=(1, size, size),
                         mode="trilinear", align_corners=False)
    frames = [torch.roll(base, shifts=k, dims=-1) for k in range(t)]
    return (torch.cat(frames, 2) * 200 + 20).round().clamp(0, 255).to(torch.uint8)


def _stats(clips: torch.Tensor) -> torch.Tensor:
    return texture_statistics(clips, frames=2, cell=32).mean(dim=(0, 1, 2, 3))


def test_cells_tile_the_clip_like_the_final_tokens():
    swin = get_config("tiny-cpu").swin
    assert token_cell(swin) == (2, 32)
    s = texture_statistics(_textured(2, 4, 64), frames=2, cell=32)
    assert s.shape == (2, 2, 2, 2, len(STATISTICS)) and torch.isfinite(s).all()
    with pytest.raises(ValueError, match="tile"):
        texture_statistics(_textured(1, 4, 64)[..., :60], frames=2, cell=32)


def test_each_statistic_follows_its_degradation():
    clean = _textured()
    g = torch.Generator().manual_seed(1)
    noisy = (clean.float() + 20 * torch.randn(clean.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    blurred = F.avg_pool3d(clean.float(), (1, 5, 5), stride=1, padding=(0, 2, 2), count_include_pad=False)
    blurred = blurred.round().to(torch.uint8)
    repeated = clean[:, :, [0, 0, 2, 2]]
    washed = (0.4 * 192 + 0.6 * clean.float()).round().to(torch.uint8)
    blocks = F.interpolate(F.avg_pool3d(clean.float(), (1, 8, 8)), scale_factor=(1, 8, 8), mode="nearest")
    blocks = blocks.round().to(torch.uint8)
    c = _stats(clean)
    assert _stats(noisy)[K["laplacian_energy_1"]] > c[K["laplacian_energy_1"]] + 0.5
    assert _stats(blurred)[K["laplacian_energy_1"]] < c[K["laplacian_energy_1"]] - 0.1
    assert _stats(repeated)[K["temporal_change"]] < c[K["temporal_change"]] - 0.5
    assert _stats(washed)[K["log_variance"]] < c[K["log_variance"]] - 0.5
    assert _stats(washed)[K["saturation"]] < c[K["saturation"]]
    assert _stats(blocks)[K["blockiness_x"]] > c[K["blockiness_x"]] + 0.3
    assert _stats(blocks)[K["blockiness_y"]] > c[K["blockiness_y"]] + 0.3
    # flat cells (black borders) stay finite
    assert torch.isfinite(texture_statistics(torch.zeros(1, 3, 2, 32, 32, dtype=torch.uint8), frames=2, cell=32)).all()


def test_standardisation_is_fitted_once_and_kept_in_the_state():
    cfg = get_config("tiny-cpu")
    head = TextureHead(cfg.intra_dim, cfg.swin)
    first = head.targets(_textured(2, 4, 64, seed=0))
    flat = first.reshape(-1, len(STATISTICS))
    assert torch.allclose(flat.mean(0), torch.zeros(len(STATISTICS)), atol=1e-4)
    mean = head.mean.clone()
    head.targets(_textured(2, 4, 64, seed=5))
    assert torch.equal(head.mean, mean)
    other = TextureHead(cfg.intra_dim, cfg.swin)
    other.load_state_dict(head.state_dict())
    assert bool(other.fitted) and torch.equal(other.std, head.std)


@pytest.mark.slow  # 13 training steps: 7 s of CPU
def test_the_texture_target_trains_the_backbone_and_lowers_its_own_loss():
    vqa = build_model(TrainConfig(preset="tiny-cpu", head_dropout=0.0), seed=0)
    vqa.train()
    torch.manual_seed(0)
    head = TextureHead(vqa.cfg.intra_dim, vqa.cfg.swin)
    clips = _textured(2, 16, 160)[:, None]
    inter = torch.zeros(2, 8, vqa.cfg.inter_dim)
    mos = torch.tensor([1.0, 4.0])
    opt = build_optimizer(vqa, backbone_lr=1e-3, head_lr=1e-3)
    opt.add_param_group({"params": list(head.parameters()), "lr": 1e-3})
    before = {k: v.detach().clone() for k, v in vqa.intra.state_dict().items()}
    texture_losses = []
    for step in range(12):
        parts: dict[str, float] = {}
        total = train_step(vqa, clips, inter, mos, opt, LossConfig(), generator=torch.Generator().manual_seed(step),
                           texture=head, texture_weight=1.0, parts=parts, grad_clip=1.0)
        assert np.isclose(total, parts["quality"] + parts["texture"], rtol=1e-5)
        texture_losses.append(parts["texture"])
    assert np.mean(texture_losses[-3:]) < 0.8 * np.mean(texture_losses[:3])
    assert any(not torch.equal(before[k], v) for k, v in vqa.intra.state_dict().items())
    # without the target the step is the plain one: same loss as the quality part alone
    parts = {}
    plain = train_step(vqa, clips, inter, mos, opt, LossConfig(), generator=torch.Generator().manual_seed(0),
                       parts=parts)
    assert parts.keys() == {"quality"} and np.isclose(plain, parts["quality"])


def test_fidelity_is_perfect_for_the_clean_clip_and_falls_with_the_damage():
    from model.pretext import FIDELITY, FidelityHead, fidelity_statistics

    clean = _textured()
    f = fidelity_statistics(clean, clean, frames=2, cell=32)
    assert f.shape == (2, 2, 2, 2, len(FIDELITY))
    assert torch.allclose(f[..., 0], torch.ones(())) and bool((f[..., 1] == 0).all())
    g = torch.Generator().manual_seed(1)
    by_sigma = []
    for sigma in (4, 12, 30):
        noisy = (clean.float() + sigma * torch.randn(clean.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
        by_sigma.append(fidelity_statistics(noisy, clean, frames=2, cell=32).mean(dim=(0, 1, 2, 3)))
    ssim, log_mse = [s[0].item() for s in by_sigma], [s[1].item() for s in by_sigma]
    assert ssim[0] > ssim[1] > ssim[2] and ssim[2] < 0.9
    assert log_mse[0] < log_mse[1] < log_mse[2]
    blurred = F.avg_pool3d(clean.float(), (1, 5, 5), stride=1, padding=(0, 2, 2), count_include_pad=False)
    assert fidelity_statistics(blurred.round().to(torch.uint8), clean, frames=2, cell=32)[..., 0].mean() < 1
    with pytest.raises(ValueError, match="differ in shape"):
        fidelity_statistics(clean, clean[..., :32], frames=2, cell=32)
    cfg = get_config("tiny-cpu")
    head = FidelityHead(cfg.intra_dim, cfg.swin)
    t = head.targets(torch.cat([clean, noisy]), torch.cat([clean, clean]))
    assert t.shape == (4, 2, 2, 2, len(FIDELITY))
    assert torch.allclose(t.reshape(-1, 2).mean(0), torch.zeros(2), atol=1e-4)


def test_the_condition_head_pools_clips_per_video_and_learns_the_conditions():
    from model.pretext import ConditionHead

    g = torch.Generator().manual_seed(0)
    head = ConditionHead(8, 3)
    centres = torch.randn(3, 8, generator=g) * 3
    labels = torch.tensor([0, 1, 2, 1])
    # 4 videos x 2 clips of (8, 2, 2, 2) features around their condition's centre
    feats = centres[labels].repeat_interleave(2, 0)[:, :, None, None, None] + torch.randn(8, 8, 2, 2, 2, generator=g)
    assert head(feats, 4).shape == (4, 3)
    with pytest.raises(ValueError, match="do not split"):
        head(feats, 3)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    first = head.loss(feats, labels).item()
    assert first == pytest.approx(float(np.log(3)), abs=1.5)
    for _ in range(50):
        opt.zero_grad()
        head.loss(feats, labels).backward()
        opt.step()
    assert head.loss(feats, labels).item() < 0.1 and torch.equal(head(feats, 4).argmax(1), labels)
