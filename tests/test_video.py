"""pipeline.io.video: probing, frame-exact reads, odd files (tests/helpers/videos.py writes the clips)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from pipeline.io import video as V
from pipeline.io.video import VideoDecodeError, VideoInfo, VideoReader, probe, read_frames
from tests.helpers import videos as tv


@pytest.fixture(scope="module")
def vdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def clips(vdir) -> dict[str, Path]:
    return {
        "normal": tv.normal_clip(vdir),
        "short": tv.short_clip(vdir),
        "tiny": tv.tiny_clip(vdir),
        "portrait": tv.portrait_clip(vdir),
        "rot90": tv.rotated_clip(vdir, 90),
        "rot270": tv.rotated_clip(vdir, 270),
        "rot180": tv.rotated_clip(vdir, 180),
        "mpeg4": tv.mpeg4_clip(vdir),
        "10bit": tv.ten_bit_clip(vdir),
        "444": tv.yuv444_clip(vdir),
        "hevc": tv.hevc_clip(vdir),
        "vfr": tv.vfr_clip(vdir),
        "long": tv.long_gop_clip(vdir),
    }


def pyav_reference(path: Path, indices) -> np.ndarray:
    """Independent reference: decode everything with plain PyAV, number frames in output order."""
    with av.open(str(path)) as c:
        frames = []
        for f in c.decode(video=0):
            rgb = f.to_ndarray(format="rgb24")
            k = round((f.rotation or 0) / 90) % 4
            frames.append(np.ascontiguousarray(np.rot90(rgb, k=k)))
    return np.stack([frames[i] for i in indices])


def indices_of(frames: torch.Tensor) -> list[int]:
    return [tv.decode_index(f.numpy()) for f in frames]


# ----------------------------------------------------------------------------- good clips

GOOD = [
    "normal",
    "short",
    "tiny",
    "portrait",
    "rot90",
    "rot270",
    "rot180",
    "mpeg4",
    "10bit",
    "444",
    "hevc",
    "vfr",
    "long",
]
EXPECTED = {  # name: (num_frames, displayed width, height, rotation cw, pix_fmt, codec)
    "normal": (90, 160, 96, 0, "yuv420p", "h264"),
    "short": (20, 160, 96, 0, "yuv420p", "h264"),
    "tiny": (24, 64, 48, 0, "yuv420p", "h264"),
    "portrait": (24, 360, 640, 0, "yuv420p", "h264"),
    "rot90": (24, 96, 160, 90, "yuv420p", "h264"),
    "rot270": (24, 96, 160, 270, "yuv420p", "h264"),
    "rot180": (24, 96, 160, 180, "yuv420p", "h264"),
    "mpeg4": (30, 160, 96, 0, "yuv420p", "mpeg4"),
    "10bit": (24, 160, 96, 0, "yuv420p10le", "h264"),
    "444": (24, 160, 96, 0, "yuv444p", "h264"),
    "hevc": (24, 160, 96, 0, "yuv420p", "hevc"),
    "vfr": (60, 160, 96, 0, "yuv420p", "h264"),
    "long": (600, 128, 72, 0, "yuv420p", "h264"),
}


@pytest.mark.parametrize("name", GOOD)
def test_probe_fields(clips, name):
    info = probe(clips[name])
    assert isinstance(info, VideoInfo)
    n, w, h, rot, pix, codec = EXPECTED[name]
    assert (info.num_frames, info.width, info.height, info.rotation) == (n, w, h, rot)
    assert (info.pix_fmt, info.codec) == (pix, codec)
    if name == "vfr":
        assert info.variable_frame_rate
        assert info.fps == pytest.approx(60 / info.duration_s, rel=0.05)
    else:
        assert not info.variable_frame_rate
        assert info.fps == pytest.approx(30.0)
        assert info.duration_s == pytest.approx(n / 30.0, rel=0.05)


@pytest.mark.parametrize("name", GOOD)
def test_frames_exact_and_upright(clips, name):
    n = EXPECTED[name][0]
    idx = sorted({0, 1, n // 3, n // 2, n - 2, n - 1})[::-1] + [
        1,
        1,
    ]  # unsorted, repeated
    got = read_frames(clips[name], idx)
    w, h = EXPECTED[name][1:3]
    assert got.dtype == torch.uint8 and got.shape == (len(idx), h, w, 3)
    assert (
        indices_of(got) == idx
    )  # content says which frame it is, marker at top-left in RGB
    ref = pyav_reference(clips[name], idx)
    assert np.array_equal(got.numpy(), ref)


def test_verify_counts_packets(clips):
    for name in ("normal", "vfr", "long"):
        info = probe(clips[name], verify=True)
        assert info.num_frames == EXPECTED[name][0]
    assert probe(clips["vfr"], verify=True).variable_frame_rate
    assert not probe(clips["long"], verify=True).variable_frame_rate


def test_sparse_reads_seek_and_stay_exact(clips, monkeypatch):
    """Long GOP clip with B-frames: the seek path must give the same frames as a full decode."""
    path = clips["long"]
    calls = {"seek": 0}
    real = VideoReader._seek

    def counting(self, pts):
        calls["seek"] += pts is not None
        return real(self, pts)

    monkeypatch.setattr(VideoReader, "_seek", counting)
    idx = [599, 5, 300, 49, 50, 51, 250, 449, 450, 598, 300, 0]
    got = read_frames(path, idx)
    assert calls["seek"] >= 2  # really took the seek path
    assert indices_of(got) == idx
    assert np.array_equal(got.numpy(), pyav_reference(path, idx))


def test_model_samplers_long_clip(clips):
    from model.transforms import continuous_sample_indices, skip_sample_indices

    path = clips["long"]
    n = probe(path).num_frames
    g = torch.Generator().manual_seed(3)
    for idx in (
        skip_sample_indices(n, num_clips=4, generator=g),
        continuous_sample_indices(n),
    ):
        flat = idx.reshape(-1)
        got = read_frames(path, flat)
        assert got.shape[0] == flat.numel()
        assert indices_of(got[::7]) == flat[::7].tolist()


def test_decord_backend_matches_pyav(clips):
    pytest.importorskip("decord")
    for name in ("normal", "10bit", "444", "rot90", "vfr", "mpeg4"):
        n = EXPECTED[name][0]
        idx = [n - 1, 0, n // 2, n // 2, 3]
        a = read_frames(clips[name], idx)
        b = read_frames(clips[name], idx, backend="decord")
        assert a.shape == b.shape, name
        diff = (a.int() - b.int()).abs()
        if name == "10bit":
            # decord's older FFmpeg upsamples 10-bit chroma differently: identical away from
            # colour edges, up to ~50 levels on the sharp red/grey edge of the marker cell
            assert diff.float().mean().item() < 1.0, name
            assert (diff > 2).float().mean().item() < 0.05, name
            assert indices_of(b) == idx
        else:
            assert diff.max().item() == 0, name  # 8-bit: bit-exact


def test_file_like_source(clips):
    path = clips["normal"]
    data = path.read_bytes()
    idx = [10, 2, 10, 89]
    with open(path, "rb") as f:
        assert probe(f) == probe(path)
        got = read_frames(f, idx)
        assert not f.closed
    assert indices_of(got) == idx
    assert torch.equal(got, read_frames(io.BytesIO(data), idx))
    with VideoReader(io.BytesIO(data)) as v:  # one open video, several reads
        assert indices_of(v.read([5])) == [5]
        assert indices_of(v.read(torch.tensor([[80, 1], [1, 80]]))) == [80, 1, 1, 80]


def test_empty_index_list(clips):
    out = read_frames(clips["tiny"], [])
    assert out.shape == (0, 48, 64, 3) and out.dtype == torch.uint8


def test_bad_indices(clips):
    with pytest.raises(ValueError, match=">= 0"):
        read_frames(clips["short"], [-1])
    with pytest.raises(TypeError):
        read_frames(clips["short"], [0.5])


def test_index_past_end_raises(clips):
    with pytest.raises(
        VideoDecodeError, match=r"frame index 20 out of range.*20 frames"
    ):
        read_frames(clips["short"], [0, 20])
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames(clips["long"], [0, 10_000])


# ----------------------------------------------------------------------------- bad files


def test_missing_path(vdir):
    with pytest.raises(VideoDecodeError, match="file not found"):
        probe(tv.missing_path(vdir))
    with pytest.raises(VideoDecodeError, match="file not found"):
        read_frames(tv.missing_path(vdir), [0])


def test_empty_file(vdir):
    path = tv.empty_file(vdir)
    with pytest.raises(VideoDecodeError, match=r"file is empty \(0 bytes\)"):
        probe(path)
    with pytest.raises(VideoDecodeError, match="file is empty"):
        read_frames(io.BytesIO(b""), [0])


def test_audio_only(vdir):
    with pytest.raises(
        VideoDecodeError,
        match=r"not a video file \(no video stream\): audio-only \(aac\)",
    ):
        probe(tv.audio_only(vdir))


@pytest.mark.parametrize("maker", [tv.text_file, tv.random_bytes])
def test_not_a_video(vdir, maker):
    with pytest.raises(VideoDecodeError, match="not a video file"):
        read_frames(maker(vdir), [0])


def test_truncated_without_index(vdir):
    """moov at the end: the first 40% of the bytes cannot even be opened."""
    with pytest.raises(VideoDecodeError, match="truncated or corrupt video"):
        probe(tv.truncated_clip(vdir))


def test_truncated_with_index_raises_on_missing_frames(vdir):
    """faststart: the header promises 120 frames, only the first ~40% of the data exists."""
    path = tv.truncated_clip(vdir, faststart=True)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 120  # the header's claim...
    info = probe(path)
    assert 20 < info.num_frames < 120  # ...but only the frames whose data exists are counted
    early = read_frames(path, [0, 5, 20])
    assert indices_of(early) == [0, 5, 20]  # early frames are fine
    with pytest.raises(VideoDecodeError, match=rf"frame index 119 out of range: the video has {info.num_frames} "):
        read_frames(path, [0, 119])
    # verify=True also decodes the last one (a damaged tail is not counted)
    real = probe(path, verify=True).num_frames
    assert 20 < real <= info.num_frames
    assert indices_of(read_frames(path, [real - 1])) == [real - 1]


def test_truncated_seek_path(vdir):
    """Sparse read into the missing part of a long truncated file goes through the seek path."""
    src = tv.write_video(
        vdir / "long_fast.mp4",
        400,
        64,
        48,
        options={"g": "25"},
        container_options={"movflags": "faststart"},
    )
    cut = vdir / "long_fast_cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    n = probe(cut, verify=True).num_frames  # frames whose data exists and decodes, not the header's 400
    assert 100 < n < 400
    with pytest.raises(VideoDecodeError, match=r"frame index 399 out of range: the video has \d+ frames"):
        read_frames(cut, [0, 399])
    assert indices_of(read_frames(cut, [100, 0, n - 1])) == [100, 0, n - 1]


def test_unknown_backend(clips):
    with pytest.raises(ValueError, match="unknown backend"):
        read_frames(clips["short"], [0], backend="opencv")


def test_module_has_no_model_imports():
    import ast

    tree = ast.parse(Path(V.__file__).read_text())
    mods = {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    mods |= {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not any(m == "model" or m.startswith("model.") for m in mods)


def test_container_without_frame_count(vdir):
    """Matroska stores no frame count: probe counts packets, reads stay exact."""
    path = tv.write_video(vdir / "clip.mkv", 45, 96, 64)
    with av.open(str(path)) as c:
        assert not c.streams.video[0].frames  # really headerless
    info = probe(path)
    assert info.num_frames == 45 and (info.width, info.height) == (96, 64)
    idx = [44, 0, 22]
    assert indices_of(read_frames(path, idx)) == idx
    with pytest.raises(VideoDecodeError, match="out of range"):
        read_frames(path, [45])


def test_read_through_s3_file_object(s3_endpoint, clips):
    """Production path: an s3:// object opened with s3fs, passed as a file object."""
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": s3_endpoint}, use_listings_cache=False
    )
    fs.mkdir("videos-test")
    fs.put_file(str(clips["long"]), "videos-test/long.mp4")
    idx = [599, 3, 300, 3]
    with fs.open("s3://videos-test/long.mp4", "rb") as f:
        info = probe(f)
        got = read_frames(f, idx)
    assert info.num_frames == 600
    assert indices_of(got) == idx
