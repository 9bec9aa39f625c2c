"""Adversarial attacks on quality scores (docs/design.md §3): the published black-box and white-box attacks,
their adaptive variants against randomised defenses, and the target rule (R: model.metrics).

Pure PyTorch. An attack sees the model only through a score function
``score_fn(x, generator) -> (N,)`` on pixels in [0, 1] (frames ``(N, 3, H, W)`` or videos
``(N, T, 3, H, W)``); the defender's randomness comes from ``generator`` and the attacker's own
randomness (patch order, sign maps) from a separate generator, so every attack replays from seeds.

Adaptive variants (beyond the paper; a defense built on randomness must be measured against them):
- white-box with expectation over transformation (EOT): the loss averages ``eot`` independent draws
  of the defender's randomness (guardian maps, fragment offsets, clip offsets) per step;
- black-box with repeated queries: every evaluation averages ``repeats`` queries, so the accept
  rule compares means instead of single noisy draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, torch.Generator], Tensor]

LEVEL = 1.0 / 255.0  # one 8-bit level on the [0, 1] pixel scale


# ----------------------------------------------------------------------------- target rule and R


@dataclass(frozen=True)
class Targets:
    target: np.ndarray  # per video, in prediction space
    low: float
    high: float


def score_reversed_targets(q: np.ndarray, q_mos: np.ndarray) -> Targets:
    """The score-reversed boundary (docs/design.md §3): map 0 and 1 of the normalised MOS scale into
    prediction space by z-score matching over the attacked set (np.std, ddof 0); videos at or above
    the median normalised MOS are pushed to `low`, the others to `high`."""
    q, q_mos = np.asarray(q, dtype=np.float64), np.asarray(q_mos, dtype=np.float64)
    if q.shape != q_mos.shape or q.ndim != 1 or q.size < 2:
        raise ValueError(f"need two 1-D arrays of the same length >= 2, got {q.shape} and {q_mos.shape}")
    if not (np.isfinite(q).all() and np.isfinite(q_mos).all()):
        raise ValueError("clean scores and MOS must be finite (drop failed videos first)")
    s_mos = q_mos.std()
    if s_mos == 0:
        raise ValueError("all normalised MOS are equal: the target rule needs spread in the labels")
    low = float((0.0 - q_mos.mean()) / s_mos * q.std() + q.mean())
    high = float((1.0 - q_mos.mean()) / s_mos * q.std() + q.mean())
    target = np.where(q_mos >= np.median(q_mos), low, high)
    return Targets(target=target, low=low, high=high)


def normalised_mos(mos: np.ndarray) -> np.ndarray:
    """q_mos = MOS / max MOS of the dataset (docs/design.md §3)."""
    mos = np.asarray(mos, dtype=np.float64)
    top = mos.max()
    if not top > 0:
        raise ValueError(f"the largest MOS must be positive to normalise by it, got {top}")
    return mos / top


# ----------------------------------------------------------------------------- shared pieces


@dataclass
class AttackResult:
    adversarial: Tensor  # same shape as the input, on the 1/255 grid
    queries: Tensor  # (N,) model evaluations used (white-box: forward+backward passes)
    loss: Tensor  # (N,) the attack's last measured |score - target|


def _per_sample(x: Tensor) -> Tensor:
    return x.flatten(1)


def _check_pixels(x: Tensor, target: Tensor) -> Tensor:
    if not x.dtype.is_floating_point:
        raise ValueError(f"pixels must be floating in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("pixels must lie in [0, 1]")
    target = torch.as_tensor(target, dtype=torch.float32, device=x.device).reshape(-1)
    if target.numel() != x.shape[0]:
        raise ValueError(f"one target per sample: {x.shape[0]} samples, {target.numel()} targets")
    return target


def _averaged(score_fn: ScoreFn, x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Mean score over `n` independent draws of the defender's randomness: (N,)."""
    if n == 1:
        return score_fn(x, generator)
    scores = score_fn(x.repeat(n, *([1] * (x.ndim - 1))), generator)
    return scores.view(n, x.shape[0]).mean(0)


def quantize(clean: Tensor, adv: Tensor, *, linf: float | None = None, l2: float | None = None) -> Tensor:
    """Round `adv` to the 1/255 grid without leaving the budget: nearest level first, then the pixels
    whose rounding grew the perturbation are rounded toward the clean pixel instead, most-grown first,
    until each sample is back in its L2 ball. `clean` must be on the grid (decoded 8-bit frames)."""
    delta = (adv - clean) / LEVEL
    if linf is not None:
        delta = delta.clamp(-linf / LEVEL, linf / LEVEL)
    near, toward = delta.round(), delta.trunc()
    if l2 is not None:
        n = delta.shape[0]
        near_f, toward_f = _per_sample(near).clone(), _per_sample(toward)
        budget = (l2 / LEVEL) ** 2
        for i in range(n):
            excess = near_f[i].square().sum() - budget
            if excess <= 1e-6:
                continue
            gain = near_f[i].square() - toward_f[i].square()  # >= 0; > 0 where rounding grew |delta|
            order = torch.argsort(gain, descending=True)
            k = int(torch.searchsorted(gain[order].cumsum(0), excess.reshape(1)).item()) + 1
            near_f[i, order[:k]] = toward_f[i, order[:k]]
        near = near_f.view_as(delta)
    return (clean + near * LEVEL).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- black-box


@dataclass(frozen=True)
class BlackBoxConfig:
    """The published random-patch attack (docs/design.md §3); `repeats` > 1 is the adaptive variant."""

    gamma: float = 5 * LEVEL  # L_inf budget and step: 5, 3, 2 or 1 levels in the paper
    patch: int = 56
    units_per_step: int | None = None  # None: max(pn // 300, 1), pn = 3 * (H // patch) * (W // patch)
    repeats: int = 1  # queries averaged per evaluation (1 = as published)

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1] on the [0, 1] pixel scale, got {self.gamma}")
        if self.patch < 1 or self.repeats < 1 or (self.units_per_step is not None and self.units_per_step < 1):
            raise ValueError("patch, repeats and units_per_step must be >= 1")


def black_box_attack(
    frames: Tensor,
    score_fn: ScoreFn,
    target: Tensor,
    cfg: BlackBoxConfig = BlackBoxConfig(),
    *,
    generator: torch.Generator,
    defender: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> AttackResult:
    """Attack each of `frames` (N, 3, H, W) in [0, 1] toward its target with score queries only.

    Units are (channel, patch x patch) cells, visited once each in a random order, Z per step. A step
    draws one +-1 sign map m and tries x - gamma*m on its units, then x + gamma*m; a try is kept only
    if |score - target| strictly drops below the best so far. Frames run in lock-step (one batched
    query per try), each with its own order and sign maps. L_inf <= gamma by construction.
    """
    target = _check_pixels(frames, target)
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
    n, c, h, w = frames.shape
    p = cfg.patch
    ph, pw = h // p, w // p
    pn = c * ph * pw
    if pn == 0:
        raise ValueError(f"frames of {h}x{w} hold no {p}x{p} patch")
    z = cfg.units_per_step or max(pn // 300, 1)
    steps = -(-pn // z)
    dev = frames.device
    order = torch.stack([torch.randperm(pn, generator=generator) for _ in range(n)]).to(dev)  # (N, pn)
    rows = torch.arange(n, device=dev)

    x = frames.clone()
    queries = torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        loss = (_averaged(score_fn, x, cfg.repeats, defender) - target).abs()
        queries += cfg.repeats
        for step in range(steps):
            units = order[:, step * z : (step + 1) * z]  # (N, z')
            signs = torch.randint(0, 2, (n, p, p), generator=generator).to(dev).float().mul_(2).sub_(1)
            diff = torch.zeros_like(x)
            ch, cell = units // (ph * pw), units % (ph * pw)
            for j in range(units.shape[1]):
                for i in range(n):
                    r0, c0 = int(cell[i, j] // pw) * p, int(cell[i, j] % pw) * p
                    diff[i, ch[i, j], r0 : r0 + p, c0 : c0 + p] = cfg.gamma * signs[i]
            pending = rows
            for sign in (-1.0, 1.0):
                cand = (x[pending] + sign * diff[pending]).clamp(0.0, 1.0)
                l_new = (_averaged(score_fn, cand, cfg.repeats, defender) - target[pending]).abs()
                queries[pending.cpu()] += cfg.repeats
                better = l_new < loss[pending]
                keep = pending[better]
                x[keep], loss[keep] = cand[better], l_new[better]
                pending = pending[~better]
                if pending.numel() == 0:
                    break
            if progress is not None:
                progress(step + 1, steps)
    return AttackResult(quantize(frames, x, linf=cfg.gamma), queries, loss)


# ----------------------------------------------------------------------------- white-box


@dataclass(frozen=True)
class WhiteBoxConfig:
    """The published gradient attack (docs/design.md §3); `eot` > 1 is the adaptive variant."""

    steps: int = 30
    lr: float = 0.003
    norm: str = "l2"  # "l2": ball of RMS `eps` per pixel; "linf": +-eps per pixel
    eps: float | None = None  # None: 1/255 (l2, as RMS) or 3/255 (linf), as published
    eot: int = 1  # defender draws averaged per step (1 = as published)

    def __post_init__(self) -> None:
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' or 'linf', got {self.norm!r}")
        if self.steps < 1 or self.eot < 1 or self.lr <= 0:
            raise ValueError("steps and eot must be >= 1 and lr > 0")
        if self.eps is None:  # the published budgets; stored, so equal budgets compare equal
            object.__setattr__(self, "eps", LEVEL if self.norm == "l2" else 3 * LEVEL)
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")

    @property
    def budget(self) -> float:
        """Per-pixel budget: RMS for l2, absolute for linf."""
        return float(self.eps)

    def radius(self, numel: int) -> float:
        """L2 radius for a sample of `numel` pixel values: sqrt(numel) * RMS budget (sqrt(3HW)/255)."""
        return math.sqrt(numel) * self.budget


def white_box_attack(
    x: Tensor,
    score_fn: ScoreFn,
    target: Tensor,
    cfg: WhiteBoxConfig = WhiteBoxConfig(),
    *,
    defender: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> AttackResult:
    """Adam on the pixels of each sample of `x` (frames or whole videos, batch first) toward its target.

    Loss |score - target| (averaged over `eot` defender draws), gradient divided by its L2 norm per
    sample, then projection onto the L2 ball (or the L_inf box) around the clean sample and onto
    [0, 1]; the result is rounded to the 1/255 grid inside the budget.
    """
    target = _check_pixels(x, target)
    n = x.shape[0]
    numel = x[0].numel()
    radius = cfg.radius(numel)
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    loss = torch.full((n,), float("nan"))
    for step in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        per_sample = (_averaged(score_fn, x + delta, cfg.eot, defender) - target).abs()
        per_sample.sum().backward()
        loss = per_sample.detach()
        with torch.no_grad():
            g = delta.grad
            norms = _per_sample(g).norm(dim=1).clamp_min(1e-12)
            g.div_(norms.view(-1, *([1] * (x.ndim - 1))))
            opt.step()
            if cfg.norm == "l2":
                d_norm = _per_sample(delta).norm(dim=1)
                scale = (radius / d_norm.clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale.view(-1, *([1] * (x.ndim - 1))))
            else:
                delta.clamp_(-cfg.budget, cfg.budget)
            delta.copy_((x + delta).clamp(0.0, 1.0) - x)  # stays in the ball: clamping only shrinks |delta|
        if progress is not None:
            progress(step + 1, cfg.steps)
    queries = torch.full((n,), cfg.steps * cfg.eot, dtype=torch.long)
    adv = x + delta.detach()
    if cfg.norm == "l2":
        return AttackResult(quantize(x, adv, l2=radius), queries, loss)
    return AttackResult(quantize(x, adv, linf=cfg.budget), queries, loss)


def perturbation_norms(clean: Tensor, adv: Tensor) -> dict[str, float]:
    """L_inf and RMS (L2 / sqrt(numel)) of a perturbation, in 8-bit levels (float noise of the [0, 1]
    scale removed: results are on the grid, so the differences are whole levels)."""
    d = ((adv.double() - clean.double()) / LEVEL).round(decimals=3)
    return {"linf": float(d.abs().max()) if d.numel() else 0.0, "rms": float(d.square().mean().sqrt())}


# ----------------------------------------------------------------------------- attacks on whole videos

VideoScoreFn = Callable[[Tensor, torch.Generator], Tensor]  # (N, T, 3, H, W) in [0, 1] -> (N,)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an evaluation: which algorithm, with which settings, on which objective.

    objective "frame" is the published protocol: each frame is attacked as a one-frame video of its
    own and the whole adversarial video is scored at the end. "video" (white-box only, adaptive) attacks
    the video's own score directly, so the objective is the one the defender computes.
    kind "none" is the control: no perturbation, the clean video scored again with fresh draws. Its
    shift is the score's own noise under a randomised defense, the floor any attack's shift sits on.
    """

    kind: str = "black-box"
    objective: str = "frame"
    black_box: BlackBoxConfig = BlackBoxConfig()
    white_box: WhiteBoxConfig = WhiteBoxConfig()
    frame_batch: int = 8  # frames attacked together (one batched query)
    clips: int | None = None  # clips per objective evaluation (None: the model's test clips, as deployed)

    def __post_init__(self) -> None:
        if self.kind not in ("black-box", "white-box", "none"):
            raise ValueError(f"attack kind must be 'black-box', 'white-box' or 'none', got {self.kind!r}")
        if self.objective not in ("frame", "video"):
            raise ValueError(f"objective must be 'frame' or 'video', got {self.objective!r}")
        if self.kind == "black-box" and self.objective == "video":
            raise ValueError("the black-box attack works on frames (its units are 56x56 patches of one frame)")
        if self.frame_batch < 1 or (self.clips is not None and self.clips < 1):
            raise ValueError("frame_batch and clips must be >= 1")

    @property
    def name(self) -> str:
        """Canonical spec string; `parse(name)` gives this spec back."""
        if self.kind == "none":
            return "none"
        if self.kind == "black-box":
            b = self.black_box
            parts = [f"gamma={_levels(b.gamma)}"]
            if b.repeats != 1:
                parts.append(f"repeats={b.repeats}")
            if b.units_per_step is not None:
                parts.append(f"units={b.units_per_step}")
        else:
            wb = self.white_box
            parts = [f"norm={wb.norm}", f"eps={_levels(wb.budget)}"]
            if wb.eot != 1:
                parts.append(f"eot={wb.eot}")
            if (wb.steps, wb.lr) != (30, 0.003):
                parts += [f"steps={wb.steps}", f"lr={wb.lr:g}"]
            if self.objective != "frame":
                parts.append(f"objective={self.objective}")
        if self.clips is not None:
            parts.append(f"clips={self.clips}")
        if self.frame_batch != 8:  # the attacker's draws follow the batching
            parts.append(f"batch={self.frame_batch}")
        return f"{self.kind}:{','.join(parts)}"

    @property
    def adaptive(self) -> bool:
        if self.kind == "none":
            return False
        return self.black_box.repeats > 1 if self.kind == "black-box" else (
            self.white_box.eot > 1 or self.objective == "video")

    @classmethod
    def parse(cls, spec: str) -> "AttackSpec":
        """'black-box', 'black-box:gamma=3', 'black-box:gamma=5,repeats=8', 'white-box:norm=linf',
        'white-box:eot=8,clips=1,objective=video'; gamma and eps in 8-bit levels (5 means 5/255); clips: clips
        the objective scores per evaluation (default: the model's test clips, what a deployed scorer returns)."""
        kind, _, rest = spec.strip().partition(":")
        opts: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            k, eq, v = item.partition("=")
            if not eq:
                raise ValueError(f"attack option {item!r} in {spec!r} must be key=value")
            opts[k.strip()] = v.strip()
        allowed = {"none": set(), "black-box": {"gamma", "repeats", "units", "batch", "clips"},
                   "white-box": {"norm", "eps", "eot", "steps", "lr", "objective", "batch", "clips"}}
        if kind not in allowed:
            raise ValueError(f"unknown attack {kind!r} in {spec!r}: use 'black-box', 'white-box' or 'none'")
        unknown = set(opts) - allowed[kind]
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for {kind}; allowed: {sorted(allowed[kind])}")
        try:
            if kind == "none":
                return cls(kind="none")
            batch = int(opts.get("batch", 8))
            clips = int(opts["clips"]) if "clips" in opts else None
            if kind == "black-box":
                bb = BlackBoxConfig(
                    gamma=float(opts.get("gamma", 5)) * LEVEL, repeats=int(opts.get("repeats", 1)),
                    units_per_step=int(opts["units"]) if "units" in opts else None)
                return cls(kind=kind, black_box=bb, frame_batch=batch, clips=clips)
            wb = WhiteBoxConfig(
                steps=int(opts.get("steps", 30)), lr=float(opts.get("lr", 0.003)), norm=opts.get("norm", "l2"),
                eps=float(opts["eps"]) * LEVEL if "eps" in opts else None, eot=int(opts.get("eot", 1)))
            return cls(kind=kind, objective=opts.get("objective", "frame"), white_box=wb, frame_batch=batch,
                       clips=clips)
        except ValueError as e:
            raise ValueError(f"bad attack spec {spec!r}: {e}") from None


def _levels(v: float) -> str:
    return f"{v / LEVEL:g}"


def attack_video(
    frames: Tensor,
    score_videos: VideoScoreFn,
    target: float,
    spec: AttackSpec,
    *,
    attacker: torch.Generator,
    defender: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
) -> AttackResult:
    """Attack one video (T, 3, H, W) in [0, 1]; returns the adversarial video (T, 3, H, W), the
    queries summed over its frames, and the mean last loss."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W), got {tuple(frames.shape)}")
    if spec.kind == "none":
        return AttackResult(frames.clone(), torch.zeros(1, dtype=torch.long), torch.full((1,), float("nan")))
    if spec.objective == "video":
        res = white_box_attack(frames[None], score_videos, torch.tensor([target]), spec.white_box,
                               defender=defender, progress=progress)
        return AttackResult(res.adversarial[0], res.queries, res.loss)

    def score_frames(x: Tensor, g: torch.Generator) -> Tensor:
        return score_videos(x[:, None], g)  # each frame a one-frame video

    out, queries, losses = [], 0, []
    batches = list(frames.split(spec.frame_batch))
    for i, part in enumerate(batches):
        t = torch.full((part.shape[0],), float(target))
        if spec.kind == "black-box":
            res = black_box_attack(part, score_frames, t, spec.black_box, generator=attacker, defender=defender)
        else:
            res = white_box_attack(part, score_frames, t, spec.white_box, defender=defender)
        out.append(res.adversarial)
        queries += int(res.queries.sum())
        losses.append(res.loss)
        if progress is not None:
            progress(i + 1, len(batches))
    return AttackResult(torch.cat(out), torch.tensor([queries]), torch.cat(losses).mean().reshape(1))
