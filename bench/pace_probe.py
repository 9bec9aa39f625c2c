"""Does the `tiny-cpu` fast pathway carry, or learn, a video's frame-hold factor (pace)? (docs/training.md,
"Pace pretext for the fast pathway").

Two measurements:

``--cache CACHE``: a leave-one-content-out linear probe (ridge, one-hot targets) on the pooled inter embeddings
of a stage-1 cache holding clean, fps k 2 and fps k 4 versions of several contents (video ids
``CONTENT__clean``, ``CONTENT__fps_1``, ``CONTENT__fps_2``, as the training-set build names them): accuracy
of naming each version's factor, chance 1/3. Also the mean cosine, between contents, of the (k 2 - clean)
embedding differences: a pathway that sees frame holds moves every content the same way.

    python -m bench.pace_probe --cache OUT/inter

``--manifest MANIFEST``: pace prediction (Wang et al., ECCV 2020; SpeedNet, Benaim et al., CVPR 2020) as a
pretext for the fast pathway: 8-frame inter segments of training videos are shown held by a factor drawn from
(1, 2, 4) at a random phase (`model.frame_repeat.repeat_frames`), guardian map on, and a linear read-out of
the pooled features must name it; `--distill` adds the squared distance of unheld segments' embeddings to the
starting pathway's (relative to their variance), so a fusion trained on the old embedding would keep working.
Prints the read-out's accuracy every 25 steps (chance 1/3).

    python -m bench.pace_probe --manifest OUT/manifest.csv --checkpoint model/weights/demo_soup_vy/best.pt \\
        --videos 800 --steps 400 --lr 1e-3 --min-motion 3
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from model import create_model, make_generator
from model.frame_repeat import repeat_frames
from model.securevqa import guard_per_video
from pipeline.stages.batching import open_video
from pipeline.stages.prepare import prepare_video

FACTORS = (1, 2, 4)


def loco_probe(cache: str) -> None:
    from deltalake import DeltaTable

    d = DeltaTable(cache).to_pandas()
    d = d[d["status"] == "ok"].reset_index(drop=True)
    d["content"], d["cond"] = d.video_id.str.split("__").str[0], d.video_id.str.split("__").str[1]
    seg = int(d.segments.iloc[0])
    emb = np.stack([np.asarray(e, np.float64).reshape(seg, -1).mean(0) for e in d.embedding])
    x, y, grp, dirs = [], [], [], []
    for c, g in d.groupby("content"):
        at = dict(zip(g.cond, g.index))
        if not {"clean", "fps_1", "fps_2"} <= set(at):
            continue
        mu = emb[g.index].mean(0)
        for label, cond in enumerate(("clean", "fps_1", "fps_2")):
            x.append(emb[at[cond]] - mu), y.append(label), grp.append(c)
        v = emb[at["fps_1"]] - emb[at["clean"]]
        dirs.append(v / np.linalg.norm(v))
    x, y, grp = np.array(x), np.array(y), np.array(grp)
    cos = np.array(dirs) @ np.array(dirs).T
    n = len(dirs)
    print(f"{n} contents; mean cosine between contents of (k 2 - clean): {(cos.sum() - n) / (n * (n - 1)):.3f}")
    for lam in (0.01, 0.1, 1.0, 10.0):
        hits = []
        for c in np.unique(grp):
            tr = grp != c
            xa = np.c_[x[tr], np.ones(tr.sum())]
            w = np.linalg.solve(xa.T @ xa + lam * np.eye(xa.shape[1]), xa.T @ np.eye(3)[y[tr]])
            hits.append((np.c_[x[~tr], np.ones((~tr).sum())] @ w).argmax(1) == y[~tr])
        print(f"ridge {lam:g}: leave-one-content-out accuracy {np.concatenate(hits).mean():.3f} (chance 0.333)")


def segments_of(uri: str, sampling) -> np.ndarray:
    """(S, 3, L, h, w) uint8 inter segments, prepared as stage 1 prepares them."""
    with open_video(uri, {}) as video:
        p = prepare_video(video, sampling, inter=True, clips=0, generator=None)
    return np.ascontiguousarray(p.inter_frames[p.inter_index].transpose(0, 4, 1, 2, 3))


def pretext(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    vqa, teacher = create_model(checkpoint=args.checkpoint)
    student = copy.deepcopy(teacher.fastpath)
    for p in student.parameters():
        p.requires_grad_(True)
    student.train(args.bn_train)  # eval: BatchNorm keeps the calibrated statistics
    readout = torch.nn.Linear(student.num_features, len(FACTORS))
    m = pd.read_csv(args.manifest)
    m = m[(m["split"] == "train") & (m["distortion"] != "fps")]  # fps videos hold frames already
    m = m.sample(min(args.videos, len(m)), random_state=args.seed)
    t0 = time.perf_counter()
    clips = [segments_of(str(u), vqa.cfg.sampling) for u in m.uri]
    motion = np.array([np.abs(np.diff(c.astype(np.int16), axis=2)).mean() for c in clips])
    segs = torch.from_numpy(np.stack([c for c, k in zip(clips, motion >= args.min_motion) if k]))
    print(f"{len(clips)} videos decoded in {time.perf_counter() - t0:.0f} s; {len(segs)} move by >= "
          f"{args.min_motion} levels a frame on average (median of all: {np.median(motion):.2f})", flush=True)
    g = make_generator(args.seed)
    index = torch.tensor(FACTORS)
    params = list(student.parameters()) + list(readout.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    acc, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        v = torch.randint(0, len(segs), (args.batch,), generator=g)
        s = torch.randint(0, segs.shape[1], (args.batch,), generator=g)
        label = torch.randint(0, len(FACTORS), (args.batch,), generator=g)
        factor = index[label]
        phase = (torch.rand(args.batch, generator=g) * factor).long()
        x = segs[v, s].clone()
        for f in FACTORS[1:]:
            held = factor == f
            x[held] = repeat_frames(x[held], f, phase[held])
        x = guard_per_video(x[:, None].float(), g, True, maps_per_sample=1)
        emb = student.embed(x)
        logits = readout(emb)
        loss = F.cross_entropy(logits, label)
        distill = torch.zeros(())
        if args.distill > 0 and (label == 0).sum() > 1:
            with torch.no_grad():
                target = teacher.fastpath.embed(x[label == 0])
            distill = (emb[label == 0] - target).square().mean() / target.var(0, unbiased=False).mean().clamp_min(1e-6)
        opt.zero_grad(set_to_none=True)
        (loss + args.distill * distill).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc.append(float((logits.argmax(1) == label).float().mean()))
        if step % 25 == 0:
            el = time.perf_counter() - t0
            print(f"step {step}/{args.steps}: cross-entropy {loss.item():.3f}, accuracy over the last 25 steps "
                  f"{np.mean(acc[-25:]):.3f}, distill {distill.item():.3f}; {el / step:.2f} s/step", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help="stage-1 cache (Delta table) for the linear probe")
    ap.add_argument("--manifest", help="training-set manifest (uri, split, distortion) for the pace pretext")
    ap.add_argument("--checkpoint", default="model/weights/demo_soup_vy/best.pt")
    ap.add_argument("--videos", type=int, default=800)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32, help="segments per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--distill", type=float, default=0.0)
    ap.add_argument("--min-motion", type=float, default=0.0, help="keep videos whose frames change by this many "
                    "8-bit levels on average (a held still frame shows no pace)")
    ap.add_argument("--bn-train", action="store_true", help="BatchNorm on batch statistics while training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (args.cache or args.manifest):
        ap.error("give --cache (linear probe) or --manifest (pace pretext)")
    if args.cache:
        loco_probe(args.cache)
    if args.manifest:
        pretext(args)


if __name__ == "__main__":
    main()
