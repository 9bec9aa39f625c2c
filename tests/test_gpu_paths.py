"""GPU execution paths, exercised on the CPU wherever the logic does not need a GPU: device choice,
bf16 autocast, pinned non-blocking copies, clips of several videos in one forward pass, and how
many actors share a GPU."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from model import make_generator
from model.device import autocast, select_device, to_device, uses_autocast
from pipeline.io.storage import make_key
from pipeline.io.table import KeyedTable
from pipeline.stages.batching import forward_grouped, videos_per_forward
from pipeline.stages.driver import StageActor, keyed_manifest
from pipeline.stages.inter import InterExtractor
from pipeline.stages.options import ModelSpec, RunOptions
from pipeline.stages.resources import actors_per_gpu, auto_actors_per_gpu, plan_actors
from pipeline.stages.scoring import Scorer
from tests.helpers import videos as tv
from tests.helpers.micro import MICRO, micro_checkpoint, micro_model

# ----------------------------------------------------------------------------- device selection


def test_auto_device_follows_torch_not_ray(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what Ray sets in a GPU actor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


def test_explicit_device_errors_are_clear(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="sees 1 GPU"):
        select_device("cuda:3")
    with pytest.raises(ValueError, match="unsupported device"):
        select_device("mps")
    assert select_device("cpu") == torch.device("cpu")


def test_model_spec_builds_on_cpu_when_torch_sees_no_gpu(tmp_path):
    spec = ModelSpec(checkpoint=str(micro_checkpoint(tmp_path / "m.pt")))
    vqa, inter = spec.build()
    assert next(vqa.parameters()).device.type == "cpu" and next(inter.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        ModelSpec(checkpoint=spec.checkpoint, device="cuda").build()


# ----------------------------------------------------------------------------- mixed precision


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
def test_bf16_is_autocast_on_gpus_and_stored_weights_on_cpus():
    assert uses_autocast("bf16", "cuda") and not uses_autocast("bf16", "cpu") and not uses_autocast("fp32", "cuda")
    ctx = autocast("bf16", "cuda")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"
    assert not isinstance(autocast("bf16", "cpu"), torch.autocast)
    assert not isinstance(autocast("fp32", "cuda", force=True), torch.autocast)  # fp32 never autocasts


def _linear_dtypes(module: torch.nn.Module) -> tuple[list[torch.dtype], list]:
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
             for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return seen, hooks


def test_autocast_path_keeps_fp32_weights_runs_bf16_matmuls_and_matches_fp32():
    """The GPU configuration (amp=True) run on the CPU's autocast: weights stay fp32, the linear layers
    compute in bf16, the scores stay within bf16 rounding of fp32."""
    vqa, inter = micro_model()
    g = make_generator(0)
    clips = torch.randint(0, 256, (2, 2, 3, 8, 64, 64), dtype=torch.uint8, generator=g)
    emb = torch.randn(2, 4, MICRO.inter_dim, generator=g)
    segs = torch.randint(0, 256, (2, 4, 3, 8, 64, 64), dtype=torch.uint8, generator=g).float()
    ref = vqa(clips, emb, generator=make_generator(1))
    ref_inter = inter(segs, generator=make_generator(2))

    vqa.set_precision("bf16", amp=True)
    inter.set_precision("bf16", amp=True)
    assert all(p.dtype == torch.float32 for p in vqa.parameters())
    assert all(p.dtype == torch.float32 for p in inter.parameters())
    seen, hooks = _linear_dtypes(vqa)
    out = vqa(clips, emb, generator=make_generator(1))
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=0.05, atol=0.02 * ref.abs().max().item())
    assert not torch.equal(out, ref)  # bf16 really ran
    out_inter = inter(segs, generator=make_generator(2))
    assert out_inter.dtype == torch.float32
    rel = (out_inter - ref_inter).norm() / ref_inter.norm()
    assert 0 < rel < 0.05, rel

    vqa.set_precision("bf16")  # the CPU configuration: bf16 weights stored once, no autocast
    linear = [m for m in vqa.intra.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(m.weight.dtype == torch.bfloat16 for m in linear)
    vqa.set_precision("bf16", amp=True)  # and back: the GPU configuration restores fp32 weights
    assert all(m.weight.dtype == torch.float32 for m in linear)


# ----------------------------------------------------------------------------- host -> device copies


def test_to_device_is_free_on_cpu_and_pinned_non_blocking_otherwise(monkeypatch):
    x = torch.arange(12, dtype=torch.uint8).view(3, 4)
    assert to_device(x, torch.device("cpu")) is x
    pinned: list[torch.Tensor] = []
    copies: list[dict] = []
    real_to = torch.Tensor.to

    def fake_pin(self):
        pinned.append(self)
        return self

    def spy_to(self, *args, **kwargs):
        copies.append(kwargs)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    out = to_device(x, torch.device("meta"))  # an accelerator stand-in that exists on every machine
    assert out.device.type == "meta" and out.dtype == torch.uint8 and out.shape == x.shape
    assert len(pinned) == 1 and pinned[0] is x
    assert copies == [{"non_blocking": True}]
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    to_device(x, torch.device("meta"))
    assert len(pinned) == 1  # already pinned: not pinned again


# ----------------------------------------------------------------------------- batching across videos


def test_videos_batched_in_one_forward_score_as_alone():
    vqa, inter = micro_model()
    g = make_generator(3)
    clips = torch.randint(0, 256, (3, 2, 3, 8, 64, 64), dtype=torch.uint8, generator=g)
    emb = torch.randn(3, 4, MICRO.inter_dim, generator=g)
    alone = torch.cat([vqa(clips[i:i + 1], emb[i:i + 1], generator=make_generator(10 + i)) for i in range(3)])
    together = vqa(clips, emb, generator=[make_generator(10 + i) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    # a different seed for one video changes that video's scores only
    other = vqa(clips, emb, generator=[make_generator(10), make_generator(99), make_generator(12)])
    assert torch.allclose(other[[0, 2]], alone[[0, 2]], atol=1e-6) and not torch.allclose(other[1], alone[1])
    with pytest.raises(ValueError, match="one per video"):
        vqa(clips, emb, generator=[make_generator(0)] * 2)

    segs = torch.randint(0, 256, (3, 4, 3, 8, 64, 64), dtype=torch.uint8, generator=g).float()
    alone = torch.cat([inter(segs[i:i + 1], generator=make_generator(20 + i)) for i in range(3)])
    together = inter(segs, generator=[make_generator(20 + i) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


class _Item:
    def __init__(self, name: str, seed: int) -> None:
        self.name, self.generator = name, make_generator(seed)


def test_forward_grouped_isolates_a_failing_video_and_replays_its_draws():
    """A group that fails is re-run video by video from the same generator states: the error lands on
    the bad video, the others get exactly the values a clean run gives."""
    calls: list[int] = []

    def forward(chunk):
        calls.append(len(chunk))
        draws = [torch.rand(2, generator=p.generator) for p in chunk]  # what the guardian maps consume
        if any(p.name == "bad" for p in chunk):
            raise RuntimeError("CUDA out of memory (simulated)")
        return draws

    items = [_Item(n, s) for n, s in [("a", 1), ("b", 2), ("bad", 3), ("c", 4), ("d", 5)]]
    out = forward_grouped(items, 3, forward)
    assert calls == [3, 1, 1, 1, 2]  # group 1 failed and was split; group 2 went through whole
    assert [type(o).__name__ for o, _ in out] == ["Tensor", "Tensor", "RuntimeError", "Tensor", "Tensor"]
    assert "out of memory" in str(out[2][0])
    for (o, seconds), (name, seed) in zip(out, [("a", 1), ("b", 2), ("bad", 3), ("c", 4), ("d", 5)]):
        assert seconds >= 0
        if name != "bad":
            assert torch.equal(o, torch.rand(2, generator=make_generator(seed)))  # as if never batched
    assert [len(forward_grouped(items[:4], k, lambda c: [torch.zeros(1)] * len(c))) for k in (1, 2, 8)] == [4, 4, 4]


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    d = tmp_path_factory.mktemp("gpu_paths")
    ckpt = micro_checkpoint(d / "micro.pt")
    paths = {}
    for i in range(5):
        sub = d / f"v{i}"
        sub.mkdir()
        paths[f"v{i}"] = tv.write_video(sub / "v.mp4", num_frames=12 + 3 * i, width=96, height=64)
    sub = d / "broken"
    sub.mkdir()
    paths["broken"] = tv.truncated_clip(sub)
    manifest = pd.DataFrame({"video_id": list(paths), "uri": [str(p) for p in paths.values()],
                             "mos": [1.0] * len(paths), "dataset": ["t"] * len(paths)})
    return ckpt, manifest


def _stage_rows(ckpt: Path, manifest: pd.DataFrame, root: Path, forward_videos: int, seed: int | None) -> pd.DataFrame:
    """Both actors called in-process (as Ray Data would call them) on one batch."""
    spec = ModelSpec(checkpoint=str(ckpt))
    opts = RunOptions(seed=seed, forward_videos=forward_videos)
    versions = spec.versions()
    rows = keyed_manifest(manifest, versions["inter"], {})
    StageActor(InterExtractor(spec, opts, versions["inter"]), str(root / "cache"))(rows)
    rows = keyed_manifest(manifest, versions["score"], {}, extra=(2,))
    rows["inter_key"] = [make_key(u, c, versions["inter"]) for u, c in zip(rows["uri"], rows["content_key"])]
    summary = StageActor(Scorer(spec, str(root / "cache"), opts, versions["score"]), str(root / "out"))(rows)
    assert list(summary["key"]) == list(rows["key"])
    scores = KeyedTable(str(root / "out")).read().to_pandas().set_index("video_id")
    inter = KeyedTable(str(root / "cache")).read().to_pandas().set_index("video_id")
    return scores.join(inter[["embedding"]])


def test_stage_actors_batch_across_videos_without_changing_results(stage_inputs, tmp_path):
    ckpt, manifest = stage_inputs
    one = _stage_rows(ckpt, manifest, tmp_path / "one", forward_videos=1, seed=7)
    four = _stage_rows(ckpt, manifest, tmp_path / "four", forward_videos=4, seed=7)
    ok = one.index[one["status"] == "ok"]
    assert sorted(ok) == [f"v{i}" for i in range(5)]
    assert one.loc["broken", "status"] == "error" and four.loc["broken", "status"] == "error"
    assert "truncated" in four.loc["broken", "error"]
    for v in ok:
        assert four.loc[v, "status"] == "ok"
        assert abs(four.loc[v, "score"] - one.loc[v, "score"]) < 1e-5
        assert torch.allclose(torch.tensor(four.loc[v, "embedding"]), torch.tensor(one.loc[v, "embedding"]),
                              rtol=1e-5, atol=1e-5)
        assert four.loc[v, "model_s"] > 0 and four.loc[v, "decode_s"] > 0
    # called in-process: "local" without Ray, the driver's node (no GPU ids) when a test started Ray before
    assert len(set(four["worker"])) == 1 and " device=cpu " in four["worker"].iloc[0]
    assert four["worker"].iloc[0].startswith("local") or " gpus=- " in four["worker"].iloc[0]
    fresh = _stage_rows(ckpt, manifest, tmp_path / "fresh", forward_videos=4, seed=None)
    assert (fresh.loc[ok, "score"] - four.loc[ok, "score"]).abs().max() > 0  # unseeded: fresh guardian maps


def test_videos_per_forward_defaults_to_the_batch_on_gpus_only():
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert videos_per_forward(RunOptions(batch_size=16), gpu) == 16
    assert videos_per_forward(RunOptions(batch_size=16), cpu) == 1
    assert videos_per_forward(RunOptions(batch_size=16, forward_videos=4), gpu) == 4
    assert videos_per_forward(RunOptions(batch_size=16, forward_videos=4), cpu) == 4
    with pytest.raises(ValueError, match=">= 1"):
        videos_per_forward(RunOptions(forward_videos=0), gpu)


# ----------------------------------------------------------------------------- actors per GPU


@pytest.mark.parametrize("opts, cluster, expected", [
    (RunOptions(), {"CPU": 32, "GPU": 4}, (4, 1.0, 1.0)),
    (RunOptions(actors_per_gpu=2, cpus_per_actor=3), {"CPU": 32, "GPU": 4}, (8, 0.5, 3.0)),
    (RunOptions(actors_per_gpu=3), {"CPU": 32, "GPU": 2}, (6, 1 / 3, 1.0)),
    (RunOptions(gpus_per_actor=0.25), {"CPU": 32, "GPU": 2}, (8, 0.25, 1.0)),
    (RunOptions(actors=3, actors_per_gpu=2), {"CPU": 32, "GPU": 4}, (3, 0.5, 1.0)),
    (RunOptions(), {"CPU": 8}, (4, 0.0, 1.0)),
    (RunOptions(cpus_per_actor=4), {"CPU": 8}, (2, 0.0, 4.0)),
    # GPU actors on a cluster that has no GPU yet (autoscaling from zero): the pool asks for them
    (RunOptions(actors=4, actors_per_gpu=2), {"CPU": 2}, (4, 0.5, 1.0)),
])
def test_plan_actors(opts, cluster, expected):
    plan = plan_actors(opts, cluster)
    assert (plan.size, pytest.approx(plan.num_gpus), plan.num_cpus) == (expected[0], expected[1], expected[2])


def test_plan_actors_refuses_contradictions():
    with pytest.raises(ValueError, match="not both"):
        plan_actors(RunOptions(actors_per_gpu=2, gpus_per_actor=0.5), {"GPU": 1})
    with pytest.raises(ValueError, match=">= 1"):
        plan_actors(RunOptions(actors_per_gpu=0), {"GPU": 1})
    with pytest.raises(ValueError, match="leave none"):
        plan_actors(RunOptions(actors=2), {"CPU": 2})


@pytest.mark.parametrize("decode, model, cpus_per_gpu, cpus_per_actor, expected", [
    (0.0, 1.0, 8, 1, 1),  # model-bound: one actor keeps the GPU busy
    (1.0, 1.0, 8, 1, 2),  # half the time decoding: two actors alternate
    (3.0, 1.0, 8, 1, 4),
    (2.5, 1.0, 8, 1, 4),  # ceil
    (3.0, 1.0, 5, 2, 2),  # 5 CPUs per GPU, one kept for Ray Data, 2 per actor: decode-bound at 2
    (3.0, 1.0, 4, 2, 1),
    (30.0, 1.0, 64, 1, 4),  # capped by GPU memory (max_per_gpu)
    (1.0, 0.0, 8, 1, 1),
])
def test_actors_per_gpu(decode, model, cpus_per_gpu, cpus_per_actor, expected):
    assert actors_per_gpu(decode, model, cpus_per_gpu=cpus_per_gpu, cpus_per_actor=cpus_per_actor) == expected


def test_auto_actors_per_gpu_reads_last_runs_timings(tmp_path):
    import pyarrow as pa

    store = KeyedTable(str(tmp_path / "scores"))
    k, why = auto_actors_per_gpu(store, {"CPU": 16, "GPU": 2}, 1.0)
    assert k == 2 and "no timings" in why
    n = 10
    t = pa.table({"key": [f"k{i}" for i in range(n)], "status": ["ok"] * (n - 1) + ["error"],
                  "decode_s": [0.9] * (n - 1) + [99.0], "model_s": [0.3] * n})
    store.commit(t)
    k, why = auto_actors_per_gpu(store, {"CPU": 16, "GPU": 2}, 1.0)
    assert k == 4 and "9 earlier rows" in why  # (0.9 + 0.3) / 0.3 = 4; the failed row is ignored
    assert auto_actors_per_gpu(store, {"CPU": 6, "GPU": 2}, 1.0)[0] == 2  # 3 CPUs per GPU, one for Ray Data
    with pytest.raises(ValueError, match="give a number"):
        auto_actors_per_gpu(store, {"CPU": 16}, 1.0)  # a GPU group scaled to zero: no silent CPU plan


def test_cli_passes_gpu_options_through():
    from jobs.cli import build_parser, spec_and_options

    args = build_parser().parse_args(["score", "--input", "x", "--cache", "c", "--output", "o", "--device", "cpu",
                                      "--actors-per-gpu", "auto", "--forward-videos", "8", "--precision", "bf16"])
    spec, opts = spec_and_options(args, {})
    assert (spec.device, spec.precision, opts.actors_per_gpu, opts.forward_videos) == ("cpu", "bf16", "auto", 8)
    args = build_parser().parse_args(["score", "--input", "x", "--cache", "c", "--output", "o", "--actors-per-gpu", "2"])
    assert spec_and_options(args, {})[1].actors_per_gpu == 2
    for bad in (["--actors-per-gpu", "x"], ["--actors-per-gpu", "0"], ["--forward-videos", "0"]):
        with pytest.raises(SystemExit):  # refused before any Ray work, with argparse's usage line
            build_parser().parse_args(["score", "--input", "x", "--cache", "c", "--output", "o", *bad])


def test_progress_lines_for_job_logs():
    from pipeline.stages.driver import Progress

    now = [0.0]
    p = Progress("score", 1000, 60.0, clock=lambda: now[0])
    now[0] = 30.0
    assert p.update(100, 0) is None  # not yet a minute
    now[0] = 61.0
    assert p.update(244, 0) == "score: 244/1,000 videos (24.4%), 0 failed, 4.00 videos/s, about 3m09s left"
    now[0] = 100.0
    assert p.update(300, 5) is None  # a minute since the last line
    now[0] = 7400.0
    assert p.update(500, 10) == "score: 510/1,000 videos (51.0%), 10 failed, 0.07 videos/s, about 1h58m left"
    now[0] = 5000.0
    assert p.update(990, 10) is None  # finished: the stage's summary line says it
    assert Progress("x", 10, 0.0, clock=lambda: 1.0).update(0, 0).endswith("unknown time left")


def test_cli_refuses_an_unknown_preset_and_accepts_every_declared_one():
    from jobs.cli import build_parser
    from model.config import PRESETS

    for name in PRESETS:
        assert build_parser().parse_args(["train", "--input", "x", "--output", "o", "--preset", name]).preset == name
    with pytest.raises(SystemExit):  # argparse's usage line names the choices
        build_parser().parse_args(["score", "--input", "x", "--cache", "c", "--output", "o", "--preset", "huge"])
