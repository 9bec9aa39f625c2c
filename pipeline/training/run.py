"""Driver side of training: stage 1 for the labelled videos, then Ray Train's `TorchTrainer`; the small-dataset protocol."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from model import make_generator, save_checkpoint
from model.optim import TINY_RUN_STEPS
from model.rng import derive_seed
from model.securevqa import guard_per_video
from pipeline.io.storage import filesystem, is_local, join_uri, write_bytes
from pipeline.io.table import KeyedTable
from pipeline.log import driver_level
from pipeline.stages.batching import open_video
from pipeline.stages.driver import keyed_manifest
from pipeline.stages.inference import inter_segments
from pipeline.stages.inter import extract_inter
from pipeline.stages.options import ModelSpec, RunOptions

from .config import TrainConfig, TrainRun
from .history import read_history, recorded_seed, write_json
from .loop import train_loop

log = logging.getLogger("securevqa.training")


# ----------------------------------------------------------------------------- the driver

def _labelled(df: pd.DataFrame, what: str) -> pd.DataFrame:
    if "mos" not in df or df["mos"].isna().any():
        missing = df["video_id"][df["mos"].isna()].head(5).tolist() if "mos" in df else "all"
        raise ValueError(f"every {what} video needs a MOS label; missing for: {missing}")
    return df


def _inter_rows(df: pd.DataFrame, spec: ModelSpec, versions: Mapping[str, Any], cache_uri: str,
                so: Mapping[str, Any], group_column: str | None = None,
                reference: bool = False, condition_column: str | None = None) -> list[dict[str, Any]]:
    """Rows with their inter-cache key; videos whose stage 1 failed are dropped, and named."""
    keyed = keyed_manifest(df, versions["inter"], so)
    status = KeyedTable(cache_uri, so).rows_for(keyed["key"], columns=["key", "status", "error"]).to_pandas()
    status = status.set_index("key")
    ok = keyed["key"].map(lambda k: k in status.index and status.at[k, "status"] == "ok")
    for r in keyed[~ok].itertuples(index=False):
        err = status.at[r.key, "error"] if r.key in status.index else "not in the cache"
        log.warning("left out of training: %s (%s): %s", r.video_id, r.uri, err)
    keyed = keyed[ok]
    group = keyed[group_column].astype(str) if group_column else pd.Series("", index=keyed.index)
    rows = [{"video_id": str(r.video_id), "uri": str(r.uri), "mos": float(r.mos), "inter_key": r.key, "group": g}
            for r, g in zip(keyed.itertuples(index=False), group)]
    if reference:  # the fidelity target's clean versions (TrainConfig.fidelity_weight)
        for row, ref in zip(rows, keyed["reference"]):
            row["reference"] = _absolute(str(ref)) if isinstance(ref, str) and ref else ""
    if condition_column:  # the condition target's classes (TrainConfig.condition_weight)
        for row, c in zip(rows, keyed[condition_column].astype(str)):
            row["condition"] = c
    return rows


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
    given = cfg  # what the run records (history.json, checkpoint metadata): the paths as the caller gave them
    # Ray Train workers do not run in the driver's working directory: a relative local path would not be found there.
    cfg = dataclasses.replace(cfg, **{name: _absolute(path) for name in ("init_checkpoint", "intra_pretrained",
                                                                          "inter_checkpoint")
                                      if (path := getattr(cfg, name))})
    so = run.storage_options
    seed = cfg.seed if cfg.seed is not None else recorded_seed(join_uri(output, "history.json"), so)
    _labelled(manifest, "training")
    if val is not None:
        _labelled(val, "validation")
    _check_schedule(cfg, len(manifest))
    spec = ModelSpec(preset=cfg.preset, checkpoint=cfg.init_checkpoint, inter_checkpoint=cfg.inter_checkpoint,
                     guardian=cfg.guardian)
    if cfg.calibrate_inter:
        spec = dataclasses.replace(spec, inter_checkpoint=calibrate_inter(
            manifest, spec, join_uri(output, "inter_calibrated.pt"), cfg.calibrate_inter, seed, so,
            difference_stem=cfg.difference_stem))
    cache_uri = _absolute(run.cache_uri or join_uri(output, "inter"))
    everything = pd.concat([manifest, val]) if val is not None else manifest
    everything = everything.drop_duplicates("uri")
    versions = spec.versions(so)
    opts = RunOptions(storage_options=dict(so), actors=1, cpus_per_actor=1, threads=run.threads, seed=seed,
                      gpus_per_actor=1.0 if run.use_gpu else None)
    log.info(extract_inter(everything, cache_uri, spec, opts, versions).line())
    if cfg.group_column and cfg.group_column not in manifest:
        raise ValueError(f"--group-by {cfg.group_column!r}: no such column in the training manifest")
    if cfg.fidelity_weight > 0 and "reference" not in manifest:
        raise ValueError("the fidelity target (fidelity_weight > 0) needs a `reference` column in the training "
                         "manifest: the uri of each video's clean, frame-aligned version")
    condition = cfg.condition_column if cfg.condition_weight > 0 or (cfg.repeat_weight > 0 and cfg.repeat_skip) else None
    if condition and condition not in manifest:
        target = "condition target (condition_weight > 0)" if cfg.condition_weight > 0 else \
            "frame-repeat target (repeat_weight > 0, with repeat_skip)"
        raise ValueError(f"the {target} needs a {condition!r} column in the training manifest: each video's "
                         "processing condition")
    train_rows = _inter_rows(manifest, spec, versions, cache_uri, so, cfg.group_column, cfg.fidelity_weight > 0,
                             condition)
    val_group = cfg.group_column if val is not None and cfg.group_column in val else None
    val_rows = _inter_rows(val, spec, versions, cache_uri, so, val_group) if val is not None else []
    log.info(f"train: {len(train_rows)} training and {len(val_rows)} validation videos; seed {seed}; "
          f"{run.workers} worker(s); output {output}")
    use_gpu = run.use_gpu if run.use_gpu is not None else bool(ray.cluster_resources().get("GPU", 0))
    config = {"cfg": cfg.to_dict(), "recorded_cfg": given.to_dict(), "run": dataclasses.asdict(run), "seed": seed, "output": output,
              "cache_uri": cache_uri, "train": train_rows, "val": val_rows, "spec": spec, "log_level": driver_level()}
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


def _check_schedule(cfg: TrainConfig, videos: int) -> None:
    """Refuse a warm-up as long as the run before stage 1, not after it (model.optim.warmup_cosine's rule:
    runs shorter than TINY_RUN_STEPS, smoke tests, shorten their warm-up instead)."""
    total = cfg.epochs * (videos // max(2, cfg.batch_size))
    if cfg.warmup_epochs >= cfg.epochs and total >= TINY_RUN_STEPS:
        raise ValueError(f"the warm-up ({cfg.warmup_epochs} epochs) must be shorter than the run ({cfg.epochs} "
                         f"epochs): lower --warmup-epochs or raise --epochs")


def calibrate_inter(manifest: pd.DataFrame, spec: ModelSpec, uri: str, videos: int, seed: int,
                    storage_options: Mapping[str, Any] | None = None, *, difference_stem: int = 0) -> str:
    """Estimate the frozen fast pathway's BatchNorm statistics on the inter segments of `videos` videos of
    `manifest` (drawn with `seed`) and save the model there (`uri`, project checkpoint format, read back
    with --inter-checkpoint); returns `uri`. Idempotent: an existing file is reused, so a resumed run
    keeps the same inter weights, hence the same stage-1 cache keys. `difference_stem`: make that many stem
    channels temporal-difference filters first (model.slowfast.FastPathway.difference_stem_; 0: none).
    """
    so = storage_options or {}
    fs, path = filesystem(uri, so)
    if fs.exists(path):
        return uri
    vqa, inter = spec.build(so)
    if difference_stem:
        inter.fastpath.difference_stem_(channels=difference_stem)
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
                                                    "segments": seen, "difference_stem": difference_stem}})
    log.info(f"train: fast-pathway BatchNorm statistics from {len(rows)} training videos ({seen} segments, "
          f"{time.perf_counter() - t0:.0f} s) -> {uri}")
    return uri


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
    from pipeline.training.datasets import random_splits

    output = _absolute(output)
    so = run.storage_options
    seed = cfg.seed if cfg.seed is not None else recorded_seed(join_uri(output, "protocol.json"), so)
    write_json(join_uri(output, "protocol.json"), {"seed": seed, "n_splits": n_splits,
                                                  "train_fraction": train_fraction}, so)
    manifest = _labelled(manifest.reset_index(drop=True), "training")
    per_split = []
    for k, (tr, te) in enumerate(random_splits(len(manifest), n_splits=n_splits, train_fraction=train_fraction,
                                               seed=seed)):
        log.info(f"train: split {k + 1}/{n_splits}: {len(tr)} training, {len(te)} held-out videos")
        h = train(manifest.iloc[tr], join_uri(output, f"split_{k:02d}"),
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
    write_json(join_uri(output, "splits.json"), summary, so)
    write_bytes(join_uri(output, "splits.md"), md.encode(), so)
    best = stats.get("val_ema_srcc") or stats.get("val_raw_srcc") or {"mean": float("nan"), "std": float("nan")}
    summary["line"] = (f"train: {n_splits} splits: held-out SRCC {best['mean']:.4f} ± {best['std']:.4f} "
                       f"(EMA weights); table in {join_uri(output, 'splits.md')}")
    return summary
