"""Fit the fusion and head (model.fusion.FusionHead, tiny-cpu widths) on feature banks of bank.py: the frozen
backbone's features, so a fit of 3000 steps takes about 13 s on 2 cores instead of 45 minutes through the
training pipeline (docs/training.md, "A head probe on frozen features"). Each step takes batch/group clips from
each of group contents (as `--group-by source`), one random stored draw per clip. Validation and test are scored
as the test protocol does (4 draws averaged per video), three times over disjoint draws (0-3, 4-7, 8-11: three
"scoring seeds"); printed as [SRCC PLCC] means, with the test's SRCC per scoring seed.

usage: python docs/training/head_probe/fit.py --train BANK.pt --valtest BANK.pt [--loss margin|reference|mse]
       [--batch-weight W] [--mse-weight W] [--steps N] [--seed S] [--init CHECKPOINT | --fresh] [--save HEAD.pt]
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from model.config import HeadConfig
from model.fusion import FusionHead
from model.losses import LossConfig, grouped_quality_loss
from model.metrics import plcc, srcc


def split(bank, name):
    idx = np.nonzero(np.array(bank["meta"]["split"]) == name)[0]
    return {"feats": bank["feats"][idx].float(), "inter": bank["inter"][idx].float(),
            "mos": torch.tensor(np.array(bank["meta"]["mos"])[idx], dtype=torch.float32),
            "source": np.array(bank["meta"]["source"])[idx], "condition": np.array(bank["meta"]["condition"])[idx]}


def head_scores(head, d, draws):
    """Mean over `draws` of each video's per-token mean score: (N,)."""
    with torch.no_grad():
        return torch.stack([head(d["feats"][:, j][..., None, None], d["inter"]).mean(1) for j in draws]).mean(0)


def evaluate(head, d, seeds=3):
    """(seeds, 2) [SRCC, PLCC], 4 draws per video per scoring seed."""
    head.eval()
    y = d["mos"].numpy()
    return np.array([[srcc(p, y), plcc(p, y)] for p in
                     (head_scores(head, d, range(4 * s, 4 * s + 4)).numpy() for s in range(seeds))])


def per_content(head, d):
    """{content: (SRCC within it, mean score - mean label)} at scoring seed 0."""
    head.eval()
    p, y = head_scores(head, d, range(4)).numpy(), d["mos"].numpy()
    return {str(s): (round(srcc(p[m], y[m]), 3), round(float(p[m].mean() - y[m].mean()), 3))
            for s in np.unique(d["source"]) for m in [d["source"] == s]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--valtest", required=True)
    ap.add_argument("--init", default="model/weights/securevqa_tiny_demo.pt")
    ap.add_argument("--fresh", action="store_true", help="a new head instead of --init's")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--loss", default="margin", choices=["margin", "reference", "srcc", "mse"])
    ap.add_argument("--batch-weight", type=float, default=0.5)
    ap.add_argument("--mse-weight", type=float, default=0.0)
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--save")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    T = split(torch.load(a.train, weights_only=False), "train")
    vt = torch.load(a.valtest, weights_only=False)
    V, E = split(vt, "val"), split(vt, "test")
    head = FusionHead(T["feats"].shape[2], T["inter"].shape[2], HeadConfig(hidden_dim=a.hidden, dropout=a.dropout))
    if not a.fresh:
        sd = torch.load(a.init, weights_only=True, map_location="cpu")["securevqa"]
        head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
    rv, rt = evaluate(head, V), evaluate(head, E)
    print(f"start val {rv.mean(0).round(3)} test {rt.mean(0).round(3)} (SRCC per seed {rt[:, 0].round(3)})", flush=True)
    opt = torch.optim.AdamW(head.parameters(), lr=a.lr, weight_decay=a.wd)
    contents = np.unique(T["source"])
    rows_of = {c: np.nonzero(T["source"] == c)[0] for c in contents}
    cfg = LossConfig(kind="margin" if a.loss == "mse" else a.loss, margin=0.1, batch_weight=a.batch_weight)
    draws_stored = T["feats"].shape[1]
    for step in range(1, a.steps + 1):
        head.train()
        groups = rng.choice(contents, a.batch // a.group_size, replace=False)
        idx = np.concatenate([rng.choice(rows_of[c], a.group_size, replace=False) for c in groups])
        gid = torch.tensor(np.repeat(np.arange(len(groups)), a.group_size))
        x = T["feats"][idx, rng.integers(0, draws_stored, len(idx))][..., None, None]
        pred, y = head(x, T["inter"][idx]).mean(1), T["mos"][idx]
        if a.loss == "mse":
            loss = F.mse_loss(pred, y)
        else:
            loss = grouped_quality_loss(pred, y, gid, cfg) + a.mse_weight * F.mse_loss(pred, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        for group in opt.param_groups:  # 100 steps of warm-up, then cosine
            group["lr"] = a.lr * min(1.0, step / 100) * 0.5 * (1 + np.cos(np.pi * step / a.steps))
        opt.step()
        if step % a.eval_every == 0 or step == a.steps:
            rv, rt = evaluate(head, V), evaluate(head, E)
            print(f"step {step} loss {loss.item():.3f} val {rv.mean(0).round(3)} test {rt.mean(0).round(3)} "
                  f"(SRCC per seed {rt[:, 0].round(3)})", flush=True)
    print("val per content", per_content(head, V))
    print("test per content", per_content(head, E))
    if a.save:
        torch.save(head.state_dict(), a.save)


if __name__ == "__main__":
    main()
