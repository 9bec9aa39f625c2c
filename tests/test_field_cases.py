"""Files from the field (issue 13): the right stream, presented frame counts, timestamps' average rate,
exact frames where seeking is unreliable, and no stale stream handles.

Two sources: the generated corpus of tests/helpers/videos.py (each kind in several codecs, containers,
lengths and cut points; every frame carries its index) and the users' files in ../shared/field_cases
with the values a correct reader reports (its expect.csv).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.video import VideoDecodeError, VideoReader, probe, read_frames
from tests.helpers import videos as tv

FIELD = Path(os.environ.get("SECUREVQA_FIELD_CASES", Path(__file__).resolve().parents[2] / "shared" / "field_cases"))

NO_TIMESTAMPS = "no usable timestamps"

# name: (writer, presented frames, first frame shown (hidden by an edit list before it), stream read,
#        average fps, note the reader must leave or None)
KINDS = {
    "cover_mp4": (lambda d: tv.cover_art_clip(d, 30), 30, 0, 0, 25.0, None),
    "cover_mov_hevc": (lambda d: tv.cover_art_clip(d, 24, ext="mov", codec="libx265"), 24, 0, 0, 25.0, None),
    "picture_then_video": (lambda d: tv.picture_then_video(d, 30), 30, 0, 1, 25.0, None),
    "editlist_h264_mp4": (lambda d: tv.edit_list_clip(d, 40, 7), 33, 7, 0, 25.0, None),
    "editlist_hevc_mov": (lambda d: tv.edit_list_clip(d, 50, 3, ext="mov", codec="libx265"), 47, 3, 0, 25.0, None),
    "editlist_long_mp4": (lambda d: tv.edit_list_clip(d, 400, 12), 388, 12, 0, 25.0, None),
    "editlist_mid_gop": (lambda d: tv.edit_list_clip(d, 400, 7), 393, 7, 0, 25.0, None),
    "ts_mpeg2_long": (lambda d: tv.mpegts_clip(d, 600), 600, 0, 0, 25.0, None),
    "ts_h264": (lambda d: tv.mpegts_clip(d, 90, codec="libx264"), 90, 0, 0, 25.0, None),
    "ps_mpeg2": (lambda d: tv.program_stream_clip(d, 300), 300, 0, 0, 25.0, NO_TIMESTAMPS),
    "raw_h264": (lambda d: tv.raw_stream_clip(d, 60), 60, 0, 0, 25.0, NO_TIMESTAMPS),
    "raw_hevc_long": (lambda d: tv.raw_stream_clip(d, 320, codec="libx265"), 320, 0, 0, 25.0, NO_TIMESTAMPS),
    "webm_live_vp8": (lambda d: tv.live_webm_clip(d, 90), 90, 0, 0, 24.85, None),
    "webm_live_vp9": (lambda d: tv.live_webm_clip(d, 60, mean_fps=12.0, codec="libvpx-vp9"), 60, 0, 0, 12.0, None),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("field_kinds")


def _indices(n: int) -> list[int]:
    """Edges, the middle, and a sparse spread that makes long files take the seeking path."""
    spread = np.linspace(0, n - 1, 9).round().astype(int).tolist()
    return sorted({0, 1, n // 2, n - 2, n - 1, *spread}, key=lambda i: (i * 7919) % n)  # out of order


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_reads_the_presented_frames(corpus, kind):
    write, count, first, stream, fps, note = KINDS[kind]
    path = write(corpus)
    with VideoReader(path) as v:
        info = v.info
        assert (info.num_frames, info.stream_index, info.width, info.height) == (count, stream, 160, 96)
        assert info.fps == pytest.approx(fps, rel=0.01)
        assert info.duration_s == pytest.approx(count / fps, rel=0.01)
        idx = _indices(count)
        got = [tv.decode_index(f) for f in v.read(idx)]
        assert got == [first + i for i in idx]  # exactly the frames asked for
        assert (note is None) or any(note in n for n in v.notes), v.notes
        if kind.startswith("editlist"):  # hidden keyframes are still seek points: no fallback
            assert not v.notes, v.notes
        with pytest.raises(VideoDecodeError, match="out of range"):
            v.read([count])
    assert probe(path) == info == probe(path)  # the same facts every time (no stale stream handle)


def test_music_with_cover_art_is_not_a_video(corpus):
    with pytest.raises(VideoDecodeError, match=r"no video stream\): only an attached picture \(cover art\)"):
        probe(tv.cover_art_only(corpus))


def test_stream_override_reads_the_stream_asked_for(corpus):
    path = tv.picture_then_video(corpus, 30)
    pic = probe(path, stream=0)
    assert (pic.stream_index, pic.num_frames, pic.width, pic.height, pic.codec) == (0, 1, 64, 64, "mjpeg")
    assert read_frames(path, [0], stream=0).shape == (1, 64, 64, 3)
    assert tv.decode_index(read_frames(path, [29], stream=1)[0]) == 29
    with pytest.raises(VideoDecodeError, match=r"no stream 2: the file has streams 0\.\.1"):
        probe(path, stream=2)
    import av

    song = tv.cover_art_only(corpus)
    with av.open(str(song)) as c:
        audio = c.streams.audio[0].index
    with pytest.raises(VideoDecodeError, match=f"stream {audio} is audio, not video"):
        probe(song, stream=audio)


def test_a_seek_that_lands_elsewhere_is_caught(corpus, monkeypatch):
    """A demuxer whose seeks land one keyframe late (MPEG program streams do this): the timestamps
    disagree with what was asked, so the read decodes from the start and still returns those frames."""
    path = tv.mpegts_clip(corpus, 600, codec="libx264")
    real = VideoReader._seek
    landed = {"late": 0}

    def late_seek(self, pts):
        table = self._packet_table()
        later = [k for k in table.keys if k > pts]
        landed["late"] += bool(later)
        return real(self, later[0] if later else pts)

    monkeypatch.setattr(VideoReader, "_seek", late_seek)
    idx = [599, 300, 5, 450, 151]
    with VideoReader(path) as v:
        assert [tv.decode_index(f) for f in v.read(idx)] == idx
        assert landed["late"] > 0 and any("decoded from the start" in n for n in v.notes)


# ----------------------------------------------------------------------------- the users' files

# name: (presented frames, stream read, width, height, average fps)
EXPECT = {
    "cover_art_first.mp4": (75, 1, 320, 240, 25.0),
    "cut_negative_ts_editlist.mp4": (78, 0, 320, 240, 25.0),
    "interlaced_mpeg2_long.ts": (1500, 0, None, None, 25.0),
    "raw_annexb.h264": (60, 0, 320, 240, 25.0),
    "webm_live_no_duration.webm": (90, 0, 320, 240, 24.85),
}


def _sequential(path: Path, stream: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams[stream])]


@pytest.mark.skipif(not FIELD.is_dir(), reason=f"no field cases at {FIELD} (set SECUREVQA_FIELD_CASES)")
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_users_files(name):
    assert name in (FIELD / "expect.csv").read_text()
    count, stream, w, h, fps = EXPECT[name]
    path = FIELD / name
    with VideoReader(path) as v:
        info = v.info
        assert (info.num_frames, info.stream_index) == (count, stream)
        assert (w is None or info.width == w) and (h is None or info.height == h)
        assert info.fps == pytest.approx(fps, abs=0.02)
        idx = [count - 1, 0, count // 2, count // 3]
        got = v.read(idx).numpy()
    frames = _sequential(path, stream)
    assert len(frames) == count  # presented frames: what a player shows from the start
    for k, i in enumerate(idx):
        assert np.array_equal(got[k], frames[i]), f"frame {i}"


def test_a_capture_cut_mid_stream_counts_what_decodes(corpus):
    """A broadcast capture cut at an arbitrary packet: the pictures before the first keyframe cannot be
    decoded by anyone, so they are not counted, and frame i is the i-th picture a player shows."""
    whole = tv.mpegts_clip(corpus, 300)
    data = whole.read_bytes()
    cut = corpus / "cut_capture.ts"
    cut.write_bytes(data[(len(data) // 3) // 188 * 188:])  # a TS packet boundary in the middle of a GOP
    with VideoReader(cut) as v:
        n = v.info.num_frames
        frames = v.read([0, 1, n // 2, n - 1])
    first = tv.decode_index(frames[0])
    assert 0 < first and 150 < n < 300 and first + n == 300
    assert [tv.decode_index(f) for f in frames] == [first, first + 1, first + n // 2, first + n - 1]
