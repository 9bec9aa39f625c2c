"""Stage 1, `extract-inter`: the inter-embedding cache (docs/design.md §2.2, §4).

`InterExtractor` is the stage on its own (`securevqa extract-inter`); the score job computes missing
embeddings in the same pass as its scores (`scoring.Scorer`), so a video is decoded once. `inter_row`
and `embed` are what both share; `InterCache` reads embeddings by key (training).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from model import InterEmbedder, SamplingConfig, make_generator
from model.device import to_device
from model.rng import derive_seed
from pipeline.io.table import KeyedTable

from .batching import Prepared, forward_grouped, open_video, prepared_frame, video_facts, videos_per_forward, worker_label
from .driver import StageSummary, failure, keyed_manifest, run
from .options import ModelSpec, RunOptions
from .prepare import decode_prepared, inter_input, prepare_video
from .rows import IDENTITY_COLUMNS, STATUS_COLUMNS, TIMING_COLUMNS, VIDEO_COLUMNS, row_schema
from .stage import Stage

INTER_SCHEMA = row_schema(
    IDENTITY_COLUMNS,
    [("inter_version", pa.string()), ("embedding", pa.list_(pa.float32())), ("segments", pa.int32())],
    STATUS_COLUMNS, VIDEO_COLUMNS, TIMING_COLUMNS,
)
# The columns of a cached embedding a reader needs.
CACHED_COLUMNS = ("key", "embedding", "segments", "status", "error", "error_code")


def embed(inter: InterEmbedder, chunk: list[Prepared], device: torch.device) -> list[torch.Tensor]:
    """(segments, dim) float32 embeddings of prepared videos (`Prepared.inputs` a PreparedVideo): the uint8
    frames go to the device as they are, the segments are gathered and converted there."""
    segments = torch.stack([inter_input(to_device(torch.from_numpy(p.inputs.inter_frames), device),
                                        to_device(torch.from_numpy(p.inputs.inter_index), device)) for p in chunk])
    with torch.inference_mode():
        return list(inter(segments, generator=[p.generator for p in chunk]).float().cpu())


def embed_all(inter: InterEmbedder, prepared: list[Prepared], videos: int, device: torch.device) -> None:
    """Fill each prepared video's inter row (`Prepared.row`) with its embedding or its failure."""
    for p, (emb, seconds) in zip(prepared, forward_grouped(prepared, videos, lambda c: embed(inter, c, device))):
        if isinstance(emb, Exception):
            p.row.update(**failure(emb), model_s=seconds)
        else:
            p.row.update(embedding=emb.flatten().numpy().astype(np.float32), segments=emb.shape[0], model_s=seconds)


class InterExtractor(Stage):
    """Stage 1 on its own: the preparation decodes and resizes the inter frames (uint8), the actor embeds
    them with the frozen fast pathway; the embedding (segments x dim, flattened) is the row's `embedding`."""

    name = "extract-inter"
    schema = INTER_SCHEMA
    separate_preparation = True

    def __init__(self, spec: ModelSpec, opts: RunOptions, inter_version: str,
                 sampling: SamplingConfig | None = None) -> None:
        super().__init__(opts)
        self.spec, self.version = spec, inter_version
        self.sampling = sampling or spec.build(resolve_auto=False)[0].cfg.sampling

    def setup(self) -> None:
        _, self.inter = self.spec.build(self.opts.storage_options)
        self.device = next(self.inter.parameters()).device
        self.worker = f"{worker_label(self.device)} precision=inter:{self.inter.precision}"
        self.forward_videos = videos_per_forward(self.opts, self.device)

    def prepare(self, batch: pd.DataFrame) -> pd.DataFrame:
        def one(r: Any) -> tuple[dict[str, Any], Any, None, None]:
            row = self.new_row(r, inter_version=self.version, decode_s=0.0, model_s=0.0)
            t0 = time.perf_counter()
            video = None
            try:
                with open_video(r.uri, self.opts.storage_options, self.opts.stream) as reader:
                    try:
                        video = prepare_video(reader, self.sampling, inter=True, clips=0, generator=None)
                    finally:  # a video that fails while being read still says what it is
                        row.update(video_facts(reader))
            except Exception as exc:  # one bad video never costs another its row
                row.update(**failure(exc))
            row["decode_s"] = time.perf_counter() - t0
            return row, video, None, None

        return prepared_frame(batch, one)

    def process(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        rows, prepared = [], []
        for record in batch.to_dict("records"):
            row, video, _, _ = decode_prepared(record)
            row["worker"] = f"{self.worker} {row.get('worker') or 'prep=local'}"
            rows.append(row)
            if video is not None:
                prepared.append(Prepared(row, video, None, make_generator(derive_seed(self.opts.seed, row["key"]))))
        embed_all(self.inter, prepared, self.forward_videos, self.device)
        return rows


def inter_row(score_row: Mapping[str, Any], inter_key: str, inter_version: str) -> dict[str, Any]:
    """The stage-1 row of a video computed by the score job: the score row's identity, status and video
    facts under the inter key."""
    row = {name: score_row.get(name) for name in INTER_SCHEMA.names if name in score_row}
    row.update(key=inter_key, inter_version=inter_version, embedding=None, segments=None, model_s=0.0)
    return row


def extract_inter(manifest: pd.DataFrame, cache_uri: str, spec: ModelSpec, opts: RunOptions,
                  versions: dict[str, Any] | None = None) -> StageSummary:
    """Stage 1: make sure every video of `manifest` has a committed inter embedding in the cache."""
    versions = versions or spec.versions(opts.storage_options)
    rows = keyed_manifest(manifest, versions["inter"], opts.storage_options, extra=opts.key_extra())
    return run(InterExtractor(spec, opts, versions["inter"], versions.get("sampling")), rows, cache_uri)


class InterCache:
    """Read side of the stage-1 cache: the committed rows of a set of keys (`lookup`)."""

    def __init__(self, cache_uri: str, storage_options: Mapping[str, Any]) -> None:
        self.table = KeyedTable(cache_uri, storage_options)

    def lookup(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """key -> row (CACHED_COLUMNS) for the keys the cache holds."""
        if not self.table.exists():
            return {}
        return {r["key"]: r for r in self.table.rows_for(keys, CACHED_COLUMNS).to_pylist()}
