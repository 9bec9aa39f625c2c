"""Stage 2, `score`: intra clips and fragments, Swin + fusion + head with the cached inter embeddings."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from model import make_generator
from model.device import to_device
from model.rng import derive_seed
from pipeline.io.storage import ShardStore, make_key
from pipeline.stages.inference import intra_clips

from .batching import Prepared, forward_grouped, open_video, prepare_all, video_facts, videos_per_forward, worker_label
from .driver import (
    NoInterEmbedding,
    StageSummary,
    common_fields,
    failure,
    keyed_manifest,
    pending_rows,
    run_stage,
    shard_table,
    summary_frame,
)
from .inter import InterCache, extract_inter
from .options import ModelSpec, RunOptions

# ----------------------------------------------------------------------------- stage 2

SCORE_SCHEMA = pa.schema([
    ("key", pa.string()), ("video_id", pa.string()), ("uri", pa.string()), ("content_key", pa.string()),
    ("mos", pa.float64()), ("dataset", pa.string()), ("score", pa.float64()), ("clip_scores", pa.list_(pa.float64())),
    ("status", pa.string()), ("error", pa.string()), ("error_code", pa.string()), ("model_version", pa.string()), ("inter_key", pa.string()),
    ("clips", pa.int32()), ("seeded", pa.bool_()), ("num_frames", pa.int64()), ("width", pa.int32()),
    ("height", pa.int32()), ("fps", pa.float64()), ("stream", pa.int32()), ("read_notes", pa.string()),
    ("decode_s", pa.float64()), ("model_s", pa.float64()), ("created_at", pa.float64()), ("worker", pa.string()),
])


class Scorer:
    """Ray actor for stage 2: decode intra clips, fragments; Swin + fusion + head with cached inter embeddings."""

    schema = SCORE_SCHEMA

    def __init__(self, spec: ModelSpec, cache_uri: str, output_uri: str, opts: RunOptions, score_version: str) -> None:
        torch.set_num_threads(opts.threads or max(1, int(opts.cpus_per_actor)))
        self.vqa, _ = spec.build(opts.storage_options)
        self.device = next(self.vqa.parameters()).device
        self.worker = worker_label(self.device)
        self.forward_videos = videos_per_forward(opts, self.device)
        self.cache = InterCache(cache_uri, opts.storage_options)
        self.store = ShardStore(output_uri, opts.storage_options)
        self.opts, self.version = opts, score_version
        self.clips = opts.clips or self.vqa.cfg.sampling.test_clips

    def prepare(self, r: Any, cached: dict[str, Any] | None) -> tuple[dict[str, Any], Prepared | None]:
        mos = float(r.mos) if getattr(r, "mos", None) is not None and not pd.isna(r.mos) else None
        dataset = getattr(r, "dataset", None)
        row = {**common_fields(r), "mos": mos, "dataset": None if pd.isna(dataset) else str(dataset),
               "score": None, "clip_scores": None, "status": "ok", "error": None, "error_code": None, "model_version": self.version,
               "inter_key": r.inter_key, "clips": self.clips, "seeded": self.opts.seed is not None,
               "num_frames": None, "width": None, "height": None, "fps": None, "stream": None, "read_notes": None, "decode_s": 0.0, "model_s": 0.0,
               "created_at": time.time(), "worker": self.worker}
        t0 = time.perf_counter()
        try:
            if cached is None:
                raise NoInterEmbedding("no inter embedding in the cache for this video version (run extract-inter)")
            if cached["status"] != "ok":
                raise NoInterEmbedding(cached["error"] or "inter embedding failed",
                                       cached.get("error_code") or "no_inter_embedding")
            emb = torch.tensor(cached["embedding"], dtype=torch.float32).view(cached["segments"], -1)
            g = make_generator(derive_seed(self.opts.seed, r.key))
            with open_video(r.uri, self.opts.storage_options, self.opts.stream) as video:
                try:
                    clips = intra_clips(video, self.vqa.cfg.sampling, self.clips, g)
                finally:  # a video that fails while being read still says what it is
                    row.update(video_facts(video))
        except Exception as exc:
            row.update(**failure(exc), decode_s=time.perf_counter() - t0)
            return row, None
        row["decode_s"] = time.perf_counter() - t0
        return row, Prepared(row, clips, emb, g)

    def forward(self, chunk: list[Prepared]) -> list[torch.Tensor]:
        clips = to_device(torch.stack([p.inputs for p in chunk]), self.device)  # uint8 over the bus
        inter = to_device(torch.stack([p.extra for p in chunk]), self.device)  # type: ignore[misc]
        with torch.inference_mode():
            return list(self.vqa(clips, inter, generator=[p.generator for p in chunk]).float().cpu())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        cached = self.cache.lookup(batch["inter_key"])
        rows, prepared = prepare_all(lambda r: self.prepare(r, cached.get(r.inter_key)), batch)
        for p, (per_clip, seconds) in zip(prepared, forward_grouped(prepared, self.forward_videos, self.forward)):
            if isinstance(per_clip, Exception):
                p.row.update(**failure(per_clip), model_s=seconds)
            else:
                p.row.update(score=float(per_clip.mean()), clip_scores=[float(c) for c in per_clip], model_s=seconds)
        self.store.commit(None, shard_table(rows, SCORE_SCHEMA), [r["key"] for r in rows])
        return summary_frame(rows)


def score(manifest: pd.DataFrame, cache_uri: str, output_uri: str, spec: ModelSpec, opts: RunOptions,
          *, compute_missing_inter: bool = True) -> tuple[StageSummary, StageSummary | None]:
    """Stage 2: score every video of `manifest` into `output_uri`, filling the inter cache on the way
    (unless `compute_missing_inter` is False: videos without an embedding then get status error)."""
    t0 = time.perf_counter()
    versions = spec.versions(opts.storage_options)
    inter_summary = None
    if "content_key" not in manifest:
        manifest = keyed_manifest(manifest, versions["inter"], opts.storage_options,
                                  extra=opts.key_extra()).drop(columns="key")
    if compute_missing_inter:
        inter_summary = extract_inter(manifest, cache_uri, spec, opts, versions)
        t0 = time.perf_counter()  # the score line reports stage 2 alone
    clips = opts.clips or versions["test_clips"]
    rows = keyed_manifest(manifest, versions["score"], opts.storage_options, extra=(clips, *opts.key_extra()))
    rows["inter_key"] = [make_key(u, c, versions["inter"], *opts.key_extra())
                         for u, c in zip(rows["uri"], rows["content_key"])]
    store = ShardStore(output_uri, opts.storage_options)
    todo, skipped = pending_rows(rows, store, opts.retry_errors)
    summary = StageSummary("score", videos=len(rows), skipped=skipped, keys=rows["key"].tolist())
    run_stage(todo, Scorer, {"spec": spec, "cache_uri": cache_uri, "output_uri": output_uri, "opts": opts,
                        "score_version": versions["score"]}, opts, summary, store)
    summary.seconds = time.perf_counter() - t0
    return summary, inter_summary
