"""Small synthetic test videos, written with PyAV into a directory the caller owns (e.g. tmp_path).

Every frame encodes its own index so a decoder's output can be checked frame-exactly after lossy
compression: the picture is a 4x4 grid of cells; cell (0, 0) is a red-ish marker (fixes both the
orientation and the RGB channel order), the other 15 cells are the bits of the frame index
(bright = 1, dark = 0). A faint per-frame gradient gives the encoder something real to code.
`decode_index(frame)` reads the index back from an upright (H, W, 3) uint8 RGB frame.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = 4
NUM_BITS = GRID * GRID - 1  # cell 0 is the marker
MARKER_RGB = (220, 40, 40)
ON, OFF = 210, 35


def frame_picture(index: int, width: int, height: int) -> np.ndarray:
    """The upright (height, width, 3) uint8 RGB picture of frame ``index``."""
    if not 0 <= index < 2**NUM_BITS:
        raise ValueError(f"index {index} does not fit in {NUM_BITS} bits")
    yy, xx = np.mgrid[0:height, 0:width]
    # faint moving gradient (amplitude 12), stays far from the ON/OFF threshold
    base = ((xx + yy + 3 * index) % 24 - 12).astype(np.int16)
    img = np.empty((height, width, 3), np.int16)
    rows = np.minimum(yy * GRID // height, GRID - 1)
    cols = np.minimum(xx * GRID // width, GRID - 1)
    cell = rows * GRID + cols
    bits = np.array([0] + [(index >> b) & 1 for b in range(NUM_BITS)], np.int16)
    level = np.where(bits[cell] == 1, ON, OFF)
    for ch in range(3):
        img[..., ch] = level + base
    marker = cell == 0
    for ch in range(3):
        img[..., ch][marker] = MARKER_RGB[ch] + base[marker] // 2
    return np.clip(img, 0, 255).astype(np.uint8)


def decode_index(frame) -> int:
    """Read the frame index back from an upright RGB frame (numpy array or torch tensor).

    Raises ValueError if the marker cell is not where it should be (wrong orientation or BGR).
    """
    a = np.asarray(frame).astype(np.float32)
    h, w = a.shape[:2]
    ch, cw = h / GRID, w / GRID

    def cell_mean(r: int, c: int) -> np.ndarray:
        y0, y1 = int(r * ch + ch / 4), int(r * ch + 3 * ch / 4)
        x0, x1 = int(c * cw + cw / 4), int(c * cw + 3 * cw / 4)
        return a[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].reshape(-1, 3).mean(0)

    m = cell_mean(0, 0)
    if not (m[0] > 150 and m[2] < 100 and m[1] < 100):
        raise ValueError(
            f"marker cell not found at top-left (mean RGB {m.round(1).tolist()})"
        )
    index = 0
    for b in range(NUM_BITS):
        r, c = divmod(b + 1, GRID)
        if cell_mean(r, c).mean() > (ON + OFF) / 2:
            index |= 1 << b
    return index


def write_video(
    path: str | Path,
    num_frames: int = 60,
    width: int = 160,
    height: int = 96,
    *,
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation_cw: int = 0,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write an index-coded clip; ``width`` x ``height`` is the *displayed* (upright) size.

    rotation_cw: clockwise degrees a player must rotate the stored picture (the legacy "rotate"
    tag of phone videos). The stored picture is the upright one rotated the other way, and the
    display matrix says how to undo it.
    pts: explicit presentation timestamps in ``time_base`` units (variable frame rate).
    """
    path = Path(path)
    k = (rotation_cw // 90) % 4
    stored_w, stored_h = (height, width) if k % 2 else (width, height)
    with av.open(str(path), "w", options=container_options or {}) as out:
        st = out.add_stream(codec, rate=fps)
        st.width, st.height, st.pix_fmt = stored_w, stored_h, pix_fmt
        if codec in ("libx264", "libx265"):
            st.options = {"preset": "ultrafast", "crf": "18", **(options or {})}
            if codec == "libx265":
                st.options = {**st.options, "x265-params": "log-level=none"}
        elif options:
            st.options = dict(options)
        if time_base is not None:
            st.time_base = time_base
            st.codec_context.time_base = time_base
        if k:
            # FFmpeg's display matrix angle is counterclockwise
            st.set_display_rotation(-rotation_cw)
        for i in range(num_frames):
            pic = frame_picture(i, width, height)
            stored = np.ascontiguousarray(
                np.rot90(pic, k=k)
            )  # CCW by rotation_cw: display undoes it
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(
                format=pix_fmt
            )
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


# ----------------------------------------------------------------------------- the odd cases


def normal_clip(d: Path, num_frames: int = 90) -> Path:
    return write_video(Path(d) / "normal.mp4", num_frames, 160, 96)


def short_clip(d: Path) -> Path:
    return write_video(Path(d) / "short.mp4", 20, 160, 96)


def tiny_clip(d: Path) -> Path:
    return write_video(Path(d) / "tiny.mp4", 24, 64, 48)


def portrait_clip(d: Path) -> Path:
    return write_video(Path(d) / "portrait.mp4", 24, 360, 640)


def rotated_clip(d: Path, rotation_cw: int = 90) -> Path:
    """A phone-style clip: stored landscape 160x96, displayed portrait 96x160."""
    return write_video(
        Path(d) / f"rot{rotation_cw}.mp4", 24, 96, 160, rotation_cw=rotation_cw
    )


def mpeg4_clip(d: Path) -> Path:
    return write_video(
        Path(d) / "mpeg4.mp4", 30, 160, 96, codec="mpeg4", options={"qscale": "2"}
    )


def ten_bit_clip(d: Path) -> Path:
    return write_video(Path(d) / "10bit.mp4", 24, 160, 96, pix_fmt="yuv420p10le")


def yuv444_clip(d: Path) -> Path:
    return write_video(Path(d) / "444.mp4", 24, 160, 96, pix_fmt="yuv444p")


def hevc_clip(d: Path) -> Path:
    return write_video(Path(d) / "hevc.mp4", 24, 160, 96, codec="libx265")


def vfr_clip(d: Path, num_frames: int = 60) -> Path:
    """Irregular timestamps (ms): frame gaps cycle through 20, 50, 33, 100 ms."""
    gaps = [20, 50, 33, 100]
    pts, t = [], 0
    for i in range(num_frames):
        pts.append(t)
        t += gaps[i % len(gaps)]
    return write_video(
        Path(d) / "vfr.mp4",
        num_frames,
        160,
        96,
        pts=pts,
        time_base=Fraction(1, 1000),
        fps=30,
    )


def long_gop_clip(d: Path, num_frames: int = 600, keyint: int = 50) -> Path:
    """Long enough that sparse reads seek; keyframes every ``keyint`` frames, with B-frames."""
    return write_video(
        Path(d) / "long.mp4",
        num_frames,
        128,
        72,
        options={"g": str(keyint), "keyint_min": str(keyint), "bf": "3"},
    )


def audio_only(d: Path) -> Path:
    path = Path(d) / "audio.m4a"
    with av.open(str(path), "w") as out:
        st = out.add_stream("aac", rate=16000)
        st.layout = "mono"
        n = 0
        for _ in range(20):
            t = (np.arange(1024) + n) / 16000
            n += 1024
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def empty_file(d: Path) -> Path:
    path = Path(d) / "empty.mp4"
    path.write_bytes(b"")
    return path


def truncated_clip(d: Path, keep: float = 0.4, faststart: bool = False) -> Path:
    """The first ``keep`` of a valid file's bytes.

    Without faststart the index (moov) is at the end and is lost: nothing can be read. With
    faststart the index survives and claims all frames while most of the data is gone.
    """
    name = "trunc_fast.mp4" if faststart else "trunc.mp4"
    src = write_video(
        Path(d) / ("full_" + name),
        120,
        160,
        96,
        options={"g": "10"},
        container_options={"movflags": "faststart"} if faststart else None,
    )
    data = src.read_bytes()
    path = Path(d) / name
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def text_file(d: Path) -> Path:
    path = Path(d) / "notes.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    return path


def random_bytes(d: Path, n: int = 4096) -> Path:
    path = Path(d) / "noise.mp4"
    path.write_bytes(
        np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    )
    return path


def missing_path(d: Path) -> Path:
    return Path(d) / "does_not_exist.mp4"


# ----------------------------------------------------------------------------- field kinds (issue 13)
# Each writes one kind of file that real users' catalogs hold and that readers get wrong; parameters
# vary codec, container, cut point and length so a test covers the kind, not one file.


def _encode_into(out, st, num_frames: int, width: int, height: int, pts=None, time_base=None) -> None:
    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(frame_picture(i, width, height), format="rgb24").reformat(
            format=st.pix_fmt)
        if pts is not None:
            frame.pts, frame.time_base = pts[i], time_base
        for p in st.encode(frame):
            out.mux(p)
    for p in st.encode():
        out.mux(p)


def _video_stream(out, codec: str, width: int, height: int, fps: int = 25, gop: int = 12):
    st = out.add_stream(codec, rate=fps)
    st.width, st.height, st.pix_fmt = width, height, "yuv420p"
    if codec == "libx264":
        st.options = {"preset": "ultrafast", "g": str(gop), "bf": "2"}
    elif codec == "libx265":
        st.options = {"preset": "ultrafast", "x265-params": f"log-level=none:keyint={gop}"}
    elif codec in ("mpeg2video", "mpeg4"):
        st.options = {"g": str(gop), "bf": "2"}
    return st


def _picture_stream(out, default: bool = False):
    """A one-frame MJPEG picture stream (cover art when flagged attached_pic)."""
    pic = out.add_stream("mjpeg", rate=1)
    pic.width, pic.height, pic.pix_fmt = 64, 64, "yuvj420p"
    grey = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24").reformat(format="yuvj420p")
    return pic, grey


def cover_art_clip(d: Path, num_frames: int = 30, *, ext: str = "mp4", codec: str = "libx264") -> Path:
    """A video with an attached picture (album/poster art, disposition attached_pic) beside it."""
    path = Path(d) / f"cover_{codec}_{num_frames}.{ext}"
    with av.open(str(path), "w") as out:
        pic, grey = _picture_stream(out)
        pic.disposition = av.stream.Disposition.attached_pic
        st = _video_stream(out, codec, 160, 96)
        for p in [*pic.encode(grey), *pic.encode()]:
            out.mux(p)
        _encode_into(out, st, num_frames, 160, 96)
    return path


def cover_art_only(d: Path) -> Path:
    """Music with an album picture: audio and cover art, no moving video."""
    path = Path(d) / "song.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        pic, grey = _picture_stream(out)
        pic.disposition = av.stream.Disposition.attached_pic
        st = out.add_stream("aac", rate=16000)
        st.layout = "mono"
        for p in [*pic.encode(grey), *pic.encode()]:
            out.mux(p)
        for k in range(10):
            t = (np.arange(1024) + 1024 * k) / 16000
            frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                               format="fltp", layout="mono")
            frame.sample_rate = 16000
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def picture_then_video(d: Path, num_frames: int = 30) -> Path:
    """Matroska whose first video stream is a one-frame picture track and whose second, flagged
    default, is the video."""
    path = Path(d) / "picture_then_video.mkv"
    with av.open(str(path), "w") as out:
        pic, grey = _picture_stream(out)
        st = _video_stream(out, "libx264", 160, 96)
        st.disposition = av.stream.Disposition.default
        for p in [*pic.encode(grey), *pic.encode()]:
            out.mux(p)
        _encode_into(out, st, num_frames, 160, 96)
    return path


def edit_list_clip(d: Path, num_frames: int = 40, hidden: int = 7, *, ext: str = "mp4",
                   codec: str = "libx264") -> Path:
    """A clip cut without re-encoding: the first ``hidden`` frames stay in the file (the decoder needs
    them) but an edit list hides them; a player presents frames ``hidden``..``num_frames - 1``."""
    src = Path(d) / f"uncut_{codec}_{num_frames}.mp4"
    with av.open(str(src), "w") as out:
        _encode_into(out, _video_stream(out, codec, 160, 96, gop=20), num_frames, 160, 96)
    path = Path(d) / f"cut_{codec}_{num_frames}_{hidden}.{ext}"
    with av.open(str(src)) as inp, av.open(str(path), "w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        step = int(round(1 / (ist.average_rate * ist.time_base)))
        for p in inp.demux(ist):
            if p.dts is None:
                continue
            p.pts -= hidden * step  # negative timestamps: the muxer writes an edit list that hides them
            p.dts -= hidden * step
            p.stream = ost
            out.mux(p)
    return path


def mpegts_clip(d: Path, num_frames: int = 300, *, codec: str = "mpeg2video") -> Path:
    """MPEG transport stream (broadcast capture): no frame count in any header."""
    path = Path(d) / f"capture_{codec}_{num_frames}.ts"
    with av.open(str(path), "w", format="mpegts") as out:
        _encode_into(out, _video_stream(out, codec, 160, 96), num_frames, 160, 96)
    return path


def program_stream_clip(d: Path, num_frames: int = 300) -> Path:
    """MPEG-2 program stream (DVD .vob / .mpg): timestamps on some packets only."""
    path = Path(d) / f"dvd_{num_frames}.mpg"
    with av.open(str(path), "w", format="vob") as out:
        _encode_into(out, _video_stream(out, "mpeg2video", 160, 96), num_frames, 160, 96)
    return path


def raw_stream_clip(d: Path, num_frames: int = 60, *, codec: str = "libx264") -> Path:
    """A raw Annex B elementary stream (.h264 / .hevc): no container, no timestamps, cannot seek."""
    fmt = {"libx264": "h264", "libx265": "hevc"}[codec]
    path = Path(d) / f"raw_{num_frames}.{fmt}"
    with av.open(str(path), "w", format=fmt) as out:
        _encode_into(out, _video_stream(out, codec, 160, 96), num_frames, 160, 96)
    return path


def live_webm_clip(d: Path, num_frames: int = 90, *, mean_fps: float = 24.85, codec: str = "libvpx") -> Path:
    """Live-muxed WebM (no duration, no cues) with uneven timestamps averaging ``mean_fps``; its
    header says 30 fps."""
    path = Path(d) / f"live_{codec}_{num_frames}.webm"
    rng = np.random.default_rng(num_frames)
    step = 1000 / mean_fps
    pts = [int(round(i * step + (rng.uniform(-0.3, 0.3) * step if 0 < i < num_frames - 1 else 0)))
           for i in range(num_frames)]
    with av.open(str(path), "w", format="webm", options={"live": "1"}) as out:
        st = out.add_stream(codec, rate=30)
        st.width, st.height, st.pix_fmt = 160, 96, "yuv420p"
        st.time_base = st.codec_context.time_base = Fraction(1, 1000)
        _encode_into(out, st, num_frames, 160, 96, pts=pts, time_base=Fraction(1, 1000))
    return path
