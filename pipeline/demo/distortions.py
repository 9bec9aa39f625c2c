"""The degradations users meet, applied to a clean clip: compression, resolution loss, blur, noise, frame drops, contrast loss, an adaptive stream."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from .codec import CHUNK, CLEAN_CRF, even, fixed_q_options, map_chunks, resize, roundtrip, x264_options

DEFAULT_DISTORTIONS: dict[str, tuple[float, ...]] = {
    "h264": (30, 38, 44, 51),  # CRF
    "scale": (2, 4),  # downscale factor
    "blur": (1.5, 3.0),  # Gaussian sigma, pixels
    "noise": (8.0, 20.0),  # noise std, 8-bit levels
    "fps": (2, 4),  # keep every k-th frame
}
TRAINING_DISTORTIONS: dict[str, tuple[float, ...]] = {
    **DEFAULT_DISTORTIONS,
    "mpeg2": (12, 31),  # fixed quantiser (31: the coarsest MPEG-2 allows)
    "mjpeg": (24,),  # fixed quantiser
    "contrast": (0.4,),  # veil fraction
    "stream": (34,),  # CRF of the half-resolution encode
}
DISTORTION_TYPES = tuple(TRAINING_DISTORTIONS)
VEIL_LEVEL = 192.0  # the grey a washed-out picture tends to (8-bit RGB)
STREAM_DOWNSCALE = 2


def _scale_loss(frames: torch.Tensor, k: float) -> torch.Tensor:
    h, w = frames.shape[1:3]
    small = (max(1, round(h / k)), max(1, round(w / k)))

    def down_up(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)

    return map_chunks(frames, down_up)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def filter_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable filter of the last two dims without padding (output shrinks by len(k) - 1).

    Written as a sum of shifted slices: on small chunks this is several times faster on CPU than
    conv2d with one input channel.
    """
    taps = len(k)
    w = x.shape[-1] - taps + 1
    a = k[0] * x[..., :w]
    for i in range(1, taps):
        a = a + k[i] * x[..., i : i + w]
    h = a.shape[-2] - taps + 1
    out = k[0] * a[..., :h, :]
    for i in range(1, taps):
        out = out + k[i] * a[..., i : i + h, :]
    return out


def gaussian_blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames through a Gaussian PSF of std ``sigma`` output px (reflected at the edges)
    -> uint8 frames of the same shape: the ``blur`` condition, and a soft lens's picture."""
    k = gaussian_kernel(sigma)
    r = (len(k) - 1) // 2
    return map_chunks(frames, lambda x: filter_valid(F.pad(x, (r, r, r, r), mode="reflect"), k))


def _noise(frames: torch.Tensor, sigma: float, rng: np.random.Generator) -> torch.Tensor:
    out = torch.empty_like(frames)
    for s in range(0, frames.shape[0], CHUNK):
        x = frames[s : s + CHUNK]
        n = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
        out[s : s + CHUNK] = (x.float() + n * sigma).round_().clamp_(0, 255).to(torch.uint8)
    return out


def _frame_drop(frames: torch.Tensor, k: float) -> torch.Tensor:
    k = int(k)
    idx = (torch.arange(frames.shape[0]) // k) * k
    return frames[idx].contiguous()


def _contrast_loss(frames: torch.Tensor, veil: float) -> torch.Tensor:
    """A washed-out picture (lens flare, haze, wrong levels): a fraction of it replaced by grey."""
    return map_chunks(frames, lambda x: x * (1.0 - veil) + veil * VEIL_LEVEL)


def _stream_rung(frames: torch.Tensor, fps: Fraction, crf: float) -> torch.Tensor:
    """A low rung of an adaptive stream: half resolution, x264 at ``crf``, upscaled by the player."""
    h, w = frames.shape[1:3]
    small = resize(frames, even(h / STREAM_DOWNSCALE), even(w / STREAM_DOWNSCALE))
    small = roundtrip(small, fps, "libx264", x264_options(crf, small.shape[2]))
    return map_chunks(small, lambda x: F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False))


def distort(kind: str, ref: torch.Tensor, param: float, fps: Fraction,
             rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """The frames of one distorted clip and the CRF they are stored at (module docstring table)."""
    if kind == "h264":
        return ref, param
    if kind == "scale":
        out = _scale_loss(ref, param)
    elif kind == "blur":
        out = gaussian_blur(ref, param)
    elif kind == "noise":
        out = _noise(ref, param, rng)
    elif kind == "fps":
        out = _frame_drop(ref, param)
    elif kind == "mpeg2":
        out = roundtrip(ref, fps, "mpeg2video", fixed_q_options(param))
    elif kind == "mjpeg":
        out = roundtrip(ref, fps, "mjpeg", fixed_q_options(param), pix_fmt="yuvj420p")
    elif kind == "contrast":
        out = _contrast_loss(ref, param)
    elif kind == "stream":
        out = _stream_rung(ref, fps, param)
    else:
        raise ValueError(f"unknown distortion type {kind!r}")
    return out, CLEAN_CRF


# ----------------------------------------------------------------------------- build


def check_distortions(distortions: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    """Levels of each type sorted from mildest to strongest; unknown types are an error."""
    dist = {k: tuple(sorted(float(v) for v in vs)) for k, vs in distortions.items()}
    unknown = set(dist) - set(DISTORTION_TYPES)
    if unknown:
        raise ValueError(f"unknown distortion types {sorted(unknown)}; known: {list(DISTORTION_TYPES)}")
    return dist
