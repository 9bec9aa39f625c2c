"""Dataset adapters: a video-quality dataset's label file -> the project's manifest DataFrame.

``read_labels(kind, labels, video_root)`` returns the columns ``video_id`` (str), ``uri`` (str:
``video_root`` joined with the file name), ``mos`` (float, the raw MOS as written in the file: no
rescaling), ``dataset`` (str) and ``split`` (str, or None where nothing says). ``labels`` and
``video_root`` may be local paths or ``s3://`` URIs (read through :func:`pipeline.io.storage.filesystem`;
names are joined onto the root by the same rule as relative uris in :mod:`pipeline.io.manifest`).

Kinds (case-insensitive; ``-``, ``_`` and spaces are ignored, so ``KoNViD-1k``, ``live-vqc``,
``YouTube-UGC`` and ``yt-ugc`` all work): ``lsvq``, ``konvid1k``, ``livevqc``, ``youtube_ugc``, and
``csv`` for any other CSV/TSV with a header. The kind gives the dataset name, the extension appended
to names without one (mp4; mkv for YouTube-UGC, whose originals are ``<vid>.mkv``) and, for LSVQ,
the split. The *format* is detected from the first line, whatever the kind:

* **Reference labels** of FAST-VQA / DOVER / SecureVQA (``examplar_data_labels/<DATASET>/...``): no
  header, one video per line, ``name, x, y, MOS``: exactly 4 comma-separated fields with a space
  after each comma (spaces around fields are ignored, so plain ``a,b,c,d`` works too). The 2nd and
  3rd fields are unused (duration and frame rate for KoNViD/LIVE-VQC, ``-1, -1`` for LSVQ and
  YouTube-UGC). Names carry their extension and, for LSVQ and LIVE-VQC, a folder. Verified on
  VQAssessment/DOVER ``examplar_data_labels/LIVE_VQC/labels.txt`` (``Video/A001.mp4, 10.002367,
  30.0, 80.232``), ``examplar_data_labels/LSVQ/labels_test.txt`` (``yfcc-batch1/747.mp4, -1, -1,
  67.75``) and ``examplar_data_labels/YouTubeUGC/.ipynb_checkpoints/labels-checkpoint.txt``, and on
  GZHU-DVL/SecureVQA ``examplar_data_labels/LSVQ/{train_labels,labels_test,labels_1080p}.txt``,
  ``KoNViD/labels_all.txt`` (``7495255120.mp4, 8.008, 23.976023976023978, 2.42``) and
  ``YouTubeUGC/labels.txt`` (``Sports_2160P-4e9f_crf_10_ss_00_t_20.0.mp4, -1, -1, 4.405``: these
  name the H.264 transcodes, not the .mkv originals). Those repositories parse a line as
  ``line.strip().split(",")`` into exactly four fields; so do we, and reject any other count.
* **A CSV (or TSV) with a header** naming a video column and a MOS column. The official files:

  - LSVQ ``LSVQ_whole_train.csv`` / ``LSVQ_whole_test.csv`` / ``LSVQ_whole_test_1080p.csv``:
    ``name,p1,p2,p3,height,width,mos_p1,mos_p2,mos_p3,mos,...,is_valid`` with quoted list fields
    (``"[15, 527, 421, 709, 0, 200]"``) and names such as ``yfcc-batch1/747`` without extension
    (``.mp4`` is appended). Verified on sunwei925/SimpleVQA ``data/LSVQ_whole_test.csv`` and
    ``data/LSVQ_whole_test_1080p.csv`` (their ``mos`` equals the reference labels' MOS); the train
    file's column list is the same (seen only in code that reads it, not in the file itself).
  - KoNViD-1k ``KoNViD_1k_mos.csv``: ``"flickr_id","mos"`` with every value quoted
    (``"3339962845","4.6400000000"``); videos are ``<flickr_id>.mp4``. Verified on ads2d/KFVQA
    ``data/KoNViD_1k_mos.csv``.
  - YouTube-UGC: the official MOS come as ``original_videos_MOS_for_YouTube_UGC_dataset.xlsx``
    (sheet ``MOS``: ``vid``, ``category``, ``MOS full``, ...), known only from code that reads it.
    Excel is not read here: export that sheet to CSV; ``vid`` and ``MOS full`` are then found.
  - LIVE-VQC: the official MOS come in ``data.mat`` (``video_list``, ``mos``). MATLAB files are
    not read here: export them to a CSV with a header such as ``File,MOS``.

  Columns: ``name_col``/``mos_col`` (default ``name``/``mos``; when a default is absent, common
  synonyms are tried: filename, file, video, video_name, vid, flickr_id, path / MOS, MOS full,
  score). DMOS (lower is better) is never auto-detected; naming it in ``mos_col`` takes its values
  as they are. ``split_col`` (optional) gives a per-row split.

LSVQ splits are ``train``, ``test`` and ``test_1080p``, taken from the label file's name (a name
containing ``1080p`` -> test_1080p, else ``test`` -> test, else ``train`` -> train; DOVER's
``LSVQ/labels.txt``, which holds the training set, names none: pass ``split="train"``). ``split=``
overrides everything, for every kind.

``video_id`` is the name as written in the label file without a video extension, folders kept
(``yfcc-batch1/747``, ``Video/A001``): unique where base names may not be. Nothing is dropped
silently: malformed lines, non-numeric MOS and duplicate names are errors naming the file and line.

``random_splits`` gives the small-dataset protocol (10 random 80/20 train/test splits).
"""

from __future__ import annotations

import csv
import io
import math
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pipeline.io.manifest import VIDEO_EXTENSIONS, resolve_uri
from pipeline.io.storage import filesystem, to_uri

__all__ = ["DATASET_KINDS", "LSVQ_SPLITS", "LabelFileError", "random_splits", "read_labels"]

DATASET_KINDS = ("lsvq", "konvid1k", "livevqc", "youtube_ugc", "csv")
LSVQ_SPLITS = ("train", "test", "test_1080p")
COLUMNS = ["video_id", "uri", "mos", "dataset", "split"]

_NAME_SYNONYMS = ("name", "filename", "file_name", "file", "video", "video_name", "videoname", "vid",
                  "flickr_id", "path", "video_path", "file_names")
_MOS_SYNONYMS = ("mos", "mos_full", "score", "mos_score", "mean_opinion_score")
_NOT_READ = {  # binary label formats: say what to do instead of failing to decode them
    ".xlsx": "Excel workbooks are not read: export the sheet with the MOS (YouTube-UGC: 'MOS') to CSV",
    ".xls": "Excel workbooks are not read: export the sheet with the MOS to CSV",
    ".mat": "MATLAB files are not read: export the names and MOS (LIVE-VQC: video_list, mos) to CSV",
}
_MAX_SHOWN = 200  # characters of an offending line quoted in an error


class LabelFileError(ValueError):
    """A label file that cannot be turned into a manifest (malformed, empty, duplicates...)."""


@dataclass(frozen=True)
class _Kind:
    name: str
    dataset: str | None  # None: the label file's stem
    ext: str  # appended to names without a video extension
    splits: tuple[str, ...] | None  # allowed split names; None: any


_KINDS = {
    "lsvq": _Kind("lsvq", "LSVQ", ".mp4", LSVQ_SPLITS),
    "konvid1k": _Kind("konvid1k", "KoNViD-1k", ".mp4", None),
    "livevqc": _Kind("livevqc", "LIVE-VQC", ".mp4", None),
    "youtube_ugc": _Kind("youtube_ugc", "YouTube-UGC", ".mkv", None),
    "csv": _Kind("csv", None, "", None),
}
_ALIASES = {
    "lsvq": "lsvq",
    "konvid1k": "konvid1k", "konvid": "konvid1k", "kv1k": "konvid1k",
    "livevqc": "livevqc", "vqc": "livevqc",
    "youtubeugc": "youtube_ugc", "ytugc": "youtube_ugc",
    "csv": "csv", "tsv": "csv",
}


class _Row(NamedTuple):
    name: str
    mos: float
    split: str | None
    line: int


# --------------------------------------------------------------------------------------------------
# public API


def read_labels(
    kind: str,
    labels: str | os.PathLike[str],
    video_root: str | os.PathLike[str],
    *,
    split: str | None = None,
    ext: str | None = None,
    name_col: str = "name",
    mos_col: str = "mos",
    split_col: str | None = None,
    dataset: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """A dataset's label file as a manifest: video_id, uri, mos, dataset, split (module docstring).

    ``ext``: appended to names that lack a video extension (None: the kind's default, ``""``: never;
    ``"mp4"`` means ``".mp4"``; anything starting with another character, such as
    ``"_crf_10_ss_00_t_20.0.mp4"``, is appended as is). ``dataset`` overrides the dataset name.
    """
    spec = _kind(kind)
    labels, video_root = os.fspath(labels), os.fspath(video_root)
    fixed_split = _split(spec, labels, split)  # argument errors before any I/O
    text, where = _read_text(labels, storage_options)
    rows = _parse(text, where, name_col=name_col, mos_col=mos_col, split_col=split_col)
    _check_unique(rows, where)
    return _frame(
        rows,
        where=where,
        video_root=video_root,
        ext=_normalize_ext(ext, spec.ext),
        split=fixed_split,
        dataset=dataset or spec.dataset or _stem(labels),
        storage_options=storage_options,
    )


def random_splits(
    n: int | pd.DataFrame, *, n_splits: int = 10, train_fraction: float = 0.8, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_splits`` random (train, test) row-index splits of ``n`` rows (or a DataFrame's rows).

    The usual protocol for small datasets (KoNViD-1k, LIVE-VQC, YouTube-UGC), which have no official
    split. Each split is a fresh permutation from one ``numpy.random.default_rng(seed)``: the same
    seed gives the same splits, and successive splits differ. Train has ``round(n * train_fraction)``
    rows (Python rounding), test the rest; both are sorted int64 arrays, disjoint, covering all rows.
    """
    if isinstance(n, pd.DataFrame):
        n = len(n)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int or a DataFrame, got {type(n).__name__}")
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got n={n}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise ValueError(f"n_splits must be a positive int, got {n_splits!r}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be strictly between 0 and 1, got {train_fraction}")
    n = int(n)
    n_train = round(n * train_fraction)
    if not 0 < n_train < n:
        raise ValueError(
            f"train_fraction={train_fraction} of n={n} leaves {n_train} train and {n - n_train} test rows: "
            "both sides must be non-empty"
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        out.append((np.sort(perm[:n_train]).astype(np.int64), np.sort(perm[n_train:]).astype(np.int64)))
    return out


# --------------------------------------------------------------------------------------------------
# kinds, splits, names


def _kind(kind: str) -> _Kind:
    key = "".join(c for c in str(kind).lower() if c not in "-_ ")
    if key not in _ALIASES:
        aliases = ", ".join(sorted(a for a in _ALIASES if a not in DATASET_KINDS))
        raise ValueError(
            f"unknown dataset kind {kind!r}: expected one of {', '.join(DATASET_KINDS)} "
            f"(case, '-', '_' and spaces are ignored; aliases: {aliases})"
        )
    return _KINDS[_ALIASES[key]]


def _split(spec: _Kind, labels: str, split: str | None) -> str | None:
    """The split for every row: ``split=`` if given, else (LSVQ) the one the file name implies."""
    if split is not None:
        if not split.strip():
            raise ValueError("split must be a non-empty string or None")
        if spec.splits is not None and split not in spec.splits:
            raise ValueError(f"unknown {spec.dataset} split {split!r}: expected one of {', '.join(spec.splits)}")
        return split
    if spec.name == "lsvq":
        return _lsvq_split(labels)
    return None


def _lsvq_split(labels: str) -> str | None:
    """LSVQ's split from its label file name: official CSVs and reference label files alike."""
    base = posixpath.basename(labels.replace("\\", "/")).lower()
    if "1080p" in base:
        return "test_1080p"
    if "test" in base:
        return "test"
    if "train" in base:
        return "train"
    return None


def _normalize_ext(ext: str | None, default: str) -> str:
    if ext is None:
        return default
    ext = ext.strip()
    return "." + ext if ext[:1].isalnum() else ext


def _has_video_ext(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _video_id(name: str) -> str:
    """The name without its video extension; other dots (``..._t_20.0``) are part of the name."""
    return posixpath.splitext(name)[0] if _has_video_ext(name) else name


def _file_name(name: str, ext: str) -> str:
    return name if not ext or _has_video_ext(name) else name + ext


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path.replace("\\", "/").rstrip("/")))[0]


# --------------------------------------------------------------------------------------------------
# reading and parsing


def _read_text(labels: str, storage_options: Mapping[str, Any] | None) -> tuple[str, str]:
    """(text, printable location) of a label file; BOM stripped, binary formats refused."""
    fs, path = filesystem(labels, storage_options)
    where = to_uri(fs, path)
    hint = _NOT_READ.get(posixpath.splitext(path)[1].lower())
    if hint:
        raise LabelFileError(f"{where}: {hint}")
    if not fs.exists(path):
        raise FileNotFoundError(f"label file not found: {labels!r}")
    with fs.open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelFileError(f"{where}: not a UTF-8 text file ({e})") from e
    if not text.strip():
        raise LabelFileError(f"empty label file: {where}")
    return text, where


def _parse(text: str, where: str, *, name_col: str, mos_col: str, split_col: str | None) -> list[_Row]:
    """Rows of either format, chosen from the first non-blank line (a header or a data line)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # numbered as the csv module does
    first = next(line for line in lines if line.strip())
    delimiter = "\t" if "\t" in first else ","
    header = [f.strip().strip('"').strip() for f in first.split(delimiter)]
    explicit = name_col != "name" or mos_col != "mos" or split_col is not None
    names_a_column = _find_column(header, name_col, "name", _NAME_SYNONYMS) is not None
    if explicit or (names_a_column and not _is_number(header[-1])):
        return _parse_table(text, lines, where, delimiter, name_col, mos_col, split_col)
    return _parse_reference(lines, where)


def _parse_reference(lines: Sequence[str], where: str) -> list[_Row]:
    """``name, x, y, MOS`` lines (no header), as the reference repositories write them."""
    rows = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            raise _line_error(
                where, no, line,
                f"expected 4 comma-separated fields 'name, x, y, mos' (or a header line naming a video "
                f"column such as name/filename/video and a mos column), got {len(fields)}",
            )
        rows.append(_Row(_name(fields[0], where, no, line), _mos(fields[3], where, no, line), None, no))
    return rows


def _parse_table(
    text: str, lines: Sequence[str], where: str, delimiter: str, name_col: str, mos_col: str, split_col: str | None
) -> list[_Row]:
    """A CSV/TSV with a header: the csv module handles quoting (LSVQ's ``"[15, 527, ...]"``)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    header = next(h for h in reader if any(f.strip() for f in h))
    header = [h.strip() for h in header]
    header_line = reader.line_num
    ni = _require_column(header, name_col, "name", _NAME_SYNONYMS, where, "video name")
    mi = _require_column(header, mos_col, "mos", _MOS_SYNONYMS, where, "MOS")
    si = _require_column(header, split_col, None, (), where, "split") if split_col is not None else None
    rows = []
    for fields in reader:
        no = reader.line_num
        line = lines[no - 1] if 0 < no <= len(lines) else delimiter.join(fields)
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            problem = f"expected {len(header)} fields as in the header (line {header_line}), got {len(fields)}"
            raise _line_error(where, no, line, problem)
        split = (fields[si].strip() or None) if si is not None else None
        rows.append(_Row(_name(fields[ni], where, no, line), _mos(fields[mi], where, no, line), split, no))
    if not rows:
        raise LabelFileError(f"no rows in label file {where}: only a header (line {header_line})")
    return rows


def _norm(column: str) -> str:
    return column.strip().lower().replace(" ", "_").replace("-", "_")


def _find_column(header: Sequence[str], given: str | None, default: str | None, synonyms: Sequence[str]) -> int | None:
    """Index of ``given`` in the header (exact, then case/space-insensitive); synonyms only for the default."""
    if given is None:
        return None
    if given in header:
        return header.index(given)
    normed = [_norm(h) for h in header]
    candidates = (given, *synonyms) if given == default else (given,)
    for cand in candidates:
        if _norm(cand) in normed:
            return normed.index(_norm(cand))
    return None


def _require_column(
    header: Sequence[str], given: str | None, default: str | None, synonyms: Sequence[str], where: str, what: str
) -> int:
    i = _find_column(header, given, default, synonyms)
    if i is not None:
        return i
    tried = f"{given!r} or a synonym ({', '.join(synonyms)})" if given == default and synonyms else repr(given)
    extra = ""
    if what == "MOS" and any("dmos" in _norm(h) for h in header):
        extra = "; DMOS (lower is better) is not auto-detected: pass mos_col= to take its values as they are"
    raise LabelFileError(f"{where}: no {what} column {tried} in the header; columns: {list(header)}{extra}")


def _name(field: str, where: str, no: int, line: str) -> str:
    name = field.strip()
    if not name:
        raise _line_error(where, no, line, "empty video name")
    return name


def _mos(field: str, where: str, no: int, line: str) -> float:
    try:
        value = float(field.strip())
    except ValueError:
        raise _line_error(where, no, line, f"non-numeric MOS {field.strip()!r}") from None
    if not math.isfinite(value):
        raise _line_error(where, no, line, f"MOS must be a finite number, got {field.strip()!r}")
    return value


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _line_error(where: str, no: int, line: str, problem: str) -> LabelFileError:
    shown = line if len(line) <= _MAX_SHOWN else line[:_MAX_SHOWN] + "..."
    return LabelFileError(f"{where}, line {no}: {problem}: {shown!r}")


# --------------------------------------------------------------------------------------------------
# output


def _check_unique(rows: Sequence[_Row], where: str) -> None:
    """Duplicate names would collide as video ids (and usually mean two label files were pasted)."""
    seen: dict[str, list[int]] = {}
    for r in rows:
        seen.setdefault(_video_id(r.name), []).append(r.line)
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    if dups:
        shown = "; ".join(f"{k!r} (lines {', '.join(map(str, v))})" for k, v in list(dups.items())[:5])
        more = f"; and {len(dups) - 5} more" if len(dups) > 5 else ""
        raise LabelFileError(f"duplicate video names in {where} ({len(dups)} names): {shown}{more}")


def _frame(
    rows: Sequence[_Row],
    *,
    where: str,
    video_root: str,
    ext: str,
    split: str | None,
    dataset: str,
    storage_options: Mapping[str, Any] | None,
) -> pd.DataFrame:
    fs, base = filesystem(video_root, storage_options)
    uris = [resolve_uri(fs, base, _file_name(r.name, ext), where, r.line) for r in rows]
    return pd.DataFrame(
        {
            "video_id": pd.Series([_video_id(r.name) for r in rows], dtype=str),
            "uri": pd.Series(uris, dtype=str),
            "mos": pd.Series([r.mos for r in rows], dtype="float64"),
            "dataset": pd.Series([dataset] * len(rows), dtype=object),
            "split": pd.Series([split if split is not None else r.split for r in rows], dtype=object),
        },
        columns=COLUMNS,
    )
