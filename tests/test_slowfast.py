"""Fast pathway of SlowFast R50 (model/slowfast.py): golden output, checkpoint interop, BN eval, shapes."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch

from model.checkpoint import (
    CheckpointMismatchError,
    detect_format,
    load_state_dict_strict,
    pytorchvideo_to_fastpath,
    read_checkpoint,
    unwrap_state_dict,
)
from model.config import FastPathwayConfig, get_config
from model.slowfast import FastPathway, fastpath_config_from_state_dict
from tests.helpers import FIXTURES

GOLDEN_REL_TOL = 1e-4


def _golden_path() -> Path:
    p = Path(os.environ.get("SECUREVQA_GOLDEN_FASTPATH", FIXTURES / "golden_fastpath.pt"))
    return p if p.is_absolute() else FIXTURES.parent / p  # relative to tests/


@pytest.fixture(scope="module")
def golden() -> dict:
    path = _golden_path()
    if not path.exists():
        pytest.fail(f"golden fixture missing: {path} (copy ../shared/reference/golden_fastpath.pt there; docs/design.md §5)")
    return torch.load(path, map_location="cpu", weights_only=True)


def _fp32(sd: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _load_golden_model(golden: dict, **kwargs) -> FastPathway:
    ckpt = {"model_state": _fp32(golden["model_state_fast_only"])}
    assert detect_format(ckpt) == "pytorchvideo_slowfast"
    sd = pytorchvideo_to_fastpath(unwrap_state_dict(ckpt))
    model = FastPathway(fastpath_config_from_state_dict(sd), **kwargs)
    load_state_dict_strict(model, sd, source="golden_fastpath.pt")
    return model.eval()


def _golden_input(golden: dict) -> torch.Tensor:
    x = golden["input_uint8"].float()
    mean = golden["normalize_mean"].float().view(-1, 1, 1, 1)
    std = golden["normalize_std"].float().view(-1, 1, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _randomise_bn_(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


SMALL = FastPathwayConfig(
    stem_width=4, stem_kernel=(3, 5, 5), stage_depths=(2, 1, 1), stage_widths=(16, 32, 64),
    stage_spatial_strides=(1, 2, 2),
)


# ----------------------------------------------------------------------------- 1. golden

@pytest.mark.parametrize("variant", ["2d", "conv3d"])
def test_golden_output(golden: dict, variant: str) -> None:
    model = _load_golden_model(golden, use_2d=(variant != "conv3d"))
    x = _golden_input(golden)
    with torch.no_grad():
        feats = model(x)
        pooled = model.pool(feats)
    ref, ref_pooled = golden["fast_res5_output"].float(), golden["fast_pooled"].float()
    assert feats.shape == ref.shape and pooled.shape == ref_pooled.shape
    rel, rel_p = _rel_err(feats, ref), _rel_err(pooled, ref_pooled)
    max_abs, max_abs_p = (feats - ref).abs().max().item(), (pooled - ref_pooled).abs().max().item()
    report = (f"[{variant}] res5 rel {rel:.3g} max|d| {max_abs:.4g} (max|ref| {ref.abs().max().item():.4g}); "
              f"pooled rel {rel_p:.3g} max|d| {max_abs_p:.4g}")
    print(report)
    assert rel < GOLDEN_REL_TOL, report
    assert rel_p < GOLDEN_REL_TOL, report
    with torch.no_grad():
        assert torch.allclose(model.embed(x), pooled, rtol=1e-5, atol=1e-3)


def test_golden_config_inferred_from_keys(golden: dict) -> None:
    cfg = fastpath_config_from_state_dict(pytorchvideo_to_fastpath(golden["model_state_fast_only"]))
    assert cfg == FastPathwayConfig()  # pytorchvideo slowfast_r50 sizes
    # A full pytorchvideo state dict is accepted as is.
    assert fastpath_config_from_state_dict(golden["model_state_fast_only"]) == cfg


# ----------------------------------------------------------------------------- 2. checkpoints

def _full_checkpoint(golden: dict) -> dict:
    """A pytorchvideo-style checkpoint: real fast-pathway values, zeros for slow pathway/fusion/head."""
    fast = golden["model_state_fast_only"]
    state = {}
    for key, shape in golden["all_checkpoint_keys"].items():
        if key in fast:
            state[key] = fast[key]
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(tuple(shape), dtype=torch.long)
        else:
            state[key] = torch.zeros(tuple(shape), dtype=torch.float16)
    assert set(fast) <= set(state)
    return {"model_state": state}


def _pv(key: str) -> str:
    """FastPathway key -> pytorchvideo fast-pathway key."""
    return re.sub(r"^(blocks\.\d+)\.", r"\1.multipathway_blocks.1.", key)


def test_full_checkpoint_loads(golden: dict, tmp_path: Path) -> None:
    path = tmp_path / "SLOWFAST_8x8_R50_like.pyth"
    torch.save(_full_checkpoint(golden), path)
    ckpt = read_checkpoint(path)
    assert detect_format(ckpt) == "pytorchvideo_slowfast"
    sd = pytorchvideo_to_fastpath(unwrap_state_dict(ckpt))
    assert not any("multipathway" in k or k.startswith("blocks.6") for k in sd)
    model = FastPathway(fastpath_config_from_state_dict(unwrap_state_dict(ckpt)))
    load_state_dict_strict(model, sd, source=str(path))
    got = model.state_dict()
    assert set(got) == set(sd)
    key = "blocks.4.res_blocks.2.branch2.conv_c.weight"
    assert got[key].dtype == torch.float32
    assert torch.equal(got[key], sd[key].float())


def test_model_keys_match_pytorchvideo_names(golden: dict) -> None:
    expected = {k.replace(".multipathway_blocks.1", ""): tuple(s)
                for k, s in golden["all_checkpoint_keys"].items() if ".multipathway_blocks.1." in k}
    got = {k: tuple(v.shape) for k, v in FastPathway().state_dict().items()}
    assert got == expected


@pytest.mark.parametrize(
    "key", ["blocks.3.res_blocks.4.branch2.conv_b.weight", "blocks.2.res_blocks.0.branch1_norm.running_var"]
)
def test_missing_key_is_named(golden: dict, key: str) -> None:
    state = _full_checkpoint(golden)["model_state"]
    del state[_pv(key)]
    sd = pytorchvideo_to_fastpath(state)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_strict(FastPathway(), sd, source="broken.pyth")
    assert key in str(err.value)
    assert err.value.missing == [key]


def test_reshaped_key_is_named(golden: dict) -> None:
    state = _full_checkpoint(golden)["model_state"]
    key = "blocks.2.res_blocks.1.branch2.conv_a.weight"
    state[_pv(key)] = torch.zeros(16, 64, 1, 1, 1, dtype=torch.float16)  # (3,1,1) kernel cut to (1,1,1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_strict(FastPathway(), pytorchvideo_to_fastpath(state), source="broken.pyth")
    assert key in str(err.value)
    assert [m[0] for m in err.value.mismatched] == [key]


def test_unexpected_key_is_named(golden: dict) -> None:
    state = _full_checkpoint(golden)["model_state"]
    key = "blocks.4.res_blocks.3.branch2.conv_a.weight"
    state[_pv(key)] = torch.zeros(64, 256, 3, 1, 1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_strict(FastPathway(), pytorchvideo_to_fastpath(state))
    assert key in str(err.value)
    assert err.value.unexpected == [key]


# ----------------------------------------------------------------------------- 3. BatchNorm eval

@pytest.mark.parametrize("use_2d", [True, False])
def test_eval_bn_sample_alone_equals_sample_in_batch(use_2d: bool) -> None:
    torch.manual_seed(0)
    model = FastPathway(SMALL, use_2d=use_2d)
    _randomise_bn_(model)
    model.freeze_()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(3, 3, 4, 64, 64)
    x[2] *= 5.0  # a very different batch-mate
    with torch.no_grad():
        batch = model(x)
        alone = model(x[1:2])
        assert torch.allclose(batch[1:2], alone, rtol=1e-4, atol=1e-5)
        # The guard has teeth: with batch statistics (the reference bug) the outputs differ.
        model.train()
        assert not torch.allclose(model(x)[1:2], model(x[1:2]), rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------- 4. shapes, config

def test_output_shape_default_config() -> None:
    model = FastPathway().eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 8, 64, 96))
    assert feats.shape == (2, 256, 8, 2, 3)
    assert feats.is_contiguous()
    assert model.pool(feats).shape == (2, 256)
    assert model.num_features == 256


@pytest.mark.parametrize(
    "cfg, inp, out",
    [
        (get_config("tiny").fastpath, (1, 3, 4, 64, 64), (1, 64, 4, 2, 2)),
        (SMALL, (2, 3, 5, 48, 64), (2, 64, 5, 3, 4)),
    ],
)
def test_output_shape_small_configs(cfg: FastPathwayConfig, inp: tuple, out: tuple) -> None:
    model = FastPathway(cfg).eval()
    with torch.no_grad():
        feats = model(torch.randn(*inp))
        assert feats.shape == out
        assert model.embed(torch.randn(*inp)).shape == (inp[0], cfg.num_features)


@pytest.mark.parametrize(
    "cfg",
    [
        FastPathwayConfig(),
        get_config("tiny").fastpath,
        SMALL,
        FastPathwayConfig(in_channels=1, stem_width=6, stem_kernel=(1, 3, 3), stage_depths=(1, 2),
                          stage_widths=(12, 24), stage_spatial_strides=(1, 2), temporal_kernel=1),
    ],
)
def test_config_round_trip(cfg: FastPathwayConfig) -> None:
    assert fastpath_config_from_state_dict(FastPathway(cfg).state_dict()) == cfg


def test_config_overrides_and_errors() -> None:
    sd = FastPathway(SMALL).state_dict()
    cfg = fastpath_config_from_state_dict(sd, bn_eps=1e-3, stage_spatial_strides=(1, 1, 2))
    assert dataclasses.replace(SMALL, bn_eps=1e-3, stage_spatial_strides=(1, 1, 2)) == cfg
    with pytest.raises(ValueError, match="blocks.0.conv.weight"):
        fastpath_config_from_state_dict({k: v for k, v in sd.items() if k != "blocks.0.conv.weight"})
    with pytest.raises(ValueError, match="conv_a"):
        fastpath_config_from_state_dict(
            {k: v for k, v in sd.items() if "res_blocks.1.branch2.conv_a" not in k}
        )


# ----------------------------------------------------------------------------- speed paths agree

def test_2d_path_and_conv3d_agree_forward_and_backward() -> None:
    torch.manual_seed(1)
    ref = FastPathway(SMALL, use_2d=False)
    _randomise_bn_(ref, seed=1)
    fast = FastPathway(SMALL, use_2d=True)
    fast.load_state_dict(ref.state_dict())
    ref.eval(), fast.eval()
    x = torch.randn(2, 3, 6, 64, 64)
    x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fast = ref(x_ref), fast(x_fast)
    assert _rel_err(y_fast, y_ref) < 1e-5
    y_ref.square().mean().backward()
    y_fast.square().mean().backward()
    assert _rel_err(x_fast.grad, x_ref.grad) < 1e-4
    w = "blocks.2.res_blocks.0.branch2.conv_b.weight"
    g_ref = dict(ref.named_parameters())[w].grad
    g_fast = dict(fast.named_parameters())[w].grad
    assert _rel_err(g_fast, g_ref) < 1e-4
    with torch.no_grad():
        # Channels-last or non-contiguous inputs give the same result.
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        assert _rel_err(fast(x_cl), y_ref.detach()) < 1e-5
        assert _rel_err(fast(x.transpose(3, 4).contiguous().transpose(3, 4)), y_ref.detach()) < 1e-5


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match="expected"):
        FastPathway(SMALL)(torch.randn(1, 3, 64, 64))


def test_batchnorm_calibration_gives_the_random_pathway_unit_scale_features() -> None:
    """A random fast pathway with default BatchNorm statistics shrinks its input to nothing; statistics
    estimated on real-like clips restore unit scale, change no weight, and leave eval mode on."""
    torch.manual_seed(0)
    fp = FastPathway(get_config("tiny-cpu").fastpath).freeze_()
    weights = {k: v.clone() for k, v in fp.state_dict().items() if "running" not in k and "num_batches" not in k}
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 3, 1, 28, 28, generator=g)
    clips = [torch.nn.functional.interpolate(base + 0.3 * torch.randn(4, 3, 1, 28, 28, generator=g),
                                             size=(8, 112, 112)) * 2 for _ in range(3)]
    with torch.no_grad():
        before = fp.embed(clips[0]).pow(2).mean().sqrt().item()
    assert fp.calibrate_batchnorm_(iter(clips)) == 12
    with torch.no_grad():
        after = fp.embed(clips[0]).pow(2).mean().sqrt().item()
    assert before < 0.05 and after > 0.3, (before, after)
    assert not fp.training and all(not m.training for m in fp.modules())
    assert all(torch.equal(fp.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="at least one batch"):
        fp.calibrate_batchnorm_([])


def test_difference_stem_answers_to_change_only_and_sees_frame_holds() -> None:
    """The difference stem's output is zero wherever frame t + 1 equals frame t: on a still clip, on the held
    frames of a frame-rate drop, and whatever map is added to every frame (the guardian map); it answers where
    frames change. Shapes and the rest of the pathway are unchanged."""
    torch.manual_seed(0)
    fp = FastPathway(get_config("tiny-cpu").fastpath).freeze_()
    rest = {k: v.clone() for k, v in fp.state_dict().items() if not k.startswith("blocks.0.conv")}
    assert fp.difference_stem_() is fp
    w = fp.blocks[0].conv.weight
    assert torch.allclose(w.sum(dim=2), torch.zeros_like(w[:, :, 0]), atol=1e-6)  # blind to what stays
    assert all(torch.equal(fp.state_dict()[k], v) for k, v in rest.items())
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(1, 3, 8, 32, 32, generator=g)
    held = frames[:, :, [0, 0, 2, 2, 4, 4, 6, 6]]  # fps k 2 from a kept frame
    still = frames[:, :, [3] * 8] + torch.randn(1, 3, 1, 32, 32, generator=g)  # one frame plus a fixed map
    with torch.no_grad():
        conv = fp.blocks[0].conv
        out_held, out_moving, out_still = conv(held), conv(frames), conv(still)
    inner = slice(0, 7)  # the last frame's t + 1 is the zero padding
    assert out_still[:, :, inner].abs().max() < 1e-4
    assert out_held[:, :, [0, 2, 4]].abs().max() < 1e-4 and out_held[:, :, [1, 3, 5]].abs().min() >= 0
    assert out_held[:, :, [1, 3, 5]].abs().mean() > 0.1 and out_moving[:, :, inner].abs().mean() > 0.1
    with pytest.raises(ValueError, match="temporal kernel 1"):
        FastPathway(dataclasses.replace(get_config("tiny-cpu").fastpath, stem_kernel=(1, 7, 7))).difference_stem_()


def test_a_partial_difference_stem_keeps_the_first_channels_as_they_were() -> None:
    torch.manual_seed(0)
    fp = FastPathway(get_config("tiny-cpu").fastpath)
    before = fp.blocks[0].conv.weight.detach().clone()
    w = fp.difference_stem_(channels=2).blocks[0].conv.weight
    assert torch.equal(w[:2], before[:2])  # appearance channels untouched
    assert w[2:].sum(dim=2).abs().max() < 1e-6 and w[2:].abs().max() > 0
    assert torch.allclose(w[2:, :, 3], before[2:].sum(dim=2) * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    with pytest.raises(ValueError, match="channels must be in 1..4"):
        fp.difference_stem_(channels=5)
    with pytest.raises(ValueError, match="already a temporal-difference"):  # a continued run must not zero it
        fp.difference_stem_(channels=2)
    with pytest.raises(ValueError, match="already a temporal-difference"):  # one chosen channel is one already
        fp.difference_stem_(channels=3)
