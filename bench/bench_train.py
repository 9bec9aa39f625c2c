"""Training throughput (`make bench`): the earlier training path against the current one, side by side.

Same clips, same seeds, same machine, in one run, rounds alternating so that drift hits both alike:

- old: the `tiny` preset, clips decoded on the fly in one DataLoader process beside the model (what
  `make demo-model` ran before the frame cache), window attention through SDPA's math fallback;
- new: the `tiny` preset, every video decoded once into the frame cache (pipeline/training/frame_cache.py), the
  training attention kernel (`model.swin._attention_with_bias_grad`);
- tiny-cpu: the new path on the CPU-sized preset the demo model trains (a different input: 16 frames of
  5x5 fragments instead of 32 frames of 7x7; not the same computation, shown for what it buys).

A step is what `pipeline.training.train_loop` does: fresh clip offsets, fragments and guardian maps (from
the seed), forward, loss, backward, AdamW step. Reported: training clips per second (median over rounds)
and the speed-up of each path over `old`. Also a breakdown of one `tiny` step (decode, sampling and
fragments, forward, backward, optimizer), the table in docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.machine import cpu_name
from model.losses import LossConfig
from model.optim import build_optimizer
from model.rng import make_generator
from model.swin import WindowAttention3D
from pipeline.training.config import TrainConfig
from pipeline.training.data import ClipDataset, loader_init
from pipeline.training.frame_cache import FrameCache
from pipeline.training.loop import build_model, train_step

BATCH = 4




def _rows(videos) -> list[dict]:
    return [{"video_id": r.video_id, "uri": r.uri, "mos": float(r.mos), "inter_key": "k"} for r in videos.itertuples()]


def _run(preset: str, rows: list[dict], frames: FrameCache | None, kernel: str, steps: int) -> float:
    """Seconds per training clip over `steps` optimizer steps of BATCH clips."""
    vqa = build_model(TrainConfig(preset=preset, head_dropout=0.1), seed=0).train()
    s = vqa.cfg.sampling
    emb = {"k": torch.zeros(s.inter_segments, vqa.cfg.inter_dim)}
    ds = ClipDataset(rows, emb, s, 1, seed=0, salt="bench", storage_options={}, frame_cache=frames)
    # old: one decoding process beside the model; new: frames come from the page cache in-process
    loader = DataLoader(ds, batch_size=BATCH, shuffle=False, drop_last=True,
                        num_workers=1 if frames is None else 0, worker_init_fn=loader_init)
    opt = build_optimizer(vqa, backbone_lr=1e-4, head_lr=1e-3)
    WindowAttention3D.bias_grad_kernel = kernel
    try:
        it = iter(loader)
        clips, inter, mos, _ = next(it)  # warm-up step (allocations, constant tensors)
        train_step(vqa, clips, inter, mos, opt, LossConfig(), generator=make_generator(0))
        t0 = time.perf_counter()
        n = 0
        for i, (clips, inter, mos, _) in enumerate(it):
            train_step(vqa, clips, inter, mos, opt, LossConfig(), generator=make_generator(i))
            n += clips.shape[0]
            if i + 1 >= steps:
                break
        return (time.perf_counter() - t0) / n
    finally:
        WindowAttention3D.bias_grad_kernel = "baddbmm"


def breakdown(rows: list[dict], frames: FrameCache) -> dict[str, float]:
    """Seconds per clip of each part of one `tiny` training step (one clip at a time, new path)."""
    from pipeline.stages.batching import open_video
    from pipeline.stages.inference import intra_clips

    vqa = build_model(TrainConfig(preset="tiny"), seed=0).train()
    s = vqa.cfg.sampling
    opt = build_optimizer(vqa, backbone_lr=1e-4, head_lr=1e-3)
    inter = torch.zeros(2, s.inter_segments, vqa.cfg.inter_dim)
    parts: dict[str, list[float]] = {k: [] for k in ("decode (on the fly)", "sampling + fragments (frame cache)",
                                                     "forward", "backward", "optimizer")}
    for i in range(0, min(len(rows), 6) - 1, 2):
        g = make_generator(i)
        t = time.perf_counter()
        for r in rows[i:i + 2]:
            with open_video(r["uri"], {}) as video:
                intra_clips(video, s, 1, make_generator(i))
        parts["decode (on the fly)"].append((time.perf_counter() - t) / 2)
        t = time.perf_counter()
        clips = torch.stack([intra_clips(frames.open(r["uri"]), s, 1, g) for r in rows[i:i + 2]])
        parts["sampling + fragments (frame cache)"].append((time.perf_counter() - t) / 2)
        t = time.perf_counter()
        pred = vqa(clips, inter, generator=g).mean(1)
        loss = ((pred - torch.tensor([1.0, 2.0])) ** 2).mean()
        parts["forward"].append((time.perf_counter() - t) / 2)
        t = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        parts["backward"].append((time.perf_counter() - t) / 2)
        t = time.perf_counter()
        opt.step()
        parts["optimizer"].append((time.perf_counter() - t) / 2)
    return {k: statistics.median(v[1:] or v) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="bench_output/train")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per round and path")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from pipeline.demo.build import build_demo_set

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    videos = build_demo_set(work / "demo_set")
    rows = _rows(videos.head(BATCH * (args.steps + 1)))
    frames = FrameCache(work / "frames")
    t = time.perf_counter()
    frames.warm(r["uri"] for r in rows)
    print(f"bench_train: {cpu_name()}, {args.threads} threads, torch {torch.__version__}; {len(rows)} clips; "
          f"frame cache warm in {time.perf_counter() - t:.1f} s", flush=True)
    paths = {"old": ("tiny", None, "sdpa"), "new": ("tiny", frames, "baddbmm"), "tiny-cpu": ("tiny-cpu", frames, "baddbmm")}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(args.rounds):
        for name, (preset, cache, kernel) in paths.items():
            times[name].append(_run(preset, rows, cache, kernel, args.steps))
            print(f"  round {r + 1}: {name}: {times[name][-1]:.3f} s per training clip", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"cpu": cpu_name(), "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
              "batch": BATCH, "s_per_clip": med, "clips_per_s": {k: 1 / v for k, v in med.items()},
              "speedup_over_old": {k: med["old"] / v for k, v in med.items()}}
    for k in paths:
        print(f"{k}: {1 / med[k]:.2f} training clips/s ({med[k]:.3f} s per clip), "
              f"x{med['old'] / med[k]:.2f} over old (median of {args.rounds})")
    parts = breakdown(rows, frames)
    result["tiny_step_breakdown_s_per_clip"] = parts
    print("tiny step, seconds per clip: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    out = Path("bench_output/train.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
