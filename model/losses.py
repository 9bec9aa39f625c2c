"""Training losses: PLCC loss, pairwise rank loss, and a differentiable SRCC loss.

Every loss takes predicted scores and MOS labels of one batch, 1-D of length B (or (B, 1)), and
returns a 0-dim float32 tensor differentiable w.r.t. the predictions. All are correlation or ranking
losses, so they need at least two samples; B < 2 raises ValueError instead of returning NaN.

`quality_loss` combines them as configured by `LossConfig`:
- "reference": PLCC loss + 0.3 x rank loss, what the reference training code optimises;
- "srcc": PLCC loss + differentiable SRCC loss, the combination the paper's text describes;
- "margin": a pairwise hinge with a margin proportional to the label difference (`margin_rank_loss`),
  on raw scores: what trains a randomly initialised model on a CPU (docs/training.md, "The demo model").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossConfig", "grouped_quality_loss", "margin_rank_loss", "plcc_loss", "quality_loss", "rank_loss",
           "soft_rank", "srcc_loss"]

LossKind = Literal["reference", "srcc", "margin"]
_KINDS: tuple[str, ...] = ("reference", "srcc", "margin")


def _as_vector(x: Tensor, name: str) -> Tensor:
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D (B,) or (B, 1), got shape {tuple(x.shape)}")
    return x.float()  # losses are float32 whatever the head's dtype (bf16 runs included)


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validated float32 (B,) vectors; the target is moved to the predictions' device, never differentiated."""
    p, y = _as_vector(pred, "pred"), _as_vector(target, "target").detach().to(pred.device)
    if p.shape != y.shape:
        raise ValueError(f"pred and target differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.shape[0] < 2:
        raise ValueError(f"correlation and ranking losses need a batch of at least 2 samples, got {p.shape[0]}")
    return p, y


def _zscore(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) with the biased std, so that mean(z_a * z_b) is exactly Pearson's r."""
    return (x - x.mean()) / (x.std(unbiased=False) + eps)


def _pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Differentiable Pearson correlation; 0 (not NaN) when either side is constant, thanks to eps."""
    return (_zscore(a, eps) * _zscore(b, eps)).mean()


def plcc_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """PLCC loss of the reference recipe, in [0, 0.5]; 0 iff pred is an increasing affine map of target.

    With z-scores p, y and rho = mean(p * y) (Pearson's r): ``(mse(p, y) + mse(rho * p, y)) / 8``,
    which equals (1 - rho)(3 + rho) / 8. The second term keeps a gradient near rho = 1.
    """
    pred, target = _pair(pred, target)
    p, y = _zscore(pred, eps), _zscore(target, eps)
    rho = (p * y).mean()
    loss0 = F.mse_loss(p, y) / 4
    loss1 = F.mse_loss(rho * p, y) / 4
    return (loss0 + loss1) / 2


def rank_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Pairwise hinge on wrongly ordered pairs, averaged over the B(B-1) ordered pairs.

    L[i, j] = relu((pred_i - pred_j) * sign(target_j - target_i)): positive when the labels order
    i below j but the predictions order it above. Pairs tied in the label (sign 0) cost nothing.
    Divided by 1 + max(L) (not detached), which bounds the loss below 1 whatever the score scale.
    """
    pred, target = _pair(pred, target)
    b = pred.shape[0]
    hinge = torch.relu((pred[:, None] - pred[None, :]) * torch.sign(target[None, :] - target[:, None]))
    return hinge.sum() / (b * (b - 1)) / (1 + hinge.max())


def margin_rank_loss(pred: Tensor, target: Tensor, margin: float = 0.1) -> Tensor:
    """Pairwise hinge relu(margin * (y_i - y_j) - (p_i - p_j)) over the pairs with y_i > y_j, averaged;
    0 when no pair differs in label (ties cost nothing).

    Unlike the PLCC loss and the z-scored rank term it works on raw scores, so it has a gradient of
    fixed size from the first step (the correlation losses z-score predictions that spread by ~0.002
    at the start: their direction is noise), and it asks for a score gap of at least `margin` per unit
    of label: a slope, so the scores come out on a linear scale of the labels.
    """
    pred, target = _pair(pred, target)
    dy = target[:, None] - target[None, :]
    ordered = dy > 0
    if not ordered.any():
        return pred.sum() * 0.0
    return torch.relu(margin * dy - (pred[:, None] - pred[None, :]))[ordered].mean()


def soft_rank(x: Tensor, temperature: float) -> Tensor:
    """Differentiable 1-based ranks of a 1-D tensor: rank_i = 0.5 + sum_j sigmoid((x_i - x_j) / temperature).

    The self term sigmoid(0) = 0.5 makes the smallest value's rank about 1; tied values share the
    average of their ranks, like scipy's rankdata. As temperature -> 0 the ranks become exact for
    values further apart than a few temperatures. Builds a B x B matrix: O(B^2) time and memory,
    negligible for training batches (a few dozen videos).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if x.ndim != 1:
        raise ValueError(f"soft_rank expects a 1-D tensor, got shape {tuple(x.shape)}")
    return 0.5 + torch.sigmoid((x[:, None] - x[None, :]) / temperature).sum(1)


def _average_rank(x: Tensor) -> Tensor:
    """Exact 1-based ranks with ties averaged (scipy's rankdata 'average'): #smaller + (#equal + 1) / 2."""
    smaller = (x[None, :] < x[:, None]).sum(1)
    equal = (x[None, :] == x[:, None]).sum(1)  # includes the element itself
    return smaller.to(x.dtype) + (equal.to(x.dtype) + 1) / 2


def srcc_loss(pred: Tensor, target: Tensor, temperature: float = 0.1) -> Tensor:
    """Differentiable Spearman loss (1 - r) / 2 in [0, 1], r = Pearson(soft ranks of pred, ranks of target).

    Predictions are z-scored before soft ranking so that `temperature` is in units of the batch's
    std, independent of the score scale. Target ranks are exact (ties averaged) and carry no gradient.
    """
    pred, target = _pair(pred, target)
    r = _pearson(soft_rank(_zscore(pred), temperature), _average_rank(target))
    return (1 - r) / 2


@dataclass(frozen=True)
class LossConfig:
    """Which training loss `quality_loss` computes, and its weights.

    kind "reference": plcc_loss + rank_weight * rank_loss (the reference code);
    kind "srcc": plcc_loss + srcc_weight * srcc_loss(temperature) (the paper's text).
    """

    kind: LossKind = "reference"
    rank_weight: float = 0.3
    srcc_weight: float = 1.0
    temperature: float = 0.1
    # The reference hinge works on raw scores: at the start of training they spread by ~0.002, so its
    # gradient is ~0.3% of the PLCC term's. On z-scored predictions it is scale-free (docs/training.md).
    rank_zscore: bool = False
    margin: float = 0.1  # kind "margin": score gap asked per unit of label
    # grouped_quality_loss: weight of the whole-batch term beside the per-group terms.
    batch_weight: float = 0.1
    # grouped_quality_loss: the whole-batch term's kind (None: `kind`). The margin hinge is one-sided and
    # ties cost nothing, so it leaves two contents' clean versions (both labelled 5) at any offset; a
    # correlation ("reference") over the batch asks every content for one score scale (docs/training.md, "Run P").
    batch_kind: LossKind | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"loss kind must be one of {_KINDS}, got {self.kind!r}")
        if self.batch_kind is not None and self.batch_kind not in _KINDS:
            raise ValueError(f"batch loss kind must be one of {_KINDS} or None, got {self.batch_kind!r}")
        if self.rank_weight < 0 or self.srcc_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got rank {self.rank_weight}, srcc {self.srcc_weight}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.margin <= 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        if self.batch_weight < 0:
            raise ValueError(f"batch_weight must be >= 0, got {self.batch_weight}")


def quality_loss(pred: Tensor, target: Tensor, cfg: LossConfig = LossConfig()) -> Tensor:
    """The training loss selected by `cfg` (see `LossConfig`), a 0-dim float32 tensor."""
    if cfg.kind == "reference":
        ranked = _zscore(_as_vector(pred, "pred")) if cfg.rank_zscore else pred
        return plcc_loss(pred, target) + cfg.rank_weight * rank_loss(ranked, target)
    if cfg.kind == "srcc":
        return plcc_loss(pred, target) + cfg.srcc_weight * srcc_loss(pred, target, cfg.temperature)
    if cfg.kind == "margin":
        return margin_rank_loss(pred, target, cfg.margin)
    raise ValueError(f"loss kind must be one of {_KINDS}, got {cfg.kind!r}")


def grouped_quality_loss(pred: Tensor, target: Tensor, groups: Tensor, cfg: LossConfig = LossConfig()) -> Tensor:
    """`quality_loss` within each group (e.g. the clips of one source content), averaged over groups,
    plus `cfg.batch_weight` x `quality_loss` over the whole batch, of kind `cfg.batch_kind` (default `cfg.kind`).

    Why: a correlation over a batch of two contents mostly measures the two contents' offsets (features
    differ ~5x more between contents than within one), so the quality differences inside each content
    must carry the gradient; the small whole-batch term keeps the scores of different contents on one
    scale. `groups`: (B,) integer labels; every group needs >= 2 samples (ValueError otherwise).
    """
    pred, target = _pair(pred, target)
    groups = groups.to(pred.device).view(-1)
    if groups.shape != pred.shape:
        raise ValueError(f"groups must have one label per sample, got {tuple(groups.shape)} for {pred.shape[0]}")
    labels = torch.unique(groups)
    per_group = [quality_loss(pred[groups == g], target[groups == g], cfg) for g in labels]
    loss = torch.stack(per_group).mean()
    if cfg.batch_weight and len(labels) > 1:
        whole = cfg if cfg.batch_kind is None else dataclasses.replace(cfg, kind=cfg.batch_kind)
        loss = loss + cfg.batch_weight * quality_loss(pred, target, whole)
    return loss
