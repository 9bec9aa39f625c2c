"""Labels: the MOS of each processing condition, and the SSIM-based per-clip rule (docs/training_data.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from .codec import CHUNK
from .distortions import filter_valid, gaussian_kernel

MOS_CENTER = 0.80
MOS_WIDTH = 0.08
SSIM_VIEW_SIDE = 256  # Wang et al.: downsample by round(min side / 256) before SSIM

# The label rule (docs/training_data.md): the MOS of a processing condition (type, setting) is the mean
# of the SSIM-based rule over the 17 contents of the default training set (seed 0, built once, frozen
# here). Per clip, SSIM ranks the conditions of one content well but is not comparable across
# contents (low-contrast content at CRF 51: 4.40 for moon, 1.00 for grass), so each clip takes its
# condition's value; `mos_ssim` keeps the per-clip SSIM label. LABEL_RULES: "condition" or "ssim".
CONDITION_MOS: dict[tuple[str, float], float] = {
    ("clean", 0.0): 5.00,
    ("h264", 30.0): 4.56, ("h264", 38.0): 3.42, ("h264", 44.0): 2.55, ("h264", 51.0): 2.08,
    ("scale", 2.0): 4.62, ("scale", 4.0): 3.32,
    ("blur", 1.5): 4.03, ("blur", 3.0): 2.74,
    ("noise", 8.0): 3.78, ("noise", 20.0): 1.49,
    ("fps", 2.0): 4.36, ("fps", 4.0): 3.36,
    ("mpeg2", 12.0): 4.43, ("mpeg2", 31.0): 3.60,
    ("mjpeg", 24.0): 4.06,
    ("contrast", 0.4): 3.50,
    ("stream", 34.0): 2.98,
}
LABEL_RULES = ("condition", "ssim")


# ----------------------------------------------------------------------------- label


def _luma(frames: torch.Tensor) -> torch.Tensor:
    x = frames.float()
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[:, None]  # (T, 1, H, W)


def view_factor(h: int, w: int) -> int:
    """Wang et al.'s downsampling for SSIM: f = max(1, round(min(H, W) / 256)), rounding half up."""
    return max(1, math.floor(min(h, w) / SSIM_VIEW_SIDE + 0.5))


class SsimReference:
    """SSIM against one reference clip; the reference's local statistics are computed once and
    shared by every clip compared with it (they are 2 of the 5 filtered maps)."""

    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def __init__(self, ref: torch.Tensor):
        self.shape = tuple(ref.shape)
        self.f = view_factor(*ref.shape[1:3])
        self.g = gaussian_kernel(1.5)  # radius ceil(3 * 1.5) = 5: the 11-tap window of the SSIM paper
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (luma, mean, variance)
        for s in range(0, ref.shape[0], CHUNK):
            y = self._luma(ref[s : s + CHUNK])
            my = filter_valid(y, self.g)
            self.chunks.append((y, my, filter_valid(y * y, self.g) - my * my))

    def _luma(self, frames: torch.Tensor) -> torch.Tensor:
        y = _luma(frames)
        return F.avg_pool2d(y, self.f) if self.f > 1 else y

    def score(self, clip: torch.Tensor) -> float:
        """Mean over frames of the SSIM map's mean."""
        if tuple(clip.shape) != self.shape:
            raise ValueError(f"clips differ in shape: {tuple(clip.shape)} vs {self.shape}")
        g, c1, c2 = self.g, self.C1, self.C2
        total = 0.0
        for i, (y, my, syy) in enumerate(self.chunks):
            x = self._luma(clip[i * CHUNK : (i + 1) * CHUNK])
            mx = filter_valid(x, g)
            sxx = filter_valid(x * x, g) - mx * mx
            sxy = filter_valid(x * y, g) - mx * my
            m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
            total += float(m.double().mean(dim=(1, 2, 3)).sum())
        return total / clip.shape[0]


def ssim_video(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of the SSIM of the BT.601 luma of two (T, H, W, 3) uint8 RGB clips.

    Frames at least 384 px on their short side are first averaged over f x f blocks
    (``view_factor``), as in the authors' reference code.
    """
    return SsimReference(b).score(a)


def mos_from_ssim(ssim: float) -> float:
    """The fixed monotone map SSIM [0, 1] -> MOS [1, 5] (module docstring)."""

    def g(s: float) -> float:
        return 1.0 / (1.0 + math.exp(-(s - MOS_CENTER) / MOS_WIDTH))

    s = min(max(float(ssim), 0.0), 1.0)
    return 1.0 + 4.0 * (g(s) - g(0.0)) / (g(1.0) - g(0.0))


def check_label(label: str, distortions: Mapping[str, Sequence[float]]) -> None:
    if label not in LABEL_RULES:
        raise ValueError(f"label must be one of {LABEL_RULES}, got {label!r}")
    if label == "condition":
        missing = [(k, float(v)) for k, vs in distortions.items() for v in vs if (k, float(v)) not in CONDITION_MOS]
        if missing:
            raise ValueError(f"no condition MOS for {missing}: use the table's settings (CONDITION_MOS) "
                             "or label='ssim' (the per-clip SSIM rule)")


def apply_label_rule(rows: list[dict], label: str) -> list[dict]:
    """`mos` by the chosen rule: the condition's MOS (CONDITION_MOS) or the clip's own SSIM rule."""
    if label == "ssim":
        return rows
    return [{**r, "mos": CONDITION_MOS[(r["distortion"], 0.0 if r["level"] == 0 else float(r["param"]))]}
            for r in rows]


def label_table(df: pd.DataFrame) -> pd.DataFrame:
    """mos per distortion type (clips, mean, min, max), mildest types first."""
    t = df.groupby("distortion")["mos"].agg(clips="size", mean="mean", min="min", max="max")
    return t.sort_values("mean", ascending=False).round(2)
