"""SecureVQA: intra Swin-GRPB on guarded fragments, fused with cached inter embeddings.

Two modules, matching the two pipeline stages:
- `InterEmbedder` (stage 1): frozen SlowFast fast pathway + global pooling, 16 segments -> (16, Ce);
- `SecureVQA` (stage 2): Swin-GRPB on fragment clips, fusion with the inter embeddings, regression head.
Both take pixels on the 0-255 scale and apply the guardian map and the normalisation themselves, so a
caller (pipeline, trainer, attacker) cannot forget the defense or apply it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .config import SecureVQAConfig
from .device import autocast
from .fusion import FusionHead
from .rng import resolve
from .slowfast import FastPathway
from .swin import SwinTransformer3D
from .transforms import apply_guardian_map, guardian_map, normalize

Precision = Literal["fp32", "bf16"]
_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _dtype(precision: str) -> torch.dtype:
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}") from None


def micro_batches(x: Tensor, size: int | None) -> list[Tensor]:
    """Split a batch for the backbone. On CPU one sample at a time is fastest (activations stay in
    cache: 4 Swin clips one by one take ~0.75x the time of one batch of 4 here); GPUs want it whole."""
    if size is None:
        size = x.shape[0] if x.device.type == "cuda" else 1
    return list(x.split(size))


def guard_and_normalize(
    x: Tensor, generator: torch.Generator | None, enabled: bool, maps_per_sample: int = 1
) -> Tensor:
    """Guardian map (one per sample, broadcast over frames) + clamp + normalise, on (N, C, T, H, W)."""
    x = x.float()
    if enabled:
        n, c, _, h, w = x.shape
        g = resolve(generator)
        maps = torch.stack([guardian_map(generator=g, channels=c, size=(h, w)) for _ in range(n // maps_per_sample)])
        maps = maps.to(x.device).repeat_interleave(maps_per_sample, dim=0)
        x = apply_guardian_map(x, maps)
    return normalize(x)


Generators = torch.Generator | Sequence[torch.Generator] | None


def guard_per_video(x: Tensor, generator: Generators, enabled: bool, maps_per_sample: int = 1) -> Tensor:
    """guard_and_normalize on (B, K, C, T, H, W), flattened to (B*K, ...). With one generator per video,
    video b's maps come from generator[b] alone: a video scored in a batch of others draws exactly what
    it draws scored on its own, so batching across videos never changes a seeded score."""
    if generator is None or isinstance(generator, torch.Generator):
        return guard_and_normalize(x.flatten(0, 1), generator, enabled, maps_per_sample)
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} generators for {x.shape[0]} videos: pass one per video, or one")
    return torch.cat([guard_and_normalize(v, g, enabled, maps_per_sample) for v, g in zip(x, generator)])


class SecureVQA(nn.Module):
    """Scores fragment clips of videos given their cached inter embeddings.

    forward(clips (B, K, 3, T, H, W) on 0-255, inter (B, S, Ce)) -> per-clip scores (B, K); the video
    score is their mean (`score`). A fresh guardian map is drawn per clip on every call.
    """

    def __init__(self, cfg: SecureVQAConfig, *, guardian: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.guardian = guardian
        self.intra = SwinTransformer3D(cfg.swin)
        self.head = FusionHead(cfg.intra_dim, cfg.inter_dim, cfg.head)
        self.precision: Precision = "fp32"
        self.amp = False  # bf16 through torch.autocast (GPUs) rather than stored bf16 weights (CPUs)
        self.micro_batch: int | None = None  # clips per backbone call; None: 1 on CPU, all on GPU

    def set_precision(self, precision: Precision, *, amp: bool = False) -> "SecureVQA":
        """fp32, or bf16 matrix products. Without `amp` (CPUs): the matmul weights are stored in bf16 once,
        residual stream, norms, attention and head stay fp32 (1.6x here, docs/performance.md). With
        `amp` (GPUs, `model.device.uses_autocast`): fp32 weights, the forward runs under torch.autocast."""
        _dtype(precision)
        self.intra.set_matmul_dtype(torch.bfloat16 if precision == "bf16" and not amp else torch.float32)
        self.precision, self.amp = precision, amp
        return self

    # ---- training-time changes (fine-tuning protocols, docs/training.md): the config, and with it every
    # version string and cache key, stays the preset's.

    def reset_head(self, seed: int) -> "SecureVQA":
        """A freshly initialised fusion head (the small-dataset protocol re-initialises fusion and head),
        drawn from `seed` without touching the global random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.head = FusionHead(self.cfg.intra_dim, self.cfg.inter_dim, self.cfg.head)
        return self

    def freeze_intra(self) -> "SecureVQA":
        """No gradients for the intra backbone, and it stays in eval mode (no drop path) when the model
        is put in training mode: a frozen backbone gives the features it gives at test time."""
        self.intra.requires_grad_(False)
        self.intra_frozen = True
        self.intra.eval()
        return self

    def set_head_dropout(self, p: float) -> "SecureVQA":
        """Dropout probability of every dropout layer of the head, in [0, 1) (the presets use 0.5).
        Raises ValueError outside that range."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {p}")
        for m in self.head.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
        return self

    def train(self, mode: bool = True) -> "SecureVQA":
        super().train(mode)
        if getattr(self, "intra_frozen", False):
            self.intra.eval()
        return self

    def forward(
        self, clips: Tensor, inter: Tensor, *, generator: Generators = None, guardian: bool | None = None,
        return_features: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`generator`: one, or one per video (batches across videos, `guard_per_video`); `guardian`
        overrides the module's switch for this call (the defense ablations). `return_features`: also
        return the intra features (B*K, C, T', h, w) before the spatial mean (training targets on tokens)."""
        if clips.ndim == 5:
            clips = clips[:, None]
        if clips.ndim != 6 or clips.shape[2] != 3:
            raise ValueError(f"clips must be (B, K, 3, T, H, W) on the 0-255 scale, got {tuple(clips.shape)}")
        b, k = clips.shape[:2]
        if inter.ndim != 3 or inter.shape[0] != b or inter.shape[2] != self.cfg.inter_dim:
            raise ValueError(
                f"inter embeddings must be (B={b}, segments, {self.cfg.inter_dim}), got {tuple(inter.shape)}"
            )
        x = guard_per_video(clips, generator, self.guardian if guardian is None else guardian)
        with autocast(self.precision, x.device.type, force=self.amp):
            feats = torch.cat([self.intra(part) for part in micro_batches(x, self.micro_batch)]).float()
            tokens = self.head(feats, inter.float().repeat_interleave(k, dim=0))  # (B*K, T')
        scores = tokens.float().mean(1).view(b, k)
        return (scores, feats) if return_features else scores

    def score(self, clips: Tensor, inter: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """One score per video: the mean over temporal tokens and clips."""
        return self(clips, inter, generator=generator).mean(1)


class InterEmbedder(nn.Module):
    """Frozen fast pathway: (B, S, 3, T, 224, 224) 0-255 segments -> (B, S, Ce) pooled embeddings.

    One guardian map per video (shared by its segments), as at extraction in the reference recipe.
    Weights never train (requires_grad off, BatchNorm always in eval mode), but gradients still flow
    to the input pixels, so white-box attacks can go through the inter branch.
    """

    def __init__(self, cfg: SecureVQAConfig, *, guardian: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.guardian = guardian
        self.fastpath = FastPathway(cfg.fastpath).freeze_()
        self.precision: Precision = "fp32"
        self.amp = False

    def train(self, mode: bool = True) -> "InterEmbedder":
        # Frozen: BatchNorm must use its running statistics, never the batch's.
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.fastpath.parameters()).dtype

    def set_precision(self, precision: Precision, *, amp: bool = False) -> "InterEmbedder":
        """bf16 weights (CPUs), or fp32 weights under torch.autocast with `amp` (GPUs)."""
        self.precision, self.amp = precision, amp
        return self.to(torch.float32 if amp else _dtype(precision))

    def forward(
        self,
        segments: Tensor,
        *,
        generator: Generators = None,
        micro_batch: int | None = None,
        guardian: bool | None = None,
    ) -> Tensor:
        if segments.ndim == 5:
            segments = segments[None]
        if segments.ndim != 6 or segments.shape[2] != 3:
            raise ValueError(f"segments must be (B, S, 3, T, H, W) on the 0-255 scale, got {tuple(segments.shape)}")
        b, s = segments.shape[:2]
        guardian = self.guardian if guardian is None else guardian
        x = guard_per_video(segments, generator, guardian, maps_per_sample=s)
        with autocast(self.precision, x.device.type, force=self.amp):
            out = [self.fastpath.embed(part.to(self.dtype)) for part in micro_batches(x, micro_batch)]
        return torch.cat(out).float().view(b, s, -1)
