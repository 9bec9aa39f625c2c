"""Texture statistics of each final Swin token's cell: a dense, label-free target for the intra branch.

Why (docs/training.md, "Why the intra branch did not learn"): a randomly initialised Swin is nearly
linear (residual branches start small, every LayerNorm removes a token's norm), so after the spatial
mean of docs/design.md §2.3 its features are almost blind to zero-mean changes of texture: on `tiny-cpu`, a
quality change moves the pooled features by 0.3-2% of what a change of content moves them (noise
sigma 20: 0.9%), and a quality loss on pooled scores barely reaches the layers that would have to learn
it. Asking every final token to predict local statistics of its own cell (high-frequency energy at
three scales, variance, luma, temporal change, saturation, 8-px blockiness) gives each token its own
target, so nothing cancels in the mean, and it teaches exactly the local energy measurements that
quality depends on. After 200 such steps alone (8 clips each), the same measurement reads 3-12% for
compression, scaling, blur and frame drops.

`texture_statistics` is the target, `TextureHead` the linear read-out from tokens that the training loss
compares with it; neither is part of a SecureVQA checkpoint (training uses them, scoring never does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SwinConfig

STATISTICS = (
    "laplacian_energy_1",  # log mean |Laplacian| of luma at full resolution: fine detail, noise
    "laplacian_energy_2",  # ... at half resolution
    "laplacian_energy_4",  # ... at quarter resolution: edges that blur and downscaling keep or remove
    "log_variance",  # log luma variance in the cell: contrast
    "mean_luma",  # 0-1
    "temporal_change",  # log mean |frame difference| inside the token's frame pair: repeats, flicker
    "saturation",  # mean max-min over RGB, 0-1
    "blockiness_x",  # strongest 8-px phase of horizontal gradient / mean gradient (codec block edges)
    "blockiness_y",  # the same vertically
)

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
_EPS = 1e-3


def token_cell(swin: SwinConfig) -> tuple[int, int]:
    """(frames, pixels) one final-stage token covers: the patch embedding's size times 2 per patch merge."""
    merges = len(swin.depths) - 1
    pt, ph, pw = swin.patch_size
    if ph != pw:
        raise ValueError(f"texture statistics need square patches, got {swin.patch_size}")
    return pt, ph * 2**merges


def texture_statistics(clips: Tensor, *, frames: int, cell: int) -> Tensor:
    """Per-cell statistics of (N, 3, T, H, W) clips on the 0-255 scale -> (N, T/frames, H/cell, W/cell, 9),
    float32, in the order of `STATISTICS`. Cells of `frames` x `cell` x `cell` pixels tile the clip as
    the final Swin tokens do (`token_cell`). Raises ValueError when T, H, W are not multiples, or when
    `cell` is not a multiple of 8 (the blockiness phase)."""
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (N, 3, T, H, W), got {tuple(clips.shape)}")
    n, _, t, h, w = clips.shape
    if t % frames or h % cell or w % cell or cell % 8:
        raise ValueError(f"clip {t}x{h}x{w} does not tile into cells of {frames}x{cell}x{cell} (cell % 8 == 0)")
    x = clips.float() / 255
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # (N, T, H, W)
    planes = luma.reshape(n * t, 1, h, w)
    lap = _LAPLACIAN.to(clips.device)

    def per_cell(a: Tensor, scale: int = 1) -> Tensor:  # (N*T, 1, H/scale, W/scale) -> (N, T', Hc, Wc)
        a = F.avg_pool2d(a, cell // scale)
        return a.view(n, t // frames, frames, h // cell, w // cell).mean(2)

    out = []
    for scale in (1, 2, 4):
        p = planes if scale == 1 else F.avg_pool2d(planes, scale)
        energy = F.conv2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), lap).abs()
        out.append(per_cell(energy, scale).add(_EPS).log())
    mean = per_cell(planes)
    out.append((per_cell(planes * planes) - mean * mean).clamp_min(0).add(1e-5).log())
    out.append(mean)
    pairs = luma.view(n, t // frames, frames, h, w)
    change = (pairs[:, :, 1:] - pairs[:, :, :-1]).abs().mean(2) if frames > 1 else torch.zeros_like(pairs[:, :, 0])
    out.append(F.avg_pool2d(change, cell).add(_EPS).log())
    out.append(per_cell((x.max(1).values - x.min(1).values).reshape(n * t, 1, h, w)))
    dx = F.pad((planes[..., 1:] - planes[..., :-1]).abs(), (0, 1))
    dy = F.pad((planes[..., 1:, :] - planes[..., :-1, :]).abs(), (0, 0, 0, 1))
    phase_x = dx.view(n * t, h // cell, cell, w // cell, cell // 8, 8).mean(dim=(2, 4))  # (NT, Hc, Wc, 8)
    phase_y = dy.view(n * t, h // cell, cell // 8, 8, w // cell, cell).mean(dim=(2, 5))  # (NT, Hc, 8, Wc)
    for phases, axis in ((phase_x, -1), (phase_y, 2)):
        ratio = (phases.max(axis).values + _EPS) / (phases.mean(axis) + _EPS)
        out.append(ratio.log().view(n, t // frames, frames, h // cell, w // cell).mean(2))
    return torch.stack(out, -1)


class TextureHead(nn.Module):
    """Linear read-out of `STATISTICS` from final intra tokens, and its loss.

    The targets are standardised with statistics estimated once (`fit_`, on a first batch) and kept as
    buffers, so a resumed run compares against the same scale. forward: intra features (N, C, T', h, w)
    -> (N, T', h, w, 9) standardised predictions.
    """

    def __init__(self, dim: int, swin: SwinConfig) -> None:
        super().__init__()
        self.frames, self.cell = token_cell(swin)
        self.proj = nn.Linear(dim, len(STATISTICS))
        self.register_buffer("mean", torch.zeros(len(STATISTICS)))
        self.register_buffer("std", torch.ones(len(STATISTICS)))
        self.register_buffer("fitted", torch.tensor(False))

    def targets(self, clips: Tensor) -> Tensor:
        """Standardised statistics of (N, 3, T, H, W) 0-255 clips; fits the standardisation on first use."""
        with torch.no_grad():
            stats = texture_statistics(clips, frames=self.frames, cell=self.cell)
            if not bool(self.fitted):
                flat = stats.reshape(-1, stats.shape[-1])
                self.mean.copy_(flat.mean(0))
                self.std.copy_(flat.std(0).clamp_min(1e-3))
                self.fitted.fill_(True)
            return (stats - self.mean) / self.std

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features.permute(0, 2, 3, 4, 1))

    def loss(self, features: Tensor, clips: Tensor) -> Tensor:
        """Mean squared error of the read-out against the standardised statistics (1.0 = predicting the
        mean). `features` (N, C, T', h, w) must come from `clips` (N, 3, T, H, W) before the guardian map."""
        target = self.targets(clips)
        pred = self(features)
        if pred.shape != target.shape:
            raise ValueError(f"tokens {tuple(pred.shape[:-1])} do not match the cells {tuple(target.shape[:-1])}")
        return F.mse_loss(pred.float(), target)
