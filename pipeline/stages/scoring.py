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
from pipeline.io.storage import make_key
from pipeline.stages.inference import intra_clips

from .batching import Prepared, forward_grouped, open_video, prepare_all, video_facts, videos_per_forward, worker_label
from .driver import NoInterEmbedding, StageSummary, failure, keyed_manifest, run
from .inter import InterCache, extract_inter
from .options import ModelSpec, RunOptions
from .rows import IDENTITY_COLUMNS, STATUS_COLUMNS, TIMING_COLUMNS, VIDEO_COLUMNS, row_schema
from .stage import Stage

SCORE_SCHEMA = row_schema(
    IDENTITY_COLUMNS,
    [("mos", pa.float64()), ("dataset", pa.string()), ("score", pa.float64()), ("clip_scores", pa.list_(pa.float64()))],
    STATUS_COLUMNS,
    [("model_version", pa.string()), ("inter_key", pa.string()), ("clips", pa.int32()), ("seeded", pa.bool_())],
    VIDEO_COLUMNS, TIMING_COLUMNS,
)


class Scorer(Stage):
    """Stage 2 (docs/design.md §2.1, §2.3, §4): decode the intra clips, fragments and guardian maps; Swin,
    fusion with the cached inter embedding and the head. `score` is the mean of `clip_scores`."""

    name = "score"
    schema = SCORE_SCHEMA

    def __init__(self, spec: ModelSpec, cache_uri: str, opts: RunOptions, score_version: str) -> None:
        super().__init__(opts)
        self.spec, self.cache_uri, self.version = spec, cache_uri, score_version

    def setup(self) -> None:
        self.vqa, _ = self.spec.build(self.opts.storage_options)
        self.device = next(self.vqa.parameters()).device
        self.worker = worker_label(self.device)
        self.forward_videos = videos_per_forward(self.opts, self.device)
        self.cache = InterCache(self.cache_uri, self.opts.storage_options)
        self.clips = self.opts.clips or self.vqa.cfg.sampling.test_clips

    def prepare(self, r: Any, cached: dict[str, Any] | None) -> tuple[dict[str, Any], Prepared | None]:
        mos = float(r.mos) if getattr(r, "mos", None) is not None and not pd.isna(r.mos) else None
        dataset = getattr(r, "dataset", None)
        row = self.new_row(r, mos=mos, dataset=None if pd.isna(dataset) else str(dataset), model_version=self.version,
                           inter_key=r.inter_key, clips=self.clips, seeded=self.opts.seed is not None,
                           decode_s=0.0, model_s=0.0, worker=self.worker)
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

    def process(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        cached = self.cache.lookup(batch["inter_key"])
        rows, prepared = prepare_all(lambda r: self.prepare(r, cached.get(r.inter_key)), batch)
        for p, (per_clip, seconds) in zip(prepared, forward_grouped(prepared, self.forward_videos, self.forward)):
            if isinstance(per_clip, Exception):
                p.row.update(**failure(per_clip), model_s=seconds)
            else:
                p.row.update(score=float(per_clip.mean()), clip_scores=[float(c) for c in per_clip], model_s=seconds)
        return rows


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
    keying_s = time.perf_counter() - t0
    summary = run(Scorer(spec, cache_uri, opts, versions["score"]), rows, output_uri)
    summary.seconds += keying_s
    return summary, inter_summary
