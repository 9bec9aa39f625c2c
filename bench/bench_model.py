"""Model benchmark (`make bench`): intra forward and fast pathway, fp32 and bf16, against this machine's GEMM.

Every figure is a median of several runs, and the GEMM it is compared with is timed in the same run,
because other load on a shared machine moves both together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import get_config
from model.slowfast import FastPathway
from model.swin import SwinTransformer3D


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
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def gemm_gflops(dtype: torch.dtype, n: int = 2048, runs: int = 5) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, runs, warmup=2) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="paper")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default="bench_output/model.json")
    args = p.parse_args()

    torch.manual_seed(0)
    cfg = get_config(args.preset)
    s = cfg.sampling
    clip = torch.randn(1, 3, s.clip_len, s.fragment_size, s.fragment_size)
    segment = torch.randn(1, 3, s.inter_segment_len, s.inter_size, s.inter_size)
    swin = SwinTransformer3D(cfg.swin).eval()
    fast = FastPathway(cfg.fastpath).eval()
    results: dict[str, dict[str, float]] = {}

    gemm = gemm_gflops(torch.float32)
    print(f"fp32 GEMM 2048^3: {gemm:.1f} GFLOP/s (this run)")

    def measure(name: str, module: torch.nn.Module, x: torch.Tensor, gflop: float | None = None) -> float:
        with torch.inference_mode():
            gflop = gflop if gflop is not None else count_gflop(lambda: module(x))
            sec = median_seconds(lambda: module(x), args.runs)
        rate = gflop / sec
        results[name] = {"seconds": sec, "gflop": gflop, "gflops": rate, "pct_of_fp32_gemm": 100 * rate / gemm}
        print(f"{name}: {sec:.2f} s, {gflop:.1f} GFLOP, {rate:.1f} GFLOP/s, {100 * rate / gemm:.0f}% of GEMM")
        return sec

    t_intra = measure("intra fp32", swin, clip)
    measure("fastpath fp32", fast, segment)

    bf16_gemm = gemm_gflops(torch.bfloat16)
    print(f"bf16 GEMM 2048^3: {bf16_gemm:.1f} GFLOP/s (this run)")
    intra_gflop = results["intra fp32"]["gflop"]
    t_intra_bf16 = measure("intra bf16", swin.to(torch.bfloat16), clip.to(torch.bfloat16), intra_gflop)
    measure("fastpath bf16", fast.to(torch.bfloat16), segment.to(torch.bfloat16), results["fastpath fp32"]["gflop"])
    speedup = t_intra / t_intra_bf16
    print(f"intra bf16 speed-up over fp32: {speedup:.2f}x")
    results["summary"] = {"fp32_gemm_gflops": gemm, "bf16_gemm_gflops": bf16_gemm, "intra_bf16_speedup": speedup,
                          "threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
