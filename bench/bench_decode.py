"""Preparation benchmark (`make bench`): CPU milliseconds per source frame before the model, old and new.

What one CPU core spends per video on decoding and preparing both branches' inputs, on H.264 clips at
540p, 720p and 1080p made from the demo set's Big Buck Bunny source (upscaled: real camera footage of the
same size decodes somewhat slower), one decoder thread and one torch thread as in a preparation task:

- bare decode: every frame decoded, nothing converted;
- old cold: stage 1 (inter frames read as full-size RGB in chunks, resized in float32) plus stage 2 (the
  video opened again, each intra clip's full-size frames read, fragments cut) - `bench/legacy_prepare.py`;
- new cold: one pass (`prepare_video(inter=True, clips=4)`): each frame decoded once, inter frames resized
  on uint8, fragments cut from each frame as it arrives;
- old / new warm: the inter cache warm, only the intra clips (stage 2).
Rounds alternate old and new on the same file; medians of `--runs`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import av
import torch

from bench.machine import cpu_name

SIZES = {"540p": (960, 540), "720p": (1280, 720), "1080p": (1920, 1080)}


def make_clip(src: Path, dst: Path, size: tuple[int, int], frames: int, fps: int = 30) -> Path:
    """`frames` frames of `src` (played forward then backward as needed), resized, H.264 CRF 23."""
    if dst.exists():
        return dst
    with av.open(str(src)) as c:
        pics = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    seq = pics + pics[::-1]
    out = av.open(str(dst), "w")
    st = out.add_stream("libx264", rate=fps)
    st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
    st.options = {"crf": "23", "preset": "veryfast"}
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(seq[i % len(seq)], format="rgb24").reformat(width=size[0], height=size[1])
        for pkt in st.encode(frame):
            out.mux(pkt)
    for pkt in st.encode():
        out.mux(pkt)
    out.close()
    return dst


def bare_decode_s(path: Path) -> float:
    t = time.perf_counter()
    with av.open(str(path)) as c:
        c.streams.video[0].thread_count = 1
        for _ in c.decode(video=0):
            pass
    return time.perf_counter() - t


def paths(path: Path, runs: int, clips: int = 4) -> dict[str, float]:
    """Median seconds per video of each path (see the module doc)."""
    from bench.legacy_prepare import inter_segments_float, intra_clips_by_clip
    from model import create_model, make_generator
    from pipeline.io.video import VideoReader
    from pipeline.stages.prepare import prepare_video

    s = create_model("tiny")[0].cfg.sampling

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def old_cold(r: int) -> None:
        with VideoReader(str(path), threads=1) as v:
            inter_segments_float(v, s)
        with VideoReader(str(path), threads=1) as v:
            intra_clips_by_clip(v, s, clips, make_generator(r))

    def old_warm(r: int) -> None:
        with VideoReader(str(path), threads=1) as v:
            intra_clips_by_clip(v, s, clips, make_generator(r))

    def new(r: int, inter: bool) -> None:
        with VideoReader(str(path), threads=1) as v:
            prepare_video(v, s, inter=inter, clips=clips, generator=make_generator(r))

    times: dict[str, list[float]] = {k: [] for k in ("bare", "old_cold", "new_cold", "old_warm", "new_warm")}
    for r in range(runs):  # alternate, so that drift hits every path alike
        times["bare"].append(bare_decode_s(path))
        times["old_cold"].append(timed(lambda: old_cold(r)))
        times["new_cold"].append(timed(lambda: new(r, True)))
        times["old_warm"].append(timed(lambda: old_warm(r)))
        times["new_warm"].append(timed(lambda: new(r, False)))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=150, help="frames per test clip (5 s at 30 fps)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--work", default="bench_output/decode")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core, as a preparation task
    from pipeline.demo.build import build_demo_set

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = build_demo_set(work / "demo_set")
    src = Path(demo.loc[demo["uri"].str.contains("bigbuckbunny__clean"), "uri"].iloc[0])
    print(f"{cpu_name()}, one core, {args.frames}-frame H.264 clips, median of {args.runs}; ms per source frame")
    results = {}
    for name in args.sizes:
        clip = make_clip(src, work / f"bbb_{name}_{args.frames}.mp4", SIZES[name], args.frames)
        t = paths(clip, args.runs)
        ms = {k: 1000 * v / args.frames for k, v in t.items()}
        results[name] = {"frames": args.frames, "bytes": clip.stat().st_size, "cpu": cpu_name(),
                         **{f"{k}_ms_per_frame": v for k, v in ms.items()},
                         # the names bench/capacity.py reads: the new path's stage-1 and stage-2 shares
                         "bare_decode_fps": 1000 / ms["bare"],
                         "stage1_ms_per_frame": ms["new_cold"] - ms["new_warm"],
                         "stage2_ms_per_frame": ms["new_warm"]}
        print(f"{name}: bare decode {ms['bare']:.2f} | cold (both branches) old {ms['old_cold']:.2f} -> new "
              f"{ms['new_cold']:.2f} (x{ms['old_cold'] / ms['new_cold']:.1f} less CPU; {ms['new_cold'] / ms['bare']:.2f}x "
              f"the bare decode) | warm (intra only) old {ms['old_warm']:.2f} -> new {ms['new_warm']:.2f}", flush=True)
    out = Path("bench_output/decode.json")
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
