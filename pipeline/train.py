"""Training SecureVQA on cached inter embeddings, with Ray Train (TorchTrainer, DDP).

Shape of a run (`securevqa train`, the same code from one CPU worker to many GPU nodes):

1. The driver keys the labelled manifest like the score stage and runs stage 1 (`extract_inter`) for
   every video whose inter embedding is not cached yet; videos that fail stage 1 are left out, named.
2. A `TorchTrainer` starts `workers` training workers (one GPU each where asked). Each worker reads
   the embeddings of its videos from the cache and decodes intra clips on the fly: every step draws
   fresh clip offsets, fragments and guardian maps (replayable when the run has a seed).
3. Every epoch: validation of the raw and the EMA weights (SRCC/PLCC/KRCC/RMSE), a Ray Train
   checkpoint (model, EMA, optimizer, schedule, history), and, on rank 0, `best.pt` and `last.pt` in
   the project's checkpoint format plus `history.json` and `training_curves.png`.
4. A run started again with the same output resumes from its last checkpoint: Ray Train restores it
   from the run's storage, the loop continues at the next epoch with the same optimizer and EMA state.

The recipe (DESIGN 2.4) is `TrainConfig`'s defaults; the small-dataset protocol is `train_splits`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from model import InterEmbedder, SecureVQA, create_model, load_intra_pretrained, make_generator, save_checkpoint
from model.securevqa import guard_per_video
from model.fusion import FusionHead
from model.losses import LossConfig, grouped_quality_loss, quality_loss
from model.metrics import quality_metrics, srcc
from model.optim import ModelEMA, build_optimizer, warmup_cosine
from model.pretext import TextureHead
from model.rng import derive_seed

from .frame_cache import FrameCache
from .inference import inter_segments, intra_clips
from .stages import InterCache, ModelSpec, RunOptions, duration, extract_inter, keyed_manifest, open_video
from .storage import ShardStore, filesystem, is_local, write_bytes

log = logging.getLogger("securevqa.train")

STATE_FILE = "state.pt"


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TrainConfig:
    """What is trained and how. The defaults are the reference recipe (DESIGN 2.4)."""

    preset: str = "paper"
    init_checkpoint: str | None = None  # a SecureVQA checkpoint to start from (ours or the reference layout)
    intra_pretrained: str | None = None  # Video Swin K400 weights (mmaction) for the intra backbone
    inter_checkpoint: str | None = None  # SlowFast R50 K400 weights (pytorchvideo) for the fast pathway
    epochs: int = 30
    batch_size: int = 12  # videos per optimizer step, over all workers
    head_lr: float = 1e-3  # fusion + regression head
    backbone_lr: float = 1e-4  # intra Swin backbone
    weight_decay: float = 0.05
    warmup_epochs: float = 2.5
    ema_decay: float = 0.999
    loss: LossConfig = field(default_factory=LossConfig)
    freeze_backbone: bool = False  # small-dataset protocol: only fusion and head learn
    head_dropout: float | None = None  # None: the preset's (0.5); training only, inference has none
    reinit_head: bool = False  # small-dataset protocol: fusion and head start afresh
    val_clips: int | None = None  # clips per validation video (None: the preset's test clips)
    guardian: bool = True
    # Batches of `group_size` clips from each of batch/group_size groups (e.g. source content): the
    # losses rank within a batch, and same-content clips make quality, not content, the difference.
    group_column: str | None = None
    group_size: int = 4
    align_groups: bool = False  # a group's clips in a batch share clip offsets and fragments (GroupedBatchSampler)
    grad_clip: float | None = None  # max global gradient norm per step (None: no clipping)
    # Videos of the training split whose clips estimate the frozen fast pathway's BatchNorm statistics
    # before stage 1 (0: keep the weights' own; model.slowfast.FastPathway.calibrate_batchnorm_).
    calibrate_inter: int = 0
    # Weight of the texture-statistics target on the final intra tokens (model/pretext.py; 0: none). It
    # makes a randomly initialised Swin measure local energy, which a pooled quality loss barely teaches.
    texture_weight: float = 0.0
    seed: int | None = None  # None: the driver draws one (recorded in history.json, so a run can be replayed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossConfig(**d.get("loss", {}))
        return cls(**d)


@dataclass(frozen=True)
class TrainRun:
    """Where and on what a run executes."""

    workers: int = 1  # Ray Train workers (DDP when > 1)
    use_gpu: bool | None = None  # None: one GPU per worker where the cluster has GPUs
    cpus_per_worker: float = 1.0
    threads: int | None = None  # torch threads per worker (default: cpus_per_worker)
    loader_workers: int = 1  # DataLoader processes decoding clips per training worker
    cache_uri: str | None = None  # stage-1 cache (default: OUTPUT/inter); share it with the score job
    storage_options: dict[str, Any] = field(default_factory=dict)
    progress_every: int = 10  # steps between progress lines
    # Local folder where every training video is decoded once (pipeline/frame_cache.py); None: decode
    # the sampled frames on the fly every step.
    frame_cache: str | None = None


# ----------------------------------------------------------------------------- data

class ClipDataset(Dataset):
    """Labelled videos -> (K fragment clips uint8, cached inter embedding, MOS), decoded on the fly.

    Randomness of item i in epoch e comes from `derive_seed(seed, salt, e, i)`: fresh clip offsets and
    fragments every epoch, the same ones on a replay, whichever loader process decodes the item. An item
    may also be `(i, draw)` (`GroupedBatchSampler(aligned=True)`): then the randomness comes from
    `derive_seed(seed, salt, e, "draw", draw)`, so items sharing a draw (versions of one source content,
    frame-aligned) get the same clip offsets and fragment positions.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], embeddings: Mapping[str, torch.Tensor], sampling: Any,
                 num_clips: int, seed: int | None, salt: str, storage_options: Mapping[str, Any],
                 frame_cache: FrameCache | None = None) -> None:
        self.rows, self.embeddings, self.sampling = list(rows), embeddings, sampling
        self.num_clips, self.seed, self.salt = num_clips, seed, salt
        self.storage_options = dict(storage_options)
        self.frame_cache = frame_cache
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, float, int]:
        if isinstance(item, tuple):
            i, draw = item
            g = make_generator(derive_seed(self.seed, self.salt, self.epoch, "draw", draw))
        else:
            i = item
            g = make_generator(derive_seed(self.seed, self.salt, self.epoch, i))
        r = self.rows[i]
        try:
            if self.frame_cache is not None:
                clips = intra_clips(self.frame_cache.open(r["uri"]), self.sampling, self.num_clips, g)
            else:
                with open_video(r["uri"], self.storage_options) as video:
                    clips = intra_clips(video, self.sampling, self.num_clips, g)
        except Exception as exc:
            raise RuntimeError(f"training video {r['video_id']} ({r['uri']}): {exc}") from exc
        return clips, self.embeddings[r["inter_key"]], float(r["mos"]), i


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of `per_group` items from each of `batch_size // per_group` distinct groups (e.g. source
    contents), drawn from `generator`: every item at most once per epoch, a group at most once per batch.

    `aligned`: each item comes as `(index, draw)`, the items of one group in a batch sharing a draw, so
    `ClipDataset` samples them at the same clip offsets and fragment positions. For versions of one
    source (clean and degraded, frame-aligned) the clips then differ in quality only: the fragments
    of different draws of one content differ ~10x more than a degradation changes them (measured on
    the untrained model, docs/training.md), which drowns the quality signal of a step."""

    def __init__(self, groups: Sequence[Any], batch_size: int, per_group: int, generator: torch.Generator,
                 aligned: bool = False) -> None:
        if batch_size % per_group or batch_size < 2 * per_group:
            raise ValueError(f"batch size {batch_size} must be a multiple (>= 2x) of the group size {per_group}")
        self.groups, self.k, self.per_group, self.aligned = list(groups), batch_size // per_group, per_group, aligned
        members: dict[Any, list[int]] = {}
        for i, g in enumerate(self.groups):
            members.setdefault(g, []).append(i)
        if len(members) < self.k:
            raise ValueError(f"{len(members)} groups cannot fill batches of {self.k} distinct groups")
        chunks: list[list[int]] = []
        for items in members.values():
            order = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
            chunks += [order[j:j + per_group] for j in range(0, len(order) - per_group + 1, per_group)]
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        self.batches: list[list[int]] = []
        open_batches: list[list[list[int]]] = []
        for c in chunks:  # first open batch without this chunk's group, else a new one
            for b in open_batches:
                if all(self.groups[o[0]] != self.groups[c[0]] for o in b):
                    b.append(c)
                    break
            else:
                open_batches.append([c])
            for b in [b for b in open_batches if len(b) == self.k]:
                self.batches.append([i for chunk in b for i in chunk])
                open_batches.remove(b)

    def __iter__(self):
        if not self.aligned:
            return iter(self.batches)
        p = self.per_group
        return iter([[(i, b * self.k + j // p) for j, i in enumerate(batch)] for b, batch in enumerate(self.batches)])

    def __len__(self) -> int:
        return len(self.batches)


def loader_init(_: int) -> None:
    """DataLoader `worker_init_fn`: one torch thread per decoding process."""
    torch.set_num_threads(1)  # decoding processes must not compete with the model's threads


# ----------------------------------------------------------------------------- model, state

def build_model(cfg: TrainConfig, seed: int) -> SecureVQA:
    """The model a run trains: preset or `init_checkpoint`, optional pretrained backbone, head re-initialised
    and backbone frozen as `cfg` says, training head dropout; initialisation derived from `seed`."""
    vqa, _ = create_model(cfg.preset, checkpoint=cfg.init_checkpoint, guardian=cfg.guardian,
                          init_seed=derive_seed(seed, "init"))
    if cfg.intra_pretrained:
        load_intra_pretrained(vqa, cfg.intra_pretrained)
    if cfg.reinit_head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "head"))
            vqa.head = FusionHead(vqa.cfg.intra_dim, vqa.cfg.inter_dim, vqa.cfg.head)
    if cfg.freeze_backbone:
        vqa.intra.requires_grad_(False)
    if cfg.head_dropout is not None:
        # A training choice, not architecture: the config (and with it every cache key) stays the preset's.
        for m in vqa.head.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.head_dropout
    return vqa


def _set_train_mode(vqa: SecureVQA, cfg: TrainConfig) -> None:
    vqa.train()
    if cfg.freeze_backbone:
        vqa.intra.eval()  # a frozen backbone gives the same features as at test time (no drop-path)


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def _write_json(uri: str, obj: Any, storage_options: Mapping[str, Any]) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, default=float).encode(), storage_options)


# ----------------------------------------------------------------------------- validation

@torch.no_grad()
def evaluate(models: Mapping[str, SecureVQA], loader: DataLoader, seed: int,
             groups: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Scores every validation video with each model on the same clips and guardian maps: the
    quality_metrics over all videos, and with `groups` (each video's content, by dataset index) also
    `within_srcc`, the mean SRCC inside each content: one model can order the qualities of every
    content right and still lose pooled SRCC to content offsets."""
    preds: dict[str, list[float]] = {name: [] for name in models}
    labels: list[float] = []
    order: list[int] = []
    for clips, inter, mos, idx in loader:
        for name, m in models.items():
            m.eval()
            g = make_generator(derive_seed(seed, "val-guardian", int(idx[0])))
            preds[name].extend(m(clips, inter, generator=g).mean(1).tolist())
        labels.extend(mos.tolist())
        order.extend(int(i) for i in idx)
    out = {name: quality_metrics(np.asarray(p), np.asarray(labels)) for name, p in preds.items()}
    if groups:
        g = np.asarray([groups[i] for i in order])
        y = np.asarray(labels)
        for name, p in preds.items():
            p = np.asarray(p)
            per = [srcc(p[g == k], y[g == k]) for k in np.unique(g) if (g == k).sum() > 2]
            out[name]["within_srcc"] = float(np.nanmean(per)) if per else float("nan")
    return out


# ----------------------------------------------------------------------------- the per-worker loop

def train_step(model: torch.nn.Module, clips: torch.Tensor, inter: torch.Tensor, mos: torch.Tensor,
               optimizer: torch.optim.Optimizer, loss_cfg: LossConfig, *,
               generator: torch.Generator | None = None, groups: torch.Tensor | None = None,
               grad_clip: float | None = None, texture: TextureHead | None = None, texture_weight: float = 0.0,
               parts: dict[str, float] | None = None) -> float:
    """One optimizer step on a batch: clips (B, K, 3, T, H, W) 0-255, inter (B, S, Ce), mos (B,).

    `groups` (B,) integer labels: the loss is computed within each group (`grouped_quality_loss`);
    `grad_clip`: the largest global gradient norm applied (over the model and `texture`). With `texture`
    and `texture_weight` > 0 the final intra tokens also regress their cells' texture statistics
    (model/pretext.py). Returns the total loss; `parts` receives "quality" and "texture"."""
    with_texture = texture is not None and texture_weight > 0
    out = model(clips, inter, generator=generator, return_features=with_texture)
    pred, feats = out if with_texture else (out, None)
    pred = pred.mean(1)
    loss = quality_loss(pred, mos, loss_cfg) if groups is None else grouped_quality_loss(pred, mos, groups, loss_cfg)
    total = loss
    if with_texture:
        texture_loss = texture.loss(feats, clips.flatten(0, 1))
        total = loss + texture_weight * texture_loss
        if parts is not None:
            parts["texture"] = texture_loss.item()
    if parts is not None:
        parts["quality"] = loss.item()
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip is not None:
        params = list(model.parameters()) + (list(texture.parameters()) if with_texture else [])
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return total.item()


def train_loop(config: Mapping[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: one worker's share of the whole run (resumes by itself)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = TrainConfig.from_dict(config["cfg"])
    run = TrainRun(**config["run"])
    seed, out, so = int(config["seed"]), config["output"], run.storage_options
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(run.threads or max(1, int(run.cpus_per_worker)))
    device = ray.train.torch.get_device() if torch.cuda.is_available() else torch.device("cpu")

    vqa = build_model(cfg, seed).to(device)
    # The inter weights are saved with every exported model, so scoring with it reuses this run's cache.
    inter_model = config["spec"].build(so)[1].cpu() if rank == 0 else None
    cache = InterCache(config["cache_uri"], so)
    keys = [r["inter_key"] for r in config["train"] + config["val"]]
    found = cache.lookup(keys)
    emb = {k: torch.tensor(v["embedding"], dtype=torch.float32).view(v["segments"], -1) for k, v in found.items()}
    sampling = vqa.cfg.sampling
    frames = None
    if run.frame_cache:
        frames = FrameCache(run.frame_cache, so)
        t_cache = time.perf_counter()
        todo = config["train"] + (config["val"] if rank == 0 else [])
        n = frames.warm(r["uri"] for r in todo)
        if rank == 0:
            print(f"train: frame cache {run.frame_cache}: {n} of {len(todo)} videos decoded "
                  f"({time.perf_counter() - t_cache:.0f} s)", flush=True)
    train_ds = ClipDataset(config["train"], emb, sampling, sampling.train_clips, seed, "train", so, frames)
    group_ids = {g: i for i, g in enumerate(sorted({r["group"] for r in config["train"]}))}
    per_worker = max(2, cfg.batch_size // world)
    steps_per_epoch = len(train_ds) // (per_worker * world)
    if cfg.group_column and world == 1:
        steps_per_epoch = len(GroupedBatchSampler([r["group"] for r in config["train"]], per_worker,
                                                  cfg.group_size, make_generator(0)))
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_ds)} training videos are fewer than one batch of {cfg.batch_size}")
    total = cfg.epochs * steps_per_epoch

    model = ray.train.torch.prepare_model(vqa, move_to_device=False) if world > 1 else vqa
    optimizer = build_optimizer(vqa, backbone_lr=cfg.backbone_lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    texture = None
    if cfg.texture_weight > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "texture"))
            texture = TextureHead(vqa.cfg.intra_dim, vqa.cfg.swin).to(device)
        optimizer.add_param_group({"name": "texture", "params": list(texture.parameters()), "lr": cfg.head_lr,
                                   "weight_decay": cfg.weight_decay})
    scheduler = warmup_cosine(optimizer, warmup_steps=cfg.warmup_epochs * steps_per_epoch, total_steps=total)
    ema = ModelEMA(vqa, decay=cfg.ema_decay)
    start_epoch, step, history, best = 0, 0, [], None

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location=device, weights_only=True)
        vqa.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if texture is not None:
            texture.load_state_dict(state["texture"])
        start_epoch, step, history, best = state["epoch"] + 1, state["step"], state["history"], state["best"]
        if rank == 0:
            print(f"train: resumed after epoch {state['epoch'] + 1} (step {step})", flush=True)

    val_loader = None
    if config["val"] and rank == 0:
        val_ds = ClipDataset(config["val"], emb, sampling, cfg.val_clips or sampling.test_clips, seed, "val", so,
                             frames)
        val_loader = DataLoader(val_ds, batch_size=1, num_workers=run.loader_workers, worker_init_fn=loader_init)

    def validate(record: dict[str, Any]) -> None:
        if val_loader is None:
            return
        t1 = time.perf_counter()
        groups = [r.get("group", "") for r in config["val"]]
        for name, m in evaluate({"raw": vqa, "ema": ema.module}, val_loader, seed, groups).items():
            record.update({f"val_{name}_{k}": m[k] for k in ("srcc", "plcc", "krcc", "rmse", "within_srcc")})
        record["val_s"] = time.perf_counter() - t1

    if start_epoch == 0 and rank == 0 and val_loader is not None:
        record0: dict[str, Any] = {"epoch": 0, "step": 0, "train_loss": None, "train_s": 0.0}
        validate(record0)  # the starting point, so every curve shows what training added
        history.append(record0)
        print("train: " + _epoch_line(record0), flush=True)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        if world > 1:
            sampler: Any = torch.utils.data.DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True,
                                                               seed=derive_seed(seed, "shuffle") or 0, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = torch.utils.data.RandomSampler(train_ds, generator=make_generator(derive_seed(seed, "shuffle", epoch)))
        batching: dict[str, Any] = {"batch_size": per_worker, "sampler": sampler, "drop_last": True}
        if cfg.group_column and world == 1:
            batching = {"batch_sampler": GroupedBatchSampler(
                [r["group"] for r in config["train"]], per_worker, cfg.group_size,
                make_generator(derive_seed(seed, "shuffle", epoch)), aligned=cfg.align_groups)}
        loader = DataLoader(train_ds, num_workers=run.loader_workers, worker_init_fn=loader_init,
                            pin_memory=device.type == "cuda", persistent_workers=False, **batching)
        torch.manual_seed(derive_seed(seed, "dropout", epoch, rank))  # dropout and drop-path, replayable
        _set_train_mode(vqa, cfg)
        losses, texture_losses = [], []
        for i, (clips, inter, mos, idx) in enumerate(loader):
            clips, inter = clips.to(device, non_blocking=True), inter.to(device, non_blocking=True)
            mos = mos.to(device=device, dtype=torch.float32)
            g = make_generator(derive_seed(seed, "guardian", epoch, i, rank))
            groups = (torch.tensor([group_ids[config["train"][j]["group"]] for j in idx.tolist()])
                      if cfg.group_column and world == 1 else None)
            parts: dict[str, float] = {}
            loss = train_step(model, clips, inter, mos, optimizer, cfg.loss, generator=g, groups=groups,
                              grad_clip=cfg.grad_clip, texture=texture, texture_weight=cfg.texture_weight,
                              parts=parts)
            if "texture" in parts:
                texture_losses.append(parts["texture"])
            scheduler.step()
            ema.update(vqa)
            step += 1
            losses.append(loss)
            if rank == 0 and ((i + 1) % run.progress_every == 0 or i + 1 == steps_per_epoch):
                rate = (time.perf_counter() - t0) / (i + 1)
                val_s = history[-1].get("val_s", 0.0) if history else 0.0
                left = (total - step) * rate + (cfg.epochs - epoch) * val_s  # steps, then validations
                print(f"train: epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps_per_epoch} "
                      f"loss {np.mean(losses[-run.progress_every:]):.4f} "
                      f"lr {scheduler.get_last_lr()[-1]:.2e} ({rate:.2f} s/step; {duration(left)} left)", flush=True)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                                  "train_s": time.perf_counter() - t0}
        if texture_losses:
            record["train_texture_loss"] = float(np.mean(texture_losses))
        validate(record)
        if rank == 0:
            best = _publish(out, so, {"raw": vqa, "ema": ema.module}, inter_model, record, best, cfg, seed)
            history.append(record)
            _write_history(out, so, history, best, cfg, seed)
            print("train: " + _epoch_line(record), flush=True)
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                torch.save({"epoch": epoch, "step": step, "model": vqa.state_dict(), "ema": ema.state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "history": history, "best": best,
                            **({"texture": texture.state_dict()} if texture is not None else {})}, os.path.join(d, STATE_FILE))
            ray.train.report({k: v for k, v in record.items() if v is not None},
                             checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)


def _epoch_line(r: Mapping[str, Any]) -> str:
    s = (f"epoch {r['epoch']}: before training" if r["train_loss"] is None
         else f"epoch {r['epoch']}: loss {r['train_loss']:.4f} ({r['train_s']:.0f} s)")
    if r.get("train_texture_loss") is not None:
        s += f"; texture-statistics MSE {r['train_texture_loss']:.3f}"
    for name in ("raw", "ema"):
        if r.get(f"val_{name}_srcc") is not None:
            s += f"; val {name} SRCC {r[f'val_{name}_srcc']:.4f} PLCC {r[f'val_{name}_plcc']:.4f}"
            if r.get(f"val_{name}_within_srcc") is not None:
                s += f" (SRCC within contents {r[f'val_{name}_within_srcc']:.4f})"
    return s


def _publish(out: str, so: Mapping[str, Any], candidates: Mapping[str, SecureVQA], inter: InterEmbedder,
             record: Mapping[str, Any], best: dict[str, Any] | None, cfg: TrainConfig, seed: int) -> dict[str, Any]:
    """last.pt: this epoch's better of raw and EMA by validation SRCC (raw without validation);
    best.pt: the best of those over all epochs."""
    srcc = {n: record.get(f"val_{n}_srcc") for n in candidates}
    srcc = {n: s for n, s in srcc.items() if s is not None and not math.isnan(s)}
    name = max(srcc, key=srcc.__getitem__) if srcc else "raw"
    meta = {"epoch": record["epoch"], "weights": name, "val_srcc": srcc.get(name),
            "train_config": cfg.to_dict(), "seed": seed}
    save_checkpoint(_join(out, "last.pt"), candidates[name], inter, metadata=meta, storage_options=so)
    improved = best is None or best["val_srcc"] is None or (name in srcc and srcc[name] > best["val_srcc"])
    if improved:
        save_checkpoint(_join(out, "best.pt"), candidates[name], inter, metadata=meta, storage_options=so)
        best = {"epoch": record["epoch"], "weights": name, "val_srcc": srcc.get(name)}
    return best


def _write_history(out: str, so: Mapping[str, Any], history: list[dict[str, Any]], best: Any,
                   cfg: TrainConfig, seed: int) -> None:
    _write_json(_join(out, "history.json"), {"seed": seed, "config": cfg.to_dict(), "best": best,
                                             "epochs": history}, so)
    png = plot_history(history)
    if png is not None:
        write_bytes(_join(out, "training_curves.png"), png, so)


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
    texture = [r.get("train_texture_loss") for r in history]
    if any(t is not None for t in texture):
        a.plot(ep, [np.nan if t is None else t for t in texture], marker=".", ls="--", label="texture statistics")
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


# ----------------------------------------------------------------------------- the driver

def _labelled(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if "mos" not in df or df["mos"].isna().any():
        missing = df["video_id"][df["mos"].isna()].head(5).tolist() if "mos" in df else "all"
        raise ValueError(f"every {what} video needs a MOS label; missing for: {missing}")
    return df


def _inter_rows(df: pd.DataFrame, spec: ModelSpec, versions: Mapping[str, Any], cache_uri: str,
                so: Mapping[str, Any], group_column: str | None = None) -> list[dict[str, Any]]:
    """Rows with their inter-cache key; videos whose stage 1 failed are dropped, and named."""
    keyed = keyed_manifest(df, versions["inter"], so)
    status = ShardStore(cache_uri, so).read_table(columns=["key", "status", "error"]).to_pandas()
    status = status.set_index("key")
    ok = keyed["key"].map(lambda k: k in status.index and status.at[k, "status"] == "ok")
    for r in keyed[~ok].itertuples(index=False):
        err = status.at[r.key, "error"] if r.key in status.index else "not in the cache"
        log.warning("left out of training: %s (%s): %s", r.video_id, r.uri, err)
    keyed = keyed[ok]
    group = keyed[group_column].astype(str) if group_column else pd.Series("", index=keyed.index)
    return [{"video_id": str(r.video_id), "uri": str(r.uri), "mos": float(r.mos), "inter_key": r.key, "group": g}
            for r, g in zip(keyed.itertuples(index=False), group)]


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def train(manifest: pd.DataFrame, output: str, cfg: TrainConfig = TrainConfig(), run: TrainRun = TrainRun(),
          *, val: pd.DataFrame | None = None, name: str = "ray_train") -> dict[str, Any]:
    """Train on `manifest` (uri, video_id, mos), validating on `val`, into `output` (local or s3://).

    Needs a Ray cluster (ray.init()). Returns history.json's content. Running it again on the same
    output resumes the run (or does nothing when it is complete).
    """
    import ray.train
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    output = _absolute(output)
    so = run.storage_options
    seed = cfg.seed if cfg.seed is not None else _recorded_seed(_join(output, "history.json"), so)
    _labelled(manifest, "training")
    if val is not None:
        _labelled(val, "validation")
    spec = ModelSpec(preset=cfg.preset, checkpoint=cfg.init_checkpoint, inter_checkpoint=cfg.inter_checkpoint,
                     guardian=cfg.guardian)
    if cfg.calibrate_inter:
        spec = dataclasses.replace(spec, inter_checkpoint=calibrate_inter(
            manifest, spec, _join(output, "inter_calibrated.pt"), cfg.calibrate_inter, seed, so))
    cache_uri = _absolute(run.cache_uri or _join(output, "inter"))
    everything = pd.concat([manifest, val]) if val is not None else manifest
    everything = everything.drop_duplicates("uri")
    versions = spec.versions(so)
    opts = RunOptions(storage_options=dict(so), actors=1, cpus_per_actor=1, threads=run.threads, seed=seed,
                      gpus_per_actor=1.0 if run.use_gpu else None)
    print(extract_inter(everything, cache_uri, spec, opts, versions).line(), flush=True)
    if cfg.group_column and cfg.group_column not in manifest:
        raise ValueError(f"--group-by {cfg.group_column!r}: no such column in the training manifest")
    train_rows = _inter_rows(manifest, spec, versions, cache_uri, so, cfg.group_column)
    val_group = cfg.group_column if val is not None and cfg.group_column in val else None
    val_rows = _inter_rows(val, spec, versions, cache_uri, so, val_group) if val is not None else []
    print(f"train: {len(train_rows)} training and {len(val_rows)} validation videos; seed {seed}; "
          f"{run.workers} worker(s); output {output}", flush=True)
    use_gpu = run.use_gpu if run.use_gpu is not None else bool(ray.cluster_resources().get("GPU", 0))
    config = {"cfg": cfg.to_dict(), "run": dataclasses.asdict(run), "seed": seed, "output": output,
              "cache_uri": cache_uri, "train": train_rows, "val": val_rows, "spec": spec}
    storage_path, storage_fs = _ray_storage(output, so)
    trainer = TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=run.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": run.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return read_history(output, so)


def calibrate_inter(manifest: pd.DataFrame, spec: ModelSpec, uri: str, videos: int, seed: int,
                    storage_options: Mapping[str, Any] | None = None) -> str:
    """Estimate the frozen fast pathway's BatchNorm statistics on the inter segments of `videos` videos of
    `manifest` (drawn with `seed`) and save the model there (`uri`, project checkpoint format, read back
    with --inter-checkpoint); returns `uri`. Idempotent: an existing file is reused, so a resumed run
    keeps the same inter weights, hence the same stage-1 cache keys.
    """
    so = storage_options or {}
    fs, path = filesystem(uri, so)
    if fs.exists(path):
        return uri
    vqa, inter = spec.build(so)
    order = torch.randperm(len(manifest), generator=make_generator(derive_seed(seed, "calibrate-inter")))
    rows = manifest.iloc[order[:videos].tolist()]
    t0 = time.perf_counter()

    def batches():
        for i, u in enumerate(rows["uri"]):
            with open_video(str(u), so) as video:
                segments = inter_segments(video, inter)
            g = make_generator(derive_seed(seed, "calibrate-inter", i))
            yield guard_per_video(segments[None], g, inter.guardian, maps_per_sample=segments.shape[0])

    seen = inter.fastpath.calibrate_batchnorm_(batches())
    save_checkpoint(uri, vqa, inter, storage_options=so,
                    metadata={"inter_calibration": {"videos": rows["video_id"].astype(str).tolist(), "seed": seed,
                                                    "segments": seen}})
    print(f"train: fast-pathway BatchNorm statistics from {len(rows)} training videos ({seen} segments, "
          f"{time.perf_counter() - t0:.0f} s) -> {uri}", flush=True)
    return uri


def _read_json(uri: str, so: Mapping[str, Any] | None) -> dict[str, Any]:
    fs, path = filesystem(uri, so)
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def _recorded_seed(uri: str, so: Mapping[str, Any]) -> int:
    """A resumed run keeps the seed it started with (recorded in the JSON file `uri`); a new run draws
    one from the OS."""
    try:
        return int(_read_json(uri, so)["seed"])
    except FileNotFoundError:
        return secrets.randbits(31)


def read_history(output: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return _read_json(_join(output, "history.json"), storage_options)


def _ray_storage(output: str, so: Mapping[str, Any]) -> tuple[str, Any]:
    """Ray Train's storage for checkpoints: `output` itself (local path, or S3 through pyarrow's filesystem
    wrapping our fsspec one, so endpoint and credentials options apply)."""
    fs, path = filesystem(output, so)
    if is_local(fs):
        return path, None
    import pyarrow.fs

    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


# ----------------------------------------------------------------------------- small-dataset protocol

def train_splits(manifest: pd.DataFrame, output: str, cfg: TrainConfig, run: TrainRun = TrainRun(), *,
                 n_splits: int = 10, train_fraction: float = 0.8) -> dict[str, Any]:
    """The small-dataset protocol: `n_splits` random train/test splits of `manifest`, one run each into
    OUTPUT/split_XX (each resumable), scored on its held-out part by the last epoch's raw and EMA weights
    (no selection on the held-out part); mean and std over splits in OUTPUT/splits.json and splits.md.

    `cfg` should have the backbone frozen and the head re-initialised (the CLI's --protocol splits does).
    """
    from .datasets import random_splits

    output = _absolute(output)
    so = run.storage_options
    seed = cfg.seed if cfg.seed is not None else _recorded_seed(_join(output, "protocol.json"), so)
    _write_json(_join(output, "protocol.json"), {"seed": seed, "n_splits": n_splits,
                                                  "train_fraction": train_fraction}, so)
    manifest = _labelled(manifest.reset_index(drop=True), "training")
    per_split = []
    for k, (tr, te) in enumerate(random_splits(len(manifest), n_splits=n_splits, train_fraction=train_fraction,
                                               seed=seed)):
        print(f"train: split {k + 1}/{n_splits}: {len(tr)} training, {len(te)} held-out videos", flush=True)
        h = train(manifest.iloc[tr], _join(output, f"split_{k:02d}"),
                  dataclasses.replace(cfg, seed=derive_seed(seed, "split", k)), run, val=manifest.iloc[te],
                  name=f"split_{k:02d}")
        last = h["epochs"][-1]
        per_split.append({"split": k, **{key: last.get(key) for key in last if key.startswith("val_")}})
    table = pd.DataFrame(per_split)
    stats = {col: {"mean": float(table[col].mean()), "std": float(table[col].std(ddof=0))}
             for col in table.columns if col.startswith("val_") and not col.endswith("_s")}
    summary = {"n_splits": n_splits, "train_fraction": train_fraction, "seed": seed, "config": cfg.to_dict(),
               "splits": per_split, "stats": stats}
    lines = ["| weights | SRCC | PLCC | KRCC | RMSE |", "|---|---:|---:|---:|---:|"]
    for name in ("raw", "ema"):
        if f"val_{name}_srcc" in stats:
            cells = [f"{stats[f'val_{name}_{m}']['mean']:.4f} ± {stats[f'val_{name}_{m}']['std']:.4f}"
                     for m in ("srcc", "plcc", "krcc", "rmse")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md = (f"# Small-dataset protocol: {n_splits} random {train_fraction:.0%}/{1 - train_fraction:.0%} splits\n\n"
          f"{len(manifest)} videos; backbone frozen: {cfg.freeze_backbone}; head re-initialised: {cfg.reinit_head}; "
          f"{cfg.epochs} epochs, batch {cfg.batch_size}; last epoch's weights on each held-out part, "
          "mean ± std over splits.\n\n" + "\n".join(lines) + "\n")
    _write_json(_join(output, "splits.json"), summary, so)
    write_bytes(_join(output, "splits.md"), md.encode(), so)
    best = stats.get("val_ema_srcc") or stats.get("val_raw_srcc") or {"mean": float("nan"), "std": float("nan")}
    summary["line"] = (f"train: {n_splits} splits: held-out SRCC {best['mean']:.4f} ± {best['std']:.4f} "
                       f"(EMA weights); table in {_join(output, 'splits.md')}")
    return summary
