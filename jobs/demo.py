"""`make demo`: score one small generated video with the `tiny` preset (untrained weights for now)."""

from __future__ import annotations

import argparse
import time

from model import create_model, make_generator
from pipeline.inference import score_frames
from pipeline.synthetic import moving_pattern


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seed", type=int, default=None, help="replay guardian maps and offsets (default: fresh)")
    args = p.parse_args(argv)

    frames = moving_pattern()
    vqa, inter = create_model(args.preset)
    t = time.perf_counter()
    result = score_frames(frames, vqa, inter, generator=make_generator(args.seed))
    dt = time.perf_counter() - t
    print(f"video: generated moving pattern, {tuple(frames.shape)} (T, H, W, C)")
    print(f"model: preset '{args.preset}', UNTRAINED random weights: the score below means nothing yet")
    print(f"clip scores: {', '.join(f'{s:.4f}' for s in result.clip_scores)}")
    print(f"score (untrained): {result.score:.4f}  [{dt:.1f} s]")


if __name__ == "__main__":
    main()
