"""Configuration of SecureVQA as frozen dataclasses, and the named presets.

`paper` holds the exact sizes of the paper and its reference code; `tiny` keeps the architecture and
shrinks widths and depths so the whole model runs in well under a second on a laptop CPU (tests, demo).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class SwinConfig:
    """Video Swin Transformer with FAST-VQA's gated relative position bias (GRPB)."""

    patch_size: Triple = (2, 4, 4)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: Triple = (8, 7, 7)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    # Stages that carry a fragment_position_bias_table (GRPB); the last stage has none.
    frag_biases: tuple[bool, ...] = (True, True, True, False)
    # Input size at which `window_size` applies; other sizes scale the window (adaptive window).
    base_input_size: Triple = (32, 224, 224)
    adaptive_window: bool = True

    def __post_init__(self) -> None:
        n = len(self.depths)
        if not (len(self.num_heads) == len(self.frag_biases) == n):
            raise ValueError(
                f"depths, num_heads and frag_biases must have one entry per stage, got "
                f"{self.depths}, {self.num_heads}, {self.frag_biases}"
            )
        for i, h in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % h:
                raise ValueError(f"stage {i}: width {self.embed_dim * 2**i} not divisible by {h} heads")

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


@dataclass(frozen=True)
class FastPathwayConfig:
    """SlowFast R50 fast pathway (stem + res2..res5); pytorchvideo's `slowfast_r50` sizes by default."""

    in_channels: int = 3
    stem_width: int = 8
    stem_kernel: Triple = (5, 7, 7)
    stage_depths: tuple[int, ...] = (3, 4, 6, 3)
    stage_widths: tuple[int, ...] = (32, 64, 128, 256)  # block outputs; the bottleneck is width // 4
    stage_spatial_strides: tuple[int, ...] = (1, 2, 2, 2)
    temporal_kernel: int = 3  # conv_a of every fast-pathway bottleneck is (3, 1, 1)
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if not (len(self.stage_depths) == len(self.stage_widths) == len(self.stage_spatial_strides)):
            raise ValueError("stage_depths, stage_widths and stage_spatial_strides must match in length")

    @property
    def num_features(self) -> int:
        return self.stage_widths[-1]


@dataclass(frozen=True)
class HeadConfig:
    """Fusion module and regression head (docs/design.md §2.3)."""

    hidden_dim: int = 64
    dropout: float = 0.5


@dataclass(frozen=True)
class SamplingConfig:
    """Temporal and spatial sampling of both branches (docs/design.md §2.1, §2.2)."""

    clip_len: int = 32
    frame_interval: int = 2
    train_clips: int = 1
    test_clips: int = 4
    fragment_grid: int = 7
    fragment_patch: int = 32
    inter_segments: int = 16
    inter_segment_len: int = 32
    inter_size: int = 224

    @property
    def fragment_size(self) -> int:
        return self.fragment_grid * self.fragment_patch


@dataclass(frozen=True)
class SecureVQAConfig:
    name: str = "paper"
    swin: SwinConfig = field(default_factory=SwinConfig)
    fastpath: FastPathwayConfig = field(default_factory=FastPathwayConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        s = self.sampling
        if s.clip_len // self.swin.patch_size[0] != s.inter_segments:
            # Swin's temporal token t is paired with inter segment t (docs/design.md §2.3).
            raise ValueError(
                f"clip_len {s.clip_len} / temporal patch {self.swin.patch_size[0]} must equal "
                f"inter_segments {s.inter_segments}"
            )

    @property
    def intra_dim(self) -> int:
        return self.swin.num_features

    @property
    def inter_dim(self) -> int:
        return self.fastpath.num_features

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SecureVQAConfig":
        def tuples(x: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in x.items()}

        return cls(
            name=d.get("name", "custom"),
            swin=SwinConfig(**tuples(d.get("swin", {}))),
            fastpath=FastPathwayConfig(**tuples(d.get("fastpath", {}))),
            head=HeadConfig(**tuples(d.get("head", {}))),
            sampling=SamplingConfig(**tuples(d.get("sampling", {}))),
        )

    def version(self) -> str:
        """Short stable hash of the architecture and sampling: part of every cache key."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


PRESETS: dict[str, SecureVQAConfig] = {
    "paper": SecureVQAConfig(name="paper"),
    "tiny": SecureVQAConfig(
        name="tiny",
        swin=SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
        fastpath=FastPathwayConfig(stem_width=4, stage_depths=(1, 1, 1, 1), stage_widths=(16, 32, 64, 64)),
        head=HeadConfig(hidden_dim=32),
    ),
    # `tiny` at an input a 2-core CPU trains on (docs/training.md, "The demo model"): 16 consecutive
    # frames (frame-rate drops stay visible; offsets vary inside a 64-frame clip) as 5x5 fragments of 32
    # px, the adaptive window (4, 5, 5) matching the 5x5 fragment grid as 7x7 does at 224; the inter
    # branch on 8 segments of 8 frames at 112 px. About 12x fewer operations per training clip.
    "tiny-cpu": SecureVQAConfig(
        name="tiny-cpu",
        swin=SwinConfig(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
        fastpath=FastPathwayConfig(stem_width=4, stage_depths=(1, 1, 1, 1), stage_widths=(16, 32, 64, 64)),
        head=HeadConfig(hidden_dim=32),
        sampling=SamplingConfig(clip_len=16, frame_interval=1, fragment_grid=5, fragment_patch=32,
                                inter_segments=8, inter_segment_len=8, inter_size=112),
    ),
}


def get_config(name: str) -> SecureVQAConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
