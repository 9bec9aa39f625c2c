"""The virtual camera that films a still photograph: pan, zoom, roll and hand-held shake."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .codec import CHUNK, to_uint8
from .sources import STILL_FPS

# Virtual camera (output pixels and frames at 25 fps; see camera_path)
PAN_SPEED = (0.5, 3.0)  # mean pan speed, output px per frame (12-75 px/s)
ZOOM_RATE = (0.001, 0.003)  # |d log(scale)| per frame: 6-19 % over 64 frames
MAX_ROLL_DEG = 1.0  # roll drifts between two angles within +-1 degree
SHAKE_PX = 1.5  # handheld shake: peak offset, output px
SHAKE_ROLL_DEG = 0.1
SHAKE_HZ = (0.3, 2.0)  # sway band of a hand-held camera
SHAKE_TERMS = 3
MAX_SCALE = 2.0  # photo px per output px at the widest framing (big photos: a closer view)
MIN_SCALE = 0.8  # at most 1.25x upsampling when zoomed in on a small photo
FRAMING_RANGE = 1.6  # framings of a photo range over this zoom factor
MOTION_STREAM = 1  # separates the camera's random stream from the noise levels'


# ----------------------------------------------------------------------------- photographs


@dataclass(frozen=True)
class CameraPath:
    """Where a virtual camera looks at a photograph, per frame.

    ``cx, cy``: the frame centre in photo pixels (x right, y down; pixel k spans [k, k + 1));
    ``scale``: photo pixels per output pixel (> 1: the photo is seen downscaled);
    ``angle``: roll in radians (output axes rotated by it on the photo).
    """

    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray

    def to_photo(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Photo coordinates (frames, points) of output points (u, v), given in output pixels
        from the frame centre."""
        c, s, k = np.cos(self.angle)[:, None], np.sin(self.angle)[:, None], self.scale[:, None]
        u, v = np.asarray(u, np.float64)[None], np.asarray(v, np.float64)[None]
        return self.cx[:, None] + k * (c * u - s * v), self.cy[:, None] + k * (s * u + c * v)


def _ease(n: int, rng: np.random.Generator) -> np.ndarray:
    """0 -> 1 over n frames: a blend of constant speed and a start/stop ease (an operator's move)."""
    u = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    lam = rng.uniform(0.0, 1.0)
    return (1 - lam) * u + lam * (3 * u**2 - 2 * u**3)


def _shake(n: int, rng: np.random.Generator, peak: float) -> np.ndarray:
    """Handheld sway: a sum of a few slow sinusoids, peak offset at most ``peak``."""
    freq = rng.uniform(*SHAKE_HZ, SHAKE_TERMS) / float(STILL_FPS)
    phase = rng.uniform(0.0, 2 * math.pi, SHAKE_TERMS)
    amp = rng.uniform(0.5, 1.0, SHAKE_TERMS)
    amp *= peak / amp.sum()
    t = np.arange(n, dtype=np.float64)[:, None]
    return (amp * np.sin(2 * math.pi * freq * t + phase)).sum(axis=1)


def _pan(room: tuple[float, float], dist: float, rng: np.random.Generator) -> tuple[float, float]:
    """A pan vector of length <= ``dist`` that fits in ``room`` (prefers a random direction that fits)."""
    phis = rng.uniform(0.0, 2 * math.pi, 8)

    def reach(phi: float) -> float:
        c, s = abs(math.cos(phi)), abs(math.sin(phi))
        return min(room[0] / c if c > 1e-9 else math.inf, room[1] / s if s > 1e-9 else math.inf)

    fits = [p for p in phis if reach(p) >= dist]
    phi = fits[0] if fits else max(phis, key=reach)
    d = min(dist, reach(phi))
    return d * math.cos(phi), d * math.sin(phi)


def camera_path(photo_hw: tuple[int, int], out_hw: tuple[int, int], n: int,
                rng: np.random.Generator, max_scale: float = MAX_SCALE) -> CameraPath:
    """A smooth camera move over a photograph: pan, slow zoom, roll drift and handheld shake.

    The widest framing is the largest one at which the frame, rolled and shaken, stays inside
    the photo (at most ``max_scale`` photo px per output px; a low-resolution camera sees as wide
    a view with fewer pixels, so it passes a larger one); zoom ranges down to ``MIN_SCALE``
    (mild upsampling only on the smallest photos). Speeds are a real camera's: a pan of
    ``PAN_SPEED`` px per frame, a zoom of ``ZOOM_RATE`` per frame, shake of ``SHAKE_PX``.
    """
    (ph, pw), (h, w) = photo_hw, out_hw
    ease = _ease(n, rng)
    roll_max = math.radians(MAX_ROLL_DEG + SHAKE_ROLL_DEG)
    margin = 2 * (SHAKE_PX + 1)
    ext_w = w * math.cos(roll_max) + h * math.sin(roll_max) + margin  # rotated frame's box, output px
    ext_h = w * math.sin(roll_max) + h * math.cos(roll_max) + margin
    s_hi = min(pw / ext_w, ph / ext_h, max_scale)
    s_lo = min(s_hi, max(MIN_SCALE, s_hi / FRAMING_RANGE))

    span = math.log(s_hi / s_lo)
    zoom = min(rng.uniform(*ZOOM_RATE) * max(n - 1, 0), span)
    base = math.log(s_lo) + rng.uniform(0.0, span - zoom)
    z0, z1 = (base + zoom, base) if rng.random() < 0.5 else (base, base + zoom)  # zoom in / out
    scale = np.exp(z0 + (z1 - z0) * ease)

    s_max = math.exp(base + zoom)  # the largest crop of the clip bounds where its centre can go
    room = (max(0.0, pw - ext_w * s_max), max(0.0, ph - ext_h * s_max))
    dx, dy = _pan(room, rng.uniform(*PAN_SPEED) * max(n - 1, 0) * float(scale.mean()), rng)
    x0 = (pw - room[0]) / 2 + rng.uniform(0.0, room[0] - abs(dx)) + max(0.0, -dx)
    y0 = (ph - room[1]) / 2 + rng.uniform(0.0, room[1] - abs(dy)) + max(0.0, -dy)

    r0, r1 = np.radians(rng.uniform(-MAX_ROLL_DEG, MAX_ROLL_DEG, 2))
    cx = x0 + dx * ease + _shake(n, rng, SHAKE_PX) * scale
    cy = y0 + dy * ease + _shake(n, rng, SHAKE_PX) * scale
    angle = r0 + (r1 - r0) * ease + np.radians(_shake(n, rng, SHAKE_ROLL_DEG))
    return CameraPath(cx=cx, cy=cy, scale=scale, angle=angle)


def film_still(photo: torch.Tensor, path: CameraPath, out_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 photo -> (T, h, w, 3) uint8 frames seen along ``path``.

    Bilinear sub-pixel sampling; when the camera sees the photo downscaled, the photo is first
    resized (antialiased) by the clip's smallest scale, so the clean clip is not aliased: what
    minification remains per frame is at most the clip's zoom (<= 1.2x), which bilinear handles.
    """
    h, w = out_hw
    src = photo.permute(2, 0, 1)[None].float()
    pre = float(path.scale.min())
    if pre > 1.0:
        size = (max(1, round(photo.shape[0] / pre)), max(1, round(photo.shape[1] / pre)))
        src = F.interpolate(src, size=size, mode="bilinear", antialias=True, align_corners=False)
    theta = _theta(path, photo.shape[:2], out_hw)
    out = []
    for s in range(0, theta.shape[0], CHUNK):
        th = theta[s : s + CHUNK]
        grid = F.affine_grid(th, [th.shape[0], 3, h, w], align_corners=False).float()
        x = F.grid_sample(src.expand(th.shape[0], -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)
        out.append(to_uint8(x))
    return torch.cat(out)


def _theta(path: CameraPath, photo_hw: Sequence[int], out_hw: tuple[int, int]) -> torch.Tensor:
    """``affine_grid`` matrices (T, 2, 3), float64: output frame -> photo, both in grid_sample's
    normalised coordinates (align_corners=False, which do not depend on a resize of the photo)."""
    (ph, pw), (h, w) = photo_hw, out_hw
    c, s, k = np.cos(path.angle), np.sin(path.angle), path.scale
    theta = np.stack([
        np.stack([k * c * w / pw, -k * s * h / pw, 2 * path.cx / pw - 1], axis=1),
        np.stack([k * s * w / ph, k * c * h / ph, 2 * path.cy / ph - 1], axis=1),
    ], axis=1)
    return torch.from_numpy(theta)
