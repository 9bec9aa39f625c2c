"""Decode benchmark (`make bench`): CPU seconds per video for the two stages' decoding and sampling.

The capacity plan (docs/capacity.md) needs what one CPU core spends per video before the model:
stage 1 decodes every frame the 16 inter segments touch and resizes them, stage 2 decodes the 4 intra
clips' frames and cuts fragments. Both are measured with the pipeline's own functions (`inter_segments`,
`intra_clips`, one decoder thread as in the actors) on H.264 clips at 540p, 720p and 1080p made from
the demo set's Big Buck Bunny source (upscaled: real camera footage of the same size decodes somewhat
slower, so these are optimistic), next to the bare decode rate of the same files.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import av
import torch

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


def bare_decode_fps(path: Path) -> float:
    t = time.perf_counter()
    with av.open(str(path)) as c:
        c.streams.video[0].thread_count = 1
        n = sum(1 for _ in c.decode(video=0))
    return n / (time.perf_counter() - t)


def stage_seconds(path: Path, runs: int) -> tuple[float, float]:
    from model import create_model, make_generator
    from pipeline.stages.inference import inter_segments, intra_clips
    from pipeline.io.video import VideoReader

    vqa, inter = create_model("tiny")
    s1, s2 = [], []
    for r in range(runs):
        with VideoReader(str(path), threads=1) as v:
            t = time.perf_counter()
            inter_segments(v, inter)
            s1.append(time.perf_counter() - t)
        with VideoReader(str(path), threads=1) as v:
            t = time.perf_counter()
            intra_clips(v, vqa.cfg.sampling, 4, make_generator(r))
            s2.append(time.perf_counter() - t)
    return statistics.median(s1), statistics.median(s2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=150, help="frames per test clip (5 s at 30 fps)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", default="bench_output/decode")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core, as an actor with --cpus-per-actor 1
    from pipeline.demo.build import build_demo_set

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    demo = build_demo_set(work / "demo_set")
    src = Path(demo.loc[demo["uri"].str.contains("bigbuckbunny__clean"), "uri"].iloc[0])
    results = {}
    for name, size in SIZES.items():
        clip = make_clip(src, work / f"bbb_{name}_{args.frames}.mp4", size, args.frames)
        fps = statistics.median(bare_decode_fps(clip) for _ in range(args.runs))
        s1, s2 = stage_seconds(clip, args.runs)
        results[name] = {"frames": args.frames, "bare_decode_fps": fps, "stage1_s": s1, "stage2_s": s2,
                         "stage1_ms_per_frame": 1000 * s1 / args.frames, "stage2_ms_per_frame": 1000 * s2 / args.frames,
                         "bytes": clip.stat().st_size}
        print(f"{name}: bare decode {fps:.0f} frames/s on one core; per {args.frames}-frame video: stage 1 "
              f"(16 inter segments) {s1:.2f} s, stage 2 (4 intra clips) {s2:.2f} s -> "
              f"{1000 * s1 / args.frames:.1f} + {1000 * s2 / args.frames:.1f} ms per source frame", flush=True)
    out = Path("bench_output/decode.json")
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
