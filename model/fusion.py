"""Fusion of intra (Swin) and inter (SlowFast fast pathway) features, and the regression head.

docs/design.md §2.3. Everything is a 1x1x1 Conv3d over the (B, C, T, 1, 1) token column, so the weights
have the reference checkpoint's shapes and load without reshaping.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import HeadConfig


def bottleneck(in_dim: int, out_dim: int) -> nn.Sequential:
    """1x1x1 conv in -> 2in, ReLU6, depthwise 1x1x1 conv, ReLU6, 1x1x1 conv 2in -> out; no biases."""
    hidden = 2 * in_dim
    return nn.Sequential(
        nn.Conv3d(in_dim, hidden, 1, bias=False),
        nn.ReLU6(),
        nn.Conv3d(hidden, hidden, 1, groups=hidden, bias=False),
        nn.ReLU6(),
        nn.Conv3d(hidden, out_dim, 1, bias=False),
    )


class Fusion(nn.Module):
    """Mix [intra, inter] with a 1x1x1 conv, then cross-feed each part through a bottleneck."""

    def __init__(self, intra_dim: int, inter_dim: int) -> None:
        super().__init__()
        self.intra_dim = intra_dim
        self.mix = nn.Conv3d(intra_dim + inter_dim, intra_dim + inter_dim, 1)
        self.to_intra = bottleneck(inter_dim, intra_dim)  # B_intra(z2)
        self.to_inter = bottleneck(intra_dim, inter_dim)  # B_inter(z1)

    @torch.no_grad()
    def forget_inter_(self) -> "Fusion":
        """Zero the mixing weights that read the inter embedding, so the output no longer depends on it
        (gradients still reach those weights). For a fusion whose inter branch was replaced: the new
        embedding starts as no signal rather than as noise on weights fitted to the old one."""
        self.mix.weight[:, self.intra_dim :] = 0
        return self

    def forward(self, intra: Tensor, inter: Tensor) -> Tensor:
        z = self.mix(torch.cat([intra, inter], 1))
        z1, z2 = z[:, : self.intra_dim], z[:, self.intra_dim :]
        return torch.cat([z1 + self.to_intra(z2), z2 + self.to_inter(z1)], 1)


class FusionHead(nn.Module):
    """Intra features (B, Ci, T', h, w) + inter embeddings (B, T', Ce) -> per-token scores (B, T')."""

    def __init__(self, intra_dim: int, inter_dim: int, cfg: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.fusion = Fusion(intra_dim, inter_dim)
        width = intra_dim + inter_dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc_hid = nn.Conv3d(width, cfg.hidden_dim, 1)
        self.act = nn.GELU()
        self.fc_last = nn.Conv3d(cfg.hidden_dim, 1, 1)

    def forward(self, intra: Tensor, inter: Tensor) -> Tensor:
        if inter.ndim != 3 or inter.shape[0] != intra.shape[0] or inter.shape[1] != intra.shape[2]:
            raise ValueError(
                f"inter embeddings {tuple(inter.shape)} must be (B, T', C) matching intra features "
                f"{tuple(intra.shape)} (B, C, T', h, w): Swin's temporal token t pairs with segment t"
            )
        intra = intra.mean(dim=(3, 4), keepdim=True)
        inter = inter.transpose(1, 2)[..., None, None].to(intra.dtype)
        z = self.fusion(intra, inter)
        z = self.fc_last(self.dropout(self.act(self.fc_hid(self.dropout(z)))))
        return z[:, 0, :, 0, 0]
