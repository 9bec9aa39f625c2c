"""Nightly re-scoring of a changing catalog.

State layout under `state_uri` (local or s3://):

    inter/                  stage-1 cache (ShardStore), every video version ever embedded
    scores/                 stage-2 scores (ShardStore), every (video version, model) ever scored
    published/scores.parquet    the complete score table of the latest catalog, one row per video
    published/run.json          what the last run did (new, changed, unchanged, dropped, failed)
    published/report/           report.json, report.md and plots of the published table

A video is identified by its uri and a version by its content key (size + mtime, or ETag), so a
run scores only new or changed videos (their keys are not in `scores/` yet), carries the others
over, and drops deleted ones simply by publishing only today's keys. A second run on the same
catalog finds every key committed and computes nothing.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline.io.storage import filesystem, join_uri, write_bytes
from pipeline.stages.driver import load_table
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.stages.scoring import score


def _read_published(uri: str, storage_options: Mapping[str, Any]) -> pd.DataFrame | None:
    fs, path = filesystem(uri, storage_options)
    if not fs.exists(path):
        return None
    return pd.read_parquet(io.BytesIO(fs.cat_file(path)))


def rescore(manifest: pd.DataFrame, state_uri: str, spec: ModelSpec, opts: RunOptions) -> dict[str, Any]:
    """Score what is new or changed in today's catalog, publish the complete table and its report."""
    from pipeline.report.build import build_report

    t0 = time.perf_counter()
    so = opts.storage_options
    published_uri = join_uri(state_uri, "published", "scores.parquet")
    previous = _read_published(published_uri, so)
    score_summary, inter_summary = score(manifest, join_uri(state_uri, "inter"), join_uri(state_uri, "scores"), spec, opts)

    table = load_table(join_uri(state_uri, "scores"), so)
    today = table[table["key"].isin(set(score_summary.keys))]
    today = today.drop_duplicates("uri", keep="last").sort_values("video_id").reset_index(drop=True)
    buf = io.BytesIO()
    today.to_parquet(buf, index=False)
    write_bytes(published_uri, buf.getvalue(), so)

    prev_versions = {} if previous is None else dict(zip(previous["uri"], previous["content_key"]))
    now_versions = dict(zip(today["uri"], today["content_key"]))
    run = {
        "catalog_videos": len(today),
        "new": sum(u not in prev_versions for u in now_versions),
        "changed": sum(u in prev_versions and prev_versions[u] != c for u, c in now_versions.items()),
        "unchanged": sum(prev_versions.get(u) == c for u, c in now_versions.items()),
        "dropped": sum(u not in now_versions for u in prev_versions),
        "scored_this_run": score_summary.done + score_summary.failed,
        "embedded_this_run": 0 if inter_summary is None else inter_summary.done + inter_summary.failed,
        "failed": int((today["status"] != "ok").sum()),
        "seconds": time.perf_counter() - t0,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_version": sorted(today["model_version"].dropna().unique().tolist()),
    }
    report = build_report(today, join_uri(state_uri, "published", "report"), so)
    run["report"] = {k: report[k] for k in ("n_videos", "n_ok", "n_failed") if k in report}
    write_bytes(join_uri(state_uri, "published", "run.json"), json.dumps(run, indent=2).encode(), so)
    return run
