"""Named weights (model/registry.py): an entry loads as its checkpoint does, verified by sha256; unknown and
uninstalled names say so; the default model is declared, not "whatever file exists"; `securevqa weights`
lists the entries and `--weights NAME` resolves to the file; `jobs.demo_model --install` updates the
entry (here in a temporary registry, never the package's). Tiny preset, no Ray."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from jobs import cli
from model import create_model, get_config, make_generator, registry, save_checkpoint
from model.registry import (
    DEFAULT_WEIGHTS,
    REGISTRY_FILE,
    Weights,
    WeightsIntegrityError,
    WeightsNotInstalledError,
    get_weights,
    load_registry,
    sha256_of,
)
from pipeline.stages.options import ModelSpec

NAME = "test-tiny"


@pytest.fixture
def ckpt(tmp_path):
    """A tiny-cpu checkpoint whose weights are not the untrained default's (init_seed 3, not 0)."""
    vqa, inter = create_model("tiny-cpu", init_seed=3)
    path = tmp_path / "weights" / "w.pt"
    save_checkpoint(str(path), vqa, inter)
    return path


@pytest.fixture
def entry(ckpt, monkeypatch):
    """`ckpt` registered as NAME in this process's registry (removed again after the test)."""
    w = Weights(name=NAME, preset="tiny-cpu", file=ckpt.name, sha256=sha256_of(ckpt), root=ckpt.parent,
                recipe={"command": "pytest", "commit": "0123456789abcdef"}, metrics={"srcc": 0.5})
    monkeypatch.setitem(registry.REGISTRY, NAME, w)
    return w


def _score(vqa):
    """A clip's score (tiny-cpu: a 16-frame clip, small frames; fixed inter embeddings and guardian map)."""
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (1, 1, 3, 16, 64, 64), generator=g, dtype=torch.uint8)
    emb = torch.randn(1, 8, vqa.cfg.inter_dim, generator=g)
    with torch.no_grad():
        return vqa(clips, emb, generator=make_generator(0))


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registered_entry_loads_and_scores_as_its_checkpoint(entry, ckpt):
    by_name = create_model(weights=NAME)
    by_file = create_model(checkpoint=str(ckpt))
    assert by_name[0].cfg == by_file[0].cfg == get_config("tiny-cpu")
    assert _same_state(by_name[0], by_file[0]) and _same_state(by_name[1], by_file[1])
    assert torch.equal(_score(by_name[0]), _score(by_file[0]))
    assert not _same_state(by_name[0], create_model("tiny-cpu")[0])  # loaded, not left at the untrained init
    assert _same_state(create_model(weights=entry)[0], by_file[0])  # a Weights object works as well


def test_wrong_sha256_raises_naming_both_digests(entry, ckpt, monkeypatch):
    actual = sha256_of(ckpt)
    wrong = "0" * 64
    monkeypatch.setitem(registry.REGISTRY, NAME, Weights(**{**entry.to_dict(), "sha256": wrong}, root=ckpt.parent))
    with pytest.raises(WeightsIntegrityError) as e:
        create_model(weights=NAME)
    assert wrong in str(e.value) and actual in str(e.value) and NAME in str(e.value)
    assert (e.value.expected, e.value.actual) == (wrong, actual)
    # a changed file fails against the registered digest
    monkeypatch.setitem(registry.REGISTRY, NAME, entry)
    with open(ckpt, "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsIntegrityError, match=f"expected {entry.sha256}, actual {sha256_of(ckpt)}"):
        create_model(weights=NAME)
    # no digest registered: never loaded unverified
    with pytest.raises(WeightsIntegrityError, match="no sha256"):
        create_model(weights=Weights(name="unpinned", preset="tiny", file=ckpt.name, root=ckpt.parent))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=f"unknown weights 'nope'; known: .*{DEFAULT_WEIGHTS}"):
        create_model(weights="nope")
    with pytest.raises(ValueError, match=DEFAULT_WEIGHTS):
        ModelSpec(weights="nope")


def test_weights_exclude_checkpoint_and_preset(entry, ckpt):
    with pytest.raises(ValueError, match="not both|without checkpoint"):
        create_model(weights=NAME, checkpoint=str(ckpt))
    with pytest.raises(ValueError):
        create_model("tiny", weights=NAME)
    with pytest.raises(ValueError, match="not both"):
        ModelSpec(weights=NAME, checkpoint=str(ckpt))
    with pytest.raises(ValueError, match="not both"):
        ModelSpec(weights=NAME, preset="tiny")


def test_entry_without_its_file_is_not_installed(tmp_path):
    w = Weights(name="absent", preset="tiny", file="absent.pt", sha256="0" * 64, root=tmp_path)
    assert w.installed is False and w.status == "not installed"
    with pytest.raises(WeightsNotInstalledError, match="not installed"):
        create_model(weights=w)
    assert issubclass(WeightsNotInstalledError, FileNotFoundError)  # `securevqa` prints it as one line
    assert Weights(name="r", preset="tiny", uri="s3://b/w.pt").status == "remote"
    with pytest.raises(ValueError, match="exactly one"):
        Weights(name="both", preset="tiny", file="a.pt", uri="s3://b/a.pt")


def test_package_registry_declares_the_demo_entry():
    entries = load_registry(REGISTRY_FILE)
    demo = entries[DEFAULT_WEIGHTS]
    assert demo.preset == "tiny-cpu" and demo.file and demo.uri is None
    assert demo == get_weights(DEFAULT_WEIGHTS)
    for w in entries.values():  # whatever is installed is pinned
        assert not w.installed or w.sha256, w.name


def test_default_model_is_the_declared_entry_else_untrained_tiny(entry, ckpt, monkeypatch):
    if not get_weights(DEFAULT_WEIGHTS).installed:  # today: the untrained tiny model, same cache versions
        assert not ModelSpec().default_weights and ModelSpec().weights_name is None
        assert ModelSpec().versions() == ModelSpec(preset="tiny").versions()
    # the declared entry installed (here: the test checkpoint): that is the default, by name
    monkeypatch.setitem(registry.REGISTRY, DEFAULT_WEIGHTS, Weights(**{**entry.to_dict(), "name": DEFAULT_WEIGHTS},
                                                                    root=ckpt.parent))
    spec = ModelSpec()
    assert spec.default_weights and spec.weights_name == DEFAULT_WEIGHTS
    assert spec.versions() == ModelSpec(checkpoint=str(ckpt)).versions() == ModelSpec(weights=NAME).versions()
    # a file whose digest is not the registered one never silently becomes the default
    monkeypatch.setitem(registry.REGISTRY, DEFAULT_WEIGHTS, Weights(
        **{**entry.to_dict(), "name": DEFAULT_WEIGHTS, "sha256": "1" * 64}, root=ckpt.parent))
    with pytest.raises(WeightsIntegrityError):
        ModelSpec().build()
    # declared but not installed: the untrained tiny preset
    monkeypatch.setitem(registry.REGISTRY, DEFAULT_WEIGHTS, Weights(
        name=DEFAULT_WEIGHTS, preset="tiny-cpu", file="absent.pt", root=ckpt.parent))
    assert not ModelSpec().default_weights
    assert _same_state(ModelSpec().build()[0], create_model("tiny")[0])


def test_listing_names_the_demo_entry_and_whether_it_is_installed(entry, capsys):
    assert cli.main(["weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "preset", "status", "sha256"]
    demo = next(line for line in lines if line.startswith(DEFAULT_WEIGHTS + " "))
    installed = get_weights(DEFAULT_WEIGHTS).installed
    assert ("not installed" in demo) == (not installed) and "tiny-cpu" in demo
    mine = next(line for line in lines if line.startswith(NAME + " "))
    assert " installed " in mine and entry.sha256[:12] in mine and "srcc 0.500" in mine
    assert "pytest @ 012345678" in mine
    assert cli.main(["weights", "--json"]) == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed[DEFAULT_WEIGHTS]["status"] == ("installed" if installed else "not installed")
    assert listed[NAME]["sha256"] == entry.sha256 and listed[NAME]["location"] == entry.location


@pytest.mark.parametrize("command", [
    ["score", "--input", "m.csv", "--cache", "c", "--output", "o"],
    ["extract-inter", "--input", "m.csv", "--cache", "c"],
    ["rescore", "--input", "m.csv", "--state", "s"],
    ["attack", "--input", "m.csv", "--output", "o"],
])
def test_weights_flag_resolves_to_the_registered_file(entry, ckpt, command):
    args = cli.build_parser().parse_args([*command, "--weights", NAME])
    spec, _ = cli.spec_and_options(args, {})
    assert spec.weights == spec.weights_name == NAME and spec.checkpoint is None and not spec.default_weights
    if command[0] == "score":
        assert spec.versions() == ModelSpec(checkpoint=str(ckpt)).versions()


def test_weights_flag_errors(entry, ckpt, capsys):
    parser = cli.build_parser()
    score = ["score", "--input", "m.csv", "--cache", "c", "--output", "o"]
    with pytest.raises(SystemExit) as e:
        parser.parse_args([*score, "--weights", "nope"])
    assert e.value.code == 2 and DEFAULT_WEIGHTS in capsys.readouterr().err
    if not get_weights(DEFAULT_WEIGHTS).installed:
        with pytest.raises(SystemExit):
            parser.parse_args([*score, "--weights", DEFAULT_WEIGHTS])
        assert "not installed" in capsys.readouterr().err
    for other in (["--checkpoint", str(ckpt)], ["--preset", "tiny"]):
        with pytest.raises(SystemExit, match="not both"):
            cli.spec_and_options(parser.parse_args([*score, "--weights", NAME, *other]), {})


def _fake_run(out, ckpt, srcc=0.9):
    """What a finished `jobs.demo_model` run leaves in OUT, with a tiny checkpoint as its best.pt."""
    from jobs.demo_model import RECIPE

    (out / "run").mkdir(parents=True)
    shutil.copyfile(ckpt, out / "run" / "best.pt")
    (out / "run" / "history.json").write_text(json.dumps(
        {"seed": 0, "best": {"epoch": 13, "weights": "raw", "val_srcc": 0.57}, "epochs": []}))
    (out / "run" / "demo_model.json").write_text(json.dumps(
        {"extra_content": True, "recipe": RECIPE, "extra_args": [], "lowres_every": 2, "lowres_video_every": 1}))
    per = {"srcc": srcc, "plcc": 0.91, "krcc": 0.75, "rmse": 0.3}
    (out / "summary.json").write_text(json.dumps({
        "train_minutes": 600.0, "total_minutes": 700.0, "held_out_test": {"n_ok": 39, **per},
        "per_content": {"bigbuckbunny": {"n_ok": 13, "n_with_mos": 13, **per}},
        "command": "python -m jobs.demo_model --install", "code": {"commit": "f" * 40, "dirty": False},
        "training_set": {"clips": 1350, "contents": 75, "splits": {"train": 1000}}}))


def test_install_updates_the_registry_entry_not_the_package(tmp_path, ckpt, capsys):
    from jobs import demo_model

    package_registry, package_entry = REGISTRY_FILE.read_bytes(), get_weights(DEFAULT_WEIGHTS)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    shutil.copyfile(REGISTRY_FILE, pkg / "registry.json")
    out = tmp_path / "out"
    _fake_run(out, ckpt)
    assert demo_model._install_if_good(out, 0.85, None, registry_file=pkg / "registry.json") is not None
    w = load_registry(pkg / "registry.json")[demo_model.DEMO_WEIGHTS]
    assert w.installed and w.location == str(pkg / "securevqa_tiny_demo.pt")
    assert w.sha256 == sha256_of(ckpt) == sha256_of(w.location)
    assert w.preset == "tiny-cpu"  # the checkpoint's own config
    assert w.metrics["srcc"] == 0.9 and w.metrics["n_videos"] == 39 and "bigbuckbunny" in w.metrics["per_content"]
    assert w.recipe["commit"] == "f" * 40 and w.recipe["seed"] == 0 and w.recipe["train_minutes"] == 600.0
    assert w.recipe["command"] == "python -m jobs.demo_model --install" and "--recipe demo" in w.recipe["train_args"]
    assert "1350 clips" in w.data and w.notes == package_entry.notes  # not given: kept
    assert "about 1 photograph in 2 also filmed at low resolution" in w.data
    assert "about 1 video in 1 also downscaled to low resolution" in w.data
    assert _same_state(create_model(weights=w)[0], create_model(checkpoint=str(ckpt))[0])
    assert "installed" in capsys.readouterr().out
    # the package's registry and this process's entry are untouched
    assert REGISTRY_FILE.read_bytes() == package_registry and get_weights(DEFAULT_WEIGHTS) == package_entry
    # below the bar: nothing installed
    pkg2, out2 = tmp_path / "pkg2", tmp_path / "out2"
    pkg2.mkdir()
    shutil.copyfile(REGISTRY_FILE, pkg2 / "registry.json")
    _fake_run(out2, ckpt, srcc=0.5)
    assert demo_model._install_if_good(out2, 0.85, None, registry_file=pkg2 / "registry.json") is None
    assert (pkg2 / "registry.json").read_bytes() == package_registry and not (pkg2 / "securevqa_tiny_demo.pt").exists()


def test_an_average_installs_with_its_sources_and_its_own_test_figures(tmp_path, ckpt):
    """`jobs.demo_model --install-only --checkpoint SOUP`: the average is what gets installed, with the test
    figures of its own summary and the sources and shares `securevqa average` recorded in it."""
    from jobs import demo_model
    from model.api import average_weights

    other = tmp_path / "other.pt"
    vqa, _ = create_model("tiny-cpu", init_seed=4)
    save_checkpoint(str(other), vqa, create_model(checkpoint=str(ckpt))[1])  # the same fast pathway
    soup = tmp_path / "soup.pt"
    average_weights([str(ckpt), str(other)], str(soup), [1, 3])
    pkg, out = tmp_path / "pkg", tmp_path / "out"
    pkg.mkdir()
    shutil.copyfile(REGISTRY_FILE, pkg / "registry.json")
    _fake_run(out, ckpt, srcc=0.5)  # the run's own best.pt is below the bar ...
    summary = json.loads((out / "summary.json").read_text())
    summary["held_out_test"]["srcc"] = 0.88  # ... the average's evaluation (evaluate_checkpoint) is not
    (out / "summary_soup.json").write_text(json.dumps(summary))
    assert demo_model._install_if_good(out, 0.85, None, registry_file=pkg / "registry.json") is None
    w = demo_model._install_if_good(out, 0.85, None, registry_file=pkg / "registry.json", checkpoint=soup,
                                    summary_file="summary_soup.json")
    assert w is not None and w.sha256 == sha256_of(soup) != sha256_of(ckpt) and w.metrics["srcc"] == 0.88
    assert w.recipe["average"] == {"sources": [str(ckpt), str(other)], "weights": [0.25, 0.75]}
    with pytest.raises(SystemExit, match="test.csv is missing"):
        demo_model.evaluate_checkpoint(out, soup, "cmd", None)
    # what a user gets wrong is said before anything runs
    with pytest.raises(SystemExit, match="missing.pt: no such file"):
        demo_model.main(["--out", str(out), "--install-only", "--checkpoint", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit, match="summary.json is missing"):
        demo_model.main(["--out", str(tmp_path / "unfinished"), "--install-only"])


def test_install_needs_a_development_checkout_and_training_stays_outside_the_package(tmp_path):
    from jobs import demo_model

    assert demo_model.checkout_commit(tmp_path) is None  # not a git checkout: --install refuses
    with pytest.raises(SystemExit, match="inside the package"):
        demo_model.main(["--out", str(REGISTRY_FILE.parent / "run")])


def test_a_new_demo_run_adds_low_resolution_videos_and_a_continued_one_keeps_its_set(tmp_path, monkeypatch):
    from jobs import demo_model
    from pipeline.demo import build
    from pipeline.demo.build import DEMO_LOWRES_VIDEO_EVERY

    asked = []

    def build_training_set(*a, **k):  # what the job asks the builder for, then a stop
        asked.append(k)
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_training_set", build_training_set)
    with pytest.raises(KeyboardInterrupt):
        demo_model.main(["--out", str(tmp_path / "new")])
    state = tmp_path / "state"  # a run committed before low-resolution videos (run M) recorded no such key
    (state / "ray_train").mkdir(parents=True)
    (state / "demo_model.json").write_text(json.dumps({"extra_content": True, "recipe": [], "extra_args": [],
                                                       "lowres_every": 2, "extra_edition": 4}))
    with pytest.raises(KeyboardInterrupt):
        demo_model.main(["--out", str(tmp_path / "continued"), "--resume-from", str(state)])
    with pytest.raises(KeyboardInterrupt):
        demo_model.main(["--out", str(tmp_path / "asked"), "--resume-from", str(state), "--lowres-video-every", "3"])
    assert [k["lowres_video_every"] for k in asked] == [DEMO_LOWRES_VIDEO_EVERY, 0, 3] and DEMO_LOWRES_VIDEO_EVERY
    assert [k["lowres_every"] for k in asked[1:]] == [2, 2] and asked[1]["extra_edition"] == 4


def test_training_set_settings_continue_what_the_run_recorded(tmp_path):
    from jobs.demo_model import run_setting
    from pipeline.demo.build import DEMO_LOWRES_EVERY
    from pipeline.demo.extra_content import EXTRA_EDITION

    def lowres(given, resume_from=None):
        return run_setting("lowres_every", given, out, resume_from, new=DEMO_LOWRES_EVERY, before=0)

    def edition(given, resume_from=None):
        return run_setting("extra_edition", given, out, resume_from, new=EXTRA_EDITION, before=1)

    out, state = tmp_path / "out", tmp_path / "state"
    assert lowres(None) == DEMO_LOWRES_EVERY and edition(None) == EXTRA_EDITION > 1  # a new run: the defaults
    assert lowres(3) == 3 and edition(1) == 1
    state.mkdir()
    (state / "demo_model.json").write_text(json.dumps({"extra_content": True, "recipe": [], "extra_args": []}))
    # a committed run from before low-resolution contents and the second catalogue edition (run E)
    assert lowres(None, str(state)) == 0 and edition(None, str(state)) == 1
    (out / "run").mkdir(parents=True)
    (out / "run" / "demo_model.json").write_text(json.dumps({"lowres_every": 4, "extra_edition": 2}))
    assert lowres(None, str(state)) == 4 and edition(None, str(state)) == 2  # OUT's own run comes first
    assert lowres(0, str(state)) == 0
