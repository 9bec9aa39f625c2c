"""Report on a score table (stage 2 output): counts, metrics against MOS, failures, plots.

:func:`build_report` writes into ``output_uri`` (local directory or ``s3://`` prefix, anything
:func:`pipeline.storage.filesystem` accepts):

* ``score_hist.png``   histogram of the predicted scores (one colour per dataset), when any video scored;
* ``score_vs_mos.png`` predicted score against MOS with per-dataset fitted lines, when any MOS is present;
* ``report.md``        human-readable summary linking the plots;
* ``report.json``      machine-readable summary, written **last** (its presence means the report is complete).

Input columns: ``video_id``, ``uri``, ``score`` (NaN/None when failed), ``status`` ('ok'|'error'),
``error``, ``model_version``; optional ``error_code``, ``mos`` (NaN when unlabelled), ``dataset``,
``clip_scores``. A row counts as *ok* when ``status == 'ok'`` and its score is finite; every other
row is a failure. Failures are grouped by kind, the row's ``error_code`` (``pipeline.stages.ERROR_CODES``),
with example videos and messages per kind: on a catalog each message names its own file, so
messages are examples, never groups. Rows without a code are "unclassified"; an 'ok' row without a
finite score is "no_score".

Metrics (SRCC, PLCC, KRCC, RMSE; PLCC/RMSE after the linear rescale of DESIGN 2.4) come from
:mod:`model.metrics`, on the ok rows with a finite MOS, overall and per dataset. Note that pooling
datasets whose MOS scales differ (e.g. 1-5 and 0-100) makes the overall PLCC/RMSE of little meaning;
the per-dataset figures are the ones to quote. Rows without a dataset are grouped under
``"(none)"``. JSON has no NaN: undefined values are written as ``null``.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.metrics import bootstrap_ci, quality_metrics
from pipeline.storage import ShardStore, filesystem, is_local

__all__ = ["build_report", "load_scores", "plot_score_hist", "plot_score_vs_mos", "render_markdown", "summarize"]

NO_DATASET = "(none)"
N_EXAMPLES = 3  # example videos (id and message) per kind of failure
FIGSIZE = (6.0, 4.5)
DPI = 120
_QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}
_METRIC_KEYS = ("srcc", "plcc", "krcc", "rmse")


# --------------------------------------------------------------------------------------------------
# loading


def _join(fs: Any, root: str, *parts: str) -> str:
    return os.path.join(root, *parts) if is_local(fs) else posixpath.join(root, *parts)


def load_scores(uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read a score table: a :class:`ShardStore` root (has ``_manifests/``), a directory of Parquet
    files (searched recursively; names starting with ``_`` or ``.`` skipped), or one Parquet file."""
    fs, path = filesystem(uri, storage_options)
    if not is_local(fs):
        fs.invalidate_cache(path)
    if fs.isdir(path):
        if fs.exists(_join(fs, path, "_manifests")):
            return ShardStore(uri, storage_options).read_table().to_pandas()
        files = sorted(
            f for f in fs.find(path)
            if f.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in f[len(path):].split("/") if part)
        )
        if not files:
            raise FileNotFoundError(f"no Parquet files under {uri}")
        tables = [pq.read_table(f, filesystem=fs) for f in files]
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    if not fs.exists(path):
        raise FileNotFoundError(uri)
    return pq.read_table(path, filesystem=fs).to_pandas()


# --------------------------------------------------------------------------------------------------
# summary (pure)


def _f(x: Any) -> float | None:
    """float for JSON: NaN/inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _normalise(scores: pd.DataFrame) -> pd.DataFrame:
    df = scores.copy().reset_index(drop=True)
    n = len(df)
    if "video_id" not in df:
        if n:
            raise ValueError("score table has no 'video_id' column")
        df["video_id"] = pd.Series([], dtype=object)
    if "score" not in df:
        if n:
            raise ValueError("score table has no 'score' column")
        df["score"] = np.nan
    df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")
    finite = np.isfinite(df["score"].to_numpy())
    if "status" not in df:
        df["status"] = np.where(finite, "ok", "error")
    status = df["status"].astype(object).where(df["status"].notna(), "error").astype(str)
    df["ok"] = (status.to_numpy() == "ok") & finite
    df["status"] = status
    df["error"] = df["error"].astype(object) if "error" in df else None
    df["mos"] = pd.to_numeric(df["mos"], errors="coerce").astype("float64") if "mos" in df else np.nan
    if "dataset" in df:
        ds = df["dataset"].astype(object)
        df["dataset"] = ds.where(ds.notna(), NO_DATASET).astype(str)
    else:
        df["dataset"] = NO_DATASET
    if "model_version" not in df:
        df["model_version"] = None
    return df


def _score_stats(s: np.ndarray) -> dict[str, Any]:
    s = s[np.isfinite(s)]
    out: dict[str, Any] = {"count": int(s.size)}
    if s.size == 0:
        out.update({k: None for k in ("mean", "std", "min", *_QUANTILES, "max")})
        return out
    out.update({"mean": _f(s.mean()), "std": _f(s.std()), "min": _f(s.min())})
    out.update({k: _f(np.quantile(s, q)) for k, q in _QUANTILES.items()})
    out["max"] = _f(s.max())
    return out


def _clip_stats(cells: pd.Series) -> dict[str, Any] | None:
    stds, counts = [], []
    for c in cells:
        if c is None or (isinstance(c, float) and math.isnan(c)):
            continue
        a = np.asarray(c, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            counts.append(a.size)
            stds.append(a.std())
    if not counts:
        return None
    return {
        "n_videos": len(counts),
        "clips_per_video_median": _f(np.median(counts)),
        "within_video_std_mean": _f(np.mean(stds)),
        "within_video_std_max": _f(np.max(stds)),
    }


def _failure_message(row_error: Any, status: str) -> str:
    if _blank(row_error):
        return "status ok but score missing" if status == "ok" else f"{status} (no error message)"
    first = str(row_error).strip().splitlines()[0].strip()
    return first if len(first) <= 200 else first[:197] + "..."


def _failure_kind(code: Any, status: str) -> str:
    if status == "ok":
        return "no_score"
    return "unclassified" if _blank(code) else str(code)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _group(df: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    ok = df[df["ok"]]
    n = len(df)
    out: dict[str, Any] = {
        "n_videos": n,
        "n_ok": len(ok),
        "n_failed": int(n - len(ok)),
        "failure_rate": _f(1 - len(ok) / n) if n else None,
        "n_with_mos": int(np.isfinite(df["mos"].to_numpy()).sum()),
        "score": _score_stats(ok["score"].to_numpy()),
    }
    if out["n_with_mos"]:
        m = quality_metrics(ok["score"].to_numpy(), ok["mos"].to_numpy())
        out["n_metrics"] = m["n"]  # ok rows with a finite MOS
        for k in _METRIC_KEYS:
            out[k] = _f(m[k])
        if n_boot > 0:
            for k in _METRIC_KEYS:
                lo, hi = bootstrap_ci(k, ok["score"].to_numpy(), ok["mos"].to_numpy(), n_boot=n_boot, seed=seed)
                out[f"{k}_ci95"] = [_f(lo), _f(hi)]
    return out


def summarize(scores: pd.DataFrame, *, n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """The content of ``report.json`` (JSON-ready: no NaN, plain Python types). No I/O.

    ``n_boot > 0`` adds bootstrap 95% intervals (``<metric>_ci95``) to every metrics entry."""
    df = _normalise(scores)
    rep: dict[str, Any] = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    rep.update(_group(df, n_boot, seed))
    rep["has_mos"] = rep["n_with_mos"] > 0
    rep["datasets"] = {str(name): _group(g, n_boot, seed) for name, g in df.groupby("dataset", sort=True)}

    mv = df["model_version"].dropna().astype(str)
    rep["model_versions"] = {str(k): int(v) for k, v in mv.value_counts().sort_index().items()}

    failed = df[~df["ok"]]
    codes = failed["error_code"] if "error_code" in failed else [None] * len(failed)
    by_kind: dict[str, list[dict[str, str]]] = {}
    for code, msg, status, vid in zip(codes, failed["error"], failed["status"], failed["video_id"].astype(str)):
        by_kind.setdefault(_failure_kind(code, status), []).append(
            {"video_id": vid, "error": _failure_message(msg, status)})
    ranked = sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    rep["failure_kinds"] = {kind: len(rows) for kind, rows in ranked}
    rep["failure_examples"] = {kind: rows[:N_EXAMPLES] for kind, rows in ranked}

    clips = _clip_stats(df.loc[df["ok"], "clip_scores"]) if "clip_scores" in df else None
    if clips is not None:
        rep["clip_scores"] = clips
    return rep


# --------------------------------------------------------------------------------------------------
# plots


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _png(fig: Any) -> bytes:
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
    df = _normalise(scores)
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
        ax.hist(groups[0][1], bins=bins, color=_colors(1)[0], edgecolor="white", linewidth=0.5)
    else:
        ax.hist([g for _, g in groups], bins=bins, stacked=True, color=_colors(len(groups)),
                label=[f"{k} (n={len(g)})" for k, g in groups], edgecolor="white", linewidth=0.5)
        ax.legend(title="dataset", fontsize=9, title_fontsize=9)
    ax.axvline(float(np.median(all_s)), color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("predicted quality score")
    ax.set_ylabel("number of videos")
    ax.set_title(f"Predicted score distribution (n={all_s.size}, dashed: median {np.median(all_s):.3g})", fontsize=11)
    return _png(fig)


def plot_score_vs_mos(scores: pd.DataFrame, summary: Mapping[str, Any] | None = None) -> bytes | None:
    """PNG bytes of predicted score (y) against MOS (x), one colour and least-squares line per
    dataset, overall SRCC/PLCC in the title; None if no ok row has a MOS."""
    df = _normalise(scores)
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
    for (name, g), color in zip(groups, _colors(len(groups))):
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
    return _png(fig)


# --------------------------------------------------------------------------------------------------
# markdown


def _md(x: Any) -> str:
    s = str(x).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    return s


def _num(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def render_markdown(rep: Mapping[str, Any], files: Mapping[str, str]) -> str:
    """``report.md`` from a :func:`summarize` result and the names of the plots written."""
    L: list[str] = ["# Quality score report", ""]
    versions = rep.get("model_versions") or {}
    L.append(f"Generated {rep['generated_at']}. Model version(s): "
             + (", ".join(f"`{_md(v)}` ({c} videos)" for v, c in versions.items()) if versions else "unknown") + ".")
    if len(versions) > 1:
        L += ["", "**Warning:** the table mixes several model versions; the scores may not be comparable."]
    n, n_ok, n_failed = rep["n_videos"], rep["n_ok"], rep["n_failed"]
    pct = lambda k: f" ({100 * k / n:.1f}%)" if n else ""
    L += ["", "## Overview", "", "| | videos |", "|---|---:|",
          f"| total | {n} |", f"| scored | {n_ok}{pct(n_ok)} |", f"| failed | {n_failed}{pct(n_failed)} |",
          f"| with MOS | {rep['n_with_mos']} |", f"| datasets | {len(rep['datasets'])} |"]
    if n == 0:
        L += ["", "The score table is empty: nothing to report."]

    L += ["", "## Score distribution", ""]
    if n_ok == 0:
        L.append("No video was scored successfully, so there is no score distribution.")
    else:
        L += ["| dataset | scored | mean | std | min | q05 | median | q95 | max |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = list(rep["datasets"].items())
        if len(rows) > 1:
            rows.append(("**all**", rep))
        for name, d in rows:
            s = d["score"]
            L.append(f"| {_md(name)} | {s['count']} | " + " | ".join(_num(s[k]) for k in ("mean", "std", "min", "q05", "median", "q95", "max")) + " |")
        if "clip_scores" in rep:
            c = rep["clip_scores"]
            clip_note = (f"Clip scores: median {_num(c['clips_per_video_median'])} clips per video; the std of clip "
                         f"scores within a video is {_num(c['within_video_std_mean'])} on average "
                         f"(max {_num(c['within_video_std_max'])}).")
            L += ["", clip_note]

    L += ["", "## Agreement with MOS", ""]
    if not rep["has_mos"]:
        L.append("No MOS labels in this table: SRCC/PLCC/KRCC/RMSE and the score-vs-MOS plot are omitted.")
    else:
        ci = any(f"{k}_ci95" in rep for k in _METRIC_KEYS)
        L += ["| dataset | n | SRCC | PLCC | KRCC | RMSE |", "|---|---:|---:|---:|---:|---:|"]
        rows = [(k, d) for k, d in rep["datasets"].items() if d["n_with_mos"]]
        if len(rows) > 1:
            rows.append(("**all**", rep))
        for name, d in rows:
            cells = []
            for k in _METRIC_KEYS:
                cell = _num(d.get(k))
                if ci and d.get(f"{k}_ci95") and None not in d[f"{k}_ci95"]:
                    lo, hi = d[f"{k}_ci95"]
                    cell += f" [{_num(lo)}, {_num(hi)}]"
                cells.append(cell)
            L.append(f"| {_md(name)} | {d.get('n_metrics', 0)} | " + " | ".join(cells) + " |")
        L += ["", "n counts scored videos with a MOS. PLCC and RMSE are computed after rescaling the predictions "
              "linearly to the MOS mean and std (RMSE is in MOS units); `n/a`: undefined (fewer than 3 videos or "
              "constant values)." + (" Brackets: bootstrap 95% intervals over videos." if ci else "")]
        if len(rows) > 1:
            L += ["", "Pooled (**all**) figures mix MOS scales of different datasets; prefer the per-dataset rows."]

    L += ["", "## Failures", ""]
    if n_failed == 0:
        L.append("No failures." if n else "No videos.")
    else:
        from pipeline.stages import ERROR_CODES

        meaning = {**ERROR_CODES, "unclassified": "a row without an error_code (an older table)",
                   "no_score": "status ok but no finite score"}
        L += [f"{n_failed} of {n} videos failed, {len(rep['failure_kinds'])} kind(s) of failure.", "",
              "| kind | videos | what it means | examples (video: message) |", "|---|---:|---|---|"]
        for kind, count in rep["failure_kinds"].items():
            ex = "<br>".join(f"`{_md(e['video_id'])}`: {_md(e['error'])}" for e in rep["failure_examples"][kind])
            L.append(f"| `{kind}` | {count} | {_md(meaning.get(kind, ''))} | {ex} |")

    L += ["", "## Plots", ""]
    if "score_hist" in files:
        L += [f"[Score distribution]({files['score_hist']}):", "", f"![Score distribution]({files['score_hist']})", ""]
    else:
        L += ["No score histogram (no video was scored).", ""]
    if "score_vs_mos" in files:
        L += [f"[Predicted score vs MOS]({files['score_vs_mos']}):", "", f"![Predicted score vs MOS]({files['score_vs_mos']})", ""]
    else:
        L += ["No score-vs-MOS plot (no scored video has a MOS).", ""]
    L += ["Machine-readable summary: [report.json](report.json)", ""]
    return "\n".join(L)


# --------------------------------------------------------------------------------------------------
# entry point


def build_report(
    scores: pd.DataFrame,
    output_uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Write plots, ``report.md`` and ``report.json`` into ``output_uri``; return the JSON content.

    ``n_boot > 0`` adds bootstrap 95% intervals of the metrics (costs ``n_boot`` metric evaluations
    per dataset; keep it off for very large tables)."""
    rep = summarize(scores, n_boot=n_boot, seed=seed)
    fs, root = filesystem(output_uri, storage_options)
    if is_local(fs):
        fs.makedirs(root, exist_ok=True)

    def put(name: str, data: bytes) -> None:
        with fs.open(_join(fs, root, name), "wb") as f:
            f.write(data)

    files: dict[str, str] = {}
    hist = plot_score_hist(scores)
    if hist is not None:
        files["score_hist"] = "score_hist.png"
        put("score_hist.png", hist)
    scatter = plot_score_vs_mos(scores, rep) if rep["has_mos"] else None
    if scatter is not None:
        files["score_vs_mos"] = "score_vs_mos.png"
        put("score_vs_mos.png", scatter)
    files["report_md"] = "report.md"
    put("report.md", render_markdown(rep, files).encode())
    files["report_json"] = "report.json"
    rep["files"] = files
    put("report.json", json.dumps(rep, indent=2, allow_nan=False).encode())
    return rep
