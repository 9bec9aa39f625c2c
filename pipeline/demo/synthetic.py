"""Small generated videos for the demo and tests, until real content lands with the pipeline issue."""

from __future__ import annotations

import math

import torch


def moving_pattern(num_frames: int = 96, height: int = 240, width: int = 320, *, seed: int = 0) -> torch.Tensor:
    """(T, H, W, 3) uint8: a textured scene panning across the frame, with a moving disc."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.rand(3, height // 8 + 1, (width + num_frames * 2) // 8 + 1, generator=g)
    texture = torch.nn.functional.interpolate(texture[None], scale_factor=8, mode="bicubic")[0].clamp(0, 1)
    ys = torch.arange(height).view(-1, 1).float()
    xs = torch.arange(width).view(1, -1).float()
    frames = []
    for t in range(num_frames):
        frame = texture[:, :height, 2 * t : 2 * t + width].clone()
        cy = height / 2 + height / 4 * math.sin(t / 8)
        cx = width / 2 + width / 3 * math.cos(t / 11)
        disc = ((ys - cy) ** 2 + (xs - cx) ** 2) < (min(height, width) / 8) ** 2
        frame[:, disc] = torch.tensor([0.9, 0.3, 0.2]).view(3, 1)
        frames.append(frame)
    return (torch.stack(frames).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
