"""Does the intra backbone see quality? (`make bench`; docs/training.md, "Why the intra branch did not learn")

For each checkpoint (or a preset's random initialisation), the spatially averaged final intra features
(what the fusion head receives, docs/design.md §2.3) of every degraded version of a content are compared with
those of its clean version, on the same fragments and guardian map: the distance, divided by the
distance between the clean clips of two different contents. A backbone that measures quality moves its
features under a degradation by a sizeable fraction of what a change of content does; a randomly
initialised `tiny-cpu` Swin moves them by 2-4% for most of the 17 training conditions (contrast
aside), which is why a pooled quality loss could not train it.

    python -m bench.bench_signal                              # tiny-cpu at init, on the demo set
    python -m bench.bench_signal --checkpoint runs/r1/best.pt  # a trained model
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from model import create_model, make_generator
from model.securevqa import guard_per_video
from pipeline.training.frame_cache import FrameCache
from pipeline.stages.inference import intra_clips


def pooled_features(vqa, frames: FrameCache, uris: list[str], seed: int) -> torch.Tensor:
    """(N, C) spatially averaged final intra features of one clip per video, every video sampled with the
    same generator state (same clip offsets, fragments and guardian map for frame-aligned versions)."""
    s = vqa.cfg.sampling
    clips = torch.stack([intra_clips(frames.open(u), s, 1, make_generator(seed)) for u in uris])
    with torch.no_grad():
        x = guard_per_video(clips, [make_generator(seed + 1) for _ in uris], vqa.guardian)
        return vqa.intra(x).float().mean(dim=(2, 3, 4))


def quality_over_content(vqa, manifest: pd.DataFrame, frames: FrameCache, seed: int = 0) -> pd.DataFrame:
    """One row per (distortion, level): the median over contents of |f(degraded) - f(clean)| divided by
    the median distance between clean clips of two contents."""
    clean, moved = {}, []
    for source, rows in manifest.groupby("source"):
        rows = rows.reset_index(drop=True)
        f = pooled_features(vqa, frames, list(rows["uri"]), seed)
        ref = int(np.flatnonzero(rows["distortion"].to_numpy() == "clean")[0])
        clean[source] = f[ref]
        for i, r in rows.iterrows():
            if i != ref:
                moved.append({"source": source, "distortion": r["distortion"], "level": int(r["level"]),
                              "distance": float((f[i] - f[ref]).norm())})
    content = float(np.median([float((clean[a] - clean[b]).norm()) for a, b in itertools.combinations(clean, 2)]))
    table = pd.DataFrame(moved).groupby(["distortion", "level"], as_index=False)["distance"].median()
    table["over_content"] = table["distance"] / content
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", help="a SecureVQA checkpoint (repeatable); default: --preset at init")
    p.add_argument("--preset", default="tiny-cpu")
    p.add_argument("--manifest", help="CSV with uri, source, distortion (clean for the reference), level; "
                   "default: the demo set, built into --work")
    p.add_argument("--work", default="bench_output/signal")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(args.work)
    if args.manifest:
        manifest = pd.read_csv(args.manifest)
    else:
        from pipeline.demo.build import build_demo_set

        manifest = build_demo_set(work / "demo_set")
    frames = FrameCache(work / "frames")
    results = {}
    for ckpt in args.checkpoint or [None]:
        vqa, _ = create_model(args.preset, checkpoint=ckpt, init_seed=args.seed)
        vqa.eval()
        name = ckpt or f"{args.preset} (random init, seed {args.seed})"
        table = quality_over_content(vqa, manifest, frames, args.seed)
        results[name] = table.to_dict("records")
        cells = ", ".join(f"{r.distortion} {r.level}: {r.over_content:.3f}" for r in table.itertuples())
        print(f"{name}: degradation / content distance of pooled intra features: {cells}")
    out = work / "signal.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
