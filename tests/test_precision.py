"""`--precision auto` (pipeline/stages/precision.py): the faster precision per model and machine, a
calibration cached per CPU type, and the choice visible in each row."""

import json

import pytest
import torch

from model import create_model
from pipeline.stages import precision as P
from pipeline.stages.options import ModelSpec
from tests.helpers.micro import micro_checkpoint


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SECUREVQA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake(times):
    calls = []

    def calibrate(vqa, inter, repeats=P.REPEATS):
        calls.append(1)
        return dict(times)
    return calibrate, calls


def test_each_model_gets_the_precision_that_measured_faster_and_the_calibration_is_cached(cache_dir, monkeypatch):
    vqa, inter = create_model("tiny")
    # the AMX case of issue 16: the bf16 intra forward 2x faster, the bf16 fast pathway slower
    fake, calls = _fake({"intra_fp32": 0.2, "intra_bf16": 0.1, "inter_fp32": 0.05, "inter_bf16": 0.06})
    monkeypatch.setattr(P, "calibrate", fake)
    choice = P.resolve_auto(vqa, inter, torch.device("cpu"))
    assert (choice.intra, choice.inter) == ("bf16", "fp32") and "calibrated" in choice.why
    again = P.resolve_auto(vqa, inter, torch.device("cpu"))
    assert (again.intra, again.inter) == ("bf16", "fp32") and "cached" in again.why and len(calls) == 1
    cached = json.loads((cache_dir / "precision.json").read_text())
    assert list(cached) == [P.machine_key(vqa)] and P.cpu_name() in P.machine_key(vqa)
    # another model (config) on the same machine calibrates for itself
    other, other_inter = create_model("tiny-cpu")
    P.resolve_auto(other, other_inter, torch.device("cpu"))
    assert len(calls) == 2


def test_a_near_tie_keeps_fp32_and_a_gpu_takes_bf16_without_calibrating(cache_dir, monkeypatch):
    vqa, inter = create_model("tiny")
    fake, calls = _fake({"intra_fp32": 0.105, "intra_bf16": 0.1, "inter_fp32": 0.1, "inter_bf16": 0.2})
    monkeypatch.setattr(P, "calibrate", fake)
    choice = P.resolve_auto(vqa, inter, torch.device("cpu"), use_cache=False)
    assert (choice.intra, choice.inter) == ("fp32", "fp32")  # 1.05x is below the margin
    gpu = P.resolve_auto(vqa, inter, torch.device("cuda"))
    assert (gpu.intra, gpu.inter) == ("bf16", "bf16") and len(calls) == 1


def test_the_real_calibration_times_both_models_in_both_precisions_and_leaves_fp32():
    vqa, inter = create_model("tiny-cpu")
    times = P.calibrate(vqa, inter, repeats=1)
    assert set(times) == {"intra_fp32", "intra_bf16", "inter_fp32", "inter_bf16"}
    assert all(t > 0 for t in times.values())
    assert vqa.precision == inter.precision == "fp32"
    assert next(inter.parameters()).dtype == torch.float32


def test_auto_builds_the_chosen_precisions_keeps_fp32_versions_and_scores_agree(cache_dir, monkeypatch, tmp_path):
    fake, _ = _fake({"intra_fp32": 0.2, "intra_bf16": 0.1, "inter_fp32": 0.05, "inter_bf16": 0.06})
    monkeypatch.setattr(P, "calibrate", fake)
    ckpt = str(micro_checkpoint(tmp_path / "micro.pt"))
    auto = ModelSpec(checkpoint=ckpt, precision="auto")
    vqa, inter = auto.build()
    assert (vqa.precision, inter.precision) == ("bf16", "fp32")
    assert P.precision_label(vqa, inter) == "precision=intra:bf16,inter:fp32"
    assert auto.versions() == ModelSpec(checkpoint=ckpt).versions()  # the model's identity, not its arithmetic
    ref, _ = ModelSpec(checkpoint=ckpt).build()
    g = torch.Generator().manual_seed(0)
    s = ref.cfg.sampling
    clips = torch.randint(0, 256, (6, 1, 3, s.clip_len, s.fragment_size, s.fragment_size), dtype=torch.uint8,
                          generator=g)
    emb = torch.randn(6, s.inter_segments, ref.cfg.inter_dim, generator=g)
    with torch.inference_mode():
        a = vqa(clips, emb, generator=torch.Generator().manual_seed(1)).mean(1)
        b = ref(clips, emb, generator=torch.Generator().manual_seed(1)).mean(1)
    assert (a - b).abs().max() <= 0.05 * (b.abs().max() + 1e-3)
