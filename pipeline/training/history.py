"""What a run leaves behind: best/last checkpoints, history.json and the training curves."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model import InterEmbedder, SecureVQA, save_checkpoint
from pipeline.io.storage import filesystem, join_uri, write_bytes

from .config import TrainConfig


def write_json(uri: str, obj: Any, storage_options: Mapping[str, Any]) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, default=float).encode(), storage_options)


def epoch_line(r: Mapping[str, Any]) -> str:
    s = (f"epoch {r['epoch']}: before training" if r["train_loss"] is None
         else f"epoch {r['epoch']}: loss {r['train_loss']:.4f} ({r['train_s']:.0f} s)")
    if r.get("train_texture_loss") is not None:
        s += f"; texture-statistics MSE {r['train_texture_loss']:.3f}"
    if r.get("train_fidelity_loss") is not None:
        s += f"; fidelity MSE {r['train_fidelity_loss']:.3f}"
    if r.get("train_condition_loss") is not None:
        s += f"; condition cross-entropy {r['train_condition_loss']:.3f}"
    if r.get("train_repeat_loss") is not None:
        s += f"; frame-repeat hinge {r['train_repeat_loss']:.4f}"
    for name in ("raw", "ema"):
        if r.get(f"val_{name}_srcc") is not None:
            s += f"; val {name} SRCC {r[f'val_{name}_srcc']:.4f} PLCC {r[f'val_{name}_plcc']:.4f}"
            if r.get(f"val_{name}_within_srcc") is not None:
                s += f" (SRCC within contents {r[f'val_{name}_within_srcc']:.4f})"
    return s


def publish(out: str, so: Mapping[str, Any], candidates: Mapping[str, SecureVQA], inter: InterEmbedder,
             record: Mapping[str, Any], best: dict[str, Any] | None, cfg: TrainConfig, seed: int) -> dict[str, Any]:
    """last.pt: this epoch's better of raw and EMA by validation SRCC (raw without validation);
    best.pt: the best of those over all epochs."""
    srcc = {n: record.get(f"val_{n}_srcc") for n in candidates}
    srcc = {n: s for n, s in srcc.items() if s is not None and not math.isnan(s)}
    name = max(srcc, key=srcc.__getitem__) if srcc else "raw"
    meta = {"epoch": record["epoch"], "weights": name, "val_srcc": srcc.get(name),
            "train_config": cfg.to_dict(), "seed": seed}
    save_checkpoint(join_uri(out, "last.pt"), candidates[name], inter, metadata=meta, storage_options=so)
    improved = best is None or best["val_srcc"] is None or (name in srcc and srcc[name] > best["val_srcc"])
    if improved:
        save_checkpoint(join_uri(out, "best.pt"), candidates[name], inter, metadata=meta, storage_options=so)
        best = {"epoch": record["epoch"], "weights": name, "val_srcc": srcc.get(name)}
    return best


def write_history(out: str, so: Mapping[str, Any], history: list[dict[str, Any]], best: Any,
                   cfg: TrainConfig, seed: int) -> None:
    write_json(join_uri(out, "history.json"), {"seed": seed, "config": cfg.to_dict(), "best": best,
                                             "epochs": history}, so)
    png = plot_history(history)
    if png is not None:
        write_bytes(join_uri(out, "training_curves.png"), png, so)


def plot_history(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Training loss and validation SRCC (raw and EMA) per epoch, as PNG bytes."""
    if not history:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    a.plot(ep, [np.nan if r["train_loss"] is None else r["train_loss"] for r in history], marker="o", label="total")
    targets = {"texture statistics": "train_texture_loss", "fidelity": "train_fidelity_loss",
               "condition": "train_condition_loss", "frame repeat": "train_repeat_loss"}
    for label, key in targets.items():
        values = [r.get(key) for r in history]
        if any(t is not None for t in values):
            a.plot(ep, [np.nan if t is None else t for t in values], marker=".", ls="--", label=label)
    if any(r.get(k) is not None for r in history for k in targets.values()):
        a.legend()
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    for name, color in (("raw", "C0"), ("ema", "C1")):
        ys = [r.get(f"val_{name}_srcc") for r in history]
        if any(y is not None for y in ys):
            b.plot(ep, [np.nan if y is None else y for y in ys], marker="o", color=color, label=f"{name}, all videos")
        within = [r.get(f"val_{name}_within_srcc") for r in history]
        if any(w is not None for w in within):
            b.plot(ep, [np.nan if w is None else w for w in within], marker=".", ls="--", color=color,
                   label=f"{name}, within contents")
    b.set(xlabel="epoch", ylabel="SRCC", title="validation SRCC")
    if b.lines:
        b.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _read_json(uri: str, so: Mapping[str, Any] | None) -> dict[str, Any]:
    fs, path = filesystem(uri, so)
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def recorded_seed(uri: str, so: Mapping[str, Any]) -> int:
    """A resumed run keeps the seed it started with (recorded in the JSON file `uri`); a new run draws
    one from the OS."""
    try:
        return int(_read_json(uri, so)["seed"])
    except FileNotFoundError:
        return secrets.randbits(31)


def read_history(output: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return _read_json(join_uri(output, "history.json"), storage_options)


def training_minutes(history: Mapping[str, Any]) -> float:
    """Minutes a run spent training and validating (history.json's `train_s` + `val_s` of every epoch): the
    whole run's time, also when it was stopped and resumed in several invocations; start-up, stage 1 and the
    frame cache are not counted."""
    return sum(float(r.get("train_s") or 0.0) + float(r.get("val_s") or 0.0) for r in history["epochs"]) / 60
