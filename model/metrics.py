"""Quality metrics of predicted scores against subjective labels (MOS): SRCC, PLCC, KRCC, RMSE.

Pure numpy/scipy, no I/O. Inputs may be anything array-like: lists, numpy arrays, or torch tensors
(detached and moved to the CPU here; nothing is differentiable, the training loss has its own code).

Conventions (docs/design.md §2.4):

* PLCC and RMSE are computed after rescaling the predictions linearly to the labels' mean and std:
  ``pred' = (pred - mean(pred)) / std(pred) * std(label) + mean(label)`` with ``np.std`` (ddof 0),
  see :func:`rescale_to_labels`. PLCC is invariant to that (positive) affine map, RMSE is not: after
  the rescale a prediction that is any increasing affine function of the label has RMSE 0.
  ``rmse(..., rescale=False)`` gives the raw RMSE.
* SRCC is Spearman's rho with average ranks for ties; KRCC is Kendall's tau-b (ties in either
  variable accounted for), from ``scipy.stats.kendalltau``. Both are rank-based, so the rescale
  does not affect them.
* Missing values: every function first drops the *pairs* in which the prediction or the label is
  NaN (or +-inf). :func:`quality_metrics` reports how many pairs were used (``n``) and dropped.
* Undefined cases return ``nan`` instead of raising: fewer than 3 valid pairs (:data:`MIN_N`; with 2
  points any correlation is +-1 and says nothing), constant predictions (no std to rescale by, no
  correlation; RMSE is also NaN, not "the label std", so a collapsed model is not mistaken for a
  scored one), or constant labels for the correlations. With constant labels and varying
  predictions RMSE after the rescale is 0 (the rescaled predictions equal the constant label).

scipy is a dependency of this module (``rankdata``, ``kendalltau``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "METRICS",
    "MIN_N",
    "bootstrap_ci",
    "group_offsets",
    "krcc",
    "plcc",
    "quality_metrics",
    "rescale_to_labels",
    "rmse",
    "robustness",
    "robustness_terms",
    "security_metrics",
    "srcc",
    "valid_pairs",
]

MIN_N = 3  # fewer valid pairs than this: every metric is NaN


def _as_1d(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        a = a.reshape(-1)
    return a


def valid_pairs(pred: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both to float64 and drop the pairs where either value is NaN or infinite."""
    p, y = _as_1d(pred), _as_1d(label)
    if p.shape != y.shape:
        raise ValueError(f"pred and label differ in length: {p.shape[0]} vs {y.shape[0]}")
    keep = np.isfinite(p) & np.isfinite(y)
    return p[keep], y[keep]


def _is_constant(a: np.ndarray) -> bool:
    # relative tolerance: float noise on a "constant" output must not yield a huge rescale factor
    return a.size == 0 or bool(np.ptp(a) <= 1e-12 * max(1.0, float(np.max(np.abs(a)))))


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    if p.size < MIN_N or _is_constant(p) or _is_constant(y):
        return float("nan")
    pc, yc = p - p.mean(), y - y.mean()
    r = float(np.dot(pc, yc) / np.sqrt(np.dot(pc, pc) * np.dot(yc, yc)))
    return float(np.clip(r, -1.0, 1.0))


def rescale_to_labels(pred: Any, label: Any) -> np.ndarray:
    """Predictions mapped linearly to the labels' mean and std (np.std, ddof 0), NaN pairs dropped.

    Returns an all-NaN array (of the valid length) when the predictions are constant."""
    p, y = valid_pairs(pred, label)
    if _is_constant(p):
        return np.full(p.shape, np.nan)
    return (p - p.mean()) / p.std() * y.std() + y.mean()


def srcc(pred: Any, label: Any) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    p, y = valid_pairs(pred, label)
    if p.size < MIN_N:
        return float("nan")
    return _pearson(stats.rankdata(p), stats.rankdata(y))


def plcc(pred: Any, label: Any) -> float:
    """Pearson linear correlation (identical before and after the linear rescale)."""
    p, y = valid_pairs(pred, label)
    return _pearson(p, y)


def krcc(pred: Any, label: Any) -> float:
    """Kendall rank correlation, tau-b."""
    p, y = valid_pairs(pred, label)
    if p.size < MIN_N or _is_constant(p) or _is_constant(y):
        return float("nan")
    return float(stats.kendalltau(p, y).statistic)


def rmse(pred: Any, label: Any, *, rescale: bool = True) -> float:
    """Root mean squared error, by default after :func:`rescale_to_labels`."""
    p, y = valid_pairs(pred, label)
    if p.size < MIN_N:
        return float("nan")
    if rescale:
        if _is_constant(p):
            return float("nan")
        p = (p - p.mean()) / p.std() * y.std() + y.mean()
    return float(np.sqrt(np.mean((p - y) ** 2)))


METRICS: dict[str, Callable[..., float]] = {"srcc": srcc, "plcc": plcc, "krcc": krcc, "rmse": rmse}


def group_offsets(pred: Any, label: Any, groups: Any) -> dict[str, Any]:
    """How far each group (a content, a dataset) sits from one linear map of scores to labels fitted
    over all groups, and what the pooled SRCC and PLCC would be without those offsets.

    A least-squares line ``label ~ a * pred + b`` over every valid pair; a group's offset is its mean
    residual ``a * pred + b - label`` in label units (positive: the group reads better than its labels).
    ``srcc`` and ``plcc`` are the pooled figures of the fitted scores minus their group's offset: the
    within-group order is untouched, only the groups' levels are aligned. Returns ``{"n", "offsets":
    {group: float}, "srcc", "plcc"}``; the figures are NaN (offsets empty) with fewer than MIN_N pairs
    or constant predictions. Raises ValueError when the lengths differ.
    """
    p_all, y_all = _as_1d(pred), _as_1d(label)
    g_all = np.asarray(groups, dtype=object).reshape(-1)
    if not (p_all.shape == y_all.shape == g_all.shape):
        raise ValueError(f"pred, label and groups differ in length: {p_all.size}, {y_all.size}, {g_all.size}")
    keep = np.isfinite(p_all) & np.isfinite(y_all)
    p, y, g = p_all[keep], y_all[keep], g_all[keep]
    out: dict[str, Any] = {"n": int(p.size), "offsets": {}, "srcc": float("nan"), "plcc": float("nan")}
    if p.size < MIN_N or _is_constant(p):
        return out
    a, b = np.polyfit(p, y, 1)
    residual = a * p + b - y
    aligned = a * p + b
    for name in sorted(set(g.tolist()), key=str):
        member = g == name
        out["offsets"][name] = float(residual[member].mean())
        aligned[member] -= out["offsets"][name]
    out["srcc"], out["plcc"] = srcc(aligned, y), plcc(aligned, y)
    return out


def quality_metrics(pred: Any, label: Any) -> dict[str, Any]:
    """``{"n", "n_dropped", "srcc", "plcc", "krcc", "rmse"}``; ``n`` is the number of pairs used
    (both values finite), ``n_dropped`` the pairs left out. Undefined metrics are NaN."""
    p_all = _as_1d(pred)
    p, y = valid_pairs(pred, label)
    return {
        "n": int(p.size),
        "n_dropped": int(p_all.size - p.size),
        "srcc": srcc(p, y),
        "plcc": plcc(p, y),
        "krcc": krcc(p, y),
        "rmse": rmse(p, y),
    }


def bootstrap_ci(
    metric: str | Callable[[np.ndarray, np.ndarray], float],
    pred: Any,
    label: Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` interval of ``metric`` over videos resampled with replacement.

    ``metric`` is a name from :data:`METRICS` or any ``f(pred, label) -> float``. NaN pairs are
    dropped first; resamples on which the metric is undefined (e.g. all-equal predictions drawn) are
    skipped. Deterministic for a given ``seed``. ``(nan, nan)`` when fewer than :data:`MIN_N` pairs
    or no resample gives a finite value.
    """
    fn = METRICS[metric] if isinstance(metric, str) else metric
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    p, y = valid_pairs(pred, label)
    n = p.size
    if n < MIN_N:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    vals = np.array([fn(p[i], y[i]) for i in idx], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ----------------------------------------------------------------------------- security (docs/design.md §3)


def robustness_terms(q: Any, q_adv: Any, target: Any) -> np.ndarray:
    """Per-video ln(|q - target| / (|q_adv - q| + 1e-12)); R is their mean. Higher is more robust:
    0 means the attack moved the score by the whole clean-to-target distance."""
    q, q_adv, target = _as_1d(q), _as_1d(q_adv), _as_1d(target)
    return np.log(np.abs(q - target) / (np.abs(q_adv - q) + 1e-12))


def robustness(q: Any, q_adv: Any, target: Any) -> float:
    """R (docs/design.md §3): the mean of :func:`robustness_terms`."""
    return float(robustness_terms(q, q_adv, target).mean())


def _mean_of_first(a: np.ndarray, _: np.ndarray) -> float:
    return float(a.mean())


def security_metrics(
    q: Any, q_adv: Any, target: Any, q_mos: Any, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """The security table's figures for one attack on one model, each with a percentile bootstrap CI
    over videos: SRCC and PLCC of clean and adversarial scores against the normalised MOS (no
    rescale), R, and the mean absolute score shift |q_adv - q|. Keys: ``n`` and, for each figure
    f in (srcc_clean, plcc_clean, srcc_adv, plcc_adv, r, shift), ``f``, ``f_low``, ``f_high``."""
    q, q_adv, target, q_mos = (_as_1d(a) for a in (q, q_adv, target, q_mos))
    if not (q.shape == q_adv.shape == target.shape == q_mos.shape):
        raise ValueError(f"q, q_adv, target and q_mos differ in length: {[a.size for a in (q, q_adv, target, q_mos)]}")
    keep = np.isfinite(q) & np.isfinite(q_adv) & np.isfinite(target) & np.isfinite(q_mos)
    q, q_adv, target, q_mos = q[keep], q_adv[keep], target[keep], q_mos[keep]
    terms, shift = robustness_terms(q, q_adv, target), np.abs(q_adv - q)
    figures: dict[str, tuple[Callable[..., float], np.ndarray, np.ndarray]] = {
        "srcc_clean": (srcc, q, q_mos), "plcc_clean": (plcc, q, q_mos),
        "srcc_adv": (srcc, q_adv, q_mos), "plcc_adv": (plcc, q_adv, q_mos),
        "r": (_mean_of_first, terms, terms), "shift": (_mean_of_first, shift, shift),
    }
    out: dict[str, Any] = {"n": int(q.size)}
    for name, (fn, a, b) in figures.items():
        out[name] = fn(a, b) if a.size else float("nan")
        out[f"{name}_low"], out[f"{name}_high"] = bootstrap_ci(fn, a, b, n_boot=n_boot, seed=seed, alpha=alpha)
    return out
