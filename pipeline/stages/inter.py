"""Stage 1, `extract-inter`: the inter-embedding cache (write side `InterExtractor`, read side `InterCache`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from model import make_generator
from model.device import to_device
from model.rng import derive_seed
from pipeline.io.storage import ShardStore
from pipeline.stages.inference import inter_segments

from .batching import Prepared, forward_grouped, open_video, prepare_all, video_facts, videos_per_forward, worker_label
from .driver import (
    StageSummary,
    common_fields,
    failure,
    keyed_manifest,
    pending_rows,
    run_stage,
    shard_table,
    summary_frame,
)
from .options import ModelSpec, RunOptions

# ----------------------------------------------------------------------------- stage 1

INTER_SCHEMA = pa.schema([
    ("key", pa.string()), ("video_id", pa.string()), ("uri", pa.string()), ("content_key", pa.string()),
    ("inter_version", pa.string()), ("embedding", pa.list_(pa.float32())), ("segments", pa.int32()),
    ("status", pa.string()), ("error", pa.string()), ("error_code", pa.string()), ("num_frames", pa.int64()), ("width", pa.int32()),
    ("height", pa.int32()), ("fps", pa.float64()), ("stream", pa.int32()), ("read_notes", pa.string()),
    ("decode_s", pa.float64()), ("model_s", pa.float64()), ("created_at", pa.float64()), ("worker", pa.string()),
])


class InterExtractor:
    """Ray actor for stage 1: decode the 16 inter segments, embed them, commit a shard per batch."""

    schema = INTER_SCHEMA

    def __init__(self, spec: ModelSpec, cache_uri: str, opts: RunOptions, inter_version: str) -> None:
        torch.set_num_threads(opts.threads or max(1, int(opts.cpus_per_actor)))
        _, self.inter = spec.build(opts.storage_options)
        self.device = next(self.inter.parameters()).device
        self.worker = worker_label(self.device)
        self.forward_videos = videos_per_forward(opts, self.device)
        self.store = ShardStore(cache_uri, opts.storage_options)
        self.opts, self.version = opts, inter_version

    def prepare(self, r: Any) -> tuple[dict[str, Any], Prepared | None]:
        row = {**common_fields(r), "inter_version": self.version, "embedding": None, "segments": None,
               "status": "ok", "error": None, "error_code": None, "num_frames": None, "width": None, "height": None, "fps": None, "stream": None, "read_notes": None,
               "decode_s": 0.0, "model_s": 0.0, "created_at": time.time(), "worker": self.worker}
        t0 = time.perf_counter()
        try:
            with open_video(r.uri, self.opts.storage_options, self.opts.stream) as video:
                try:
                    segments = inter_segments(video, self.inter)
                finally:  # a video that fails while being read still says what it is
                    row.update(video_facts(video))
        except Exception as exc:  # one bad video never costs another its row
            row.update(**failure(exc), decode_s=time.perf_counter() - t0)
            return row, None
        row["decode_s"] = time.perf_counter() - t0
        return row, Prepared(row, segments, None, make_generator(derive_seed(self.opts.seed, r.key)))

    def forward(self, chunk: list[Prepared]) -> list[torch.Tensor]:
        segments = to_device(torch.stack([p.inputs for p in chunk]), self.device)
        with torch.inference_mode():
            return list(self.inter(segments, generator=[p.generator for p in chunk]).float().cpu())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows, prepared = prepare_all(self.prepare, batch)
        for p, (emb, seconds) in zip(prepared, forward_grouped(prepared, self.forward_videos, self.forward)):
            if isinstance(emb, Exception):
                p.row.update(**failure(emb), model_s=seconds)
            else:
                p.row.update(embedding=emb.flatten().numpy().astype(np.float32), segments=emb.shape[0],
                             model_s=seconds)
        self.store.commit(None, shard_table(rows, INTER_SCHEMA), [r["key"] for r in rows])
        return summary_frame(rows)


def extract_inter(manifest: pd.DataFrame, cache_uri: str, spec: ModelSpec, opts: RunOptions,
                  versions: dict[str, str] | None = None) -> StageSummary:
    """Stage 1: make sure every video of `manifest` has a committed inter embedding in the cache."""
    t0 = time.perf_counter()
    versions = versions or spec.versions(opts.storage_options)
    rows = keyed_manifest(manifest, versions["inter"], opts.storage_options, extra=opts.key_extra())
    store = ShardStore(cache_uri, opts.storage_options)
    todo, skipped = pending_rows(rows, store, opts.retry_errors)
    summary = StageSummary("extract-inter", videos=len(rows), skipped=skipped, keys=rows["key"].tolist())
    run_stage(todo, InterExtractor,
         {"spec": spec, "cache_uri": cache_uri, "opts": opts, "inter_version": versions["inter"]}, opts, summary, store)
    summary.seconds = time.perf_counter() - t0
    return summary


class InterCache:
    """Read side of the stage-1 cache: embeddings for a set of keys, reading only the shards holding them."""

    def __init__(self, cache_uri: str, storage_options: Mapping[str, Any]) -> None:
        self.store = ShardStore(cache_uri, storage_options)
        self._where: dict[str, str] = {}
        for m in self.store.manifests():  # oldest first: a newer shard wins, as in read_table
            for k in m["keys"]:
                self._where[k] = m["file"]

    def lookup(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted: dict[str, list[str]] = {}
        for k in keys:
            if k in self._where:
                wanted.setdefault(self._where[k], []).append(k)
        out: dict[str, dict[str, Any]] = {}
        for file, ks in wanted.items():
            path = self.store._p(*file.split("/"))
            t = pq.read_table(path, filesystem=self.store.fs)  # shards of older versions lack error_code
            t = t.select([c for c in ("key", "embedding", "segments", "status", "error", "error_code")
                          if c in t.column_names])
            t = t.filter(pc.is_in(t["key"], pa.array(ks)))
            for row in t.to_pylist():
                out[row["key"]] = row
        return out
