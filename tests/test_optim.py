"""Optimizer groups, the warm-up + cosine schedule, and the weight EMA."""

import io
import math

import pytest
import torch
from torch import nn

from model.optim import TINY_RUN_STEPS, ModelEMA, build_optimizer, param_groups, warmup_cosine


class Toy(nn.Module):
    """Named like SecureVQA: a backbone under `intra`, the rest under `head`; BatchNorm for buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.intra = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
        self.head = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.intra(x))


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_param_groups_split_by_prefix():
    model = Toy()
    groups = param_groups(model, backbone_lr=2e-5, head_lr=3e-4, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    backbone, head = groups
    assert ids(backbone["params"]) == ids(model.intra.parameters())
    assert ids(head["params"]) == ids(model.head.parameters())
    assert (backbone["lr"], head["lr"]) == (2e-5, 3e-4)
    assert backbone["weight_decay"] == head["weight_decay"] == 0.1


def test_param_groups_skip_frozen():
    model = Toy()
    model.head[0].bias.requires_grad_(False)
    head = param_groups(model)[1]
    assert ids(head["params"]) == ids(model.head.parameters()) - {id(model.head[0].bias)}
    model.intra.requires_grad_(False)
    groups = param_groups(model)
    assert [g["name"] for g in groups] == ["head"]
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        param_groups(model)


def test_build_optimizer_uses_group_lrs():
    opt = build_optimizer(Toy(), backbone_lr=1e-4, head_lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("backbone", 1e-4, 0.05),
        ("head", 1e-3, 0.05),
    ]


def run_schedule(warmup_steps: float, total_steps: int, base_lrs=(1e-4, 1e-3)) -> list[list[float]]:
    """lr of each group at every step s = 0 .. total_steps - 1 (the lr the step s uses)."""
    params = [nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)])
    sched = warmup_cosine(opt, warmup_steps=warmup_steps, total_steps=total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_values():
    w, total = 10, 110
    lrs = run_schedule(w, total)
    for group, base in enumerate((1e-4, 1e-3)):
        assert lrs[0][group] == pytest.approx(base * 1 / 10)  # (0 + 1) / 10
        assert lrs[w - 1][group] == pytest.approx(base)  # last warm-up step: 10 / 10
        assert lrs[w][group] == pytest.approx(base)  # cosine starts at cos(0)
        assert lrs[60][group] == pytest.approx(base * 0.5)  # midpoint of the decay: (60 - 10) / 100 = 1/2
        last = base * 0.5 * (1 + math.cos(math.pi * 99 / 100))
        assert lrs[total - 1][group] == pytest.approx(last)
        assert 0 < lrs[total - 1][group] < base * 1e-3


def test_warmup_cosine_up_then_down():
    lrs = [lr for lr, _ in run_schedule(7.5, 60)]
    peak = lrs.index(max(lrs))
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))
    # fractional warm-up (2.5 epochs x 3 steps): 1/7.5, 2/7.5, ..., capped at 1 on the last warm-up step
    assert lrs[:8] == pytest.approx([1e-4 * min(1.0, (s + 1) / 7.5) for s in range(8)])


def test_warmup_cosine_without_warmup_and_past_the_end():
    lrs = [lr for lr, _ in run_schedule(0, 20)]
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[10] == pytest.approx(1e-4 * 0.5)  # cos(pi / 2)
    params = [nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=12)
    for _ in range(30):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0  # stays at 0, no second cosine bump


def test_warmup_cosine_validation_and_tiny_runs():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        warmup_cosine(opt, warmup_steps=1, total_steps=0)
    with pytest.raises(ValueError):
        warmup_cosine(opt, warmup_steps=TINY_RUN_STEPS, total_steps=TINY_RUN_STEPS)
    # a 4-step smoke run with a longer warm-up: warm-up shortened to 2 steps, then the cosine
    lrs = [lr for (lr,) in run_schedule(5, 4, base_lrs=(1.0,))]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 2))])


def set_all(model: nn.Module, value: float) -> None:
    """Every float parameter and float buffer of the model filled with `value`."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.fill_(value)


def test_ema_closed_form():
    decay, values = 0.9, [1.0, 5.0, -2.0, 3.0, 0.5]
    model = Toy()
    ema = ModelEMA(model, decay=decay)
    for v in values:
        set_all(model, v)
        ema.update(model)
    # first update copies v_1; then e_n = decay^(n-1) v_1 + sum_{k=2..n} (1 - decay) decay^(n-k) v_k
    n = len(values)
    expected = decay ** (n - 1) * values[0] + sum(
        (1 - decay) * decay ** (n - k) * values[k - 1] for k in range(2, n + 1)
    )
    for name, tensor in list(ema.module.named_parameters()) + list(ema.module.named_buffers()):
        if tensor.is_floating_point():
            assert torch.allclose(tensor, torch.full_like(tensor, expected), atol=1e-6), name
    assert ema.num_updates == n


def test_ema_follows_buffers_and_copies_integer_ones():
    model = Toy().train()
    ema = ModelEMA(model, decay=0.5)
    bn = model.head[1]
    for _ in range(4):
        model(torch.randn(8, 3))  # moves running stats and counts batches
        ema.update(model)
    # running mean: copied at update 1, then averaged; the counter follows the model exactly
    assert not torch.equal(ema.module.head[1].running_mean, torch.zeros(2))
    assert int(ema.module.head[1].num_batches_tracked) == int(bn.num_batches_tracked) == 4
    set_all(model, 2.0)
    for _ in range(40):
        ema.update(model)
    assert torch.allclose(ema.module.head[1].running_mean, torch.full((2,), 2.0), atol=1e-6)
    assert torch.allclose(ema.module.head[1].running_var, torch.full((2,), 2.0), atol=1e-6)


def test_ema_module_frozen_eval_same_class():
    model = Toy().train()
    ema = ModelEMA(model)
    assert type(ema.module) is Toy and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    ema.update(model)
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the raw model is untouched
    x = torch.randn(5, 3)
    assert ema.module(x).shape == (5, 1)
    assert ema.module is not model and ema.module.head[0].weight is not model.head[0].weight


def test_ema_state_dict_round_trip():
    torch.manual_seed(0)
    model = Toy()
    ema = ModelEMA(model, decay=0.8)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    restored = ModelEMA(Toy(), decay=0.3)  # different weights and decay: all must come from the state dict
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert restored.num_updates == ema.num_updates == 3 and restored.decay == 0.8

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model)
    restored.update(model)
    a, b = ema.module.state_dict(), restored.module.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # keys are the model's own, so the EMA weights load into a plain model
    Toy().load_state_dict(ema.state_dict()["module"])


def test_ema_fresh_state_copies_on_first_update():
    model = Toy()
    ema = ModelEMA(model, decay=0.99)
    set_all(model, 7.0)
    ema.update(model)  # the first update is a copy, not 0.01 of the way
    assert torch.allclose(ema.module.head[0].weight, torch.full_like(model.head[0].weight, 7.0))


def test_ema_rejects_other_model():
    ema = ModelEMA(Toy())
    with pytest.raises(ValueError, match="not the same model"):
        ema.update(nn.Linear(3, 1))
