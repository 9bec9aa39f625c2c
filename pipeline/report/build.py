"""Report on a score table (stage 2 output): counts, metrics against MOS, failures, plots.

:func:`build_report` writes into ``output_uri`` (local directory or ``s3://`` prefix, anything
:func:`pipeline.io.storage.filesystem` accepts):

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

Metrics (SRCC, PLCC, KRCC, RMSE; PLCC/RMSE after the linear rescale of docs/design.md §2.4) come from
:mod:`model.metrics`, on the ok rows with a finite MOS, overall and per dataset. Note that pooling
datasets whose MOS scales differ (e.g. 1-5 and 0-100) makes the overall PLCC/RMSE of little meaning;
the per-dataset figures are the ones to quote. Rows without a dataset are grouped under
``"(none)"``. JSON has no NaN: undefined values are written as ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline.io.storage import filesystem, is_local, join_uri

from .plots import plot_score_change, plot_score_hist, plot_score_vs_mos
from .summary import METRIC_KEYS, compare_scores, summarize

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
    if rep.get("table") and rep["table"] != "now":
        L += [f"Table: {_md(rep['table'])}.", ""]
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
        ci = any(f"{k}_ci95" in rep for k in METRIC_KEYS)
        L += ["| dataset | n | SRCC | PLCC | KRCC | RMSE |", "|---|---:|---:|---:|---:|---:|"]
        rows = [(k, d) for k, d in rep["datasets"].items() if d["n_with_mos"]]
        if len(rows) > 1:
            rows.append(("**all**", rep))
        for name, d in rows:
            cells = []
            for k in METRIC_KEYS:
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
        if "dataset_offsets" in rep:
            off = rep["dataset_offsets"]
            L += ["", "Offsets between datasets (each dataset's mean residual, in MOS units, after one least-squares "
                  "line from score to MOS over all of them; positive: reads better than its MOS): "
                  + ", ".join(f"{_md(k)} {v:+.2f}" for k, v in off["offsets"].items())
                  + f". Without them the pooled SRCC would be {_num(off['srcc'])} and PLCC {_num(off['plcc'])}."]

    L += ["", "## Failures", ""]
    if n_failed == 0:
        L.append("No failures." if n else "No videos.")
    else:
        from pipeline.stages.driver import ERROR_CODES

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
    if "comparison" in rep:
        L += _comparison_md(rep["comparison"], files)
    L += ["Machine-readable summary: [report.json](report.json)", ""]
    return "\n".join(L)


def _comparison_md(c: Mapping[str, Any], files: Mapping[str, str]) -> list[str]:
    before, after = c["labels"]
    L = [f"## Changes from {_md(before)} to {_md(after)}", "",
         "| | videos |", "|---|---:|", f"| {_md(before)} | {c['videos_before']} |", f"| {_md(after)} | {c['videos_after']} |",
         f"| new | {c['new']} |", f"| dropped | {c['dropped']} |", f"| scored in both | {c['scored_in_both']} |",
         f"| score changed by more than {c['tolerance']:g} | {c['changed']} |",
         f"| became scored or failed | {c['status_changed']} |", ""]
    d = c.get("delta")
    if d:
        L += [f"Change of score (later - earlier) over the {c['scored_in_both']} videos scored in both: mean "
              f"{_num(d['mean'])}, median {_num(d['median'])}, mean absolute {_num(d['mean_abs'])}, 95th percentile "
              f"of the absolute change {_num(d['abs_q95'])}, largest {_num(d['max_abs'])}.", ""]
    if c.get("largest_changes"):
        L += ["| video | before | after | change |", "|---|---:|---:|---:|"]
        L += [f"| `{_md(e['video_id'])}` | {_num(e['before'])} | {_num(e['after'])} | {_num(e['delta'])} |"
              for e in c["largest_changes"]]
        L.append("")
    if "score_change" in files:
        L += [f"![Score change]({files['score_change']})", ""]
    return L


# --------------------------------------------------------------------------------------------------
# entry point


def build_report(
    scores: pd.DataFrame,
    output_uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    n_boot: int = 0,
    seed: int = 0,
    compare_to: tuple[str, pd.DataFrame] | None = None,
    label: str = "now",
) -> dict[str, Any]:
    """Write plots, ``report.md`` and ``report.json`` into ``output_uri``; return the JSON content.

    ``n_boot > 0`` adds bootstrap 95% intervals of the metrics (costs ``n_boot`` metric evaluations
    per dataset; keep it off for very large tables). ``compare_to`` = (label, earlier table) adds a
    section on what changed since (`summary.compare_scores`, ``score_change.png``); `label` names
    `scores` in it (e.g. its date)."""
    rep = summarize(scores, n_boot=n_boot, seed=seed)
    rep["table"] = label
    if compare_to is not None:
        rep["comparison"] = {**compare_scores(compare_to[1], scores), "labels": [compare_to[0], label]}
    fs, root = filesystem(output_uri, storage_options)
    if is_local(fs):
        fs.makedirs(root, exist_ok=True)

    def put(name: str, data: bytes) -> None:
        with fs.open(join_uri(root, name), "wb") as f:
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
    if compare_to is not None:
        change = plot_score_change(compare_to[1], scores, rep["comparison"], (compare_to[0], label))
        if change is not None:
            files["score_change"] = "score_change.png"
            put("score_change.png", change)
    files["report_md"] = "report.md"
    put("report.md", render_markdown(rep, files).encode())
    files["report_json"] = "report.json"
    rep["files"] = files
    put("report.json", json.dumps(rep, indent=2, allow_nan=False).encode())
    return rep
