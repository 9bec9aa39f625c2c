"""Training losses: hand-computed values, agreement with scipy, gradients, and that they train."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from model.losses import LossConfig, _pearson, plcc_loss, quality_loss, rank_loss, soft_rank, srcc_loss


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def random_pair(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = rng.uniform(1, 5, size=n)
    if ties:
        target = np.round(target)  # integer MOS: many ties
    pred = 0.5 * target + rng.normal(0, 1.0, size=n) + 3
    return pred, target


def mse(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)


def test_plcc_loss_by_hand():
    # pred [1, 2, 4]: mean 7/3, deviations (-4, -1, 5)/3, biased var 42/27 = 14/9 -> z = (-4, -1, 5)/sqrt(14)
    # target [1, 3, 2]: mean 2, deviations (-1, 1, 0), biased var 2/3 -> z = (-1, 1, 0) * sqrt(3/2)
    p = [v / math.sqrt(14) for v in (-4, -1, 5)]
    y = [v * math.sqrt(1.5) for v in (-1, 1, 0)]
    rho = (4 - 1 + 0) / math.sqrt(14) * math.sqrt(1.5) / 3  # mean(p * y) = sqrt(3/28)
    assert rho == pytest.approx(math.sqrt(3 / 28))
    expected = (mse(p, y) / 4 + mse([rho * v for v in p], y) / 4) / 2
    assert expected == pytest.approx((1 - rho) * (3 + rho) / 8)  # the closed form of the docstring
    got = plcc_loss(t([1, 2, 4]), t([1, 3, 2]))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_rank_loss_by_hand():
    # target [1, 3, 2], pred [1, 2, 4]: only the pair (2nd, 3rd) is misordered, by 4 - 2 = 2; the matrix is
    # symmetric so it counts in both L[1, 2] and L[2, 1]. 6 ordered pairs, max 2.
    assert rank_loss(t([1, 2, 4]), t([1, 3, 2])).item() == pytest.approx((2 + 2) / (3 * 2) / (1 + 2))
    # tie in target: target [1, 2, 2], pred [3, 1, 2]. Pair (1st, 2nd): 3 - 1 = 2 misordered; (1st, 3rd):
    # 3 - 2 = 1 misordered; (2nd, 3rd): tied label, sign 0, costs nothing although pred differs.
    assert rank_loss(t([3, 1, 2]), t([1, 2, 2])).item() == pytest.approx(2 * (2 + 1) / (3 * 2) / (1 + 2))
    # 4 samples: 4 misordered pairs of two sizes, a tie in target and a tie in pred
    pred, target = t([2.0, 3.0, 1.5, 1.5]), t([1, 1, 4, 3])
    # pairs: (0,2): 2 > 1.5 with t0 < t2 -> 0.5; (0,3): 0.5; (1,2): 3 - 1.5 = 1.5; (1,3): 1.5; (2,3): t2 > t3,
    # p2 == p3 -> 0; (0,1): tied target -> 0
    assert rank_loss(pred, target).item() == pytest.approx(2 * (0.5 + 0.5 + 1.5 + 1.5) / (4 * 3) / (1 + 1.5))


def test_rank_loss_zero_when_ordered_and_flat_shapes_accepted():
    assert rank_loss(t([0.1, 0.5, 0.9]), t([1, 2, 5])).item() == 0.0
    col = plcc_loss(t([[1], [2], [4]]), t([1, 3, 2]))
    assert col.item() == pytest.approx(plcc_loss(t([1, 2, 4]), t([1, 3, 2])).item())


@pytest.mark.parametrize("scale, shift", [(1.0, 0.0), (0.01, 3.0), (250.0, -40.0)])
def test_plcc_loss_zero_for_increasing_affine(scale, shift):
    target = t([1.2, 3.4, 2.2, 4.9, 1.0, 3.3])
    assert plcc_loss(scale * target + shift, target).item() == pytest.approx(0.0, abs=1e-6)


def test_plcc_loss_anticorrelated_is_max():
    target = t([1.2, 3.4, 2.2, 4.9, 1.0, 3.3])
    pred, _ = random_pair(6, seed=3)
    middle = plcc_loss(t(pred), target).item()
    worst = plcc_loss(-target, target).item()
    assert worst == pytest.approx(0.5, abs=1e-6)  # rho = -1: (1 - rho)(3 + rho)/8 = 2 * 2 / 8
    assert 0.0 < middle < worst


def test_pearson_and_plcc_against_scipy():
    pred, target = random_pair(40, seed=0)
    r = stats.pearsonr(pred, target).statistic
    assert _pearson(t(pred), t(target)).item() == pytest.approx(r, abs=1e-5)
    # plcc_loss is (1 - rho)(3 + rho)/8 of the Pearson rho inside it
    assert plcc_loss(t(pred), t(target)).item() == pytest.approx((1 - r) * (3 + r) / 8, abs=1e-5)


def test_soft_rank_tends_to_rankdata():
    x = torch.randn(30, generator=torch.Generator().manual_seed(0))
    exact = stats.rankdata(x.numpy())
    gap = np.diff(np.sort(x.numpy())).min()
    assert soft_rank(x, temperature=gap / 20).numpy() == pytest.approx(exact, abs=1e-3)
    # a large temperature blurs the ranks towards their mean
    blurred = soft_rank(x, temperature=1000.0).numpy()  # ~ mean + B (x_i - mean(x)) / (4 T)
    assert np.abs(blurred - exact.mean()).max() < 0.05
    with pytest.raises(ValueError):
        soft_rank(x, temperature=0.0)


def test_soft_rank_ties_get_average_rank():
    ranks = soft_rank(t([3.0, 1.0, 3.0, 2.0]), temperature=1e-4)
    assert ranks.numpy() == pytest.approx(stats.rankdata([3, 1, 3, 2]), abs=1e-4)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_srcc_loss_against_scipy(seed, ties):
    pred, target = random_pair(24, seed=seed, ties=ties)
    rho = stats.spearmanr(pred, target).statistic
    got = srcc_loss(t(pred), t(target), temperature=1e-5).item()
    assert got == pytest.approx((1 - rho) / 2, abs=1e-4)


def test_srcc_loss_bounds():
    target = t([1, 2, 3, 4, 5])
    assert srcc_loss(target * 7, target, temperature=1e-4).item() == pytest.approx(0.0, abs=1e-5)
    assert srcc_loss(-target, target, temperature=1e-4).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("loss", [plcc_loss, rank_loss, srcc_loss, quality_loss])
def test_losses_differentiable_float32_scalar(loss):
    pred, target = random_pair(12, seed=4, ties=True)
    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)  # float64 in, float32 out
    out = loss(p, torch.tensor(target))
    assert out.ndim == 0 and out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "cfg", [LossConfig(), LossConfig(kind="srcc"), LossConfig(kind="srcc", srcc_weight=2.0, temperature=0.3)]
)
def test_gradient_descent_reaches_rank_agreement(cfg):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(16, generator=g) * 4 + 1
    pred = torch.randn(16, generator=g).requires_grad_(True)
    start = stats.spearmanr(pred.detach().numpy(), target.numpy()).statistic
    opt = torch.optim.Adam([pred], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        quality_loss(pred, target, cfg).backward()
        opt.step()
    end = stats.spearmanr(pred.detach().numpy(), target.numpy()).statistic
    assert start < 0.5
    assert end > 0.99


def test_quality_loss_combinations():
    pred, target = t([1, 2, 4, 3]), t([1, 3, 2, 4])
    ref = quality_loss(pred, target, LossConfig(rank_weight=0.5))
    assert ref.item() == pytest.approx((plcc_loss(pred, target) + 0.5 * rank_loss(pred, target)).item())
    srcc = quality_loss(pred, target, LossConfig(kind="srcc", srcc_weight=2.0, temperature=0.2))
    expected = plcc_loss(pred, target) + 2.0 * srcc_loss(pred, target, temperature=0.2)
    assert srcc.item() == pytest.approx(expected.item())


@pytest.mark.parametrize("loss", [plcc_loss, rank_loss, srcc_loss, quality_loss])
def test_batch_of_one_raises(loss):
    with pytest.raises(ValueError, match="at least 2"):
        loss(t([1.0]), t([2.0]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="kind"):
        LossConfig(kind="mse")
    with pytest.raises(ValueError, match="length"):
        plcc_loss(t([1, 2, 3]), t([1, 2]))
    with pytest.raises(ValueError, match="1-D"):
        rank_loss(torch.zeros(2, 3), torch.zeros(2, 3))


def test_grouped_loss_is_the_mean_of_per_group_losses_plus_the_batch_term():
    from model.losses import grouped_quality_loss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(8, generator=g), torch.rand(8, generator=g) * 4 + 1
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    cfg = LossConfig(batch_weight=0.25)
    want = (quality_loss(pred[:4], target[:4], cfg) + quality_loss(pred[4:], target[4:], cfg)) / 2
    want = want + 0.25 * quality_loss(pred, target, cfg)
    assert torch.allclose(grouped_quality_loss(pred, target, groups, cfg), want)
    # a content offset costs the per-group terms nothing: only the batch term sees it
    shifted = pred + 10 * groups
    per_group = grouped_quality_loss(shifted, target, groups, LossConfig(batch_weight=0.0))
    assert torch.allclose(per_group, grouped_quality_loss(pred, target, groups, LossConfig(batch_weight=0.0)))
    with pytest.raises(ValueError, match="one label per sample"):
        grouped_quality_loss(pred, target, groups[:4], cfg)


def test_a_correlation_batch_term_sees_the_content_offset_the_margin_hinge_leaves():
    from model.losses import grouped_quality_loss

    # two contents, each its clean (5) and a degraded (3) version, ordered right within each content with
    # a gap well over the margin; content 1 sits 0.5 lower, so its clean version scores below content 0's
    target = t([5.0, 3.0, 5.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1])
    aligned, offset = t([1.0, 0.0, 1.0, 0.0]), t([1.0, 0.0, 0.5, -0.5])
    margin = LossConfig(kind="margin", margin=0.1, batch_weight=1.0)
    corr = dataclasses.replace(margin, batch_kind="reference")
    # the one-sided hinge is satisfied either way: tied labels cost nothing, every ordered pair has its gap
    assert grouped_quality_loss(offset, target, groups, margin).item() == 0.0
    # the correlation over the batch is 0 without the offset and grows with it
    assert grouped_quality_loss(aligned, target, groups, corr).item() < 1e-6
    assert grouped_quality_loss(offset, target, groups, corr).item() > 0.01
    # the per-group terms keep the group's own kind: without a batch term both configurations agree
    no_batch = dataclasses.replace(corr, batch_weight=0.0)
    assert grouped_quality_loss(offset, target, groups, no_batch).item() == 0.0
    with pytest.raises(ValueError, match="batch loss kind"):
        LossConfig(batch_kind="mse")


def test_z_scored_rank_term_does_not_depend_on_the_score_scale():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(8, generator=g) * 0.002, torch.rand(8, generator=g)
    pred.requires_grad_(True)
    cfg = LossConfig(rank_zscore=True, rank_weight=1.0)
    raw = LossConfig(rank_weight=1.0)
    # scaling the predictions changes nothing when ranks are taken on z-scores ...
    assert torch.allclose(quality_loss(pred, target, cfg), quality_loss(pred * 1000, target, cfg), atol=1e-5)
    # ... while the raw hinge is ~0 at a spread of 0.002 (its gradient 0.3% of PLCC's at the start)
    assert (quality_loss(pred, target, raw) - plcc_loss(pred, target)).item() < 0.01
    assert (quality_loss(pred, target, cfg) - plcc_loss(pred, target)).item() > 0.05


def test_margin_rank_loss_asks_a_gap_per_label_unit():
    from model.losses import margin_rank_loss

    target = torch.tensor([1.0, 2.0, 4.0])
    assert margin_rank_loss(0.2 * target, target, margin=0.1).item() == 0.0  # slope above the margin: satisfied
    flat = torch.zeros(3, requires_grad=True)
    loss = margin_rank_loss(flat, target, margin=0.1)
    assert loss.item() == pytest.approx(0.1 * (1 + 3 + 2) / 3)
    loss.backward()
    assert flat.grad[2] < 0 < flat.grad[0]  # raise the best, lower the worst, from the first step
    ties = torch.tensor([3.0, 3.0])
    assert margin_rank_loss(torch.tensor([0.5, -0.5]), ties).item() == 0.0
    assert quality_loss(flat, target, LossConfig(kind="margin", margin=0.1)).item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="margin"):
        LossConfig(kind="margin", margin=0.0)
