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

The recipe (docs/design.md §2.4) is `TrainConfig`'s defaults; the small-dataset protocol is `train_splits`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from model import SecureVQA, create_model, load_intra_pretrained, make_generator
from model.deepen import deepen
from model.frame_repeat import repeat_frames
from model.losses import LossConfig, grouped_quality_loss, quality_loss
from model.metrics import quality_metrics, srcc
from model.optim import ModelEMA, build_optimizer, warmup_cosine
from model.pretext import ConditionHead, FidelityHead, TextureHead
from model.rng import derive_seed, resolve
from pipeline.log import configure_worker, duration
from pipeline.stages.inter import InterCache
from pipeline.training.frame_cache import FrameCache

from .config import STATE_FILE, TrainConfig, TrainRun
from .data import ClipDataset, GroupedBatchSampler, make_loader
from .held_inter import HeldInter
from .history import epoch_line, publish, write_history

log = logging.getLogger("securevqa.training")


# ----------------------------------------------------------------------------- model, state

def build_model(cfg: TrainConfig, seed: int) -> SecureVQA:
    """The model a run trains: preset or `init_checkpoint`, optional pretrained backbone, deepened
    (`cfg.deepen`, model/deepen.py), head re-initialised and backbone frozen as `cfg` says, training head dropout; initialisation derived from `seed`."""
    vqa, _ = create_model(cfg.preset, checkpoint=cfg.init_checkpoint, guardian=cfg.guardian,
                          init_seed=derive_seed(seed, "init"))
    if cfg.intra_pretrained:
        load_intra_pretrained(vqa, cfg.intra_pretrained)
    if cfg.deepen:
        vqa = deepen(vqa, cfg.deepen, init_seed=derive_seed(seed, "deepen"))
    if cfg.reinit_head:
        vqa.reset_head(derive_seed(seed, "head"))
    if cfg.difference_stem:  # a new inter embedding: the fusion starts blind to it, not fitted to the old one
        vqa.head.fusion.forget_inter_()
    if cfg.freeze_backbone:
        vqa.freeze_intra()
    if cfg.head_dropout is not None:
        vqa.set_head_dropout(cfg.head_dropout)
    return vqa


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
               fidelity: FidelityHead | None = None, fidelity_weight: float = 0.0,
               references: torch.Tensor | None = None, condition: ConditionHead | None = None,
               condition_weight: float = 0.0, conditions: torch.Tensor | None = None,
               repeat_weight: float = 0.0, repeat_levels: Sequence[tuple[int, float]] = (),
               repeat_bases: torch.Tensor | None = None, repeat_phase: int | None = None, frame_interval: int = 1,
               repeat_inter: Callable[[int], torch.Tensor] | None = None, repeat_pairs: str = "all",
               parts: dict[str, float] | None = None) -> float:
    """One optimizer step on a batch: clips (B, K, 3, T, H, W) 0-255, inter (B, S, Ce), mos (B,).

    `groups` (B,) integer labels: the loss is computed within each group (`grouped_quality_loss`);
    `grad_clip`: the largest global gradient norm applied (over the model and `texture`). With `texture`
    and `texture_weight` > 0 the final intra tokens also regress their cells' texture statistics
    (model/pretext.py). With `fidelity`, `fidelity_weight` > 0 and `references` (the clips' clean versions,
    shaped like `clips`) they also regress their cells' SSIM and log MSE against the reference. With
    `condition`, `condition_weight` > 0 and `conditions` ((B,) class indices) the pooled features also name
    each video's processing condition. With `repeat_weight` > 0, `repeat_levels` ((k, label drop) pairs, k
    in video frames) and `repeat_bases` (indices of the batch's videos), each base video's clips are also
    scored with their frames held as a frame-rate drop of each k (`repeat_frames`, at `repeat_phase`, or a
    phase drawn from `generator` per clip when None; clips sampled every `frame_interval` frames do not
    show a k that does not exceed it, so such a k is skipped), with the video's inter embedding (or, given
    `repeat_inter`, with `repeat_inter(k)`: the bases' embeddings (n, S, Ce) of their videos held by k), and
    `margin_rank_loss` (the loss's `margin`) within each base asks the scores to fall by the label drops
    (TrainConfig.repeat_weight; `repeat_pairs` "held": the held versions only, without the clip itself).
    Returns the total loss; `parts` receives "quality", "texture", "fidelity", "condition" and "repeat"."""
    with_texture = texture is not None and texture_weight > 0
    with_fidelity = fidelity is not None and fidelity_weight > 0
    with_condition = condition is not None and condition_weight > 0
    if with_fidelity and references is None:
        raise ValueError("the fidelity target needs the reference clips")
    if with_condition and conditions is None:
        raise ValueError("the condition target needs each video's condition")
    features = with_texture or with_fidelity or with_condition
    levels = [(k // frame_interval, drop, k) for k, drop in repeat_levels if k // frame_interval >= 2]
    with_repeat = repeat_weight > 0 and repeat_bases is not None and len(repeat_bases) > 0 and bool(levels)
    b = clips.shape[0]
    if with_repeat:  # one forward for the batch and the held versions of its bases
        base = clips[repeat_bases]
        held = [repeat_frames(base, f, torch.randint(0, f, base.shape[:2], generator=resolve(generator))
                              if repeat_phase is None else repeat_phase) for f, _, _ in levels]
        clips_in = torch.cat([clips, *held])
        inter_in = torch.cat([inter, *[repeat_inter(k).to(inter) if repeat_inter else inter[repeat_bases]
                                       for _, _, k in levels]])
    else:
        clips_in, inter_in = clips, inter
    out = model(clips_in, inter_in, generator=generator, return_features=features)
    pred, feats = out if features else (out, None)
    pred = pred.mean(1)
    if with_repeat:
        pred, held_pred = pred[:b], pred[b:].view(len(levels), -1)
        feats = feats[:b * clips.shape[1]] if feats is not None else None
        # per base: its own score (drop 0; not with "held") and its held versions', ranked by the label drops
        own = [] if repeat_pairs == "held" else [pred[repeat_bases][None]]
        scores = torch.cat([*own, held_pred]).T.reshape(-1)
        drops = torch.tensor([0.0] * len(own) + [-d for _, d, _ in levels]).repeat(len(repeat_bases))
        bases = torch.arange(len(repeat_bases)).repeat_interleave(len(levels) + len(own))
        repeat_loss = grouped_quality_loss(scores, drops, bases, dataclasses.replace(
            loss_cfg, kind="margin", batch_weight=0.0))
    loss = quality_loss(pred, mos, loss_cfg) if groups is None else grouped_quality_loss(pred, mos, groups, loss_cfg)
    total = loss
    if with_texture:
        texture_loss = texture.loss(feats, clips.flatten(0, 1))
        total = loss + texture_weight * texture_loss
        if parts is not None:
            parts["texture"] = texture_loss.item()
    if with_fidelity:
        fidelity_loss = fidelity.loss(feats, clips.flatten(0, 1), references.flatten(0, 1))
        total = total + fidelity_weight * fidelity_loss
        if parts is not None:
            parts["fidelity"] = fidelity_loss.item()
    if with_condition:
        condition_loss = condition.loss(feats, conditions)
        total = total + condition_weight * condition_loss
        if parts is not None:
            parts["condition"] = condition_loss.item()
    if with_repeat:
        total = total + repeat_weight * repeat_loss
        if parts is not None:
            parts["repeat"] = repeat_loss.item()
    if parts is not None:
        parts["quality"] = loss.item()
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip is not None:
        heads = [h for h, on in ((texture, with_texture), (fidelity, with_fidelity), (condition, with_condition)) if on]
        params = [*model.parameters(), *(p for h in heads for p in h.parameters())]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return total.item()


def repeat_bases(conditions: Sequence[str | None], skip: Sequence[str], clips: int,
                 generator: torch.Generator) -> torch.Tensor:
    """The frame-repeat target's bases in a batch (`train_step`'s `repeat_bases`): the positions of up to `clips`
    videos, drawn by `generator`, among those whose condition (one per video, None where unknown) is not in
    `skip`, the conditions that repeat frames already. LongTensor (n,), n = min(clips, eligible)."""
    skip = set(skip)
    ok = torch.tensor([k for k, c in enumerate(conditions) if c not in skip], dtype=torch.long)
    return ok[torch.randperm(len(ok), generator=generator)[:clips]]


# Videos whose clips fit the read-outs' target standardisation (model/pretext.py): a sample across contents
# and conditions. One batch (2 contents) was the sample before; run N's first batch gave SSIM a standard
# deviation of 0.064 against 0.158 for run M's, which made its fidelity MSE 3.5x run M's (docs/training.md).
STANDARDISE_VIDEOS = 64


def fit_standardisation(dataset: ClipDataset, texture: TextureHead | None, fidelity: FidelityHead | None,
                        generator: torch.Generator, videos: int = STANDARDISE_VIDEOS) -> int:
    """Fits the read-outs' target standardisation (`fit`) on the clips of `videos` training videos of
    `dataset` drawn by `generator` (all when fewer); their clips are drawn by the dataset's own seed and salt.
    `dataset` must carry references when `fidelity` is given. Returns the number of videos read."""
    if texture is None and fidelity is None:
        return 0
    order = torch.randperm(len(dataset), generator=generator)[:videos].tolist()
    tex, fid = [], []
    for i in order:
        item = dataset[i]
        clips, reference = item[0], item[4] if dataset.with_reference else None
        if texture is not None:
            tex.append(texture.statistics(clips))
        if fidelity is not None:
            fid.append(fidelity.statistics(clips, reference))
    if texture is not None:
        texture.fit(torch.cat(tex))
    if fidelity is not None:
        fidelity.fit(torch.cat(fid))
    return len(order)


def train_loop(config: Mapping[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: one worker's share of the whole run (resumes by itself)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    configure_worker(config.get("log_level", logging.INFO))
    cfg = TrainConfig.from_dict(config["cfg"])
    recorded = TrainConfig.from_dict(config.get("recorded_cfg", config["cfg"]))  # paths as given, not as resolved
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
            gib = frames.reserve() / 2**30
            full = (f"; {len(frames.left_out)} not cached, the disk keeping {gib:.1f} GiB free"
                    if frames.left_out else "")
            log.info(f"train: frame cache {run.frame_cache}: {n} of {len(todo)} videos decoded{full} "
                  f"({time.perf_counter() - t_cache:.0f} s)")
    held = (HeldInter(config["spec"].build(so)[1].to(device), so, cfg.repeat_phase, frames)
            if cfg.repeat_weight > 0 and cfg.repeat_inter else None)
    train_ds = ClipDataset(config["train"], emb, sampling, sampling.train_clips, seed, "train", so, frames,
                           with_reference=cfg.fidelity_weight > 0)
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

    def training_head(name: str, build: Any) -> Any:
        """A training-only read-out, initialised from the run seed and learning at the head rate."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, name))
            head = build().to(device)
        optimizer.add_param_group({"name": name, "params": list(head.parameters()), "lr": cfg.head_lr,
                                   "weight_decay": cfg.weight_decay})
        return head

    dim, swin = vqa.cfg.intra_dim, vqa.cfg.swin
    texture = training_head("texture", lambda: TextureHead(dim, swin)) if cfg.texture_weight > 0 else None
    fidelity = training_head("fidelity", lambda: FidelityHead(dim, swin)) if cfg.fidelity_weight > 0 else None
    condition, condition_ids = None, {}
    if cfg.condition_weight > 0:
        condition_ids = {c: i for i, c in enumerate(sorted({r["condition"] for r in config["train"]}))}
        condition = training_head("condition", lambda: ConditionHead(dim, len(condition_ids)))
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
        if fidelity is not None:
            fidelity.load_state_dict(state["fidelity"])
        if condition is not None:
            condition.load_state_dict(state["condition"])
        start_epoch, step, history, best = state["epoch"] + 1, state["step"], state["history"], state["best"]
        if rank == 0:
            log.info(f"train: resumed after epoch {state['epoch'] + 1} (step {step})")
    elif texture is not None or fidelity is not None:
        # drawn from the run seed, not the rank: with a seed, every rank fits the same scale
        sample = ClipDataset(config["train"], emb, sampling, sampling.train_clips, seed, "standardise", so, frames,
                             with_reference=fidelity is not None)
        t_fit = time.perf_counter()
        n = fit_standardisation(sample, texture, fidelity, make_generator(derive_seed(seed, "standardise")))
        if rank == 0:
            def fmt(v: torch.Tensor) -> str:
                return "(" + ", ".join(f"{x:.3f}" for x in v.tolist()) + ")"
            fitted = "; ".join(f"{name} mean {fmt(h.mean)} std {fmt(h.std)}"
                               for name, h in (("texture", texture), ("fidelity", fidelity)) if h is not None)
            log.info(f"train: read-out targets standardised on {n} videos ({time.perf_counter() - t_fit:.0f} s): "
                     f"{fitted}")

    val_loader = None
    if config["val"] and rank == 0:
        val_ds = ClipDataset(config["val"], emb, sampling, cfg.val_clips or sampling.test_clips, seed, "val", so,
                             frames)
        val_loader = make_loader(val_ds, run.loader_workers, batch_size=1)

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
        # ... and a candidate for best.pt: a fine-tune that only makes things worse keeps its start.
        best = publish(out, so, {"raw": vqa, "ema": ema.module}, inter_model, record0, best, recorded, seed)
        history.append(record0)
        log.info("train: " + epoch_line(record0))

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
        loader = make_loader(train_ds, run.loader_workers, pin_memory=device.type == "cuda", **batching)
        torch.manual_seed(derive_seed(seed, "dropout", epoch, rank))  # dropout and drop-path, replayable
        vqa.train()
        losses: list[float] = []
        part_losses: dict[str, list[float]] = {}  # the auxiliary targets', per step
        for i, (clips, inter, mos, idx, *reference) in enumerate(loader):
            clips, inter = clips.to(device, non_blocking=True), inter.to(device, non_blocking=True)
            references = reference[0].to(device, non_blocking=True) if reference else None
            mos = mos.to(device=device, dtype=torch.float32)
            g = make_generator(derive_seed(seed, "guardian", epoch, i, rank))
            groups = (torch.tensor([group_ids[config["train"][j]["group"]] for j in idx.tolist()])
                      if cfg.group_column and world == 1 else None)
            conditions = (torch.tensor([condition_ids[config["train"][j]["condition"]] for j in idx.tolist()])
                          if condition is not None else None)
            bases = (repeat_bases([config["train"][j].get("condition") for j in idx.tolist()], cfg.repeat_skip,
                                  cfg.repeat_clips, make_generator(derive_seed(seed, "repeat", epoch, i, rank)))
                     if cfg.repeat_weight > 0 else None)
            held_inter = (held.for_bases([config["train"][j]["uri"] for j in idx[bases].tolist()], g)
                          if held is not None and bases is not None and len(bases) else None)
            parts: dict[str, float] = {}
            loss = train_step(model, clips, inter, mos, optimizer, cfg.loss, generator=g, groups=groups,
                              grad_clip=cfg.grad_clip, texture=texture, texture_weight=cfg.texture_weight,
                              fidelity=fidelity, fidelity_weight=cfg.fidelity_weight, references=references,
                              condition=condition, condition_weight=cfg.condition_weight, conditions=conditions,
                              repeat_weight=cfg.repeat_weight, repeat_levels=cfg.repeat_levels, repeat_bases=bases,
                              repeat_phase=cfg.repeat_phase, frame_interval=sampling.frame_interval,
                              repeat_inter=held_inter, repeat_pairs=cfg.repeat_pairs, parts=parts)
            for name in ("texture", "fidelity", "condition", "repeat"):
                if name in parts:
                    part_losses.setdefault(name, []).append(parts[name])
            scheduler.step()
            ema.update(vqa)
            step += 1
            losses.append(loss)
            if rank == 0 and ((i + 1) % run.progress_every == 0 or i + 1 == steps_per_epoch):
                rate = (time.perf_counter() - t0) / (i + 1)
                val_s = history[-1].get("val_s", 0.0) if history else 0.0
                left = (total - step) * rate + (cfg.epochs - epoch) * val_s  # steps, then validations
                log.info(f"train: epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps_per_epoch} "
                      f"loss {np.mean(losses[-run.progress_every:]):.4f} "
                      f"lr {scheduler.get_last_lr()[-1]:.2e} ({rate:.2f} s/step; {duration(left)} left)")
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                                  "train_s": time.perf_counter() - t0}
        for name, values in part_losses.items():
            record[f"train_{name}_loss"] = float(np.mean(values))
        validate(record)
        if rank == 0:
            best = publish(out, so, {"raw": vqa, "ema": ema.module}, inter_model, record, best, recorded, seed)
            history.append(record)
            write_history(out, so, history, best, recorded, seed)
            log.info("train: " + epoch_line(record))
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                torch.save({"epoch": epoch, "step": step, "model": vqa.state_dict(), "ema": ema.state_dict(),
                            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "history": history, "best": best,
                            **({"texture": texture.state_dict()} if texture is not None else {}),
                            **({"fidelity": fidelity.state_dict()} if fidelity is not None else {}),
                            **({"condition": condition.state_dict()} if condition is not None else {})},
                           os.path.join(d, STATE_FILE))
            ray.train.report({k: v for k, v in record.items() if v is not None},
                             checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)
