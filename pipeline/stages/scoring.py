"""Stage 2, `score`: intra clips and fragments, Swin + fusion + head with the inter embeddings.

The preparation (CPU tasks) decodes each video once: the intra clips always, and the inter frames too
when the cache has no embedding for the video yet (a cold cache), so both branches come from one pass;
a cached embedding is read in the same task from the row group the driver located for its key
(`pipeline.io.keyed_read`). The actors run the fast pathway where needed (committing those embeddings to the
cache first), then the Swin, fusion and head, and commit the scores.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from model import SamplingConfig, make_generator
from model.device import to_device
from model.rng import derive_seed
from pipeline.io.storage import make_key
from pipeline.io.keyed_read import locate, read_located
from pipeline.io.table import KeyedTable

from .batching import Prepared, forward_grouped, open_video, prepared_frame, video_facts, videos_per_forward, worker_label
from .driver import NoInterEmbedding, StageSummary, failure, keyed_manifest, run
from .inter import CACHED_COLUMNS, INTER_SCHEMA, embed_all, inter_row
from .options import ModelSpec, RunOptions
from .precision import precision_label
from .prepare import decode_prepared, prepare_video
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
    """Stage 2 (docs/design.md §2.1, §2.3, §4): fragments and guardian maps, Swin, fusion with the inter
    embedding and the head. `score` is the mean of `clip_scores`.

    compute_inter: embed, in the same pass, the videos whose inter embedding the cache lacks (needs
    `inter_version`); otherwise such a video gets status error (no_inter_embedding). Rows may carry
    `inter_location` (`score` locates each cached embedding's row group once, on the driver); without it
    the preparation looks the batch's keys up in the cache table.
    """

    name = "score"
    schema = SCORE_SCHEMA
    separate_preparation = True

    def __init__(self, spec: ModelSpec, cache_uri: str, opts: RunOptions, score_version: str, *,
                 inter_version: str | None = None, sampling: SamplingConfig | None = None,
                 compute_inter: bool = False, cache_since: int | None = None) -> None:
        super().__init__(opts)
        if compute_inter and inter_version is None:
            raise ValueError("compute_inter needs the inter_version of the embeddings it commits")
        self.spec, self.cache_uri, self.version = spec, cache_uri, score_version
        self.inter_version, self.compute_inter, self.cache_since = inter_version, compute_inter, cache_since
        self.sampling = sampling or spec.build(resolve_auto=False)[0].cfg.sampling
        self.clips = opts.clips or self.sampling.test_clips

    def setup(self) -> None:
        self.vqa, self.inter = self.spec.build(self.opts.storage_options)
        self.device = next(self.vqa.parameters()).device
        self.worker = f"{worker_label(self.device)} {precision_label(self.vqa, self.inter)}"
        self.forward_videos = videos_per_forward(self.opts, self.device)
        self.cache = KeyedTable(self.cache_uri, self.opts.storage_options, since=self.cache_since)

    # -- preparation (CPU task)

    def _cached(self, batch: pd.DataFrame) -> dict[str, dict[str, Any]]:
        """inter key -> cached row (CACHED_COLUMNS) for the batch's videos the cache holds."""
        table = KeyedTable(self.cache_uri, self.opts.storage_options)
        if "inter_location" in batch:
            located = [(k, loc) for k, loc in zip(batch["inter_key"], batch["inter_location"]) if isinstance(loc, str)]
            rows = read_located(table, [loc for _, loc in located], CACHED_COLUMNS,
                                keys=[k for k, _ in located]).to_pylist() if located else []
        else:
            rows = table.rows_for(batch["inter_key"], CACHED_COLUMNS).to_pylist() if table.exists() else []
            if self.compute_inter and self.opts.retry_errors:
                rows = [r for r in rows if r["status"] == "ok"]  # failed embeddings are computed again
        return {r["key"]: r for r in rows}

    def prepare(self, batch: pd.DataFrame) -> pd.DataFrame:
        cached = self._cached(batch)

        def one(r: Any) -> tuple[dict[str, Any], Any, torch.Generator | None, np.ndarray | None]:
            mos = float(r.mos) if getattr(r, "mos", None) is not None and not pd.isna(r.mos) else None
            dataset = getattr(r, "dataset", None)
            row = self.new_row(r, mos=mos, dataset=None if pd.isna(dataset) else str(dataset),
                               model_version=self.version, inter_key=r.inter_key, clips=self.clips,
                               seeded=self.opts.seed is not None, decode_s=0.0, model_s=0.0)
            c = cached.get(r.inter_key)
            t0 = time.perf_counter()
            video = emb = g = None
            try:
                if c is None and not self.compute_inter:
                    raise NoInterEmbedding("no inter embedding in the cache for this video version (run extract-inter)")
                if c is not None and c["status"] != "ok":
                    raise NoInterEmbedding(c["error"] or "inter embedding failed", c.get("error_code") or "no_inter_embedding")
                if c is not None:
                    emb = np.asarray(c["embedding"], dtype=np.float32).reshape(c["segments"], -1)
                g = make_generator(derive_seed(self.opts.seed, r.key))
                with open_video(r.uri, self.opts.storage_options, self.opts.stream) as reader:
                    try:
                        video = prepare_video(reader, self.sampling, inter=c is None, clips=self.clips, generator=g)
                    finally:  # a video that fails while being read still says what it is
                        row.update(video_facts(reader))
            except Exception as exc:
                row.update(**failure(exc))
                video = None
            row["decode_s"] = time.perf_counter() - t0
            # a row that needs its embedding computed says so, even when its decoding failed (its error row)
            row["_compute_inter"] = c is None and self.compute_inter
            return row, video, g if video is not None else None, emb

        return prepared_frame(batch, one)

    # -- model (actor)

    def forward(self, chunk: list[Prepared]) -> list[torch.Tensor]:
        clips = to_device(torch.stack([torch.from_numpy(p.inputs.clips) for p in chunk]), self.device)  # uint8
        inter = to_device(torch.stack([p.extra for p in chunk]), self.device)  # type: ignore[misc]
        with torch.inference_mode():
            return list(self.vqa(clips, inter, generator=[p.generator for p in chunk]).float().cpu())

    def process(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        rows, inter_rows, to_embed, ready = [], [], [], []
        for record in batch.to_dict("records"):
            row, video, g, emb = decode_prepared(record)
            compute = row.pop("_compute_inter", False)
            row["worker"] = f"{self.worker} {row.get('worker') or 'prep=local'}"
            rows.append(row)
            irow = None
            if compute:
                irow = inter_row(row, row["inter_key"], self.inter_version)  # type: ignore[arg-type]
                inter_rows.append(irow)
                if video is not None:
                    to_embed.append(Prepared(irow, video, None,
                                             make_generator(derive_seed(self.opts.seed, row["inter_key"]))))
            if video is not None:
                ready.append((row, video, g, emb, irow))
        if inter_rows:  # the cache first: a crash before the scores costs no embedding
            embed_all(self.inter, to_embed, self.forward_videos, self.device)
            self.cache.commit(pa.Table.from_pylist(inter_rows, schema=INTER_SCHEMA), upsert=self.opts.retry_errors)
        prepared = []
        for row, video, g, emb, irow in ready:
            if irow is not None:
                if irow["status"] != "ok":
                    row.update(**failure(NoInterEmbedding(irow["error"] or "inter embedding failed",
                                                          irow.get("error_code") or "no_inter_embedding")))
                    continue
                emb = irow["embedding"].reshape(irow["segments"], -1)
            prepared.append(Prepared(row, video, torch.from_numpy(np.array(emb, dtype=np.float32)), g))
        for p, (per_clip, seconds) in zip(prepared, forward_grouped(prepared, self.forward_videos, self.forward)):
            if isinstance(per_clip, Exception):
                p.row.update(**failure(per_clip), model_s=seconds)
            else:
                p.row.update(score=float(per_clip.mean()), clip_scores=[float(c) for c in per_clip], model_s=seconds)
        return rows


def score(manifest: pd.DataFrame, cache_uri: str, output_uri: str, spec: ModelSpec, opts: RunOptions,
          *, compute_missing_inter: bool = True) -> tuple[StageSummary, StageSummary | None]:
    """Stage 2: score every video of `manifest` into `output_uri`. With `compute_missing_inter`, videos the
    inter cache at `cache_uri` lacks (or holds as failed, with `retry_errors`) get their embeddings in the
    same pass, committed to the cache (the second summary counts them); without, they get status error."""
    t0 = time.perf_counter()
    so = opts.storage_options
    versions = spec.versions(so)
    if "content_key" not in manifest:
        manifest = keyed_manifest(manifest, versions["inter"], so, extra=opts.key_extra()).drop(columns="key")
    clips = opts.clips or versions["test_clips"]
    rows = keyed_manifest(manifest, versions["score"], so, extra=(clips, *opts.key_extra()))
    rows["inter_key"] = [make_key(u, c, versions["inter"], *opts.key_extra())
                         for u, c in zip(rows["uri"], rows["content_key"])]
    cache = KeyedTable(cache_uri, so)
    if compute_missing_inter:
        cache.create(INTER_SCHEMA)
    retry = compute_missing_inter and opts.retry_errors
    located = locate(cache, rows["inter_key"], status="ok" if retry else None) if cache.exists() else {}
    rows["inter_location"] = rows["inter_key"].map(located)
    # in location order: a batch's cached embeddings then share files and row groups (one read serves many)
    rows = rows.sort_values("inter_location", na_position="last", kind="stable").reset_index(drop=True)
    stage = Scorer(spec, cache_uri, opts, versions["score"], inter_version=versions["inter"],
                   sampling=versions["sampling"], compute_inter=compute_missing_inter, cache_since=cache.read_version)
    keying_s = time.perf_counter() - t0
    summary = run(stage, rows, output_uri)
    summary.seconds += keying_s
    if not compute_missing_inter:
        return summary, None
    inter_keys = rows["inter_key"].drop_duplicates()
    missing = inter_keys[~inter_keys.isin(located.keys())]
    status = cache.rows_for(missing, ["key", "status"]).column("status").to_pylist()
    ok = sum(s == "ok" for s in status)
    inter_summary = StageSummary("extract-inter", videos=len(inter_keys), done=ok, failed=len(status) - ok,
                                 skipped=len(inter_keys) - len(missing), seconds=summary.seconds,
                                 keys=inter_keys.tolist(), within="score")
    return summary, inter_summary
