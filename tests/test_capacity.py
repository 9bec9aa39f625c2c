"""The capacity plan's arithmetic (bench/capacity.py), hand-computed."""

from __future__ import annotations

import json

import pytest

from bench.capacity import STAGE1_GFLOP, STAGE2_GFLOP, Assumptions, Gpu, Workload, from_benchmarks, plan

GPU = Gpu("X", bf16_tflops=100.0, node="test node", node_cpus=10, usd_per_hour=2.0)
W = Workload(videos=3600, seconds=10, fps=30)


def test_flops_per_video_are_designs():
    assert STAGE1_GFLOP + STAGE2_GFLOP == pytest.approx(871.2, abs=0.1)  # docs/design.md §6: about 871 GFLOPs


def test_decode_bound_plan():
    a = Assumptions(mfu=0.5, cpus_reserved=2, decode_ms_per_frame=(1.0, 1.0), overhead_ms_per_video=0, start_minutes=0)
    p = plan(W, a, GPU, n_gpus=2)
    assert p.model_s == pytest.approx(871.152 / 50_000, rel=1e-4)  # 0.0174 s at 50 TFLOP/s
    assert p.decode_s == pytest.approx(0.6)  # 300 frames x 2 ms
    assert p.decode_cores == 8 and p.bound == "decode (CPU)"
    assert p.videos_per_s_per_gpu == pytest.approx(8 / 0.6)
    assert p.gpu_hours == pytest.approx(0.075) and p.wall_hours == pytest.approx(0.0375) and p.usd == pytest.approx(0.15)


def test_model_bound_plan_and_cached_inter():
    a = Assumptions(mfu=0.5, cpus_reserved=2, decode_ms_per_frame=(0.01, 0.01), overhead_ms_per_video=0,
                    start_minutes=30)
    p = plan(W, a, GPU, n_gpus=4)
    assert p.bound == "model (GPU)" and p.videos_per_s_per_gpu == pytest.approx(50_000 / 871.152, rel=1e-4)
    assert p.wall_hours == pytest.approx(p.gpu_hours / 4 + 0.5)
    cached = plan(Workload(videos=3600, seconds=10, fps=30, inter_cached=True), a, GPU, n_gpus=4)
    assert cached.model_s == pytest.approx(STAGE2_GFLOP / 50_000)  # stage 1 skipped: no fast pathway
    assert cached.decode_s == pytest.approx(0.003)  # stage 2's decoding only


def test_measured_figures_replace_the_defaults(tmp_path):
    (tmp_path / "decode.json").write_text(json.dumps({"1080p": {"stage1_ms_per_frame": 7.5, "stage2_ms_per_frame": 6.0}}))
    runs = [{"extract_inter_overhead_ms_per_video": 9.0, "score_overhead_ms_per_video": 8.0},
            {"extract_inter_overhead_ms_per_video": 3.0, "score_overhead_ms_per_video": 4.0}]
    (tmp_path / "scale.json").write_text(json.dumps({"runs": runs}))  # the largest (last) run counts
    a = from_benchmarks(Assumptions(), "1080p", tmp_path / "decode.json", tmp_path / "scale.json")
    assert a.decode_ms_per_frame == (7.5, 6.0) and a.overhead_ms_per_video == 4.0
    assert from_benchmarks(Assumptions(), "1080p", tmp_path / "no.json", tmp_path / "no.json") == Assumptions()
