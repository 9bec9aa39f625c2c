"""How far the uint8 preparation moves the model's outputs (`make bench`; docs/capacity.md).

For each video: the inter embedding from the earlier float32 resize (`bench/legacy_prepare.py`) and from
the uint8 one-pass path (`pipeline/stages/prepare.py`), with the same guardian-map draws, and the video's
score with each (same seed, hence the same clips, fragments and maps: only the embedding differs).
Prints the per-video relative error of the embeddings (||new - old|| / ||old||), of the scores, and the
SRCC between the two sets of scores; on the demo set and on the 540p/720p/1080p clips of bench_decode.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.machine import cpu_name


def compare(uris: list[str], checkpoint: str | None, clips: int = 4) -> dict:
    from bench.legacy_prepare import inter_segments_float
    from model import create_model, make_generator
    from pipeline.io.video import VideoReader
    from pipeline.stages.prepare import inter_input, prepare_video

    vqa, inter = create_model(checkpoint=checkpoint) if checkpoint else create_model("tiny")
    s = vqa.cfg.sampling
    emb_err, old_scores, new_scores = [], [], []
    with torch.inference_mode():
        for i, uri in enumerate(uris):
            with VideoReader(uri, threads=1) as v:
                old_seg = inter_segments_float(v, s)
                p = prepare_video(v, s, inter=True, clips=clips, generator=make_generator(i))
            new_seg = inter_input(torch.from_numpy(p.inter_frames), torch.from_numpy(p.inter_index))
            old = inter(old_seg[None], generator=make_generator(1000 + i))[0]
            new = inter(new_seg[None], generator=make_generator(1000 + i))[0]
            emb_err.append(float((new - old).norm() / old.norm().clamp_min(1e-12)))
            x = torch.from_numpy(p.clips)[None]
            old_scores.append(float(vqa(x, old[None], generator=make_generator(2000 + i)).mean()))
            new_scores.append(float(vqa(x, new[None], generator=make_generator(2000 + i)).mean()))
    o, n = np.array(old_scores), np.array(new_scores)
    return {"videos": len(uris), "embedding_rel_err_median": float(np.median(emb_err)),
            "embedding_rel_err_max": float(np.max(emb_err)),
            "score_abs_diff_max": float(np.abs(n - o).max()), "score_spread": float(o.std()),
            "score_rel_err_max": float((np.abs(n - o) / np.abs(o).clip(1e-12)).max()),
            "srcc": float(spearmanr(o, n)[0]) if len(o) > 2 else float("nan")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="model/weights/demo_run/best.pt",
                   help="a trained model's checkpoint (default: run D of docs/training.md); '' for untrained tiny")
    p.add_argument("--work", default="bench_output/decode")
    p.add_argument("--limit", type=int, default=None, help="demo-set videos to use (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from pipeline.demo.build import build_demo_set

    work = Path(args.work).resolve()
    demo = build_demo_set(work / "demo_set")
    uris = demo["uri"].tolist()[:args.limit]
    big = sorted(str(f) for f in work.glob("bbb_*p_*.mp4"))
    ckpt = args.checkpoint or None
    print(f"{cpu_name()}; model: {ckpt or 'untrained tiny'}")
    out = {}
    for name, vids in (("demo set", uris), ("540p-1080p clips", big)):
        if not vids:
            continue
        r = compare(vids, ckpt)
        out[name] = r
        print(f"{name} ({r['videos']} videos): embedding relative error median {r['embedding_rel_err_median']:.2e}, "
              f"max {r['embedding_rel_err_max']:.2e}; score |new - old| max {r['score_abs_diff_max']:.2e} "
              f"(scores spread {r['score_spread']:.3f}); SRCC new vs old {r['srcc']:.5f}", flush=True)
    Path("bench_output").mkdir(exist_ok=True)
    Path("bench_output/prepare_numerics.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
