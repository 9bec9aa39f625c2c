"""Score videos with SecureVQA: sampling and transforms of both branches, then the model.

Works on any frame source: an open `VideoReader` (the pipeline's actors: only the sampled frames are
decoded) or decoded frames in memory, a (T, H, W, C) uint8 tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import InterEmbedder, SamplingConfig, SecureVQA
from model.rng import resolve

from .prepare import FrameSource, inter_input, prepare_video


@dataclass(frozen=True)
class VideoScore:
    score: float
    clip_scores: list[float]


def inter_segments(source: FrameSource, model: SecureVQA | InterEmbedder) -> torch.Tensor:
    """(16, 3, 32, 224, 224) float32 segments on the 0-255 scale: each distinct frame decoded once and
    resized on uint8 (`prepare.prepare_video`), then gathered into the overlapping segments."""
    p = prepare_video(source, model.cfg.sampling, inter=True, clips=0, generator=None)
    return inter_input(torch.from_numpy(p.inter_frames), torch.from_numpy(p.inter_index))


def intra_clips(source: FrameSource, s: SamplingConfig, num_clips: int, generator: torch.Generator) -> torch.Tensor:
    """(K, 3, 32, 224, 224) uint8 fragment clips, cut frame by frame as each is decoded (`prepare.prepare_video`)."""
    return torch.from_numpy(prepare_video(source, s, inter=False, clips=num_clips, generator=generator).clips)


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
