import math

import numpy as np
import pytest
import torch
from scipy import stats

from model.metrics import (
    bootstrap_ci,
    group_offsets,
    krcc,
    plcc,
    quality_metrics,
    rescale_to_labels,
    rmse,
    srcc,
    valid_pairs,
)


@pytest.fixture
def noisy():
    rng = np.random.default_rng(1)
    label = rng.uniform(1, 5, size=80)
    pred = 0.3 * label + rng.normal(0, 0.4, size=80) + 10
    pred[::7] = np.round(pred[::7], 0)  # some ties
    return pred, label


def test_against_scipy(noisy):
    pred, label = noisy
    assert srcc(pred, label) == pytest.approx(stats.spearmanr(pred, label).statistic, abs=1e-12)
    assert plcc(pred, label) == pytest.approx(stats.pearsonr(pred, label).statistic, abs=1e-12)
    assert krcc(pred, label) == pytest.approx(stats.kendalltau(pred, label).statistic, abs=1e-12)


def test_ties_against_scipy():
    pred = np.array([1, 2, 2, 3, 3, 3, 4, 5.0])
    label = np.array([1, 1, 2, 2, 3, 4, 4, 5.0])
    assert srcc(pred, label) == pytest.approx(stats.spearmanr(pred, label).statistic, abs=1e-12)
    assert krcc(pred, label) == pytest.approx(stats.kendalltau(pred, label).statistic, abs=1e-12)


def test_hand_computed_tiny():
    pred = [1.0, 2.0, 3.0, 4.0]
    label = [1.0, 3.0, 2.0, 4.0]
    # ranks equal values; d = (0, -1, 1, 0), sum d^2 = 2 -> 1 - 6*2 / (4*15) = 0.8
    assert srcc(pred, label) == pytest.approx(0.8)
    # 6 pairs, one discordant (2,3): (5 - 1) / 6
    assert krcc(pred, label) == pytest.approx(4 / 6)
    # both centred (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5): cov 4 / var 5 -> 0.8
    assert plcc(pred, label) == pytest.approx(0.8)
    # identical mean/std, so the rescale is the identity; errors (0, 1, 1, 0)
    assert rmse(pred, label) == pytest.approx(math.sqrt(0.5))
    assert rmse(pred, label, rescale=False) == pytest.approx(math.sqrt(0.5))
    # perfectly reversed
    assert srcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert krcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)


def test_rescale_to_labels():
    label = np.array([1.0, 2.0, 4.0, 7.0])
    pred = 2 * label + 5
    out = rescale_to_labels(pred, label)
    np.testing.assert_allclose(out, label)
    assert rmse(pred, label) == pytest.approx(0, abs=1e-12)
    assert rmse(pred, label, rescale=False) > 5
    # z-score with ddof 0: mean/std of rescaled preds are the label's (np.std default)
    rng = np.random.default_rng(0)
    p, y = rng.normal(size=20), rng.uniform(0, 100, size=20)
    r = rescale_to_labels(p, y)
    assert r.mean() == pytest.approx(y.mean())
    assert r.std() == pytest.approx(y.std())
    # rank metrics are unaffected; PLCC too; RMSE equals a direct computation
    assert srcc(r, y) == pytest.approx(srcc(p, y))
    assert plcc(r, y) == pytest.approx(plcc(p, y))
    assert rmse(p, y) == pytest.approx(np.sqrt(np.mean((r - y) ** 2)))


def test_decreasing_affine_pred_is_not_rescaled_into_a_perfect_fit():
    label = np.array([1.0, 2.0, 3.0, 4.0])
    assert plcc(-label, label) == pytest.approx(-1)
    assert rmse(-label, label) > 1  # the rescale keeps the sign


def test_quality_metrics_dict(noisy):
    pred, label = noisy
    m = quality_metrics(pred, label)
    assert set(m) == {"n", "n_dropped", "srcc", "plcc", "krcc", "rmse"}
    assert m["n"] == 80 and m["n_dropped"] == 0
    assert m["srcc"] == srcc(pred, label)
    assert m["rmse"] == rmse(pred, label)
    assert 0 < m["rmse"] < label.std()


def test_nan_pairs_dropped(noisy):
    pred, label = noisy
    pred, label = pred.copy(), label.copy()
    pred[3] = np.nan
    label[5] = np.nan
    label[3] = np.nan  # same pair as pred[3]
    pred[10] = np.inf
    keep = np.ones(80, bool)
    keep[[3, 5, 10]] = False
    m = quality_metrics(pred, label)
    assert m["n"] == 77 and m["n_dropped"] == 3
    assert m["srcc"] == pytest.approx(stats.spearmanr(pred[keep], label[keep]).statistic)
    assert m["krcc"] == pytest.approx(stats.kendalltau(pred[keep], label[keep]).statistic)
    assert m["plcc"] == pytest.approx(stats.pearsonr(pred[keep], label[keep]).statistic)
    p, y = valid_pairs(pred, label)
    assert p.size == y.size == 77


def test_small_n_and_constant_give_nan_without_warnings():
    with np.errstate(all="raise"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for p, y in [([], []), ([1.0], [2.0]), ([1.0, 2.0], [2.0, 3.0]), ([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])]:
                m = quality_metrics(p, y)
                assert all(math.isnan(m[k]) for k in ("srcc", "plcc", "krcc", "rmse")), (p, y, m)
            m = quality_metrics([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0])  # constant predictions
            assert m["n"] == 4
            assert all(math.isnan(m[k]) for k in ("srcc", "plcc", "krcc", "rmse"))
            assert np.isnan(rescale_to_labels([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])).all()
            m = quality_metrics([1.0, 2.0, 3.0], [3.0, 3.0, 3.0])  # constant labels
            assert math.isnan(m["srcc"]) and math.isnan(m["plcc"]) and math.isnan(m["krcc"])
            assert m["rmse"] == pytest.approx(0)
            assert math.isnan(quality_metrics([1.0, 2.0, np.nan], [1.0, 2.0, 3.0])["srcc"])


def test_length_mismatch():
    with pytest.raises(ValueError, match="length"):
        srcc([1, 2, 3], [1, 2])


def test_torch_and_2d_inputs(noisy):
    pred, label = noisy
    t = torch.tensor(pred, requires_grad=True)
    assert srcc(t, torch.tensor(label)) == pytest.approx(srcc(pred, label))
    assert plcc(pred.reshape(8, 10), label.reshape(8, 10)) == pytest.approx(plcc(pred, label))


def test_bootstrap_ci(noisy):
    pred, label = noisy
    lo, hi = bootstrap_ci("srcc", pred, label, n_boot=200, seed=3)
    assert (lo, hi) == bootstrap_ci(srcc, pred, label, n_boot=200, seed=3)  # reproducible
    assert lo < srcc(pred, label) < hi
    assert 0 < hi - lo < 0.5
    assert bootstrap_ci("srcc", pred, label, n_boot=200, seed=4) != (lo, hi)
    lo90, hi90 = bootstrap_ci("srcc", pred, label, n_boot=200, seed=3, alpha=0.5)
    assert lo <= lo90 <= hi90 <= hi
    # custom metric and NaN handling
    lo_r, hi_r = bootstrap_ci(lambda p, y: rmse(p, y, rescale=False), pred, label, n_boot=50)
    assert 0 < lo_r <= hi_r
    pred2 = pred.copy()
    pred2[0] = np.nan
    assert all(np.isfinite(bootstrap_ci("plcc", pred2, label, n_boot=50)))
    assert all(math.isnan(v) for v in bootstrap_ci("srcc", [1.0, 2.0], [1.0, 2.0]))
    assert all(math.isnan(v) for v in bootstrap_ci("srcc", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], n_boot=20))
    with pytest.raises(KeyError):
        bootstrap_ci("nope", pred, label)


def test_group_offsets_find_a_shifted_group_and_aligning_it_restores_the_pooled_figures():
    rng = np.random.default_rng(3)
    label = np.tile(np.linspace(1, 5, 18), 3)
    groups = np.repeat(["a", "b", "c"], 18)
    pred = 0.5 * label + rng.normal(0, 0.05, label.size)
    clean = group_offsets(pred, label, groups)
    assert all(abs(v) < 0.05 for v in clean["offsets"].values())
    shifted = pred - 0.5 * (groups == "b")  # group b reads 0.5 score = 1 label unit worse
    out = group_offsets(shifted, label, groups)
    assert out["n"] == 54 and set(out["offsets"]) == {"a", "b", "c"}
    a, b = np.polyfit(shifted, label, 1)
    for name in "abc":
        member = groups == name
        assert out["offsets"][name] == pytest.approx(np.mean(a * shifted[member] + b - label[member]))
    assert out["offsets"]["b"] < -0.5 < 0.2 < out["offsets"]["a"]
    # the pooled figures suffer from the offset; aligning the groups gives them back, order within groups kept
    assert srcc(shifted, label) < out["srcc"] - 0.02
    assert out["srcc"] == pytest.approx(clean["srcc"], abs=0.01) and out["plcc"] > plcc(shifted, label)
    # NaN pairs are dropped; too few pairs or constant predictions give NaN and no offsets
    with_nan = group_offsets(np.append(shifted, np.nan), np.append(label, 3.0), np.append(groups, "a"))
    assert with_nan["n"] == 54 and with_nan["offsets"] == pytest.approx(out["offsets"])
    flat = group_offsets(np.ones(6), np.arange(6.0), ["a"] * 3 + ["b"] * 3)
    assert flat["offsets"] == {} and math.isnan(flat["srcc"]) and math.isnan(flat["plcc"])
    with pytest.raises(ValueError, match="differ in length"):
        group_offsets(pred, label, groups[:10])
