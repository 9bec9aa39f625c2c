"""The numbers of a dataset report: score distribution, SRCC/PLCC/KRCC/RMSE against MOS with bootstrap intervals, failures by kind."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from model.metrics import bootstrap_ci, group_offsets, quality_metrics
from pipeline.io.storage import filesystem, is_local, join_uri
from pipeline.io.table import KeyedTable, TableError

NO_DATASET = "(none)"
N_EXAMPLES = 3  # example videos (id and message) per kind of failure
_QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}
METRIC_KEYS = ("srcc", "plcc", "krcc", "rmse")


# --------------------------------------------------------------------------------------------------
# loading


def load_scores(uri: str, storage_options: Mapping[str, Any] | None = None, *, version: int | None = None,
                as_of: str | None = None) -> pd.DataFrame:
    """Read a score table: a Delta table (has ``_delta_log/``; at a `version` or as of an ISO 8601
    timestamp `as_of` when given: time travel), a directory of Parquet files (searched recursively;
    names starting with ``_`` or ``.`` skipped), or one Parquet file. Raises FileNotFoundError, and
    TableError for `version`/`as_of` on plain Parquet, a missing version, or a shard store not
    converted yet (`securevqa migrate`)."""
    fs, path = filesystem(uri, storage_options)
    if not is_local(fs):
        fs.invalidate_cache(path)
    if fs.isdir(path):
        if fs.exists(join_uri(path, "_delta_log")):
            table = KeyedTable(uri, storage_options)
            df = table.read(version=version, as_of=as_of).to_pandas()
            df.attrs["table_version"] = table.read_version  # which version `as_of` resolved to
            return df
        if fs.exists(join_uri(path, "_manifests")):
            raise TableError(f"{uri} is a shard store written before the Delta format: convert it with "
                             f"`securevqa migrate {uri}`")
    if version is not None or as_of is not None:
        raise TableError(f"{uri} is not a Delta table: it has no versions to travel to")
    if fs.isdir(path):
        files = sorted(
            f for f in fs.find(path)
            if f.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in f[len(path):].split("/") if part)
        )
        if not files:
            raise FileNotFoundError(f"no Parquet files under {uri}")
        tables = [pq.read_table(f, filesystem=fs) for f in files]
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    if not fs.exists(path):
        raise FileNotFoundError(f"no score table at {uri}: the path does not exist")
    return pq.read_table(path, filesystem=fs).to_pandas()


# --------------------------------------------------------------------------------------------------
# summary (pure)


def _f(x: Any) -> float | None:
    """float for JSON: NaN/inf -> None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def normalise(scores: pd.DataFrame) -> pd.DataFrame:
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
        for k in METRIC_KEYS:
            out[k] = _f(m[k])
        if n_boot > 0:
            for k in METRIC_KEYS:
                lo, hi = bootstrap_ci(k, ok["score"].to_numpy(), ok["mos"].to_numpy(), n_boot=n_boot, seed=seed)
                out[f"{k}_ci95"] = [_f(lo), _f(hi)]
    return out


def compare_scores(before: pd.DataFrame, after: pd.DataFrame, *, tolerance: float = 1e-6,
                   examples: int = 10) -> dict[str, Any]:
    """How a score table changed between two versions (e.g. two nights of the catalog table), matched
    by ``video_id``: videos new, dropped and in both; of those scored in both, how many changed by more
    than `tolerance` (score units), and the change's distribution (after - before: mean, median, mean
    and max absolute, quantiles of the absolute change); the largest changes as examples. No I/O."""
    b, a = normalise(before), normalise(after)
    b = b.drop_duplicates("video_id", keep="last").set_index("video_id")
    a = a.drop_duplicates("video_id", keep="last").set_index("video_id")
    both = a.index.intersection(b.index)
    ok = both[(a.loc[both, "ok"].to_numpy()) & (b.loc[both, "ok"].to_numpy())]
    delta = (a.loc[ok, "score"] - b.loc[ok, "score"]).astype("float64")
    changed = delta[delta.abs() > tolerance]
    out: dict[str, Any] = {
        "videos_before": len(b), "videos_after": len(a), "new": int(len(a.index.difference(b.index))),
        "dropped": int(len(b.index.difference(a.index))), "in_both": int(len(both)),
        "scored_in_both": int(len(ok)), "changed": int(len(changed)), "tolerance": tolerance,
        "status_changed": int((a.loc[both, "ok"] != b.loc[both, "ok"]).sum()),
    }
    if len(delta):
        absd = delta.abs().to_numpy()
        out["delta"] = {"mean": _f(delta.mean()), "median": _f(delta.median()), "mean_abs": _f(absd.mean()),
                        "max_abs": _f(absd.max()),
                        **{f"abs_{k}": _f(np.quantile(absd, q)) for k, q in _QUANTILES.items() if k != "q05"}}
        top = changed.reindex(changed.abs().sort_values(ascending=False).index).head(examples)
        out["largest_changes"] = [{"video_id": str(v), "before": _f(b.at[v, "score"]), "after": _f(a.at[v, "score"]),
                                   "delta": _f(d)} for v, d in top.items()]
    return out


def summarize(scores: pd.DataFrame, *, n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """The content of ``report.json`` (JSON-ready: no NaN, plain Python types). No I/O.

    ``n_boot > 0`` adds bootstrap 95% intervals (``<metric>_ci95``) to every metrics entry."""
    df = normalise(scores)
    rep: dict[str, Any] = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    rep.update(_group(df, n_boot, seed))
    rep["has_mos"] = rep["n_with_mos"] > 0
    rep["datasets"] = {str(name): _group(g, n_boot, seed) for name, g in df.groupby("dataset", sort=True)}
    if sum(1 for d in rep["datasets"].values() if d["n_with_mos"]) > 1:
        ok = df[df["ok"]]
        off = group_offsets(ok["score"].to_numpy(), ok["mos"].to_numpy(), ok["dataset"].astype(str).to_numpy())
        if off["offsets"]:
            rep["dataset_offsets"] = {"offsets": {k: _f(v) for k, v in off["offsets"].items()},
                                      "srcc": _f(off["srcc"]), "plcc": _f(off["plcc"])}

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
