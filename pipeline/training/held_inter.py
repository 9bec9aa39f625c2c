"""Inter embeddings of frame-held videos, for the frame-repeat target (TrainConfig.repeat_inter).

The frame-repeat target scores a base clip again with its frames held as a frame-rate drop of each factor k
(model.frame_repeat.repeat_frames). Without this module the held versions keep the base video's cached inter
embedding, so the target cannot teach the fusion to read a hold from the inter branch; with it, the base video's
inter segments are decoded (once per step), held by the same k and embedded by the frozen fast pathway, which,
with a temporal-difference stem, sees the hold (docs/training.md, "A temporal-difference stem for the fast
pathway").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from model import InterEmbedder
from model.frame_repeat import repeat_frames
from model.rng import resolve
from pipeline.stages.inference import inter_segments
from pipeline.training.frame_cache import FrameCache, frames_of


class HeldInter:
    """Embeds videos' inter segments held by a factor. `inter`: the run's frozen InterEmbedder (on the training
    device); `phase`: where the held frames fall in each segment (None: drawn per segment; 0: from its first
    frame, as in a video that kept every k-th frame from frame 0 and is cut into segments at multiples of k);
    `frame_cache`: the run's decoded frames (videos it left out are decoded from their files)."""

    def __init__(self, inter: InterEmbedder, storage_options: Mapping[str, Any] | None = None,
                 phase: int | None = None, frame_cache: FrameCache | None = None) -> None:
        self.inter, self.so, self.phase = inter, dict(storage_options or {}), phase
        self.frame_cache = frame_cache

    def segments(self, uris: Sequence[str]) -> torch.Tensor:
        """(n, S, 3, L, h, w) float 0-255 inter segments of the videos at `uris`, decoded as stage 1 does."""
        out = []
        for uri in uris:
            with frames_of(str(uri), self.frame_cache, self.so) as video:
                out.append(inter_segments(video, self.inter))
        return torch.stack(out)

    @torch.no_grad()
    def embed(self, segments: torch.Tensor, factor: int, generator: torch.Generator | None) -> torch.Tensor:
        """(n, S, Ce) embeddings of `segments` held by `factor` (video frames), one guardian map per video drawn
        from `generator`."""
        phase = (torch.randint(0, factor, segments.shape[:2], generator=resolve(generator))
                 if self.phase is None else self.phase)
        held = repeat_frames(segments, factor, phase)
        device = next(self.inter.parameters()).device
        return self.inter(held.to(device), generator=generator).float()

    def for_bases(self, uris: Sequence[str], generator: torch.Generator | None) -> Callable[[int], torch.Tensor]:
        """`train_step`'s `repeat_inter` for a batch's bases: decodes their segments once, embeds per factor."""
        segments = self.segments(uris)
        return lambda factor: self.embed(segments, factor, generator)
