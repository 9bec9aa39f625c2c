"""Score videos with SecureVQA: sampling and transforms of both branches, then the model.

Works on any frame source: an open `VideoReader` (the pipeline's actors: only the sampled frames are
decoded) or decoded frames in memory, a (T, H, W, C) uint8 tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from model import InterEmbedder, SamplingConfig, SecureVQA
from model.rng import resolve
from model.transforms import continuous_sample_indices, grid_fragments, resize_frames, skip_sample_indices
from pipeline.io.video import VideoReader

FrameSource = VideoReader | torch.Tensor
# Frames decoded at once for the inter branch: bounds memory at 1080p (64 x 6 MB) before resizing.
_INTER_READ_CHUNK = 64


@dataclass(frozen=True)
class VideoScore:
    score: float
    clip_scores: list[float]


def _reader(source: FrameSource) -> tuple[int, Callable[[torch.Tensor], torch.Tensor]]:
    """(number of frames, read(indices) -> (len, H, W, 3) uint8) of a frame source."""
    if isinstance(source, torch.Tensor):
        if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != torch.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {tuple(source.shape)} {source.dtype}")
        return source.shape[0], lambda idx: source[idx]
    return source.info.num_frames, source.read


def inter_segments(source: FrameSource, model: SecureVQA | InterEmbedder) -> torch.Tensor:
    """(16, 3, 32, 224, 224) resized segments on the 0-255 scale (float32)."""
    s = model.cfg.sampling
    n, read = _reader(source)
    idx = continuous_sample_indices(n, num_segments=s.inter_segments, segment_len=s.inter_segment_len)
    # decode and resize each needed frame once, in chunks, then gather the (overlapping) segments
    unique, inverse = torch.unique(idx, return_inverse=True)
    resized = torch.cat([
        resize_frames(read(part), size=s.inter_size, layout="THWC") for part in unique.split(_INTER_READ_CHUNK)
    ], dim=1)  # C, U, h, w
    return resized[:, inverse].permute(1, 0, 2, 3, 4)  # S, C, L, h, w


def intra_clips(source: FrameSource, s: SamplingConfig, num_clips: int, generator: torch.Generator) -> torch.Tensor:
    """(K, 3, 32, 224, 224) uint8 fragment clips; frames are decoded one clip at a time."""
    n, read = _reader(source)
    idx = skip_sample_indices(
        n, clip_len=s.clip_len, frame_interval=s.frame_interval, num_clips=num_clips, generator=generator
    )
    return torch.stack([
        grid_fragments(read(i), generator=generator, layout="THWC", grid=s.fragment_grid, patch=s.fragment_patch)
        for i in idx
    ])


@torch.inference_mode()
def score_frames(
    source: FrameSource,
    vqa: SecureVQA,
    inter: InterEmbedder,
    *,
    num_clips: int | None = None,
    generator: torch.Generator | None = None,
    inter_embedding: torch.Tensor | None = None,
) -> VideoScore:
    """Score one video; pass `inter_embedding` (S, Ce) to skip the fast pathway."""
    g = resolve(generator)
    k = num_clips or vqa.cfg.sampling.test_clips
    if inter_embedding is None:
        inter_embedding = inter(inter_segments(source, inter)[None], generator=g)[0]
    clips = intra_clips(source, vqa.cfg.sampling, k, g)
    per_clip = vqa(clips[None], inter_embedding[None], generator=g)[0]
    return VideoScore(score=float(per_clip.mean()), clip_scores=[float(c) for c in per_clip])
