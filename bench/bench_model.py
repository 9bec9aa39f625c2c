"""Model benchmark (`make bench`): intra forward and fast pathway, fp32 and bf16, against this machine's GEMM.

Every figure is a median of several runs, and the GEMMs it is compared with are timed in the same run,
because other load on a shared machine moves both together.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import get_config
from model.slowfast import FastPathway
from model.swin import SwinTransformer3D


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU fused attention kernel, which torch's counter does not know: QK^T and AV."""
    *batch, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * s_q * s_k * (d + d_v)


def _flop_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    # the counter hands registered formulas the shapes of tensor arguments
    return {op: _cpu_flash_attention_flop}


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def count_gflop(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False, custom_mapping=_flop_mapping())
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def gemm_gflops(dtype: torch.dtype, n: int = 2048, runs: int = 5) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, runs, warmup=2) / 1e9


def ablations(swin: SwinTransformer3D, clip: torch.Tensor, gflop: float, measure: Callable) -> None:
    """The intra forward with each optimisation of model/swin.py undone, in the same run."""
    from model.swin import WindowAttention3D

    attns = [m for m in swin.modules() if isinstance(m, WindowAttention3D)]

    def uncached() -> None:
        for a in attns:
            a._bias_key = None  # rebuild every block's bias, as in training
        swin(clip)

    measure("ablation: bias rebuilt every call", uncached, gflop)
    batch = clip.expand(4, -1, -1, -1, -1).contiguous()
    sec = measure("ablation: 4 clips as one batch (per clip)", lambda: swin(batch), 4 * gflop)
    results_note = f"{sec / 4:.2f} s per clip"
    print(f"  ({results_note}; the pipeline runs clips one by one on CPU)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="paper")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default="bench_output/model.json")
    p.add_argument("--ablations", action="store_true", help="also time the intra forward without each optimisation")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    cfg = get_config(args.preset)
    s = cfg.sampling
    clip = torch.randn(1, 3, s.clip_len, s.fragment_size, s.fragment_size)
    segment = torch.randn(1, 3, s.inter_segment_len, s.inter_size, s.inter_size)
    swin = SwinTransformer3D(cfg.swin).eval()
    fast = FastPathway(cfg.fastpath).eval()
    results: dict[str, dict[str, float]] = {}
    print(f"preset {args.preset}, {torch.get_num_threads()} threads, median of {args.runs} runs")

    gemm = gemm_gflops(torch.float32)
    bf16_gemm = gemm_gflops(torch.bfloat16)
    print(f"fp32 GEMM 2048^3: {gemm:.1f} GFLOP/s; bf16 GEMM: {bf16_gemm:.1f} GFLOP/s (this run)")

    def measure(name: str, fn: Callable[[], object], gflop: float) -> float:
        with torch.inference_mode():
            sec = median_seconds(fn, args.runs)
        rate = gflop / sec
        results[name] = {"seconds": sec, "gflop": gflop, "gflops": rate, "pct_of_fp32_gemm": 100 * rate / gemm}
        print(f"{name}: {sec:.2f} s, {gflop:.1f} GFLOP, {rate:.1f} GFLOP/s, {100 * rate / gemm:.0f}% of GEMM")
        return sec

    with torch.inference_mode():
        intra_gflop = count_gflop(lambda: swin(clip))
        fast_gflop = count_gflop(lambda: fast(segment))
    t_intra = measure("intra fp32", lambda: swin(clip), intra_gflop)
    t_fast = measure("fastpath fp32", lambda: fast(segment), fast_gflop)
    swin.set_matmul_dtype(torch.bfloat16)
    t_intra_bf16 = measure("intra bf16", lambda: swin(clip), intra_gflop)
    fast_bf16 = fast.to(torch.bfloat16)
    seg_bf16 = segment.to(torch.bfloat16)
    t_fast_bf16 = measure("fastpath bf16", lambda: fast_bf16(seg_bf16), fast_gflop)
    # a second fp32 pass after the bf16 ones: the speed-up compares neighbours, not the ends of the run
    swin.set_matmul_dtype(torch.float32)
    t_intra2 = measure("intra fp32 (again)", lambda: swin(clip), intra_gflop)
    fp32_ref = statistics.mean([t_intra, t_intra2])
    speedup = fp32_ref / t_intra_bf16
    print(f"intra bf16 speed-up over fp32: {speedup:.2f}x (fp32 {fp32_ref:.2f} s, bf16 {t_intra_bf16:.2f} s); "
          f"bf16/fp32 GEMM ratio this run: {bf16_gemm / gemm:.2f}x")
    print(f"fastpath bf16 speed-up over fp32: {t_fast / t_fast_bf16:.2f}x")
    if args.ablations:
        ablations(swin, clip, intra_gflop, measure)
    results["summary"] = {
        "fp32_gemm_gflops": gemm, "bf16_gemm_gflops": bf16_gemm, "intra_bf16_speedup": speedup,
        "fastpath_bf16_speedup": t_fast / t_fast_bf16, "threads": torch.get_num_threads(), "preset": args.preset,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
