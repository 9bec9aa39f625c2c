"""Writing and re-reading clips with real encoders (x264, MPEG-2, MJPEG) and the frame-tensor helpers the builders share."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import torch
import torch.nn.functional as F

from pipeline.io.video import read_frames

CLEAN_CRF = 12
PRESET = "veryfast"
X264_THREADS = 1  # every encoder: with 2 frame threads x264 gave different bytes in ~1 run of 10
MPEG_GOP = 12


# ----------------------------------------------------------------------------- encoding


def x264_options(crf: float, width: int) -> dict[str, str]:
    opts = {"preset": PRESET, "crf": f"{crf:g}"}
    if width % 128:
        # Rows that are not a multiple of the widest SIMD load: x264's assembly then gave
        # different bytes from run to run (176x144 carphone; the 640-wide clips were
        # stable). x264's C and assembly paths are bit-exact, so this only costs speed.
        opts["x264-params"] = "no-asm=1"
    return opts


def fixed_q_options(q: float) -> dict[str, str]:
    """MPEG-2 / MJPEG at one quantiser for every frame (rate control clamped to it)."""
    return {"qmin": f"{int(q)}", "qmax": f"{int(q)}", "g": str(MPEG_GOP), "bf": "0"}


def write_video(frames: torch.Tensor, target: str | Path | BinaryIO, fps: Fraction, codec: str,
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


def encode(frames: torch.Tensor, path: Path, fps: Fraction, crf: float) -> None:
    """(T, H, W, 3) uint8 RGB -> H.264 yuv420p MP4 at ``crf``, via a temporary name."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write_video(frames, str(tmp), fps, "libx264", x264_options(crf, frames.shape[2]))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


MPEG2_RATES = frozenset({Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                         Fraction(50), Fraction(60000, 1001), Fraction(60)})


def roundtrip(frames: torch.Tensor, fps: Fraction, codec: str, options: Mapping[str, str],
               pix_fmt: str = "yuv420p") -> torch.Tensor:
    """Encode in memory and decode again: the frames as a viewer of that encode would see them.

    MPEG-2 allows only its standard frame rates (FFmpeg refuses 15 fps, e.g. opencv-doc's tree.avi): other
    rates are encoded at 25 fps. The same frames are encoded either way, and a roundtrip keeps no timing.
    """
    if codec == "mpeg2video" and fps not in MPEG2_RATES:
        fps = Fraction(25)
    buf = io.BytesIO()
    write_video(frames, buf, fps, codec, options, pix_fmt)
    buf.seek(0)
    return read_frames(buf, range(frames.shape[0]))


def decode_all(path: Path, n: int) -> torch.Tensor:
    return read_frames(path, range(n))


# ----------------------------------------------------------------------------- distortions


def even(x: float) -> int:
    return max(2, round(x / 2) * 2)


def _to_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W), 0..255


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


CHUNK = 4  # frames per tensor op: small tensors stay in cache (measured 5-10x faster here)


def map_chunks(frames: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` ((t, 3, H, W) float 0..255 -> same layout) to chunks of uint8 (T, H, W, 3) frames."""
    return torch.cat([to_uint8(fn(_to_float(frames[s : s + CHUNK]))) for s in range(0, frames.shape[0], CHUNK)])


def resize(frames: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return map_chunks(
        frames, lambda x: F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    )


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
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
