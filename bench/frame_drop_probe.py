"""Where a model's intra features lose frame-drop level (docs/training.md, "Probes of 2026-12-07").

For clips of a training-set build (`python -m jobs.build_data DIR --training-set`), cut with the same offsets
and fragments from each content's clean, fps k 2, fps k 4 and h264 CRF 38 videos, it prints, after the patch
embedding, each Swin stage and the pooling the head reads: the distance between the k 2 and k 4 versions,
and of k 4 and of CRF 38 from the clean clip, each as a fraction of the clean-to-k-2 distance (medians over
contents and draws). A level the features keep stays near its input value; a level they lose falls to 0.

    python -m bench.frame_drop_probe --videos T17 --checkpoint model/weights/demo_run_v/best.pt
    python -m bench.frame_drop_probe --videos T17 --checkpoint random   # an untrained tiny-cpu

With ``--phases`` it prints instead the scores of the test contents' clean, fps k 2 and fps k 4 videos under the
test protocol (4 clips, guardian maps on) with every clip start shifted by 0-3 frames (the frames rolled): at
shift 0, the test's, each temporal token of a k 2 and of a k 4 clip holds two equal frames (docs/training.md,
"the model reads frame drops from within one token"). The inter embedding is zeroed, as no stage-1 cache is read.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from model import create_model, make_generator
from model.securevqa import guard_per_video
from model.swin import adaptive_window
from pipeline.stages.batching import open_video
from pipeline.io.video import probe, read_frames
from pipeline.stages.inference import intra_clips
from pipeline.stages.prepare import prepare_video

CONTENTS = ("gravel", "grass", "astronaut", "bigbuckbunny", "bikes", "carphone", "camera", "rocket")
VERSIONS = ("clean", "fps_1", "fps_2", "h264_2")  # fps k 2, fps k 4, CRF 38 (pipeline/demo/distortions.py)


@torch.no_grad()
def stage_features(vqa, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Intra features of normalised clips (N, 3, T, H, W) after each part of the Swin, and the spatio-temporal
    mean of the normed last stage (what the fusion head averages per clip)."""
    swin = vqa.intra
    window = adaptive_window(swin.cfg, tuple(x.shape[2:]))
    out = {"patch embedding": swin.patch_embed(x)}
    h = out["patch embedding"]
    for i, layer in enumerate(swin.layers):
        h = layer(h, window)
        out[f"stage {i + 1}"] = h
    out["pooled"] = swin.norm(h).mean(dim=(1, 2, 3))
    return out


TEST_CONTENTS = ("bigbuckbunny", "bikes", "carphone")


@torch.no_grad()
def phase_table(vqa, videos: Path, draws: int) -> None:
    """Prints, per test content and shift, the mean score (over `draws` draws) of clean, fps k 2 and fps k 4
    and their k 2 - k 4 gap in units of the content's score spread (all its videos at that shift)."""
    vqa.eval()
    inter = torch.zeros(1, vqa.cfg.sampling.inter_segments, vqa.cfg.inter_dim)
    print(f"{'content':13s} {'shift':>5s} {'clean':>7s} {'fps k2':>7s} {'fps k4':>7s} {'(k2-k4)/sd':>10s}")
    for content in TEST_CONTENTS:
        files = sorted(videos.glob(f"{content}__*.mp4"))
        if not files:
            continue
        frames = {f.stem.split("__")[1]: read_frames(str(f), np.arange(probe(str(f)).num_frames)) for f in files}
        for shift in range(4):
            score = {}
            for cond, fr in frames.items():
                rolled = torch.roll(fr, -shift, 0)
                s = []
                for draw in range(draws):
                    clips = prepare_video(rolled, vqa.cfg.sampling, inter=False, clips=vqa.cfg.sampling.test_clips,
                                          generator=make_generator(draw)).clips
                    s.append(vqa(torch.from_numpy(clips)[None], inter, generator=make_generator(1000 + draw)).mean().item())
                score[cond] = statistics.fmean(s)
            sd = statistics.pstdev(score.values())
            print(f"{content:13s} {shift:5d} {score['clean']:7.3f} {score['fps_1']:7.3f} {score['fps_2']:7.3f} "
                  f"{(score['fps_1'] - score['fps_2']) / sd:10.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="folder of a training-set build (<content>__<condition>.mp4)")
    p.add_argument("--checkpoint", required=True, help="a SecureVQA checkpoint, or 'random' for an untrained tiny-cpu")
    p.add_argument("--draws", type=int, default=3, help="clips per content (offsets and fragments)")
    p.add_argument("--phases", action="store_true", help="scores of the test contents' frame drops at clip shifts 0-3")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    if args.checkpoint == "random":
        vqa, _ = create_model("tiny-cpu", init_seed=0)
    else:
        vqa, _ = create_model(checkpoint=args.checkpoint)
    if args.phases:
        phase_table(vqa, Path(args.videos), args.draws)
        return 0
    ratios: dict[str, list[tuple[float, float, float]]] = {}
    for content in CONTENTS:
        if not (Path(args.videos) / f"{content}__clean.mp4").exists():
            continue
        for draw in range(args.draws):
            feats = {}
            for version in VERSIONS:
                with open_video(str(Path(args.videos) / f"{content}__{version}.mp4"), {}) as video:
                    clips = intra_clips(video, vqa.cfg.sampling, 1, make_generator(draw))
                feats[version] = stage_features(vqa, guard_per_video(clips[None].float(), None, False))
            for part in feats["clean"]:
                def dist(a: str, b: str) -> float:
                    return (feats[a][part] - feats[b][part]).flatten().norm().item()
                base = dist("clean", "fps_1")
                ratios.setdefault(part, []).append((dist("fps_1", "fps_2") / base, dist("clean", "fps_2") / base,
                                                    dist("clean", "h264_2") / base))
    if not ratios:
        raise SystemExit(f"no <content>__clean.mp4 of {CONTENTS} in {args.videos}")
    print(f"{args.checkpoint}: distances as fractions of clean to fps k 2 (median of {len(ratios['pooled'])} clips)")
    print(f"{'features':16s} {'k2 to k4':>9s} {'clean to k4':>12s} {'clean to CRF38':>15s}")
    for part, values in ratios.items():
        med = [statistics.median(v[i] for v in values) for i in range(3)]
        print(f"{part:16s} {med[0]:9.2f} {med[1]:12.2f} {med[2]:15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
