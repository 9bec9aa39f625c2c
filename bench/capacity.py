"""Capacity plan for a catalog run (docs/capacity.md): GPU-hours, wall time and cost from the benchmarks.

    python -m bench.capacity --videos 1000000 --seconds 10 --fps 30 --resolution 1080p --gpus 16

Inputs, all named and overridable: the model's FLOPs per video (docs/design.md §6, counted by bench.bench_model),
a GPU's published dense bf16 tensor throughput and the fraction of it the model reaches (an assumption:
no GPU here to measure), CPU seconds per source frame for each stage's decoding and sampling
(bench/bench_decode.py, measured on this machine's cores), the orchestration overhead per video
(bench/bench_scale.py), and the node shape (CPUs per GPU, price per hour).

Per GPU, a video costs max(model time, decode time / decoding cores): whichever is larger bounds the
rate, and the plan says which one it is.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

# Per video at the test protocol (docs/design.md §6; bench.bench_model counts them): 4 Swin clips + 16 segments.
STAGE1_GFLOP = 16 * 10.565  # fast pathway, 16 segments of 32 frames at 224
STAGE2_GFLOP = 4 * 175.528  # Swin-T GRPB, 4 fragment clips of 32 frames at 224


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # published dense (no sparsity) bf16 tensor-core peak
    node: str  # a cloud node with one such GPU
    node_cpus: int  # vCPUs of that node
    usd_per_hour: float  # on-demand list price of that node (assumption: check your region and contract)


GPUS = {
    "A10G": Gpu("A10G", 70.0, "AWS g5.4xlarge", 16, 1.624),
    "A10G-64": Gpu("A10G", 70.0, "AWS g5.16xlarge", 64, 4.096),
    "L4": Gpu("L4", 121.0, "AWS g6.4xlarge", 16, 1.323),
    "A100": Gpu("A100-40GB", 312.0, "1/8 AWS p4d.24xlarge", 12, 4.10),
}


@dataclass(frozen=True)
class Workload:
    videos: int = 1_000_000
    seconds: float = 10.0  # length of a video
    fps: float = 30.0
    resolution: str = "1080p"
    inter_cached: bool = False  # stage 1 already done (a re-score with a new intra model)


@dataclass(frozen=True)
class Assumptions:
    mfu: float = 0.30  # fraction of the bf16 peak the model reaches (Swin windows, 3D convs: 0.2-0.5)
    cpus_reserved: int = 2  # per node: Ray's own processes and Ray Data's tasks
    decode_ms_per_frame: tuple[float, float] = (10.0, 10.0)  # CPU ms per source frame, stage 1 and 2
    overhead_ms_per_video: float = 5.0  # orchestration per video and stage, per actor (bench_scale)
    start_minutes: float = 10.0  # cluster scale-up, image pull, model load


@dataclass(frozen=True)
class Plan:
    gpu: str
    model_s: float  # GPU seconds per video
    decode_s: float  # CPU-core seconds per video (decode, sampling, orchestration)
    decode_cores: int
    videos_per_s_per_gpu: float
    bound: str
    gpu_hours: float
    wall_hours: float
    usd: float


def plan(w: Workload, a: Assumptions, gpu: Gpu, n_gpus: int) -> Plan:
    gflop = STAGE2_GFLOP + (0.0 if w.inter_cached else STAGE1_GFLOP)
    model_s = gflop / (gpu.bf16_tflops * 1000 * a.mfu)
    frames = w.seconds * w.fps
    d1, d2 = a.decode_ms_per_frame
    stages = 1 if w.inter_cached else 2
    decode_s = (frames * ((0.0 if w.inter_cached else d1) + d2) + stages * a.overhead_ms_per_video) / 1000
    cores = max(1, gpu.node_cpus - a.cpus_reserved)
    per_video = max(model_s, decode_s / cores)
    rate = 1 / per_video
    gpu_hours = w.videos / rate / 3600
    wall = gpu_hours / n_gpus + a.start_minutes / 60
    return Plan(gpu.name, model_s, decode_s, cores, rate, "model (GPU)" if model_s >= decode_s / cores else
                "decode (CPU)", gpu_hours, wall, gpu_hours * gpu.usd_per_hour)


def from_benchmarks(a: Assumptions, resolution: str, decode_json: Path, scale_json: Path) -> Assumptions:
    """Replace the defaults with this machine's measured figures where the benchmark files exist."""
    if decode_json.exists():
        d = json.loads(decode_json.read_text())[resolution]
        a = replace(a, decode_ms_per_frame=(d["stage1_ms_per_frame"], d["stage2_ms_per_frame"]))
    if scale_json.exists():  # the largest run's overhead, its start included: an upper bound
        last = json.loads(scale_json.read_text())["runs"][-1]
        a = replace(a, overhead_ms_per_video=max(last["extract_inter_overhead_ms_per_video"],
                                                 last["score_overhead_ms_per_video"]))
    return a


def table(w: Workload, a: Assumptions, gpus: list[int]) -> str:
    rows = ["| GPU (node) | model s/video | decode core-s/video | cores/GPU | videos/s/GPU | bound by | GPU-hours |"
            + "".join(f" wall on {n} GPUs |" for n in gpus) + " cost (on-demand) |",
            "|---|---|---|---|---|---|---|" + "---|" * len(gpus) + "---|"]
    for g in GPUS.values():
        ps = [plan(w, a, g, n) for n in gpus]
        p = ps[0]
        rows.append(f"| {g.name} ({g.node}) | {p.model_s:.3f} | {p.decode_s:.2f} | {p.decode_cores} | "
                    f"{p.videos_per_s_per_gpu:.2f} | {p.bound} | {p.gpu_hours:,.0f} |"
                    + "".join(f" {q.wall_hours:,.1f} h |" for q in ps) + f" ${p.usd:,.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--resolution", choices=["540p", "720p", "1080p"], default="1080p")
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 32])
    p.add_argument("--mfu", type=float, default=0.30)
    p.add_argument("--inter-cached", action="store_true", help="stage 1 done already (re-score only)")
    args = p.parse_args(argv)
    w = Workload(args.videos, args.seconds, args.fps, args.resolution, args.inter_cached)
    a = from_benchmarks(Assumptions(mfu=args.mfu), args.resolution, Path("bench_output/decode.json"),
                        Path("bench_output/scale.json"))
    print(f"{w.videos:,} videos of {w.seconds:g} s at {w.fps:g} fps, {w.resolution}"
          f"{' (inter cached)' if w.inter_cached else ''}; MFU {a.mfu:.0%}; decode "
          f"{a.decode_ms_per_frame[0]:.1f} + {a.decode_ms_per_frame[1]:.1f} ms per frame per core; orchestration "
          f"{a.overhead_ms_per_video:.1f} ms per video and stage")
    print(table(w, a, args.gpus))


if __name__ == "__main__":
    main()
