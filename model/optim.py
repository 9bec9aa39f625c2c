"""Optimizer, learning-rate schedule and weight EMA of the training recipe.

- `param_groups` / `build_optimizer`: AdamW with one learning rate for the pretrained backbone
  (parameters under ``intra.``) and a 10x larger one for the freshly initialised fusion and head;
- `warmup_cosine`: linear warm-up then cosine decay to 0, stepped once per optimizer step;
- `ModelEMA`: exponential moving average of the weights (and buffers), evaluated beside the raw model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["ModelEMA", "build_optimizer", "param_groups", "warmup_cosine"]

# Runs shorter than this many steps (smoke tests, debugging) may ask for a warm-up as long as the run.
TINY_RUN_STEPS = 10


def param_groups(
    model: nn.Module,
    *,
    backbone_lr: float = 1e-4,
    head_lr: float = 1e-3,
    weight_decay: float = 0.05,
    backbone_prefix: str = "intra.",
) -> list[dict[str, Any]]:
    """AdamW parameter groups: "backbone" (names starting with `backbone_prefix`) and "head" (the rest).

    Frozen parameters (requires_grad False) are left out, and so are empty groups (a frozen backbone
    gives only "head"). Weight decay applies to every parameter, biases and norms included, as in the
    reference recipe.
    """
    backbone: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if name.startswith(backbone_prefix) else head).append(p)
    groups = [
        {"name": name, "params": params, "lr": lr, "weight_decay": weight_decay}
        for name, params, lr in (("backbone", backbone, backbone_lr), ("head", head, head_lr))
        if params
    ]
    if not groups:
        raise ValueError("the model has no trainable parameter (all have requires_grad False)")
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    backbone_lr: float = 1e-4,
    head_lr: float = 1e-3,
    weight_decay: float = 0.05,
    backbone_prefix: str = "intra.",
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, ...)`; each group carries its own lr and weight decay."""
    groups = param_groups(
        model, backbone_lr=backbone_lr, head_lr=head_lr, weight_decay=weight_decay, backbone_prefix=backbone_prefix
    )
    return torch.optim.AdamW(groups)


def _warmup_cosine_factor(step: int, warmup_steps: float, total_steps: int) -> float:
    """Multiplier of the base lr for 0-based `step`: linear up to 1, then half a cosine down to 0."""
    if step < warmup_steps:
        return min(1.0, (step + 1) / warmup_steps)  # min: a fractional warm-up's last step would exceed 1
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))  # stays 0 past total_steps
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: float, total_steps: int) -> LambdaLR:
    """LambdaLR scaling each group's lr by (s + 1) / warmup_steps during warm-up, then by
    0.5 (1 + cos(pi (s - warmup_steps) / (total_steps - warmup_steps))); s is the 0-based step about to
    be taken. Call ``scheduler.step()`` after every ``optimizer.step()``.

    `warmup_steps` may be fractional (epochs x steps per epoch); <= 0 means no warm-up. A warm-up as
    long as the run or longer is a configuration error, except in runs shorter than `TINY_RUN_STEPS`
    (smoke tests, where an epoch-based warm-up easily exceeds the run): there it is shortened to half
    the run, so the lr still rises then decays. Past `total_steps` the multiplier stays 0.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if not math.isfinite(warmup_steps):
        raise ValueError(f"warmup_steps must be finite, got {warmup_steps}")
    warmup = max(0.0, float(warmup_steps))
    if warmup >= total_steps:
        if total_steps >= TINY_RUN_STEPS:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
        warmup = total_steps / 2
    return LambdaLR(optimizer, lambda step: _warmup_cosine_factor(step, warmup, total_steps))


def _ema_or_copy(decay: float) -> Callable[[list[Tensor], list[Tensor], Any], None]:
    """AveragedModel's multi-tensor EMA for float tensors; integer buffers (BatchNorm's
    num_batches_tracked, index tables) are copied instead: averaging them would truncate (a counter
    would stay stuck at its first value) and an average index is meaningless."""
    ema = get_ema_multi_avg_fn(decay)

    def update(averaged: list[Tensor], current: list[Tensor], n_averaged: Any) -> None:
        # AveragedModel groups tensors by dtype, so one list is all float or all integer
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            ema(averaged, current, n_averaged)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers, built on AveragedModel.

    The first `update` copies the model; later ones do ema = decay * ema + (1 - decay) * model.
    `.module` is a deep copy of the model (same class, callable like it), in eval mode, with
    requires_grad off; evaluate it beside the raw model. `state_dict()` holds the averaged module's
    own state dict (keys as in the model's, so it loads into a plain model too), the number of
    updates and the decay; like nn.Module's, its tensors alias the live ones (torch.save it, or copy).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self._avg = AveragedModel(model, multi_avg_fn=_ema_or_copy(decay), use_buffers=True)
        self._avg.requires_grad_(False)
        self._avg.eval()
        self.decay = float(decay)

    @property
    def module(self) -> nn.Module:
        return self._avg.module

    @property
    def num_updates(self) -> int:
        return int(self._avg.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current parameters and buffers into the average (call after optimizer.step())."""
        n_model = len(list(model.parameters())) + len(list(model.buffers()))
        n_ema = len(list(self.module.parameters())) + len(list(self.module.buffers()))
        if n_model != n_ema:  # AveragedModel zips without checking
            raise ValueError(f"model has {n_model} parameters and buffers, the EMA {n_ema}: not the same model")
        self._avg.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` (strictly), decay included, as optimizers restore their hyper-parameters."""
        self.module.load_state_dict(state["module"])
        self._avg.n_averaged.fill_(int(state["num_updates"]))
        self.decay = float(state["decay"])
        self._avg.multi_avg_fn = _ema_or_copy(self.decay)
