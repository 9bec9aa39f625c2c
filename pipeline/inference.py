"""Score decoded videos with SecureVQA: sampling and transforms of both branches, then the model.

Works on in-memory frames; the Ray stages (issue 3) call these per video inside their actors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import InterEmbedder, SecureVQA
from model.rng import resolve
from model.transforms import continuous_sample_indices, grid_fragments, resize_frames, skip_sample_indices


@dataclass(frozen=True)
class VideoScore:
    score: float
    clip_scores: list[float]


def inter_segments(frames: torch.Tensor, vqa_or_inter: SecureVQA | InterEmbedder) -> torch.Tensor:
    """(T, H, W, C) uint8 frames -> (16, 3, 32, 224, 224) resized segments on the 0-255 scale."""
    s = vqa_or_inter.cfg.sampling
    idx = continuous_sample_indices(frames.shape[0], num_segments=s.inter_segments, segment_len=s.inter_segment_len)
    # resize each needed frame once, then gather the segments (they may share frames)
    unique, inverse = torch.unique(idx, return_inverse=True)
    resized = resize_frames(frames[unique], size=s.inter_size, layout="THWC")  # C, U, h, w
    return resized[:, inverse].permute(1, 0, 2, 3, 4)  # S, C, L, h, w


def intra_clips(frames: torch.Tensor, vqa: SecureVQA, num_clips: int, generator: torch.Generator) -> torch.Tensor:
    """(T, H, W, C) uint8 frames -> (K, 3, 32, 224, 224) uint8 fragment clips."""
    s = vqa.cfg.sampling
    idx = skip_sample_indices(
        frames.shape[0], clip_len=s.clip_len, frame_interval=s.frame_interval, num_clips=num_clips, generator=generator
    )
    return torch.stack([
        grid_fragments(frames[i], generator=generator, layout="THWC", grid=s.fragment_grid, patch=s.fragment_patch)
        for i in idx
    ])


@torch.inference_mode()
def score_frames(
    frames: torch.Tensor,
    vqa: SecureVQA,
    inter: InterEmbedder,
    *,
    num_clips: int | None = None,
    generator: torch.Generator | None = None,
    inter_embedding: torch.Tensor | None = None,
) -> VideoScore:
    """Score one decoded video (T, H, W, C) uint8; pass `inter_embedding` (S, Ce) to skip the fast pathway."""
    g = resolve(generator)
    k = num_clips or vqa.cfg.sampling.test_clips
    if inter_embedding is None:
        inter_embedding = inter(inter_segments(frames, inter)[None], generator=g)[0]
    clips = intra_clips(frames, vqa, k, g)
    per_clip = vqa(clips[None], inter_embedding[None], generator=g)[0]
    return VideoScore(score=float(per_clip.mean()), clip_scores=[float(c) for c in per_clip])
