"""Nightly re-scoring of a changing catalog.

State layout under `state_uri` (local or s3://):

    inter/                  stage-1 cache (Delta table), every video version ever embedded
    scores/                 stage-2 scores (Delta table), every (video version, model) ever scored
    published/scores/       the catalog table (Delta): one version per run, each the complete score
                            table of that night's catalog, one row per video; earlier nights stay
                            readable by version or date (`securevqa report --as-of`) for `history_days`
    published/run.json      what the last run did (new, changed, unchanged, dropped, failed)
    published/report/       report.json, report.md and plots of the published table

Every run ends with table maintenance (`pipeline.io.maintenance.maintain`): the three tables are compacted
and vacuumed with each table's own retention, so files stay few and history stays readable for its
retention (docs/tables.md, "Maintenance schedule").

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
import pyarrow as pa

from pipeline.io.maintenance import maintain
from pipeline.io.storage import filesystem, join_uri, write_bytes
from pipeline.io.table import KeyedTable
from pipeline.stages.driver import load_table
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.stages.scoring import score

# How long the catalog table keeps earlier nights readable, unless the caller says otherwise.
DEFAULT_HISTORY_DAYS = 30


def catalog_uri(state_uri: str) -> str:
    """The catalog table of a rescore state (a Delta table; see the module docstring)."""
    return join_uri(state_uri, "published", "scores")


def _read_previous(state_uri: str, storage_options: Mapping[str, Any]) -> pd.DataFrame | None:
    catalog = KeyedTable(catalog_uri(state_uri), storage_options)
    if catalog.exists():
        return catalog.read().to_pandas()
    fs, path = filesystem(join_uri(state_uri, "published", "scores.parquet"), storage_options)
    if fs.exists(path):  # the single Parquet file states before the Delta format published
        return pd.read_parquet(io.BytesIO(fs.cat_file(path)))
    return None


def rescore(manifest: pd.DataFrame, state_uri: str, spec: ModelSpec, opts: RunOptions,
            history_days: int = DEFAULT_HISTORY_DAYS, maintenance: bool = True) -> dict[str, Any]:
    """Score what is new or changed in today's catalog, publish the complete table as a new version of
    the catalog table (earlier versions readable for `history_days` days) and its report; then, with
    `maintenance`, compact and vacuum the state's tables."""
    from pipeline.report.build import build_report

    t0 = time.perf_counter()
    so = opts.storage_options
    previous = _read_previous(state_uri, so)
    score_summary, inter_summary = score(manifest, join_uri(state_uri, "inter"), join_uri(state_uri, "scores"), spec, opts)

    table = load_table(join_uri(state_uri, "scores"), so)
    today = table[table["key"].isin(set(score_summary.keys))]
    today = today.drop_duplicates("uri", keep="last").sort_values("video_id").reset_index(drop=True)
    catalog = KeyedTable(catalog_uri(state_uri), so)
    retention = f"interval {history_days} days"
    catalog.create(pa.Table.from_pandas(today, preserve_index=False).schema, file_retention=retention,
                   log_retention=retention)
    catalog.set_retention(file_retention=retention, log_retention=retention)
    version = catalog.overwrite(pa.Table.from_pandas(today, preserve_index=False))

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
        "catalog_version": version,
    }
    report = build_report(today, join_uri(state_uri, "published", "report"), so)
    run["report"] = {k: report[k] for k in ("n_videos", "n_ok", "n_failed") if k in report}
    if maintenance:
        t = time.perf_counter()
        done = [maintain(uri, so) for uri in (join_uri(state_uri, "inter"), join_uri(state_uri, "scores"),
                                               catalog_uri(state_uri))]
        run["maintenance"] = {"seconds": time.perf_counter() - t, "files_after": sum(d["files_after"] for d in done),
                              "removed": sum(d["vacuum"]["removed"] for d in done)}
    write_bytes(join_uri(state_uri, "published", "run.json"), json.dumps(run, indent=2).encode(), so)
    return run
