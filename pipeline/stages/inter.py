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
from pipeline.io.table import KeyedTable
from pipeline.stages.inference import inter_segments

from .batching import Prepared, forward_grouped, open_video, prepare_all, video_facts, videos_per_forward, worker_label
from .driver import StageSummary, failure, keyed_manifest, run
from .options import ModelSpec, RunOptions
from .rows import IDENTITY_COLUMNS, STATUS_COLUMNS, TIMING_COLUMNS, VIDEO_COLUMNS, row_schema
from .stage import Stage

INTER_SCHEMA = row_schema(
    IDENTITY_COLUMNS,
    [("inter_version", pa.string()), ("embedding", pa.list_(pa.float32())), ("segments", pa.int32())],
    STATUS_COLUMNS, VIDEO_COLUMNS, TIMING_COLUMNS,
)


class InterExtractor(Stage):
    """Stage 1 (docs/design.md §2.2, §4): decode the inter segments of each video and embed them with the
    frozen fast pathway; the embedding (segments x dim, flattened) is the row's `embedding`."""

    name = "extract-inter"
    schema = INTER_SCHEMA

    def __init__(self, spec: ModelSpec, opts: RunOptions, inter_version: str) -> None:
        super().__init__(opts)
        self.spec, self.version = spec, inter_version

    def setup(self) -> None:
        _, self.inter = self.spec.build(self.opts.storage_options)
        self.device = next(self.inter.parameters()).device
        self.worker = worker_label(self.device)
        self.forward_videos = videos_per_forward(self.opts, self.device)

    def prepare(self, r: Any) -> tuple[dict[str, Any], Prepared | None]:
        row = self.new_row(r, inter_version=self.version, decode_s=0.0, model_s=0.0, worker=self.worker)
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

    def process(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        rows, prepared = prepare_all(self.prepare, batch)
        for p, (emb, seconds) in zip(prepared, forward_grouped(prepared, self.forward_videos, self.forward)):
            if isinstance(emb, Exception):
                p.row.update(**failure(emb), model_s=seconds)
            else:
                p.row.update(embedding=emb.flatten().numpy().astype(np.float32), segments=emb.shape[0],
                             model_s=seconds)
        return rows


def extract_inter(manifest: pd.DataFrame, cache_uri: str, spec: ModelSpec, opts: RunOptions,
                  versions: dict[str, str] | None = None) -> StageSummary:
    """Stage 1: make sure every video of `manifest` has a committed inter embedding in the cache."""
    versions = versions or spec.versions(opts.storage_options)
    rows = keyed_manifest(manifest, versions["inter"], opts.storage_options, extra=opts.key_extra())
    return run(InterExtractor(spec, opts, versions["inter"]), rows, cache_uri)


class InterCache:
    """Read side of the stage-1 cache: embeddings for a set of keys, reading only the data files holding
    them (an index of key -> data file of the table's version when the cache is opened, built once)."""

    COLUMNS = ("key", "embedding", "segments", "status", "error", "error_code")

    def __init__(self, cache_uri: str, storage_options: Mapping[str, Any]) -> None:
        self.table = KeyedTable(cache_uri, storage_options)
        if not self.table.exists():
            self._files: dict[str, Any] = {}
            self._where: dict[str, str] = {}
            return
        self._dataset = self.table.dataset()
        self._files = {f.path: f for f in self._dataset.get_fragments()}
        index = self._dataset.to_table(columns=["key", "__filename"])
        self._where = dict(zip(index.column("key").to_pylist(), index.column("__filename").to_pylist()))

    def lookup(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        import pyarrow.dataset as pads

        wanted: dict[str, list[str]] = {}
        for k in keys:
            if k in self._where:
                wanted.setdefault(self._where[k], []).append(k)
        out: dict[str, dict[str, Any]] = {}
        for file, ks in wanted.items():
            t = self._files[file].to_table(schema=self._dataset.schema, columns=list(self.COLUMNS),
                                           filter=pads.field("key").isin(pa.array(ks)))
            for row in t.to_pylist():
                out[row["key"]] = row
        return out
