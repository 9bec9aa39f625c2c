"""Actor pool sizing: how many actors a stage starts and what Ray reserves for each (docs/capacity.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from pipeline.io.table import KeyedTable

from .options import RunOptions


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


def auto_actors_per_gpu(table: KeyedTable, cluster: Mapping[str, float], cpus_per_actor: float,
                        min_rows: int = 8) -> tuple[int, str]:
    """`actors_per_gpu` from the medians of the stage's own earlier rows (last night's run: decode_s and
    model_s are recorded per video; a sample of 2,048 rows) and the cluster's CPUs per GPU; decode = model
    time assumed when there is no history yet."""
    gpus = cluster.get("GPU", 0)
    if not gpus:
        raise ValueError("--actors-per-gpu auto needs the cluster's GPUs at start and it has none (a GPU group "
                         "scaled to zero?): give a number, e.g. --actors-per-gpu 2, so the pool asks for GPUs")
    cpus_per_gpu = cluster.get("CPU", 0) / gpus
    try:  # a sample is enough for medians, and a catalog's table holds millions of rows
        t = table.read(columns=["status", "decode_s", "model_s"], limit=2048).to_pandas()
    except (KeyError, ValueError, pa.ArrowInvalid):  # a store without timings (the attack job's)
        t = None
    ok = t[t["status"] == "ok"] if t is not None else None
    if ok is None or len(ok) < min_rows:
        k = actors_per_gpu(1.0, 1.0, cpus_per_gpu=cpus_per_gpu, cpus_per_actor=cpus_per_actor)
        return k, f"no timings yet ({0 if ok is None else len(ok)} rows): assumed decode = model time"
    d, m = float(ok["decode_s"].median()), float(ok["model_s"].median())
    k = actors_per_gpu(d, m, cpus_per_gpu=cpus_per_gpu, cpus_per_actor=cpus_per_actor)
    return k, f"median decode {d:.3f} s, model {m:.3f} s per video over {len(ok)} earlier rows, {cpus_per_gpu:g} CPUs/GPU"
