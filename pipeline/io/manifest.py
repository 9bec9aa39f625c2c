"""Input manifests: which videos to score.

``read_manifest(spec)`` accepts, locally or on ``s3://`` (any fsspec URL):

* a manifest file, chosen by extension: ``.csv``, ``.parquet``/``.pq``, ``.jsonl``/``.ndjson``
  (JSON lines; ``.json`` is read as a JSON array of records or as JSON lines). It must have a
  ``uri`` column; ``video_id``, ``mos`` and ``dataset`` are optional, other columns are kept after
  the standard four. Column names match case-insensitively, with the usual aliases (``COLUMN_ALIASES``:
  ``URI``, ``url``, ``path``, ``file``, ``filename``... for uri; ``id``, ``name`` for video_id;
  ``MOS``, ``mean_opinion_score`` for mos). Relative uris are resolved against the manifest's
  directory (on the same filesystem: a relative uri in ``s3://b/m/list.csv`` becomes ``s3://b/m/...``).
* a directory: every video file below it (recursively);
* a glob (``*``, ``?``, ``[``): the matching video files, or, if it matches only manifest files,
  those manifests concatenated.

Video extensions (case-insensitive): ``VIDEO_EXTENSIONS`` (mp4, mkv, mov, webm, avi, ts, mpg, raw
h264/hevc, ...). Raw ``.yuv`` is *not*
discovered from directories: it has no header, so a decoder needs width/height/pixel format that
a directory listing cannot give; list such files explicitly in a manifest (with extra columns).
Hidden files (``.`` prefix, e.g. macOS ``._clip.mp4`` resource forks) are skipped.

Output columns: ``video_id`` (str; the file name without its last extension when absent; must be
unique), ``uri`` (str: absolute local path or ``proto://...``), ``mos`` (float, NaN when unknown),
``dataset`` (str or None). Rows keep the manifest's order; discovered files are sorted by uri.

Duplicate rows: a file listed more than once under the same video_id (or none) is one video; the
first row is kept and a warning names the repeats (``logging``). Two different files under one
video_id raise ManifestError, as does one video_id for rows that disagree on mos or dataset.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline.io.storage import filesystem, is_local, to_uri

__all__ = ["read_manifest", "resolve_uri", "VIDEO_EXTENSIONS", "MANIFEST_EXTENSIONS", "ManifestError"]

# What directory and glob discovery picks up: the containers and raw streams users' catalogs hold
# (broadcast captures .ts/.m2ts/.mts, DVD .vob/.mpg, raw .h264/.hevc, ...). A manifest may list any file.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".vob",
    ".flv", ".3gp", ".wmv", ".mxf", ".ogv", ".gif", ".h264", ".264", ".hevc", ".h265", ".265",
})
MANIFEST_EXTENSIONS = frozenset({".csv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json"})
COLUMNS = ["video_id", "uri", "mos", "dataset"]
# Other names users give the standard columns (compared lower-case, "-" and " " read as "_").
COLUMN_ALIASES = {
    "uri": ("url", "path", "file", "filename", "file_name", "filepath", "file_path", "video_path", "location"),
    "video_id": ("id", "videoid", "video_name"),  # not "name": often a content shared by several videos
    "mos": ("mean_opinion_score",),
    "dataset": (),
}
log = logging.getLogger("securevqa.io")


class ManifestError(ValueError):
    """A manifest that cannot be used (empty, missing column, duplicate ids, bad values)."""


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _is_video(path: str) -> bool:
    name = posixpath.basename(path.rstrip("/"))
    return not name.startswith(".") and _ext(name) in VIDEO_EXTENSIONS


def read_manifest(spec: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Videos to score as a DataFrame with columns video_id, uri, mos, dataset (see module docstring)."""
    spec = os.fspath(spec)
    fs, path = filesystem(spec, storage_options)

    if _has_glob(spec):
        matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
        videos = [p for p in matches if _is_video(p)]
        manifests = [p for p in matches if _ext(p) in MANIFEST_EXTENSIONS]
        if manifests and not videos:
            df = pd.concat([_read_manifest_file(fs, p) for p in manifests], ignore_index=True)
            return _finish(df, source=spec)
        if not videos:
            raise FileNotFoundError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) match {spec!r}")
        return _finish(_from_videos(fs, videos), source=spec)

    if not fs.exists(path):
        raise FileNotFoundError(f"manifest not found: {spec!r}")
    if fs.isdir(path):
        videos = sorted(p for p in fs.find(path) if _is_video(p))
        if not videos:
            raise FileNotFoundError(
                f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) under directory {spec!r}"
            )
        return _finish(_from_videos(fs, videos), source=spec)

    ext = _ext(path)
    if ext in MANIFEST_EXTENSIONS:
        return _finish(_read_manifest_file(fs, path), source=spec)
    if ext in VIDEO_EXTENSIONS:  # a single video
        return _finish(_from_videos(fs, [path]), source=spec)
    raise ManifestError(
        f"unknown extension {ext or '(none)'!r} for {spec!r}: expected a manifest "
        f"({', '.join(sorted(MANIFEST_EXTENSIONS))}), a video ({', '.join(sorted(VIDEO_EXTENSIONS))}), "
        "a directory or a glob"
    )


def _from_videos(fs, paths: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"uri": [to_uri(fs, p) for p in paths]})


def _read_manifest_file(fs, path: str) -> pd.DataFrame:
    ext = _ext(path)
    with fs.open(path, "rb") as f:
        raw = f.read()
    where = to_uri(fs, path)
    if not raw.strip():
        raise ManifestError(f"empty manifest: {where}")
    try:
        if ext == ".csv":
            # ids, uris and datasets stay text under any alias ("007" is not 7.0)
            header = pd.read_csv(io.BytesIO(raw), nrows=0).columns
            text = {c for c, std in _column_map(header, where).items() if std in ("video_id", "uri", "dataset")}
            text |= {c for c in header if c in ("video_id", "uri", "dataset")}
            df = pd.read_csv(io.BytesIO(raw), dtype={c: str for c in text})
        elif ext in (".parquet", ".pq"):
            df = pd.read_parquet(io.BytesIO(raw))
        elif ext == ".json" and raw.lstrip()[:1] == b"[":
            df = pd.read_json(io.BytesIO(raw), orient="records", dtype=False)
        else:
            df = pd.read_json(io.BytesIO(raw), lines=True, dtype=False)
    except (ValueError, pd.errors.ParserError) as e:
        if isinstance(e, pd.errors.EmptyDataError):
            raise ManifestError(f"empty manifest: {where}") from e
        raise ManifestError(f"cannot parse manifest {where}: {e}") from e
    df = _standard_columns(df, where)
    if "uri" not in df.columns:
        names = ", ".join(("uri", *COLUMN_ALIASES["uri"]))
        raise ManifestError(f"manifest {where} has no uri column (any of {names}, any case); "
                            f"columns found: {', '.join(map(str, df.columns))}")
    if len(df) == 0:
        raise ManifestError(f"empty manifest (no rows): {where}")
    df = df.copy()
    base_dir = posixpath.dirname(path) if not is_local(fs) else os.path.dirname(path)
    df["uri"] = [resolve_uri(fs, base_dir, u, where, i) for i, u in enumerate(df["uri"])]
    return df


def _column_map(columns: Any, where: str) -> dict[Any, str]:
    """{column: standard name} for columns that are a standard column under another case or an alias
    (COLUMN_ALIASES); raises ManifestError when two columns could be the same one."""
    def norm(name: Any) -> str:
        return str(name).strip().lower().replace("-", "_").replace(" ", "_")

    rename: dict[Any, str] = {}
    for std in COLUMNS:
        found = [c for c in columns if norm(c) == std] or [c for c in columns if norm(c) in COLUMN_ALIASES[std]]
        if len(found) > 1:
            raise ManifestError(f"manifest {where}: columns {', '.join(map(repr, map(str, found)))} could all be "
                                f"'{std}'; rename all but one")
        if found and found[0] != std and std not in list(columns):  # the exact name wins over an alias
            rename[found[0]] = std
    return rename


def _standard_columns(df: pd.DataFrame, where: str) -> pd.DataFrame:
    return df.rename(columns=_column_map(df.columns, where))


def resolve_uri(fs, base_dir: str, uri: Any, where: str, row: int) -> str:
    """A manifest row's uri as an absolute path or URI: relative paths resolve against the manifest's
    folder `base_dir` on `fs`; an empty uri raises ManifestError naming `where` and `row`."""
    if uri is None or (isinstance(uri, float) and pd.isna(uri)) or not str(uri).strip():
        raise ManifestError(f"manifest {where}: empty uri in row {row}")
    uri = str(uri).strip()
    if uri.startswith("file://"):
        return os.path.abspath(uri[len("file://"):])
    if "://" in uri:
        return uri
    if uri.startswith("/"):  # absolute local path: kept as is, whatever filesystem the manifest is on
        return os.path.normpath(uri)
    if is_local(fs):
        return os.path.normpath(os.path.join(base_dir, uri))
    return to_uri(fs, posixpath.normpath(posixpath.join(base_dir, uri)))


def _finish(df: pd.DataFrame, source: str) -> pd.DataFrame:
    n = len(df)
    uri = df["uri"].astype(str)
    derived = [posixpath.splitext(posixpath.basename(u.rstrip("/")))[0] for u in uri]
    if "video_id" in df.columns:
        given = df["video_id"]
        vid = [d if (v is None or (not isinstance(v, str) and pd.isna(v)) or str(v) == "") else str(v) for v, d in zip(given, derived)]
    else:
        vid = derived

    if "mos" in df.columns:
        try:
            mos = pd.to_numeric(df["mos"], errors="raise").astype("float64")
        except (ValueError, TypeError) as e:
            raise ManifestError(f"manifest {source}: non-numeric mos values ({e})") from e
    else:
        mos = pd.Series([float("nan")] * n, dtype="float64")

    if "dataset" in df.columns:
        ds = [None if (v is None or (not isinstance(v, str) and pd.isna(v))) else str(v) for v in df["dataset"]]
    else:
        ds = [None] * n

    out = pd.DataFrame(
        {
            "video_id": pd.Series(vid, dtype=str),
            "uri": pd.Series(list(uri), dtype=str),
            "mos": pd.Series(list(mos), dtype="float64"),
            "dataset": pd.Series(ds, dtype=object),
        }
    )
    extra = [c for c in df.columns if c not in COLUMNS]
    for c in extra:
        out[c] = df[c].to_numpy()

    repeats = out.duplicated(subset=["video_id", "uri"], keep="first")
    if repeats.any():
        same = out[out["video_id"].isin(set(out.loc[repeats, "video_id"]))]
        clash = same.groupby("video_id").agg(mos=("mos", lambda m: m.dropna().nunique() > 1),
                                             dataset=("dataset", lambda d: d.dropna().nunique() > 1))
        clash = clash[clash["mos"] | clash["dataset"]]
        if len(clash):
            raise ManifestError(f"manifest {source}: {len(clash)} video(s) listed more than once with different mos "
                                f"or dataset, e.g. {clash.index[0]!r}; keep one row per video")
        log.warning("manifest %s lists %d video(s) more than once (e.g. %s); each is scored once (the first "
                    "row kept, with any value it lacks taken from the repeats)",
                    source, int(repeats.sum()), out.loc[repeats, "uri"].iloc[0])
        out = out.groupby(["video_id", "uri"], sort=False, dropna=False).first().reset_index()[out.columns]
    dup = out["video_id"][out["video_id"].duplicated(keep=False)]
    if len(dup):
        groups = out[out["video_id"].isin(set(dup))].groupby("video_id", sort=True)["uri"].apply(list)
        shown = "; ".join(f"{k}: {v}" for k, v in list(groups.items())[:20])
        more = f" (and {len(groups) - 20} more)" if len(groups) > 20 else ""
        raise ManifestError(
            f"duplicate video_id in {source} ({len(groups)} ids): {shown}{more}; "
            "add a unique 'video_id' column to the manifest"
        )
    return out
