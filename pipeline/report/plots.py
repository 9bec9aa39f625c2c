"""The report's figures: score histogram and score against MOS, per dataset."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .summary import normalise, summarize

FIGSIZE = (6.0, 4.5)
DPI = 120


# --------------------------------------------------------------------------------------------------
# plots


def palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _new_figure() -> tuple[Any, Any]:
    # a bare Figure renders with Agg and never touches pyplot's global state or a display
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    return fig, ax


def plot_score_hist(scores: pd.DataFrame) -> bytes | None:
    """PNG bytes of the histogram of ok scores (stacked by dataset when several); None if no scores."""
    df = normalise(scores)
    ok = df[df["ok"]]
    if ok.empty:
        return None
    fig, ax = _new_figure()
    groups = [(str(k), g["score"].to_numpy()) for k, g in ok.groupby("dataset", sort=True)]
    all_s = ok["score"].to_numpy()
    lo, hi = float(all_s.min()), float(all_s.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, int(np.clip(np.sqrt(all_s.size) * 2, 10, 50)) + 1)
    if len(groups) == 1:
        ax.hist(groups[0][1], bins=bins, color=palette(1)[0], edgecolor="white", linewidth=0.5)
    else:
        ax.hist([g for _, g in groups], bins=bins, stacked=True, color=palette(len(groups)),
                label=[f"{k} (n={len(g)})" for k, g in groups], edgecolor="white", linewidth=0.5)
        ax.legend(title="dataset", fontsize=9, title_fontsize=9)
    ax.axvline(float(np.median(all_s)), color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("predicted quality score")
    ax.set_ylabel("number of videos")
    ax.set_title(f"Predicted score distribution (n={all_s.size}, dashed: median {np.median(all_s):.3g})", fontsize=11)
    return figure_png(fig)


def plot_score_vs_mos(scores: pd.DataFrame, summary: Mapping[str, Any] | None = None) -> bytes | None:
    """PNG bytes of predicted score (y) against MOS (x), one colour and least-squares line per
    dataset, overall SRCC/PLCC in the title; None if no ok row has a MOS."""
    df = normalise(scores)
    sub = df[df["ok"] & np.isfinite(df["mos"].to_numpy())]
    if sub.empty:
        return None
    summary = summary or summarize(scores)
    fig, ax = _new_figure()
    groups = [(str(k), g) for k, g in sub.groupby("dataset", sort=True)]
    size = float(np.clip(3000 / len(sub), 4, 30))
    alpha = float(np.clip(300 / len(sub), 0.15, 0.8))
    # datasets on different MOS scales (1-5 vs 0-100) would squash each other on one axis: then each
    # dataset's MOS is min-max scaled to 0-1 (correlations are unaffected, the fitted lines stay per dataset)
    ranges = [float(np.ptp(g["mos"].to_numpy())) for _, g in groups]
    per_dataset_scale = len(groups) > 1 and min(ranges) > 0 and max(ranges) / min(ranges) > 3
    for (name, g), color in zip(groups, palette(len(groups))):
        d = summary["datasets"].get(name, {})
        srcc = d.get("srcc")
        label = f"{name} (n={len(g)}" + (f", SRCC {srcc:.3f})" if srcc is not None else ")")
        x, y = g["mos"].to_numpy(), g["score"].to_numpy()
        if per_dataset_scale:
            x = (x - x.min()) / np.ptp(x)
        ax.scatter(x, y, s=size, alpha=alpha, color=color, edgecolors="none", label=label, rasterized=len(sub) > 5000)
        if len(g) >= 2 and np.ptp(x) > 0:
            a, b = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, a * xs + b, color=color, linewidth=2, zorder=3, label="least-squares fit" if len(groups) == 1 else None)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    pooled = "pooled, " if len(groups) > 1 else ""
    ax.set_title(f"Predicted score vs MOS: SRCC {fmt(summary.get('srcc'))}, PLCC {fmt(summary.get('plcc'))} "
                 f"({pooled}n={summary.get('n_metrics', len(sub))})", fontsize=11)
    ax.set_xlabel("MOS, min-max scaled per dataset (scales differ)" if per_dataset_scale else "MOS (subjective score)")
    ax.set_ylabel("predicted quality score")
    leg = ax.legend(title="dataset (lines: least-squares fits)" if len(groups) > 1 else None, fontsize=9, title_fontsize=9)
    for h in leg.legend_handles:  # readable legend markers even when the points are tiny and faint
        if hasattr(h, "set_sizes"):
            h.set_sizes([30])
            h.set_alpha(1.0)
    return figure_png(fig)


def plot_score_change(before: pd.DataFrame, after: pd.DataFrame, comparison: Mapping[str, Any],
                      labels: tuple[str, str]) -> bytes | None:
    """PNG bytes of each video's score in the later table (y) against the earlier one (x), matched by
    video_id, with the diagonal (no change); videos that changed by more than the comparison's
    tolerance in colour. None if no video was scored in both."""
    b = normalise(before).drop_duplicates("video_id", keep="last").set_index("video_id")
    a = normalise(after).drop_duplicates("video_id", keep="last").set_index("video_id")
    both = a.index.intersection(b.index)
    both = both[a.loc[both, "ok"].to_numpy() & b.loc[both, "ok"].to_numpy()]
    if not len(both):
        return None
    x, y = b.loc[both, "score"].to_numpy(), a.loc[both, "score"].to_numpy()
    moved = np.abs(y - x) > comparison["tolerance"]
    fig, ax = _new_figure()
    size = float(np.clip(3000 / len(both), 4, 30))
    colors = palette(2)
    ax.scatter(x[~moved], y[~moved], s=size, color="0.6", edgecolors="none", label=f"unchanged ({(~moved).sum()})")
    ax.scatter(x[moved], y[moved], s=size, color=colors[1], edgecolors="none", label=f"changed ({moved.sum()})")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="no change")
    ax.set_xlabel(f"score, {labels[0]}")
    ax.set_ylabel(f"score, {labels[1]}")
    d = comparison.get("delta") or {}
    mean_abs = d.get("mean_abs")
    ax.set_title(f"Score change: {comparison['changed']} of {len(both)} videos changed"
                 + (f", mean |change| {mean_abs:.3g}" if mean_abs is not None else ""), fontsize=11)
    ax.legend(fontsize=9)
    return figure_png(fig)
