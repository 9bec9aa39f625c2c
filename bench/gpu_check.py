"""Accelerator check: the `paper` model's videos per second per GPU, and uint8 preparation on the GPU.

Plain PyTorch and this repository's `model/` only (no Ray, no PyAV): run it on a machine with a CUDA GPU,

    python -m bench.gpu_check            # about 3-6 minutes on one H100/A100-class GPU
    python -m bench.gpu_check --quick    # one batch size per mode, to check that it runs

Inputs are synthetic uint8, shaped as the preparation stage ships them (pipeline/stages/prepare.py): per
video 4 fragment clips (4, 3, 32, 224, 224) and, for a cold cache, the distinct inter frames (300 for a
10 s, 30 fps video) of 224 x 224 x 3 with their (16, 32) segment index. Weights are the preset's
deterministic initialisation: speed does not depend on their values. For fp32 and bf16 (autocast) and
several batch sizes (videos per forward) it times, after warm-up, with CUDA events:

- stage 2 (intra clips + cached inter embedding -> scores): the nightly re-score's cost;
- stage 1 (fast pathway on 16 segments): the cold cache's extra cost;
- the uint8 -> 224 antialiased resize of 1080p frames and the fragment cut of a 1080p clip, on the GPU;

and prints one summary table (and JSON with --json). A deadline (--budget-s, default 420 s) skips what
is left rather than overrun. Figures go in docs/capacity.md ("Measured on a GPU").
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def _time(fn, warmup: int, iters: int, cuda: bool = True) -> float:
    """Median seconds of fn() over `iters` calls after `warmup`, timed with CUDA events (on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if not cuda:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]
    torch.cuda.synchronize()
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16], help="videos per forward pass")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--device", default="cuda", help="cpu runs the same code (with --preset tiny) to test the script")
    p.add_argument("--preset", default="paper")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to PyTorch: this check needs one")
    from model import create_model, make_generator
    from model.transforms import continuous_sample_indices, draw_fragment_grid

    batches = args.batches[:1] if args.quick else args.batches
    t_end = time.monotonic() + args.budget_s
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if cuda else f"{args.device} (script test)"
    torch.backends.cudnn.benchmark = True
    results: list[dict] = []
    for precision in ("bf16", "fp32"):
        vqa, inter = create_model(args.preset, precision=precision, device=dev)
        s = vqa.cfg.sampling
        for b in batches:
            if time.monotonic() > t_end:
                print(f"budget spent: skipping {precision} batch {b}")
                continue
            g = [make_generator(i, device=dev.type) for i in range(b)]
            try:
                clips = torch.randint(0, 256, (b, s.test_clips, 3, s.clip_len, 224, 224), dtype=torch.uint8, device=dev)
                emb = torch.randn(b, s.inter_segments, vqa.cfg.inter_dim, device=dev)
                frames = torch.randint(0, 256, (b, 300, 224, 224, 3), dtype=torch.uint8, device=dev)
                index = continuous_sample_indices(300, num_segments=s.inter_segments,
                                                  segment_len=s.inter_segment_len).to(dev)

                def stage2() -> None:
                    with torch.inference_mode():
                        vqa(clips, emb, generator=g)

                def stage1() -> None:
                    with torch.inference_mode():
                        seg = frames[:, index].movedim(-1, -4).float()  # (B, S, 3, L, h, w), as inter_input
                        inter(seg, generator=g)

                t2 = _time(stage2, 2, args.iters, cuda)
                t1 = _time(stage1, 2, args.iters, cuda)
            except torch.OutOfMemoryError:
                print(f"{precision} batch {b}: out of GPU memory")
                torch.cuda.empty_cache()
                continue
            mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
            results.append({"precision": precision, "videos_per_forward": b, "stage2_s": t2, "stage1_s": t1,
                            "stage2_videos_per_s": b / t2, "stage1_videos_per_s": b / t1,
                            "both_videos_per_s": b / (t1 + t2), "peak_gib": mem})
            print(f"{precision} x{b}: stage 2 {b / t2:.1f} videos/s, stage 1 {b / t1:.1f} videos/s, "
                  f"both {b / (t1 + t2):.1f} videos/s, peak {mem:.1f} GiB", flush=True)
            clips = emb = frames = None  # free the GPU memory before the next size
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
        vqa = inter = None
        if cuda:
            torch.cuda.empty_cache()

    prep = {}
    if time.monotonic() < t_end:
        full = torch.randint(0, 256, (32, 1080, 1920, 3), dtype=torch.uint8, device=dev)
        nchw = full.permute(0, 3, 1, 2)  # channels-last memory, as decoded frames arrive

        def resize() -> None:
            try:
                F.interpolate(nchw, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
            except RuntimeError:  # no uint8 kernel on this build: through float16
                F.interpolate(nchw.half(), size=(224, 224), mode="bilinear", antialias=True, align_corners=False)

        grid = draw_fragment_grid(32, 1080, 1920, generator=make_generator(0, device=dev.type))

        def cut() -> None:
            grid.cut(full, layout="THWC")

        prep = {"resize_ms_per_1080p_frame": 1000 * _time(resize, 2, args.iters, cuda) / 32,
                "cut_ms_per_1080p_clip": 1000 * _time(cut, 2, args.iters, cuda)}
        print(f"uint8 resize 1080p -> 224: {prep['resize_ms_per_1080p_frame']:.3f} ms/frame; fragment cut of a "
              f"32-frame 1080p clip: {prep['cut_ms_per_1080p_clip']:.3f} ms", flush=True)

    print(f"\n{name}, torch {torch.__version__}, {args.preset} preset, synthetic uint8 inputs (4 clips, 300 inter frames)")
    print("| precision | videos per forward | stage 2 videos/s | stage 1 videos/s | both videos/s | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['precision']} | {r['videos_per_forward']} | {r['stage2_videos_per_s']:.1f} | "
              f"{r['stage1_videos_per_s']:.1f} | {r['both_videos_per_s']:.1f} | {r['peak_gib']:.1f} |")
    if prep:
        print(f"| preparation on the GPU | resize {prep['resize_ms_per_1080p_frame']:.3f} ms per 1080p frame | "
              f"cut {prep['cut_ms_per_1080p_clip']:.3f} ms per 1080p clip | | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "models": results, "preparation": prep}, f, indent=2)


if __name__ == "__main__":
    main()
