"""Build the demo set or the training set from content installed packages ship (docs/training_data.md).

    python -m jobs.build_data OUT_DIR [--seed N] [--frames N]                 # the demo set
    python -m jobs.build_data OUT_DIR --training-set [--extra-content DIR [--extra-edition N]] [--workers N]
                              [--lowres-every N] [--lowres-video-every N] [--encoded-every N] [--soft-every N]
                              [--soft-encoded-every N]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.demo import (
    DEFAULT_SPLITS,
    EXTRA_VAL_SPLIT,
    DemoDataError,
    build_demo_set,
    build_training_set,
    label_table,
    split_table,
)
from pipeline.demo.build import DEMO_LOWRES_EVERY, DEMO_LOWRES_VIDEO_EVERY, MANIFEST
from pipeline.log import configure as configure_logging


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, e.g. 288x512, got {text!r}") from None
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.build_data", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=64, help="frames per clip (default 64)")
    ap.add_argument("--max-height", type=int, default=360, help="demo set: cap on the height of the videos")
    ap.add_argument("--training-set", action="store_true",
                    help="build the training set (videos and filmed photographs, train/val/test splits)")
    ap.add_argument("--size", type=_parse_size, default=(288, 512), help="training set: HEIGHTxWIDTH of filmed photos")
    ap.add_argument("--workers", type=int, default=1, help="training set: contents built at once (processes)")
    ap.add_argument("--extra-content", metavar="DIR",
                    help="training set: add the extra photographs and videos (pipeline.demo.extra_content), fetched "
                         "into DIR if missing; EXTRA_VAL_SPLIT joins the val split")
    ap.add_argument("--lowres-every", type=int, default=0, metavar="N",
                    help="training set: also film about 1 photograph in N at low resolution (<name>_lowres, 144-240 "
                         "lines; 0: none; the demo model's set uses %d)" % DEMO_LOWRES_EVERY)
    ap.add_argument("--lowres-video-every", type=int, default=0, metavar="N",
                    help="training set: the same for about 1 video in N (its centre, downscaled; 0: none; the demo "
                         "model's set uses %d)" % DEMO_LOWRES_VIDEO_EVERY)
    ap.add_argument("--encoded-every", type=int, default=0, metavar="N",
                    help="training set: also make about 1 training content in N as a distribution encode delivers it "
                         "(<name>_encoded, libx264 at a CRF drawn from ENCODED_CRFS before the conditions; 0: none)")
    ap.add_argument("--soft-every", type=int, default=0, metavar="N",
                    help="training set: also make about 1 training content in N as a soft lens sees it "
                         "(<name>_soft, a Gaussian PSF of std drawn from SOFT_SIGMAS before the conditions; 0: none)")
    ap.add_argument("--soft-encoded-every", type=int, default=0, metavar="N",
                    help="training set: also make about 1 training content in N as a soft lens sees it and a "
                         "distribution encode then delivers it (<name>_soft_encoded, both draws; 0: none)")
    ap.add_argument("--extra-edition", type=int, default=None, metavar="N",
                    help="training set: the extra-content catalogue edition (pipeline.demo.catalogue "
                         "EXTRA_EDITIONS; default: the latest, the whole catalogue)")
    args = ap.parse_args(argv)
    configure_logging()
    t0 = time.perf_counter()
    try:
        if args.training_set:
            splits = DEFAULT_SPLITS
            if args.extra_content is not None:
                splits = {**DEFAULT_SPLITS, "val": (*DEFAULT_SPLITS["val"], *EXTRA_VAL_SPLIT)}
            df = build_training_set(args.out_dir, seed=args.seed, clip_frames=args.frames, size=args.size,
                                    splits=splits, extra_content=args.extra_content, workers=args.workers,
                                    lowres_every=args.lowres_every, lowres_video_every=args.lowres_video_every,
                                    extra_edition=args.extra_edition, encoded_every=args.encoded_every,
                                    soft_every=args.soft_every, soft_encoded_every=args.soft_encoded_every,
                                    verbose=True)
        else:
            df = build_demo_set(args.out_dir, seed=args.seed, clip_frames=args.frames,
                                max_height=args.max_height, verbose=True)
    except (DemoDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        if args.training_set:
            print(split_table(df).to_string())
            print()
            print(label_table(df).to_string())
        else:
            table = df.assign(setting=[("-" if d == "clean" else f"{d}={p:g}") for d, p in zip(df.distortion, df.param)])
            print(table[["video_id", "dataset", "setting", "level", "ssim", "mos"]].to_string(index=False))
    print(f"\n{len(df)} clips from {df.dataset.nunique()} sources, mos {df.mos.min():.2f}..{df.mos.max():.2f}, "
          f"{dt:.1f} s; manifest: {Path(args.out_dir) / MANIFEST}")
    return 0


if __name__ == "__main__":
    # `kill` (SIGTERM) unwinds like Ctrl-C: the build's worker processes stop with it, none left behind
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
