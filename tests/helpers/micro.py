"""A micro SecureVQA: every branch of the real architecture at a size that runs in milliseconds
(64x64 fragments of a 2x2 grid, 8-frame clips, 4 inter segments). For tests only."""

from __future__ import annotations

from pathlib import Path

import torch

from model import InterEmbedder, SecureVQA, save_checkpoint
from model.config import FastPathwayConfig, HeadConfig, SamplingConfig, SecureVQAConfig, SwinConfig

MICRO = SecureVQAConfig(
    name="micro",
    swin=SwinConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=(4, 2, 2),
                    base_input_size=(8, 64, 64)),
    fastpath=FastPathwayConfig(stem_width=4, stage_depths=(1, 1, 1, 1), stage_widths=(8, 8, 16, 16)),
    head=HeadConfig(hidden_dim=8),
    sampling=SamplingConfig(clip_len=8, inter_segments=4, inter_segment_len=8, inter_size=64, fragment_grid=2,
                            fragment_patch=32, test_clips=2),
)


def micro_model(seed: int = 0) -> tuple[SecureVQA, InterEmbedder]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SecureVQA(MICRO).eval(), InterEmbedder(MICRO)


def micro_checkpoint(path: Path, seed: int = 0) -> Path:
    """Our checkpoint format (config inside), so `ModelSpec(checkpoint=...)` builds the micro model."""
    vqa, inter = micro_model(seed)
    save_checkpoint(str(path), vqa, inter)
    return path
