"""The driver of every stage (`run`) and the actor that runs a stage on Ray Data (`StageActor`).

Shape of a run (same code on a laptop and under `ray job submit` on a GPU cluster):

1. The driver reads the manifest, stats every video once (size + mtime, or ETag on S3) and derives a
   row key per video: hash(uri, content key, model version [, clips]). It drops the keys the output
   store has already committed, so a re-run, or a run after a crash, only computes what is missing.
2. The remaining rows (paths) go through `map_batches`: CPU tasks prepare them (`Stage.prepare`: decode
   once, uint8 model inputs; pipeline/stages/prepare.py), then an actor pool: each actor loads its model
   once (one GPU each where the cluster has GPUs), runs it, catches every per-video failure into
   `status`/`error`, and commits
   its batch as one version of the output's Delta table (`pipeline.io.table.KeyedTable.commit`: a key
   committed once, by anyone, is never committed again). The actor returns a few summary columns only.
3. The driver folds the summaries into progress and a one-line summary.

Every output is a Delta table with one row per key, which any Delta reader can query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from pipeline.io.maintenance import maintain
from pipeline.io.storage import make_key, stat_many
from pipeline.io.table import KeyedTable
from pipeline.io.video import ERROR_CODES as VIDEO_ERROR_CODES
from pipeline.io.video import VideoDecodeError
from pipeline.log import configure_worker, duration

from .options import RunOptions
from .resources import auto_actors_per_gpu, plan_actors
from .rows import build_row

log = logging.getLogger("securevqa.stages")

if TYPE_CHECKING:
    from .stage import Stage


@dataclass
class StageSummary:
    stage: str
    videos: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list, repr=False)  # the row key of every input video
    crashed: int = 0  # of `failed`: videos whose worker process died (a native crash in the decoder)
    within: str | None = None  # the stage whose pass computed these too (the score job's cold inter embeddings)

    def line(self) -> str:
        crashed = f" ({self.crashed} crashed their worker)" if self.crashed else ""
        where = f" within the {self.within} pass" if self.within else ""
        return (f"{self.stage}: {self.videos} videos: {self.done} done, {self.failed} failed{crashed}, "
                f"{self.skipped} skipped (already done) in {self.seconds:.1f} s{where}")


# Every kind of failure a row can record (`error_code`): the video's own (pipeline/io/video.py) and the
# pipeline's. The report groups failures by these.
ERROR_CODES = {
    **VIDEO_ERROR_CODES,
    "decoder_crashed": "the worker process died while reading the video (a native crash)",
    "no_inter_embedding": "stage 2 found no usable inter embedding for this video in the cache",
    "out_of_memory": "the process ran out of memory on this video",
    "io_error": "reading the file failed (permissions, network, object store)",
    "error": "anything else: the message names the exception",
}


class NoInterEmbedding(Exception):
    """Stage 2 has no usable inter embedding for a video; `code` is the stage-1 row's code if it failed."""

    def __init__(self, message: str, code: str = "no_inter_embedding") -> None:
        super().__init__(message)
        self.code = code


def failure(exc: BaseException) -> dict[str, str]:
    """The row fields of a video that failed with `exc`: status "error", `error` (a sentence a person
    understands) and `error_code` (a key of ERROR_CODES)."""
    if isinstance(exc, (VideoDecodeError, NoInterEmbedding)):
        message, code = str(exc), exc.code
    elif isinstance(exc, FileNotFoundError):
        message, code = f"file not found: {exc}", "not_found"
    elif isinstance(exc, MemoryError):
        message, code = "out of memory while processing this video", "out_of_memory"
    elif isinstance(exc, OSError):
        message, code = f"{type(exc).__name__}: {exc}", "io_error"
    else:
        message, code = f"{type(exc).__name__}: {exc}", "error"
    return {"status": "error", "error": message, "error_code": code}


def keyed_manifest(manifest: pd.DataFrame, version: str, storage_options: Mapping[str, Any],
                   extra: Iterable[Any] = ()) -> pd.DataFrame:
    """Manifest rows with `content_key` and `key` = hash(uri, content key, version, *extra).

    Missing files get a content key of "missing" so they still get a row (status error) instead of
    disappearing from the output; a file whose stat or version failed gets "unidentified" and the reason
    in `stat_error`, and the stage writes its error row from the driver (`_run`).
    """
    out = manifest.copy()
    if "content_key" not in out:  # stat once per run: score() passes its stats on to extract_inter()
        by_uri = stat_many(out["uri"].tolist(), storage_options)  # once: one listing or HEAD per file
        stats = [by_uri[u] for u in out["uri"]]
        out["content_key"] = ["missing" if s is None else (s.content_key or "unidentified") for s in stats]
        out["stat_error"] = [None if s is None else s.error for s in stats]
    out["key"] = [make_key(u, c, version, *extra) for u, c in zip(out["uri"], out["content_key"])]
    return out


def pending_rows(rows: pd.DataFrame, table: KeyedTable, retry_errors: bool) -> tuple[pd.DataFrame, int]:
    """The rows of `rows` whose keys `table` has not committed (with `retry_errors`: has not committed
    with status ok), and how many were skipped. `table.read_version` is then the version this saw."""
    committed = table.committed_keys(status="ok" if retry_errors else None)
    todo = rows[~rows["key"].isin(committed)]
    return todo, len(rows) - len(todo)


def pool_strategy(opts: RunOptions, table: KeyedTable, stage: str) -> tuple[Any, dict[str, Any]]:
    import ray

    cluster = ray.cluster_resources()
    if opts.actors_per_gpu == "auto":
        k, why = auto_actors_per_gpu(table, cluster, opts.cpus_per_actor)
        log.info(f"{stage}: {k} actor(s) per GPU ({why})")
        opts = replace(opts, actors_per_gpu=k)
    plan = plan_actors(opts, cluster)
    return ray.data.ActorPoolStrategy(size=plan.size), {"num_gpus": plan.num_gpus, "num_cpus": plan.num_cpus}


# A worker process that dies (a segmentation fault in FFmpeg, the OOM killer) is restarted and its batch
# retried this many times; after that the batch's videos are retried one at a time (`_isolate`).
CRASH_RETRIES = 2
CRASHED = "decoder crashed: the worker process died while reading this video (a native crash)"


def _is_crash(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says a worker process died while it ran a task: a native crash
    or the OOM killer. An actor whose constructor failed is not a crash of any video (it re-raises)."""
    import ray.exceptions as rex

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "actor_init_failed", False):
            return False
        if isinstance(exc, (rex.RayActorError, rex.WorkerCrashedError)) or "ActorDiedError" in type(exc).__name__:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_stage(todo: pd.DataFrame, stage: Stage, output_uri: str, summary: StageSummary, table: KeyedTable) -> None:
    """Run `stage` over `todo` with Ray Data: an actor pool of `StageActor`s committing to `table` (the
    Delta table at `output_uri`, whose `since` is the version `todo` was computed at).

    Worker processes that die are restarted and their batches retried (CRASH_RETRIES per actor). If
    the pool still fails, the first videos not finished yet (the ones the pool was on) are retried one
    per call (`_isolate`), so only a video that kills its worker gets an error row (CRASHED), and a
    fresh pool goes on with the rest; every round finishes at least one window of videos.
    """
    unknown = todo.iloc[:0]
    if "stat_error" in todo:  # failed before any worker could see them: their rows come from here
        unknown = todo[todo["stat_error"].notna()]
        if len(unknown):
            table.commit(_error_rows(unknown, stage.schema, unknown["stat_error"].tolist(), "io_error"),
                         upsert=stage.opts.retry_errors)
            summary.failed += len(unknown)
            todo = todo[todo["stat_error"].isna()]
    if todo.empty:
        return
    opts = stage.opts
    compute, resources = stage.resources(table)
    before = table.committed_keys()  # with --retry-errors, keys of earlier error rows are in here
    seen: set[str] = set()
    left = todo
    crashed = False
    progress = Progress(summary.stage, len(todo), opts.progress_s)
    while len(left):
        try:
            run_pool(left, stage, output_uri, table.since, compute, resources, summary, progress, seen)
            break
        except Exception as exc:
            if not _is_crash(exc):
                raise
        crashed = True
        done_now = seen | (table.committed_keys() - before)
        left = left[~left["key"].isin(done_now)]
        window = left.iloc[:2 * opts.batch_size * max(1, compute.max_size or 1)]
        log.warning(f"{summary.stage}: a worker died {CRASH_RETRIES + 1} times; retrying {len(window)} of the {len(left)} "
              "videos not finished yet one at a time, then the rest as before")
        _isolate(window, stage, output_uri, resources, summary, table)
        seen.update(window["key"])
        left = left.iloc[len(window):]
    if crashed:  # batches may have committed without the driver seeing them: count from the table
        rows = table.rows_for(todo["key"], columns=[table.key_column, "status"]).to_pandas()
        summary.done = int((rows["status"] == "ok").sum())
        summary.failed = len(unknown) + int((rows["status"] != "ok").sum())


def run_pool(todo: pd.DataFrame, stage: Stage, output_uri: str, since: int | None, compute: Any,
             resources: dict[str, Any], summary: StageSummary, progress: Progress, seen: set[str]) -> None:
    import ray

    opts = stage.opts
    ds = ray.data.from_pandas(todo.reset_index(drop=True))
    # Keep blocks the size of a shard so actors start early and commit often.
    ds = ds.repartition(max(1, -(-len(todo) // opts.batch_size)))
    prepared = stage.separate_preparation
    if prepared:  # CPU tasks decode and prepare; what reaches the actors is uint8 (pipeline/stages/prepare.py)
        # Prepared batches wait in the object store for the model; capping what the run may hold there
        # makes Ray Data pause the preparation instead of queueing the whole manifest (memory flat in N).
        ctx = ray.data.DataContext.get_current()
        limits = ctx.execution_options.resource_limits
        ctx.execution_options.resource_limits = limits.copy(object_store_memory=opts.prepared_buffer_mb * 2**20)
        ds = ds.map_batches(prepare_batch, fn_kwargs={"stage": stage}, batch_size=opts.batch_size,
                            batch_format="pandas", num_cpus=opts.prepare_cpus, max_retries=CRASH_RETRIES)
    out = ds.map_batches(StageActor, fn_constructor_kwargs={"stage": stage, "output_uri": output_uri, "since": since,
                                                            "prepared": prepared},
                         batch_size=opts.batch_size, batch_format="pandas",
                         compute=compute, max_restarts=CRASH_RETRIES, max_task_retries=CRASH_RETRIES, **resources)
    batches = 0
    for batch in out.iter_batches(batch_format="pandas", batch_size=None):
        batches += 1
        if opts.compact_every and batches % opts.compact_every == 0:  # while the actors go on committing
            done = maintain(output_uri, opts.storage_options, vacuum=False)
            log.debug("%s: compacted %s", stage.name, done.get("optimize"))
        seen.update(batch["key"])
        ok = int((batch["status"] == "ok").sum())
        summary.done += ok
        summary.failed += len(batch) - ok
        line = progress.update(summary.done, summary.failed)
        if line:
            log.info(line)


def _isolate(left: pd.DataFrame, stage: Stage, output_uri: str, resources: dict[str, Any], summary: StageSummary,
             table: KeyedTable) -> None:
    """One video per actor call: a call whose actor dies marks that video CRASHED (a row of `stage.schema`
    from what the manifest row knows) and a fresh actor takes the next one. An actor that cannot start
    raises: that is no video's fault."""
    import ray

    actor_cls = ray.remote(max_restarts=0, max_task_retries=0, **resources)(StageActor)
    progress = Progress(f"{summary.stage} (one video at a time)", len(left), stage.opts.progress_s)
    actor = None
    for i in range(len(left)):
        one = left.iloc[[i]].reset_index(drop=True)
        if actor is None:
            actor = actor_cls.remote(stage=stage, output_uri=output_uri, since=table.since)
            ray.get(actor.__ray_ready__.remote())  # a failing constructor raises here, not as a crash
        try:
            ray.get(actor.__call__.remote(one))
        except Exception as exc:
            if not _is_crash(exc):
                raise
            actor = None
            summary.crashed += 1
            # If the actor committed the video before it died, the table keeps that row (a key is committed once).
            table.commit(_error_rows(one, stage.schema, [CRASHED], "decoder_crashed"), upsert=stage.opts.retry_errors)
        line = progress.update(i + 1, summary.crashed)
        if line:
            log.info(line)


# Row columns the driver copies from the manifest into the rows it writes (identity and labels only:
# a user's own column may share a name with an output column and not its type).
_IDENTITY = ("key", "video_id", "uri", "content_key", "mos", "dataset", "inter_key", "defenses", "attack",
             "adaptive", "q_mos", "clean_score", "target")


def _error_rows(rows: pd.DataFrame, schema: pa.Schema, messages: list[str], code: str) -> pa.Table:
    """Error rows of `schema` written by the driver for videos no worker could finish (a crash, a file
    whose version cannot be identified): the manifest's identity columns, status error, the message
    (one per row, or one for all) and `code`."""
    out = []
    for i, r in enumerate(rows.to_dict("records")):
        known = {name: r[name] for name in _IDENTITY if name in schema.names and name in r and not _missing(r[name])}
        extra = {"created_at": time.time()} if "created_at" in schema.names else {}
        out.append(build_row(schema, {**known, **extra, "status": "error", "error_code": code,
                                      "error": messages[i if len(messages) > 1 else 0]}))
    return pa.Table.from_pylist(out, schema=schema)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


class Progress:
    """Progress lines for job logs (Ray Data's bars are off under `ray job submit`): at most one per
    `interval` seconds, with the rate since the start and the time left at that rate."""

    def __init__(self, stage: str, total: int, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stage, self.total, self.interval, self.clock = stage, total, interval, clock
        self.start = self.last = clock()

    def update(self, done: int, failed: int) -> str | None:
        now = self.clock()
        finished = done + failed
        if now - self.last < self.interval or finished >= self.total:
            return None  # the stage's summary line reports the end
        self.last = now
        rate = finished / max(now - self.start, 1e-9)
        left = (self.total - finished) / rate if rate > 0 else float("inf")
        return (f"{self.stage}: {finished:,}/{self.total:,} videos ({100 * finished / self.total:.1f}%), "
                f"{failed:,} failed, {rate:.2f} videos/s, about {duration(left)} left")


def summary_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({"key": [r["key"] for r in rows], "status": [r["status"] for r in rows]})


def load_table(uri: str, storage_options: Mapping[str, Any] | None = None, *, version: int | None = None,
               as_of: str | None = None) -> pd.DataFrame:
    """A stage's output (a Delta table) as one DataFrame, one row per key; at a `version` or as of a
    timestamp (`KeyedTable.read`). Raises FileNotFoundError if there is no table at `uri`."""
    return KeyedTable(uri, storage_options).read(version=version, as_of=as_of).to_pandas()


def prepare_batch(batch: pd.DataFrame, stage: Stage) -> pd.DataFrame:
    """The preparation task of a stage with `separate_preparation` (one CPU, one torch thread)."""
    configure_worker(stage.log_level)
    torch.set_num_threads(1)
    return stage.prepare(batch)


class StageActor:
    """The Ray Data actor of every stage: `stage.setup()` once, then per batch `stage.process` (after
    `stage.prepare` unless the batch comes `prepared` by the preparation tasks), the rows committed as
    one version of the Delta table at `output_uri` (keys committed after version `since`, by anyone,
    are left out); returns the (key, status) summary the driver counts."""

    def __init__(self, stage: Stage, output_uri: str, since: int | None = None, prepared: bool = False) -> None:
        configure_worker(stage.log_level)
        torch.set_num_threads(stage.opts.threads or max(1, int(stage.opts.cpus_per_actor)))
        self.stage, self.prepared = stage, prepared
        stage.setup()
        self.table = KeyedTable(output_uri, stage.opts.storage_options, since=since)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = self.stage.process(batch if self.prepared else self.stage.prepare(batch))
        self.table.commit(pa.Table.from_pylist(rows, schema=self.stage.schema), upsert=self.stage.opts.retry_errors)
        return summary_frame(rows)


def run(stage: Stage, rows: pd.DataFrame, output_uri: str) -> StageSummary:
    """Run `stage` over keyed manifest `rows` (a `key` column: `driver.keyed_manifest`) into the Delta
    table at `output_uri` (created with the stage's schema if missing): keys already committed are
    skipped (all but failed ones with `RunOptions.retry_errors`), the rest computed on an actor pool.
    Returns the stage's summary."""
    t0 = time.perf_counter()
    KeyedTable(output_uri, stage.opts.storage_options).create(stage.schema)
    reader = KeyedTable(output_uri, stage.opts.storage_options)
    todo, skipped = pending_rows(rows, reader, stage.opts.retry_errors)
    # Commits from here on check every version after the one the pending keys were read at.
    table = KeyedTable(output_uri, stage.opts.storage_options, since=reader.read_version)
    summary = StageSummary(stage.name, videos=len(rows), skipped=skipped, keys=rows["key"].tolist())
    run_stage(todo, stage, output_uri, summary, table)
    summary.seconds = time.perf_counter() - t0
    return summary
