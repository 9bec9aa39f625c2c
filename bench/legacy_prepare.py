"""The preparation as it was before the uint8 one-pass path (for side-by-side figures in `make bench` only).

Stage 1 read the inter frames in chunks of 64 full-size RGB frames and resized them in float32; stage 2
opened the video again and read each intra clip's 32 full-size frames before cutting the fragments. Same
sampling and draws as `pipeline.stages.prepare.prepare_video`, so the intra clips are bit-identical and
the inter frames differ only by the uint8 resize.
"""

from __future__ import annotations

import torch

from model import SamplingConfig
from model.transforms import continuous_sample_indices, grid_fragments, resize_frames, skip_sample_indices
from pipeline.io.video import VideoReader

_CHUNK = 64


def inter_segments_float(video: VideoReader, s: SamplingConfig) -> torch.Tensor:
    """(S, 3, L, h, w) float32 segments: frames decoded to full-size RGB, resized in float32."""
    idx = continuous_sample_indices(video.info.num_frames, num_segments=s.inter_segments,
                                    segment_len=s.inter_segment_len)
    unique, inverse = torch.unique(idx, return_inverse=True)
    resized = torch.cat([resize_frames(video.read(part), size=s.inter_size, layout="THWC")
                         for part in unique.split(_CHUNK)], dim=1)
    return resized[:, inverse].permute(1, 0, 2, 3, 4)


def intra_clips_by_clip(video: VideoReader, s: SamplingConfig, num_clips: int, generator: torch.Generator) -> torch.Tensor:
    """(K, 3, T, S, S) uint8: each clip's full-size frames read, then its fragments cut."""
    idx = skip_sample_indices(video.info.num_frames, clip_len=s.clip_len, frame_interval=s.frame_interval,
                              num_clips=num_clips, generator=generator)
    return torch.stack([grid_fragments(video.read(i), generator=generator, layout="THWC", grid=s.fragment_grid,
                                       patch=s.fragment_patch) for i in idx])
