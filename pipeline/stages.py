"""The two Ray Data stages: inter-embedding cache (stage 1) and scores (stage 2).

Shape of a run (same code on a laptop and under `ray job submit` on a GPU cluster):

1. The driver reads the manifest, stats every video once (size + mtime, or ETag on S3) and derives a
   row key per video: hash(uri, content key, model version [, clips]). It drops the keys the output
   store has already committed, so a re-run, or a run after a crash, only computes what is missing.
2. The remaining rows (paths, never frames) go through `map_batches` on an actor pool. Each actor
   loads its model once (one GPU each where the cluster has GPUs), decodes inside the actor only the
   frames the sampler asks for, catches every per-video failure into `status`/`error`, and commits
   its batch as one Parquet shard through `ShardStore` (data file first, manifest last with exclusive
   create). The actor returns a few summary columns only.
3. The driver folds the summaries into progress and a one-line summary.

Every output is a `ShardStore` root; readers see whole shards only and one row per key.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from model import InterEmbedder, SecureVQA, create_model, make_generator
from model.api import DEMO_CHECKPOINT
from model.device import to_device
from model.rng import derive_seed

from .inference import inter_segments, intra_clips
from .storage import ShardStore, filesystem, is_local, make_key, shard_id_for, stat_many
from .video import ERROR_CODES as VIDEO_ERROR_CODES
from .video import VideoDecodeError, VideoReader




# ----------------------------------------------------------------------------- run configuration

@dataclass(frozen=True)
class ModelSpec:
    """Which model a stage runs; everything an actor needs to build it, and its version."""

    preset: str | None = None  # None: the checkpoint's own config; with no checkpoint either, the demo model
    checkpoint: str | None = None
    inter_checkpoint: str | None = None
    precision: str = "fp32"
    guardian: bool = True
    device: str = "auto"  # auto: the GPU torch sees (under Ray: the actor's own), else the CPU

    @property
    def default_weights(self) -> bool:
        """No checkpoint and no preset: the demo model shipped with the package, where it is installed
        (`make demo-model --install`); without it, the untrained tiny model."""
        return self.checkpoint is None and self.preset is None and DEMO_CHECKPOINT.exists()

    def build(self, storage_options: Mapping[str, Any] | None = None) -> tuple[SecureVQA, InterEmbedder]:
        checkpoint = str(DEMO_CHECKPOINT) if self.default_weights else self.checkpoint
        preset = self.preset or ("paper" if checkpoint else "tiny")
        return create_model(
            preset, checkpoint=checkpoint, inter_checkpoint=self.inter_checkpoint,
            precision=self.precision, device=self.device, guardian=self.guardian, storage_options=storage_options,
        )

    def versions(self, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Version strings of the inter and intra models (config hash + weights fingerprint), and the
        preset's number of test clips."""
        vqa, inter = self.build(storage_options)
        return {"inter": _version(inter, self.guardian), "score": _version(vqa, self.guardian),
                "test_clips": vqa.cfg.sampling.test_clips}


def _version(module: SecureVQA | InterEmbedder, guardian: bool) -> str:
    h = hashlib.sha256(module.cfg.version().encode())
    h.update(f"guardian={guardian}".encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return f"{module.cfg.name}-{h.hexdigest()[:12]}"


@dataclass
class RunOptions:
    storage_options: dict[str, Any] = field(default_factory=dict)
    actors: int | None = None  # None: one per GPU, else one per 2 CPUs
    batch_size: int = 8  # videos per shard
    gpus_per_actor: float | None = None  # None: 1 / actors_per_gpu where the cluster has GPUs, else 0
    actors_per_gpu: int | str | None = None  # actors sharing a GPU (None: 1; "auto": `auto_actors_per_gpu`)
    forward_videos: int | None = None  # videos per forward pass (None: the whole batch on a GPU, 1 on CPU)
    cpus_per_actor: float = 1.0  # logical CPUs Ray reserves per actor
    threads: int | None = None  # torch threads per actor (None: cpus_per_actor)
    clips: int | None = None  # None: the preset's test clips
    seed: int | None = None  # None: fresh guardian maps and offsets; an int replays a run
    retry_errors: bool = False  # recompute rows that failed last time (e.g. transient I/O)
    progress_s: float = 60.0  # seconds between progress lines of a running stage (0: every batch)
    stream: int | None = None  # video stream to read in every file (None: the default moving one; video.py)

    def key_extra(self) -> tuple[str, ...]:
        """What besides the file and model versions tells rows apart: a chosen stream is other input."""
        return () if self.stream is None else (f"stream={self.stream}",)


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

    def line(self) -> str:
        crashed = f" ({self.crashed} crashed their worker)" if self.crashed else ""
        return (f"{self.stage}: {self.videos} videos: {self.done} done, {self.failed} failed{crashed}, "
                f"{self.skipped} skipped (already done) in {self.seconds:.1f} s")


# ----------------------------------------------------------------------------- shared helpers

@contextmanager
def open_video(uri: str, storage_options: Mapping[str, Any], stream: int | None = None) -> Iterator[VideoReader]:
    """A VideoReader on a local path or any fsspec URI (remote files are read through a buffered handle).

    stream: the stream to read (None: the default moving video stream; pipeline/video.py "Which stream").
    """
    fs, path = filesystem(uri, storage_options)
    if is_local(fs):
        with VideoReader(path, threads=1, stream=stream) as video:
            yield video
        return
    with fs.open(path, "rb", block_size=8 * 2**20) as f, VideoReader(f, threads=1, stream=stream) as video:
        yield video


def video_facts(video: VideoReader) -> dict[str, Any]:
    """The row columns that describe the video read (INTER_SCHEMA, SCORE_SCHEMA): its facts, which
    stream, and how it had to be read when not the normal way (VideoReader.notes)."""
    info = video.info
    return {"num_frames": info.num_frames, "width": info.width, "height": info.height, "fps": info.fps,
            "stream": info.stream_index, "read_notes": "; ".join(video.notes) or None}


def videos_per_forward(opts: RunOptions, device: torch.device) -> int:
    """Videos whose clips share one forward pass: a GPU wants large batches (the whole actor batch by
    default); on CPU one clip at a time is fastest anyway (`model.securevqa.micro_batches`)."""
    if opts.forward_videos is not None:
        if opts.forward_videos < 1:
            raise ValueError(f"--forward-videos must be >= 1, got {opts.forward_videos}")
        return opts.forward_videos
    return max(1, opts.batch_size) if device.type == "cuda" else 1


def worker_label(device: torch.device) -> str:
    """Where a row was computed: Ray node, the GPUs Ray gave the actor, and the torch device in use
    (a GPU id from Ray with device cpu means torch sees no GPU on that node: a broken image)."""
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            return f"node={ctx.get_node_id()[:12]} gpus={','.join(map(str, ray.get_gpu_ids())) or '-'} device={device}"
    except Exception:  # outside an actor (tests, local calls): no Ray context
        pass
    return f"local device={device}"


# Every kind of failure a row can record (`error_code`): the video's own (pipeline/video.py) and the
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


def _pending(rows: pd.DataFrame, store: ShardStore, retry_errors: bool) -> tuple[pd.DataFrame, int]:
    committed = store.committed_keys()
    if retry_errors and committed:
        t = store.read_table(columns=[store.key_column, "status"]).to_pandas()
        committed -= set(t.loc[t["status"] != "ok", store.key_column])
    todo = rows[~rows["key"].isin(committed)]
    return todo, len(rows) - len(todo)


@dataclass(frozen=True)
class ActorPlan:
    """The actor pool of a stage and what Ray reserves for each actor."""

    size: int
    num_gpus: float
    num_cpus: float


def plan_actors(opts: RunOptions, cluster: Mapping[str, float]) -> ActorPlan:
    """Pool size and per-actor resources from the run options and the cluster's resources.

    Where the cluster has GPUs: `actors_per_gpu` actors share each GPU (num_gpus = 1/k) so one actor's
    decoding overlaps another's forward pass; the pool fills every GPU unless `actors` says otherwise.
    Without GPUs: one actor per `max(cpus_per_actor, 2)` CPUs, keeping CPUs free for Ray Data's tasks.
    """
    if opts.gpus_per_actor is not None and opts.actors_per_gpu is not None:
        raise ValueError("give --gpus-per-actor or --actors-per-gpu, not both")
    if opts.actors_per_gpu is not None and opts.actors_per_gpu < 1:
        raise ValueError(f"--actors-per-gpu must be >= 1, got {opts.actors_per_gpu}")
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 1)
    if opts.gpus_per_actor is not None:
        per_gpu = opts.gpus_per_actor
    elif opts.actors_per_gpu is not None or gpus:
        per_gpu = 1.0 / (opts.actors_per_gpu or 1)
    else:
        per_gpu = 0.0
    if opts.actors is not None:
        size = opts.actors
        if not per_gpu and size * opts.cpus_per_actor >= cpus:
            # Ray Data's own tasks (repartition, reads) need a CPU too; a pool holding every CPU
            # waits forever. Reserve less and keep the threads (--threads) instead.
            raise ValueError(
                f"{size} actor(s) x {opts.cpus_per_actor} CPUs leave none of the cluster's {cpus:g} CPUs for "
                "Ray Data's tasks: lower --actors or --cpus-per-actor (use --threads for more torch threads)")
    elif per_gpu:
        size = max(1, int(gpus / per_gpu + 1e-9))
    else:
        size = max(1, int(cpus // max(opts.cpus_per_actor, 2)))
    return ActorPlan(size=size, num_gpus=per_gpu, num_cpus=opts.cpus_per_actor)


def actors_per_gpu(decode_s: float, model_s: float, *, cpus_per_gpu: float, cpus_per_actor: float = 1.0,
                   max_per_gpu: int = 4) -> int:
    """How many actors should share one GPU, from a run's median per-video decode and model seconds.

    An actor alternates decoding (CPU) and its forward pass (GPU), so alone it keeps the GPU busy
    model / (decode + model) of the time; k actors overlap k decodes with the forwards, and the GPU
    saturates at k = ceil((decode + model) / model). Capped by the CPUs a GPU node has per GPU, less
    one for Ray Data's own tasks (each actor decodes on its own CPUs), and by `max_per_gpu` (each
    actor holds a model copy in GPU memory).
    When decoding dominates beyond the CPU cap, the stage is decode-bound: more CPUs per GPU, not
    more actors, is the fix (docs/capacity.md).
    """
    if model_s <= 0:
        return 1
    want = math.ceil((decode_s + model_s) / model_s - 1e-9)
    cpu_cap = max(1, int((cpus_per_gpu - 1) // cpus_per_actor))
    return max(1, min(want, cpu_cap, max_per_gpu))


def auto_actors_per_gpu(store: ShardStore, cluster: Mapping[str, float], cpus_per_actor: float,
                        min_rows: int = 8) -> tuple[int, str]:
    """`actors_per_gpu` from the medians of the stage's own earlier rows (last night's run: decode_s and
    model_s are recorded per video; the newest 64 shards) and the cluster's CPUs per GPU; decode = model
    time assumed when there is no history yet."""
    gpus = cluster.get("GPU", 0)
    if not gpus:
        raise ValueError("--actors-per-gpu auto needs the cluster's GPUs at start and it has none (a GPU group "
                         "scaled to zero?): give a number, e.g. --actors-per-gpu 2, so the pool asks for GPUs")
    cpus_per_gpu = cluster.get("CPU", 0) / gpus
    try:  # the newest shards are enough for medians, and a catalog's store holds tens of thousands
        t = store.read_table(columns=["status", "decode_s", "model_s"], newest=64).to_pandas()
    except (KeyError, ValueError, pa.ArrowInvalid):  # a store without timings (the attack job's)
        t = None
    ok = t[t["status"] == "ok"] if t is not None else None
    if ok is None or len(ok) < min_rows:
        k = actors_per_gpu(1.0, 1.0, cpus_per_gpu=cpus_per_gpu, cpus_per_actor=cpus_per_actor)
        return k, f"no timings yet ({0 if ok is None else len(ok)} rows): assumed decode = model time"
    d, m = float(ok["decode_s"].median()), float(ok["model_s"].median())
    k = actors_per_gpu(d, m, cpus_per_gpu=cpus_per_gpu, cpus_per_actor=cpus_per_actor)
    return k, f"median decode {d:.3f} s, model {m:.3f} s per video over {len(ok)} earlier rows, {cpus_per_gpu:g} CPUs/GPU"


def _compute(opts: RunOptions, store: ShardStore, stage: str) -> tuple[Any, dict[str, Any]]:
    import ray

    cluster = ray.cluster_resources()
    if opts.actors_per_gpu == "auto":
        k, why = auto_actors_per_gpu(store, cluster, opts.cpus_per_actor)
        print(f"{stage}: {k} actor(s) per GPU ({why})", flush=True)
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


def _run(todo: pd.DataFrame, udf: type, ctor: dict[str, Any], opts: RunOptions, summary: StageSummary,
         store: ShardStore) -> None:
    """Run `udf` (an actor class with a `schema` and `__call__(batch) -> summary frame` that commits its
    rows) over `todo` with Ray Data.

    Worker processes that die are restarted and their batches retried (CRASH_RETRIES per actor). If
    the pool still fails, the first videos not finished yet (the ones the pool was on) are retried one
    per call (`_isolate`), so only a video that kills its worker gets an error row (CRASHED), and a
    fresh pool goes on with the rest; every round finishes at least one window of videos.
    """
    unknown = todo.iloc[:0]
    if "stat_error" in todo:  # failed before any worker could see them: their rows come from here
        unknown = todo[todo["stat_error"].notna()]
        if len(unknown):
            store.commit(_driver_shard(unknown["key"]), _error_rows(unknown, udf.schema, unknown["stat_error"].tolist(),
                                                                    "io_error"), unknown["key"].tolist())
            summary.failed += len(unknown)
            todo = todo[todo["stat_error"].isna()]
    if todo.empty:
        return
    compute, resources = _compute(opts, store, summary.stage)
    before = store.committed_keys()  # with --retry-errors, keys of earlier error rows are in here
    seen: set[str] = set()
    left = todo
    crashed = False
    progress = Progress(summary.stage, len(todo), opts.progress_s)
    while len(left):
        try:
            _run_pool(left, udf, ctor, opts, compute, resources, summary, progress, seen)
            break
        except Exception as exc:
            if not _is_crash(exc):
                raise
        crashed = True
        done_now = seen | (store.committed_keys() - before)
        left = left[~left["key"].isin(done_now)]
        window = left.iloc[:2 * opts.batch_size * max(1, compute.max_size or 1)]
        print(f"{summary.stage}: a worker died {CRASH_RETRIES + 1} times; retrying {len(window)} of the {len(left)} "
              "videos not finished yet one at a time, then the rest as before", flush=True)
        _isolate(window, udf, ctor, resources, summary, store, opts.progress_s)
        seen.update(window["key"])
        left = left.iloc[len(window):]
    if crashed:  # batches may have committed without the driver seeing them: count from the store
        table = store.read_table(columns=[store.key_column, "status"]).to_pandas()
        table = table[table[store.key_column].isin(set(todo["key"]))]
        summary.done = int((table["status"] == "ok").sum())
        summary.failed = len(unknown) + int((table["status"] != "ok").sum())


def _run_pool(todo: pd.DataFrame, udf: type, ctor: dict[str, Any], opts: RunOptions, compute: Any,
              resources: dict[str, Any], summary: StageSummary, progress: "Progress", seen: set[str]) -> None:
    import ray

    ds = ray.data.from_pandas(todo.reset_index(drop=True))
    # Keep blocks the size of a shard so actors start early and commit often.
    ds = ds.repartition(max(1, -(-len(todo) // opts.batch_size)))
    out = ds.map_batches(udf, fn_constructor_kwargs=ctor, batch_size=opts.batch_size, batch_format="pandas",
                         compute=compute, max_restarts=CRASH_RETRIES, max_task_retries=CRASH_RETRIES, **resources)
    for batch in out.iter_batches(batch_format="pandas", batch_size=None):
        seen.update(batch["key"])
        ok = int((batch["status"] == "ok").sum())
        summary.done += ok
        summary.failed += len(batch) - ok
        line = progress.update(summary.done, summary.failed)
        if line:
            print(line, flush=True)


def _isolate(left: pd.DataFrame, udf: type, ctor: dict[str, Any], resources: dict[str, Any],
             summary: StageSummary, store: ShardStore, progress_s: float) -> None:
    """One video per actor call: a call whose actor dies marks that video CRASHED (a row of `udf.schema`
    from what the manifest row knows) and a fresh actor takes the next one. An actor that cannot start
    raises: that is no video's fault."""
    import ray

    actor_cls = ray.remote(max_restarts=0, max_task_retries=0, **resources)(udf)
    progress = Progress(f"{summary.stage} (one video at a time)", len(left), progress_s)
    actor = None
    for i in range(len(left)):
        one = left.iloc[[i]].reset_index(drop=True)
        if actor is None:
            actor = actor_cls.remote(**ctor)
            ray.get(actor.__ray_ready__.remote())  # a failing constructor raises here, not as a crash
        try:
            ray.get(actor.__call__.remote(one))
        except Exception as exc:
            if not _is_crash(exc):
                raise
            actor = None
            summary.crashed += 1
            store.commit(_driver_shard(one["key"]), _error_rows(one, udf.schema, [CRASHED], "decoder_crashed"),
                         one["key"].tolist())
        line = progress.update(i + 1, summary.crashed)
        if line:
            print(line, flush=True)


def _driver_shard(keys: Iterable[str]) -> str:
    """Shard id of rows the driver writes: never the id a worker's later shard of the same keys gets
    (`storage.shard_id_for`), or a retried video's good row would count as already committed."""
    return f"driver-{shard_id_for(keys)}"


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
        row = {name: (r[name] if name in _IDENTITY and name in r and not _missing(r[name]) else None)
               for name in schema.names}
        row.update(status="error", error=messages[i if len(messages) > 1 else 0], error_code=code)
        if "created_at" in schema.names:
            row["created_at"] = time.time()
        out.append(row)
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


def duration(seconds: float) -> str:
    """A time left for progress lines: "12m05s", "1h07m", or "unknown time"."""
    if seconds == float("inf"):
        return "unknown time"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _shard_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def _summary_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({"key": [r["key"] for r in rows], "status": [r["status"] for r in rows]})


def _common_fields(r: Any) -> dict[str, Any]:
    return {"key": r.key, "video_id": str(r.video_id), "uri": str(r.uri), "content_key": str(r.content_key)}


@dataclass
class _Prepared:
    """One decoded video waiting for its forward pass: its output row, model input, cached inter
    embedding (stage 2) and its own generator (guardian maps follow the sampling draws)."""

    row: dict[str, Any]
    inputs: torch.Tensor
    extra: torch.Tensor | None
    generator: torch.Generator


def _prepare_all(prepare: Callable[[Any], tuple[dict[str, Any], _Prepared | None]],
                 batch: pd.DataFrame) -> tuple[list[dict[str, Any]], list[_Prepared]]:
    rows, prepared = [], []
    for r in batch.itertuples(index=False):
        row, p = prepare(r)
        rows.append(row)
        if p is not None:
            prepared.append(p)
    return rows, prepared


def forward_grouped(prepared: list[_Prepared], videos: int, forward: Callable[[list[_Prepared]], list[torch.Tensor]]
                    ) -> list[tuple[torch.Tensor | Exception, float]]:
    """(output or error, model seconds) per video, forwarding `videos` videos' clips at a time.

    A group that fails (e.g. out of GPU memory) is re-run one video at a time from the generator
    states it started with: the error lands on its own video, and seeded scores do not change.
    """
    out: list[tuple[torch.Tensor | Exception, float]] = []
    for i in range(0, len(prepared), max(1, videos)):
        chunk = prepared[i:i + max(1, videos)]
        states = [p.generator.get_state() for p in chunk]
        t0 = time.perf_counter()
        try:
            results = forward(chunk)
            share = (time.perf_counter() - t0) / len(chunk)
            out.extend((r, share) for r in results)
            continue
        except Exception as exc:
            if len(chunk) == 1:
                out.append((exc, time.perf_counter() - t0))
                continue
        for p, state in zip(chunk, states):
            p.generator.set_state(state)
            t0 = time.perf_counter()
            try:
                out.append((forward([p])[0], time.perf_counter() - t0))
            except Exception as exc:
                out.append((exc, time.perf_counter() - t0))
    return out


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

    def prepare(self, r: Any) -> tuple[dict[str, Any], _Prepared | None]:
        row = {**_common_fields(r), "inter_version": self.version, "embedding": None, "segments": None,
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
        return row, _Prepared(row, segments, None, make_generator(derive_seed(self.opts.seed, r.key)))

    def forward(self, chunk: list[_Prepared]) -> list[torch.Tensor]:
        segments = to_device(torch.stack([p.inputs for p in chunk]), self.device)
        with torch.inference_mode():
            return list(self.inter(segments, generator=[p.generator for p in chunk]).float().cpu())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows, prepared = _prepare_all(self.prepare, batch)
        for p, (emb, seconds) in zip(prepared, forward_grouped(prepared, self.forward_videos, self.forward)):
            if isinstance(emb, Exception):
                p.row.update(**failure(emb), model_s=seconds)
            else:
                p.row.update(embedding=emb.flatten().numpy().astype(np.float32), segments=emb.shape[0],
                             model_s=seconds)
        self.store.commit(None, _shard_table(rows, INTER_SCHEMA), [r["key"] for r in rows])
        return _summary_frame(rows)


def extract_inter(manifest: pd.DataFrame, cache_uri: str, spec: ModelSpec, opts: RunOptions,
                  versions: dict[str, str] | None = None) -> StageSummary:
    """Stage 1: make sure every video of `manifest` has a committed inter embedding in the cache."""
    t0 = time.perf_counter()
    versions = versions or spec.versions(opts.storage_options)
    rows = keyed_manifest(manifest, versions["inter"], opts.storage_options, extra=opts.key_extra())
    store = ShardStore(cache_uri, opts.storage_options)
    todo, skipped = _pending(rows, store, opts.retry_errors)
    summary = StageSummary("extract-inter", videos=len(rows), skipped=skipped, keys=rows["key"].tolist())
    _run(todo, InterExtractor,
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

    def prepare(self, r: Any, cached: dict[str, Any] | None) -> tuple[dict[str, Any], _Prepared | None]:
        mos = float(r.mos) if getattr(r, "mos", None) is not None and not pd.isna(r.mos) else None
        dataset = getattr(r, "dataset", None)
        row = {**_common_fields(r), "mos": mos, "dataset": None if pd.isna(dataset) else str(dataset),
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
        return row, _Prepared(row, clips, emb, g)

    def forward(self, chunk: list[_Prepared]) -> list[torch.Tensor]:
        clips = to_device(torch.stack([p.inputs for p in chunk]), self.device)  # uint8 over the bus
        inter = to_device(torch.stack([p.extra for p in chunk]), self.device)  # type: ignore[misc]
        with torch.inference_mode():
            return list(self.vqa(clips, inter, generator=[p.generator for p in chunk]).float().cpu())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        cached = self.cache.lookup(batch["inter_key"])
        rows, prepared = _prepare_all(lambda r: self.prepare(r, cached.get(r.inter_key)), batch)
        for p, (per_clip, seconds) in zip(prepared, forward_grouped(prepared, self.forward_videos, self.forward)):
            if isinstance(per_clip, Exception):
                p.row.update(**failure(per_clip), model_s=seconds)
            else:
                p.row.update(score=float(per_clip.mean()), clip_scores=[float(c) for c in per_clip], model_s=seconds)
        self.store.commit(None, _shard_table(rows, SCORE_SCHEMA), [r["key"] for r in rows])
        return _summary_frame(rows)


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
    todo, skipped = _pending(rows, store, opts.retry_errors)
    summary = StageSummary("score", videos=len(rows), skipped=skipped, keys=rows["key"].tolist())
    _run(todo, Scorer, {"spec": spec, "cache_uri": cache_uri, "output_uri": output_uri, "opts": opts,
                        "score_version": versions["score"]}, opts, summary, store)
    summary.seconds = time.perf_counter() - t0
    return summary, inter_summary


def load_table(uri: str, storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A stage's output (a ShardStore root) as one DataFrame, one row per key."""
    return ShardStore(uri, storage_options).read_table().to_pandas()


__all__ = [
    "INTER_SCHEMA", "SCORE_SCHEMA", "ActorPlan", "InterCache", "InterExtractor", "ModelSpec", "RunOptions", "Scorer",
    "StageSummary", "actors_per_gpu", "video_facts", "ERROR_CODES", "NoInterEmbedding", "failure", "extract_inter", "forward_grouped", "keyed_manifest", "load_table", "open_video",
    "plan_actors", "Progress", "score", "videos_per_forward",
]
