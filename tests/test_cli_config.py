"""The command line only overrides what the user passed: every default lives in the library's dataclasses
(RunOptions, ModelSpec, TrainConfig, TrainRun, LossConfig) once (issue 14 point 4)."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.cli import build_parser, spec_and_options, train_config
from model.losses import LossConfig
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.training.config import RECIPES, TrainConfig, TrainRun


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_score_without_options_is_the_library_defaults():
    spec, opts = spec_and_options(_args("score", "--input", "m.csv", "--output", "o", "--cache", "c"), {})
    assert spec == ModelSpec()
    assert opts == RunOptions()


def test_score_options_override_only_what_was_passed():
    spec, opts = spec_and_options(_args("score", "--input", "m.csv", "--output", "o", "--cache", "c", "--batch-size", "3",
                                        "--precision", "bf16", "--progress-seconds", "5"), {"anon": True})
    assert spec == dataclasses.replace(ModelSpec(), precision="bf16")
    assert opts == dataclasses.replace(RunOptions(), batch_size=3, progress_s=5.0, storage_options={"anon": True})


def test_train_without_options_is_the_reference_recipe():
    cfg, run = train_config(_args("train", "--input", "m.csv", "--output", "o"), {})
    assert cfg == TrainConfig() and run == TrainRun()


def test_train_protocol_splits_is_the_library_protocol():
    cfg, _ = train_config(_args("train", "--input", "m.csv", "--output", "o", "--protocol", "splits"), {})
    assert cfg == TrainConfig.small_dataset_protocol()
    assert (cfg.epochs, cfg.batch_size, cfg.freeze_backbone, cfg.reinit_head) == (10, 16, True, True)


def test_train_options_override_only_what_was_passed():
    cfg, run = train_config(_args("train", "--input", "m.csv", "--output", "o", "--loss", "margin", "--epochs", "3",
                                  "--align-groups", "--rank-zscore", "--workers", "2", "--no-guardian"), {})
    want = dataclasses.replace(TrainConfig(), epochs=3, align_groups=True, guardian=False,
                               loss=LossConfig(kind="margin", rank_zscore=True))
    assert cfg == want
    assert run == dataclasses.replace(TrainRun(), workers=2)
    cfg, _ = train_config(_args("train", "--input", "m.csv", "--output", "o", "--recipe", "demo",
                                "--batch-loss", "reference", "--batch-weight", "1.0"), {})
    assert cfg.loss == dataclasses.replace(RECIPES["demo"].loss, batch_kind="reference", batch_weight=1.0)
    cfg, _ = train_config(_args("train", "--input", "m.csv", "--output", "o", "--recipe", "demo",
                                "--calibrate-inter", "32", "--difference-stem", "4"), {})
    assert cfg == dataclasses.replace(RECIPES["demo"], calibrate_inter=32, difference_stem=4)
    cfg, _ = train_config(_args("train", "--input", "m.csv", "--output", "o", "--recipe", "demo",
                                "--repeat-weight", "1", "--repeat-inter"), {})
    assert cfg == dataclasses.replace(RECIPES["demo"], repeat_weight=1.0, repeat_inter=True)
    with pytest.raises(ValueError, match="repeat_weight > 0"):
        train_config(_args("train", "--input", "m.csv", "--output", "o", "--repeat-inter"), {})
    with pytest.raises(ValueError, match="calibrate_inter"):  # the demo recipe keeps its weights' calibration
        train_config(_args("train", "--input", "m.csv", "--output", "o", "--recipe", "demo", "--difference-stem", "2"), {})


def test_demo_recipe_is_the_librarys_and_the_legacy_arguments_give_run_d_s_config():
    from jobs.demo_model import LEGACY_RECIPE, RECIPE
    from pipeline.training.config import DEMO_INIT, DEMO_RECIPE, DEMO_SCRATCH_RECIPE

    base = ("train", "--input", "m.csv", "--output", "o")
    named, _ = train_config(_args(*base, *RECIPE), {})
    legacy, _ = train_config(_args(*base, *LEGACY_RECIPE), {})
    scratch, _ = train_config(_args(*base, "--recipe", "demo-scratch"), {})
    assert named == DEMO_RECIPE
    assert scratch == DEMO_SCRATCH_RECIPE == legacy  # run D, started with the argument list, resumes unchanged
    # run E continues from run D's committed best weights, which keep their calibrated fast pathway
    assert DEMO_RECIPE.init_checkpoint == str(DEMO_INIT) and DEMO_INIT.is_file()
    assert DEMO_RECIPE.calibrate_inter == 0 and DEMO_RECIPE.fidelity_weight > 0
    tweaked, _ = train_config(_args(*base, *RECIPE, "--epochs", "31"), {})
    assert tweaked == dataclasses.replace(DEMO_RECIPE, epochs=31)
