"""The security table of an attack run: per attack and defense, SRCC/PLCC before and after, R-score and perturbation norms (docs/security.md)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from model.metrics import security_metrics
from pipeline.io.storage import write_bytes

if TYPE_CHECKING:
    from pipeline.security.attack import AttackPlan


def summarize(results: pd.DataFrame, plan: AttackPlan) -> pd.DataFrame:
    """One row per (defenses, attack) in plan order: the security figures with bootstrap CIs."""
    out = []
    for a in plan.attacks:
        for d in plan.defenses:
            g = results[(results["defenses"] == d.name) & (results["attack"] == a.name)]
            ok = g[g["status"] == "ok"]
            row: dict[str, Any] = {"attack": a.name, "adaptive": a.adaptive, "defenses": d.name,
                                   "failed": int(len(g) - len(ok))}
            if len(ok) >= 3:
                row.update(security_metrics(ok["clean_score"], ok["adv_score"], ok["target"], ok["q_mos"],
                                            n_boot=plan.n_boot, seed=plan.ci_seed))
            else:
                row["n"] = int(len(ok))
            row.update(queries=float(ok["queries"].mean()) if len(ok) else float("nan"),
                       linf=float(ok["linf"].max()) if len(ok) else float("nan"),
                       rms=float(ok["rms"].mean()) if len(ok) else float("nan"),
                       seconds=float(ok["seconds"].sum()))
            out.append(row)
    return pd.DataFrame(out)


def _fmt(row: Mapping[str, Any], name: str) -> str:
    v = row.get(name, float("nan"))
    if v is None or not np.isfinite(v):
        return "n/a"
    lo, hi = row.get(f"{name}_low"), row.get(f"{name}_high")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{v:.4f}{ci}"


def render_markdown(table: pd.DataFrame) -> str:
    """Tables like the paper's: per attack, one row per defense configuration; SRCC/PLCC after the
    attack with the clean figure beside it (the paper's grey row), R and the mean shift, 95% CIs."""
    lines = ["# Security evaluation", "",
             "SRCC/PLCC against normalised MOS (MOS / max MOS), clean -> adversarial; R = mean ln(|q - target| / "
             "|q_adv - q|) (higher is more robust; 0 = moved the whole way to the target); shift = mean |q_adv - q|. "
             "Brackets: 95% bootstrap CI over videos. Adaptive attacks are marked.", ""]
    for attack, g in table.groupby("attack", sort=False):
        tag = " (adaptive)" if bool(g["adaptive"].iloc[0]) else ""
        lines += [f"## {attack}{tag}", "",
                  "| defenses | n | SRCC clean | SRCC adv | PLCC clean | PLCC adv | R | shift | queries/video | L_inf | RMS |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for _, r in g.iterrows():
            rd = r.to_dict()
            lines.append(
                f"| {rd['defenses']} | {rd.get('n', 0)} | {_fmt(rd, 'srcc_clean')} | {_fmt(rd, 'srcc_adv')} | "
                f"{_fmt(rd, 'plcc_clean')} | {_fmt(rd, 'plcc_adv')} | {_fmt(rd, 'r')} | {_fmt(rd, 'shift')} | "
                f"{rd['queries']:.0f} | {rd['linf']:.2f} | {rd['rms']:.2f} |")
        lines.append("")
        if len(g) > 1:  # the ablation layout of Tables V/VI: one column per defense configuration
            lines += ["| | " + " | ".join(g["defenses"]) + " |", "|---|" + "---:|" * len(g)]
            for label, key in (("SRCC attacked", "srcc_adv"), ("PLCC attacked", "plcc_adv"), ("R", "r"),
                               ("SRCC clean", "srcc_clean"), ("PLCC clean", "plcc_clean"), ("shift", "shift")):
                cells = [f"{v:.4f}" if v is not None and np.isfinite(v) else "n/a"
                         for v in g.get(key, pd.Series([np.nan] * len(g)))]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["L_inf and RMS of the perturbation in 8-bit levels (max over videos, mean over videos).", ""]
    return "\n".join(lines)


def plot_clean_vs_adv(results: pd.DataFrame) -> bytes | None:
    """PNG: adversarial against clean score, one panel per attack, one colour per defense configuration;
    a point on the diagonal did not move, a point on its target's side moved toward it."""
    from pipeline.report.plots import DPI, figure_png, palette

    ok = results[results["status"] == "ok"]
    if ok.empty:
        return None
    from matplotlib.figure import Figure

    attacks = list(dict.fromkeys(ok["attack"]))
    defenses = list(dict.fromkeys(ok["defenses"]))
    colors = dict(zip(defenses, palette(len(defenses))))
    fig = Figure(figsize=(4.2 * len(attacks), 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    for ax, attack in zip(axes, attacks):
        g = ok[ok["attack"] == attack]
        for d in defenses:
            h = g[g["defenses"] == d]
            if h.empty:
                continue
            ax.scatter(h["clean_score"], h["adv_score"], s=18, color=colors[d], label=d, alpha=0.8)
            ax.scatter(h["clean_score"], h["target"], s=10, marker="_", color=colors[d], alpha=0.6)
        lo = float(np.nanmin(g[["clean_score", "adv_score", "target"]].to_numpy()))
        hi = float(np.nanmax(g[["clean_score", "adv_score", "target"]].to_numpy()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("clean score")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("adversarial score (dashes: targets)")
    axes[-1].legend(fontsize=8, title="defenses", title_fontsize=8)
    return figure_png(fig)


def write_summary(table: pd.DataFrame, results: pd.DataFrame, base: str, so: Mapping[str, Any]) -> None:
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    write_bytes(f"{base}/summary.csv", buf.getvalue().encode(), so)
    png = plot_clean_vs_adv(results)
    md = render_markdown(table)
    if png is not None:
        write_bytes(f"{base}/clean_vs_adv.png", png, so)
        md += "![adversarial against clean scores](clean_vs_adv.png)\n"
    write_bytes(f"{base}/summary.md", md.encode(), so)
    records = json.loads(table.to_json(orient="records"))  # NaN -> null
    write_bytes(f"{base}/summary.json", json.dumps(records, indent=1).encode(), so)
