"""Feature bank of a frozen checkpoint (docs/training.md, "A head probe on frozen features"): for every row of a
training manifest, DRAWS draws of the test protocol's randomness (clip offset, fragments, guardian map) through
the checkpoint's intra branch. Saves the spatially pooled intra tokens (N, DRAWS, 128, 8) fp16, the stage-1 inter
embeddings (N, 8, 64), the checkpoint's own per-draw scores (N, DRAWS) and the rows' labels and metadata.

usage (a research record, not a product command; the tiny-cpu preset's widths are assumed):
  python docs/training/head_probe/bank.py MANIFEST.csv INTER_CACHE CHECKPOINT DRAWS SPLITS OUT.pt
e.g. MANIFEST = OUT/manifest.csv of `python -m jobs.demo_model`, INTER_CACHE = OUT/inter, SPLITS = val,test
"""
import sys
import time

import pandas as pd
import torch

from model import make_generator
from model.rng import derive_seed
from pipeline.stages.driver import keyed_manifest
from pipeline.stages.inter import InterCache
from pipeline.stages.options import ModelSpec
from pipeline.training.data import ClipDataset, make_loader

SEED = 12345


def main() -> None:
    manifest, cache, checkpoint, draws, splits, out = sys.argv[1:7]
    draws, splits = int(draws), splits.split(",")
    torch.set_num_threads(2)
    man = pd.read_csv(manifest)
    man = man[man.split.isin(splits)].reset_index(drop=True)
    spec = ModelSpec(checkpoint=checkpoint, precision="auto")
    keyed = keyed_manifest(man, spec.versions({})["inter"], {})
    found = InterCache(cache, {}).lookup(keyed["key"])
    emb = {k: torch.tensor(v["embedding"], dtype=torch.float32).view(v["segments"], -1) for k, v in found.items()}
    keyed = keyed[keyed["key"].isin(emb.keys())].reset_index(drop=True)
    print(f"{len(keyed)} of {len(man)} rows have an inter embedding", flush=True)
    rows = [{"video_id": r.video_id, "uri": r.uri, "mos": r.mos, "inter_key": r.key} for r in keyed.itertuples()]
    vqa, _ = spec.build({})
    vqa.eval()
    ds = ClipDataset(rows, emb, vqa.cfg.sampling, draws, SEED, "bank", {})
    feats, inters, scores = [], [], []
    t0 = time.time()
    with torch.no_grad():
        for n, (clips, inter, _, i) in enumerate(make_loader(ds, 1, batch_size=None, shuffle=False, prefetch_factor=4)):
            g = make_generator(derive_seed(SEED, "bank-guardian", i))
            s, f = vqa(clips[None], inter[None], generator=g, return_features=True)
            feats.append(f.float().mean(dim=(3, 4)).half())
            inters.append(inter.half())
            scores.append(s[0].float())
            if n % 200 == 0:
                el = time.time() - t0
                print(f"{n}/{len(ds)} {el:.0f} s, about {el / (n + 1) * (len(ds) - n - 1) / 60:.1f} min left", flush=True)
    meta = keyed[["video_id", "mos", "source", "condition", "split", "distortion", "level"]].to_dict("list")
    torch.save({"feats": torch.stack(feats), "inter": torch.stack(inters), "scores": torch.stack(scores),
                "meta": meta, "checkpoint": checkpoint, "draws": draws, "seed": SEED}, out)
    print(f"done in {time.time() - t0:.0f} s: {out}")


if __name__ == "__main__":  # the loader's fork server re-imports this file
    main()
