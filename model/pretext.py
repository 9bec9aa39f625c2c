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

`fidelity_statistics` / `FidelityHead` are the full-reference counterpart (docs/training.md, run E): where
the training set holds the clean version of every clip, each token also regresses its cell's SSIM and log
MSE against the clean cell (the local form of the SSIM rule the labels come from), as BIECON (Kim and
Lee, 2017) trains a no-reference model on local full-reference scores. `ConditionHead` names the processing
condition of a video from its pooled features (a classification target where labels are per condition).
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


FIDELITY = (
    "ssim",  # mean SSIM of luma against the clean cell (11-tap Gaussian window, sigma 1.5; Wang et al. 2004)
    "log_mse",  # log(1 + mean squared luma error) against the clean cell, 0-255 scale
)
_SSIM_C1, _SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _gaussian_window(sigma: float = 1.5, radius: int = 5) -> Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def fidelity_statistics(clips: Tensor, references: Tensor, *, frames: int, cell: int) -> Tensor:
    """Per-cell fidelity of (N, 3, T, H, W) 0-255 clips to their references of the same shape (the clean
    version, same frames and fragment positions) -> (N, T/frames, H/cell, W/cell, 2) float32 in the order
    of `FIDELITY`: SSIM of luma in [-1, 1] (1: identical) and log(1 + MSE). The SSIM map is computed on
    each whole fragment frame (reflect padding) and averaged over a token's cell and frames.
    Raises ValueError when the shapes differ or do not tile into cells."""
    if clips.shape != references.shape:
        raise ValueError(f"clips {tuple(clips.shape)} and references {tuple(references.shape)} differ in shape")
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise ValueError(f"clips must be (N, 3, T, H, W), got {tuple(clips.shape)}")
    n, _, t, h, w = clips.shape
    if t % frames or h % cell or w % cell:
        raise ValueError(f"clip {t}x{h}x{w} does not tile into cells of {frames}x{cell}x{cell}")

    def luma(v: Tensor) -> Tensor:
        v = v.float()
        return (0.299 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2]).reshape(n * t, 1, h, w)

    x, y = luma(clips), luma(references)
    k = _gaussian_window().to(clips.device)
    r = k.numel() // 2

    def blur(a: Tensor) -> Tensor:  # separable Gaussian, same size
        a = F.conv2d(F.pad(a, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(a, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim = ((2 * mx * my + _SSIM_C1) * (2 * sxy + _SSIM_C2)) / ((mx * mx + my * my + _SSIM_C1) * (sxx + syy + _SSIM_C2))

    def per_cell(a: Tensor) -> Tensor:
        return F.avg_pool2d(a, cell).view(n, t // frames, frames, h // cell, w // cell).mean(2)

    return torch.stack([per_cell(ssim), per_cell((x - y) ** 2).log1p()], -1)


class _TokenReadout(nn.Module):
    """Linear read-out of per-cell statistics from final intra tokens, and its loss.

    The targets are standardised with a mean and standard deviation estimated once and kept as buffers,
    so a resumed run compares against the same scale: by `fit` on a sample of many clips (what training
    does: one batch of a few contents can be far narrower than the training set; docs/training.md, run N),
    else on the first batch seen. forward: intra features (N, C, T', h, w) -> (N, T', h, w, S)
    standardised predictions.
    """

    def __init__(self, dim: int, swin: SwinConfig, statistics: int) -> None:
        super().__init__()
        self.frames, self.cell = token_cell(swin)
        self.proj = nn.Linear(dim, statistics)
        self.register_buffer("mean", torch.zeros(statistics))
        self.register_buffer("std", torch.ones(statistics))
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, stats: Tensor) -> None:
        """Sets the standardisation from raw statistics (..., S) of many cells (`statistics` of a sample
        of clips), replacing any earlier fit. Raises ValueError for a wrong last dimension or fewer than 2 cells."""
        flat = stats.reshape(-1, stats.shape[-1]).float()
        if flat.shape[1] != self.mean.numel() or flat.shape[0] < 2:
            raise ValueError(f"need (..., {self.mean.numel()}) statistics of at least 2 cells, "
                             f"got {tuple(stats.shape)}")
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def _standardise(self, stats: Tensor) -> Tensor:
        if not bool(self.fitted):
            self.fit(stats)
        return (stats - self.mean) / self.std

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features.permute(0, 2, 3, 4, 1))

    def _mse(self, features: Tensor, target: Tensor) -> Tensor:
        pred = self(features)
        if pred.shape != target.shape:
            raise ValueError(f"tokens {tuple(pred.shape[:-1])} do not match the cells {tuple(target.shape[:-1])}")
        return F.mse_loss(pred.float(), target)


class TextureHead(_TokenReadout):
    """Read-out of `STATISTICS` (texture_statistics) from final intra tokens."""

    def __init__(self, dim: int, swin: SwinConfig) -> None:
        super().__init__(dim, swin, len(STATISTICS))

    def statistics(self, clips: Tensor) -> Tensor:
        """Raw `STATISTICS` of (N, 3, T, H, W) 0-255 clips -> (N, T', h, w, S), the input of `fit`."""
        with torch.no_grad():
            return texture_statistics(clips, frames=self.frames, cell=self.cell)

    def targets(self, clips: Tensor) -> Tensor:
        """Standardised statistics of (N, 3, T, H, W) 0-255 clips; fits the standardisation on first use."""
        return self._standardise(self.statistics(clips))

    def loss(self, features: Tensor, clips: Tensor) -> Tensor:
        """Mean squared error of the read-out against the standardised statistics (1.0 = predicting the
        mean). `features` (N, C, T', h, w) must come from `clips` (N, 3, T, H, W) before the guardian map."""
        return self._mse(features, self.targets(clips))


class FidelityHead(_TokenReadout):
    """Read-out of `FIDELITY` (fidelity_statistics: each cell's SSIM and log MSE against the same cell of
    the clean version of the clip) from final intra tokens. Scoring never sees a reference: the head
    only teaches the tokens to estimate, without it, how far their cell is from the clean one."""

    def __init__(self, dim: int, swin: SwinConfig) -> None:
        super().__init__(dim, swin, len(FIDELITY))

    def statistics(self, clips: Tensor, references: Tensor) -> Tensor:
        """Raw `FIDELITY` of (N, 3, T, H, W) 0-255 clips to their references -> (N, T', h, w, 2), the input
        of `fit`."""
        with torch.no_grad():
            return fidelity_statistics(clips, references, frames=self.frames, cell=self.cell)

    def targets(self, clips: Tensor, references: Tensor) -> Tensor:
        """Standardised fidelity of clips to references; fits the standardisation on first use."""
        return self._standardise(self.statistics(clips, references))

    def loss(self, features: Tensor, clips: Tensor, references: Tensor) -> Tensor:
        """MSE of the read-out against the standardised fidelity of `clips` to `references` (both
        (N, 3, T, H, W) 0-255, cut at the same frames and fragment positions, before the guardian map)."""
        return self._mse(features, self.targets(clips, references))


class ConditionHead(nn.Module):
    """Which processing condition a video went through (e.g. "h264 CRF 44"), read linearly from its pooled
    intra features: a training-only classification target for label sets where every video's label is its
    condition's (docs/training_data.md, the condition rule). A pooled quality score mixes the process with
    how much this content shows it; naming the process is what such labels reward (docs/training.md, run E).

    forward: intra features (B*K, C, T', h, w) of B videos x K clips -> (B, conditions) logits, the features
    averaged over space, time and clips.
    """

    def __init__(self, dim: int, conditions: int) -> None:
        super().__init__()
        if conditions < 2:
            raise ValueError(f"a condition target needs at least 2 conditions, got {conditions}")
        self.proj = nn.Linear(dim, conditions)

    def forward(self, features: Tensor, videos: int) -> Tensor:
        pooled = features.float().mean(dim=(2, 3, 4))
        if pooled.shape[0] % videos:
            raise ValueError(f"{pooled.shape[0]} clips do not split into {videos} videos")
        return self.proj(pooled.view(videos, -1, pooled.shape[1]).mean(1))

    def loss(self, features: Tensor, conditions: Tensor) -> Tensor:
        """Cross-entropy of (B,) condition indices (ln(conditions) = chance)."""
        return F.cross_entropy(self(features, conditions.shape[0]), conditions.to(features.device))
