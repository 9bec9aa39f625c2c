"""SecureVQA's defenses as composable switches, and a differentiable scorer over raw frames.

The paper's three strategies (guardian map = pixel-wise randomisation, spatial grid sampling, temporal
information from the inter branch) can each be switched on or off, plus how many guardian-map draws
one score averages. `DefendedVQA` takes decoded frames in [0, 1] and runs the whole model on them, inter
branch included, so an attacker's perturbation reaches every branch the defense uses and gradients
flow back to the pixels. All switches off is the undefended baseline: the same backbone fed a plain
resized clip, no guardian map, no inter branch.

The switches act on one set of weights at test time. The paper trains one model per configuration;
here a switched-off branch is removed from a model trained with it (inter: a zero embedding, grid:
a resize to the fragment size), which measures what each defense does to an attack on those weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from model.rng import resolve
from model.securevqa import InterEmbedder, SecureVQA
from model.transforms import continuous_sample_indices, grid_fragments, resize_frames, skip_sample_indices

SWITCHES = ("guardian", "grid", "inter")


@dataclass(frozen=True)
class Defenses:
    """Which defenses are on. Defaults: SecureVQA as published (all on, one guardian map per clip)."""

    guardian: bool = True  # pixel-wise randomisation: a fresh +-1 guardian map per clip
    grid: bool = True  # spatial grid sampling (fragments at random offsets) instead of a plain resize
    inter: bool = True  # temporal information: the inter branch's fast-pathway embeddings
    guardian_draws: int = 1  # a score averages this many guardian-map draws of each clip

    def __post_init__(self) -> None:
        if self.guardian_draws < 1:
            raise ValueError(f"guardian_draws must be >= 1, got {self.guardian_draws}")

    @property
    def name(self) -> str:
        """'securevqa' (all on), 'none' (undefended), or the switches that are on joined by '+';
        '@N' when a score averages N guardian-map draws."""
        on = [s for s in SWITCHES if getattr(self, s)]
        base = "securevqa" if len(on) == len(SWITCHES) else "+".join(on) or "none"
        return base if self.guardian_draws == 1 else f"{base}@{self.guardian_draws}"

    @classmethod
    def parse(cls, spec: str) -> "Defenses":
        """Inverse of `name`: 'securevqa', 'none', 'guardian+inter', 'securevqa@4', ..."""
        base, _, draws = spec.strip().partition("@")
        if base == "securevqa":
            on = set(SWITCHES)
        elif base == "none":
            on = set()
        else:
            on = set(base.split("+"))
            unknown = on - set(SWITCHES)
            if unknown or not base:
                raise ValueError(
                    f"unknown defense(s) {sorted(unknown) or [spec]} in {spec!r}: use 'securevqa', 'none' or "
                    f"'+'-joined switches from {SWITCHES}, optionally '@N' guardian-map draws"
                )
        try:
            n = int(draws) if draws else 1
        except ValueError:
            raise ValueError(f"guardian-map draws after '@' must be an integer, got {spec!r}") from None
        return cls(**{s: s in on for s in SWITCHES}, guardian_draws=n)

    def only(self, switch: str) -> "Defenses":
        """This configuration with one switch on and the others off (the ablation's columns)."""
        if switch not in SWITCHES:
            raise ValueError(f"unknown switch {switch!r}; choose from {SWITCHES}")
        return replace(self, **{s: s == switch for s in SWITCHES})


# The ablation of Tables V/VI: undefended, each defense alone, all of them.
ABLATION: tuple[Defenses, ...] = (
    Defenses(False, False, False),
    *(Defenses().only(s) for s in ("guardian", "inter", "grid")),
    Defenses(),
)


class DefendedVQA(nn.Module):
    """Score videos from raw frames with the chosen defenses: (N, T, 3, H, W) in [0, 1] -> (N,).

    Per video: `num_clips` skip-sampled clips (fresh offsets), fragments or a plain resize, guardian
    maps (`guardian_draws` per clip), the inter embedding computed from the same frames; the score is
    the mean over clips and draws. Differentiable with respect to the frames. Always in eval mode
    (dropout and drop-path off: scoring in train mode is a reference-code bug).
    """

    def __init__(
        self, vqa: SecureVQA, inter: InterEmbedder, defenses: Defenses = Defenses(), num_clips: int | None = None
    ) -> None:
        super().__init__()
        self.vqa, self.inter, self.defenses = vqa, inter, defenses
        self.num_clips = num_clips or vqa.cfg.sampling.test_clips
        self.eval()

    def train(self, mode: bool = True) -> "DefendedVQA":
        return super().train(False)

    def intra_clips(self, video: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(K', 3, clip_len, S, S) clips on 0-255 from one (3, T, H, W) 0-255 float video, and the weight
        of each in the score. Without grid sampling and guardian maps a clip is a function of its frame
        indices alone, so clips with the same indices (a one-frame video has K of them) are computed once."""
        s = self.vqa.cfg.sampling
        idx = skip_sample_indices(
            video.shape[1], clip_len=s.clip_len, frame_interval=s.frame_interval, num_clips=self.num_clips,
            generator=generator,
        ).to(video.device)
        weights = torch.ones(idx.shape[0], device=video.device)
        if not (self.defenses.grid or self.defenses.guardian):
            idx, counts = torch.unique(idx, dim=0, return_counts=True)
            weights = counts.to(video.device, torch.float32)
        clips = []
        for i in idx:
            frames = video[:, i]
            if self.defenses.grid:
                clips.append(grid_fragments(frames, generator=generator, grid=s.fragment_grid, patch=s.fragment_patch))
            else:
                clips.append(resize_frames(frames, size=s.fragment_size))
        return torch.stack(clips), weights / weights.sum()

    def inter_embedding(self, video: Tensor, generator: torch.Generator) -> Tensor:
        """(S, Ce) inter embedding of one (3, T, H, W) 0-255 video, or zeros with the branch off.

        Identical segments (short videos; a one-frame video has 16 copies of one) go through the fast
        pathway once: the guardian map is shared by a video's segments, so their embeddings are equal.
        """
        s = self.vqa.cfg.sampling
        if not self.defenses.inter:
            return video.new_zeros(s.inter_segments, self.vqa.cfg.inter_dim)
        idx = continuous_sample_indices(video.shape[1], num_segments=s.inter_segments, segment_len=s.inter_segment_len)
        rows, which = torch.unique(idx, dim=0, return_inverse=True)
        frames, where = torch.unique(rows, return_inverse=True)
        resized = resize_frames(video[:, frames.to(video.device)], size=s.inter_size)  # (3, U, h, w)
        segments = resized[:, where.to(video.device)].permute(1, 0, 2, 3, 4)  # (S', 3, L, h, w)
        emb = self.inter(segments[None], generator=generator, guardian=self.defenses.guardian)[0]
        return emb[which.to(emb.device)]

    def forward(self, videos: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must be (N, T, 3, H, W) in [0, 1], got {tuple(videos.shape)}")
        g = resolve(generator)
        d = self.defenses.guardian_draws if self.defenses.guardian else 1
        scores = []
        for v in videos.float().mul(255.0).transpose(1, 2):  # (3, T, H, W), the model's 0-255 scale
            clips, weights = self.intra_clips(v, g)
            inter = self.inter_embedding(v, g)
            if d > 1:
                clips = clips.repeat_interleave(d, dim=0)  # each copy gets its own guardian map
                weights = weights.repeat_interleave(d) / d
            per_clip = self.vqa(clips[None], inter[None], generator=g, guardian=self.defenses.guardian)[0]
            scores.append((per_clip * weights).sum())
        return torch.stack(scores)

