"""The shipped demo model (the registry entry `tiny-demo`, model/weights/, made by `make demo-model`,
docs/training.md): it matches its registered sha256 and records how it was made and what it measured, it
loads through the normal checkpoint loader, it is what `score` uses without --checkpoint, and it ranks a
clean clip above its own heavily compressed and its own 4x-downscaled versions on every held-out test
content."""

from __future__ import annotations

import pytest
import torch

from model import create_model, make_generator
from model.checkpoint import read_checkpoint
from model.registry import DEFAULT_WEIGHTS, get_weights, sha256_of

DEMO = get_weights("tiny-demo")
DEMO_CHECKPOINT = DEMO.location
pytestmark = pytest.mark.skipif(not DEMO.installed, reason="no demo model installed (make demo-model)")


def test_registry_entry_pins_and_describes_the_installed_file():
    assert DEMO.sha256 == sha256_of(DEMO_CHECKPOINT)
    assert DEMO.recipe.get("command") and DEMO.recipe.get("commit") and DEMO.recipe.get("seed") is not None
    assert all(isinstance(DEMO.metrics[k], float) for k in ("srcc", "plcc", "krcc", "rmse"))  # held-out test
    assert DEMO.preset == read_checkpoint(DEMO_CHECKPOINT)["config"]["name"] == "tiny-cpu"
    assert DEFAULT_WEIGHTS == DEMO.name  # the default model of `score` and `make demo`


def test_installed_weights_load_through_the_checkpoint_loader():
    ckpt = read_checkpoint(str(DEMO_CHECKPOINT))  # weights_only: loading never executes code
    assert ckpt["format"] == "securevqa" and ckpt["inter"] is not None
    vqa, inter = create_model(weights=DEMO.name)  # sha256-verified, then the same loader
    assert vqa.cfg.name == ckpt["config"]["name"]
    for k, v in ckpt["securevqa"].items():
        assert torch.equal(vqa.state_dict()[k].float(), v), k
    for k, v in ckpt["inter"].items():
        assert torch.equal(inter.fastpath.state_dict()[k], v), k
    # calibrated fast pathway: its BatchNorm statistics are not the defaults
    means = [v for k, v in ckpt["inter"].items() if k.endswith("running_mean")]
    assert means and any(m.abs().max() > 1e-3 for m in means)


def test_score_without_checkpoint_uses_the_installed_weights():
    from pipeline.stages.options import ModelSpec

    spec = ModelSpec()
    assert spec.default_weights and spec.weights_name == DEMO.name
    assert spec.versions() == ModelSpec(checkpoint=str(DEMO_CHECKPOINT)).versions()
    assert spec.versions() == ModelSpec(weights=DEMO.name).versions()
    assert spec.versions()["score"] != ModelSpec(preset="tiny-cpu").versions()["score"]


@pytest.fixture(scope="module")
def test_contents(tmp_path_factory):
    """Clean, x264 CRF 51 and 4x-downscaled clips of the three test contents (never seen in training)."""
    from pipeline.demo.build import build_demo_set

    return build_demo_set(tmp_path_factory.mktemp("demo_model") / "videos",
                          distortions={"h264": (51,), "scale": (4,)})


@pytest.mark.slow
def test_clean_scores_above_crf51_and_4x_downscale_on_every_test_content(test_contents):
    from pipeline.stages.inference import score_frames
    from pipeline.io.video import VideoReader

    vqa, inter = create_model(weights=DEMO.name)
    scores = {}
    for r in test_contents.itertuples():
        with VideoReader(r.uri) as video:  # the test protocol: the preset's 4 clips, guardian maps on
            scores[r.video_id] = score_frames(video, vqa, inter, generator=make_generator(0)).score
    for source in test_contents["source"].unique():
        clean = scores[f"{source}__clean"]
        assert clean > scores[f"{source}__h264_1"], (source, scores)
        assert clean > scores[f"{source}__scale_1"], (source, scores)
