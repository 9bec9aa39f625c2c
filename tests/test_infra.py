"""Offline checks of the cluster and container definitions under infra/ (no network, no cluster, no Docker).

What a typo or a drifted number in these files costs is a job that waits forever for actors that can
never be placed, scores on CPUs, or runs code with another Ray than the cluster's. So, for every file:

- it parses, and carries the fields KubeRay / Ray's cluster launcher require (and the rules KubeRay
  enforces for jobs on an existing cluster: clusterSelector, no backoffLimit, no suspend);
- every `python -m jobs.<name> ...` it (or infra/README.md) runs exists and parses with the real CLI;
- the actor flags fit the GPU workers: the pool plan of `pipeline.stages.plan_actors` at the group's
  full size, a free CPU per node for Ray Data's tasks, and what `_compute` decides when the job starts
  on a cluster whose GPU group is still at its minimum;
- one image everywhere; its tag, the Dockerfile pins, KubeRay's rayVersion, the installed Ray, the
  Makefile's torch pin and pyproject's requirements agree;
- the runtime env's excludes keep the `--working-dir .` upload small (computed with Ray's own packager).

Each check returns messages naming the file and the field; the negative tests at the end feed mutated
copies to the same checkers to show they catch what they claim to.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import math
import re
import shlex
import tempfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from pipeline.io.table import KeyedTable

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob-score.yaml"
RAYCRONJOB = INFRA / "kuberay" / "raycronjob-rescore.yaml"
RAYUP = INFRA / "ray-up" / "cluster.yaml"
RUNTIME_ENV = INFRA / "runtime_env.yaml"
README = INFRA / "README.md"

MAX_UPLOAD = 100 * 2**20
# KubeRay's name limits: a RayCluster name <= 53 (its longest service suffix must fit 63 characters), a RayJob
# name <= 47 (KubeRay appends 6 to name the cluster it makes). A RayCronJob's children are named after it
# plus a suffix; 36 is a conservative bound (the operator's exact constant was not verified).
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 36}
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Arguments that name data or models: pods share no filesystem, so on a cluster they must be URIs.
URI_FLAGS = ("input", "cache", "output", "state", "scores", "checkpoint", "inter_checkpoint")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ----------------------------------------------------------------------------- loading

@functools.cache
def _load(path: Path) -> Any:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{rel(path)}: expected exactly one YAML document, found {len(docs)}"
    return docs[0]


def load(path: Path) -> Any:
    """A fresh copy, so a test may mutate it."""
    return copy.deepcopy(_load(path))


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dig(doc: Any, path: tuple[str | int, ...], where: str, problems: list[str]) -> Any:
    """doc[path[0]][path[1]]...; a missing step is reported as `where: a.b.c: missing`."""
    cur = doc
    for i, key in enumerate(path):
        ok = (isinstance(cur, dict) and key in cur) or (isinstance(cur, list) and isinstance(key, int)
                                                        and -len(cur) <= key < len(cur))
        if not ok:
            problems.append(f"{where}: {fmt_path(path[:i + 1])}: missing")
            return None
        cur = cur[key]
    return cur


def fmt_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", key):
            out += f".{key}" if out else key
        else:
            out += f"[{key!r}]"
    return out


# ----------------------------------------------------------------------------- small parsers

_QUANTITY_SUFFIX = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity ("12", "500m", "48Gi", 2) as a number (cores, bytes, devices)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?", str(value).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _QUANTITY_SUFFIX[m.group(2) or ""]


_MONTHS = {n: i + 1 for i, n in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                             "NOV", "DEC"))}
_WEEKDAYS = {n: i for i, n in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_CRON_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
                ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _WEEKDAYS))


def cron_problems(expr: Any) -> list[str]:
    """Problems of a standard 5-field cron expression (what KubeRay's cron.ParseStandard accepts, minus
    the @descriptors): each field a comma list of `*`, `N`, `A-B`, each optionally `/STEP`, in range."""
    if not isinstance(expr, str):
        return [f"expected a string, got {type(expr).__name__}"]
    fields = expr.split()
    if len(fields) != 5:
        return [f"{expr!r}: expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"]
    problems = []
    for text, (name, lo, hi, names) in zip(fields, _CRON_FIELDS):
        for item in text.split(","):
            base, slash, step = item.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                problems.append(f"{expr!r}: {name}: bad step in {item!r}")
            if base == "*":
                continue
            first, dash, last = base.partition("-")
            values = []
            for v in (first, last) if dash else (first,):
                n = int(v) if v.isdigit() else names.get(v.upper())
                if n is None or not lo <= n <= hi:
                    problems.append(f"{expr!r}: {name}: {v!r} is not in {lo}-{hi}")
                values.append(n)
            if dash and None not in values and values[0] > values[1]:
                problems.append(f"{expr!r}: {name}: empty range {base!r}")
    return problems


def daily_schedule(expr: str) -> bool:
    """True for `M H * * *`: one run a day."""
    f = expr.split()
    return len(f) == 5 and f[0].isdigit() and f[1].isdigit() and f[2:] == ["*", "*", "*"]


# ----------------------------------------------------------------------------- entry points

@functools.cache
def subcommand_of(module: str) -> str:
    """The `securevqa` subcommand a `python -m jobs.<name>` module runs: read from the module itself
    (jobs/score.py calls `main(["score", *sys.argv[1:]])`)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    m = re.search(r"""main\(\s*\[\s*["']([a-z][a-z-]*)["']\s*,\s*\*sys\.argv\[1:\]""", Path(spec.origin).read_text())
    assert m, f"{spec.origin}: does not call jobs.cli.main([<subcommand>, *sys.argv[1:]])"
    return m.group(1)


def parse_entrypoint(entry: Any, where: str) -> tuple[str, Any]:
    """(module, argparse namespace) of `python -m jobs.<name> ARGS`, parsed by jobs/cli.py's real parser."""
    from jobs.cli import build_parser

    assert isinstance(entry, str) and entry.strip(), f"{where}: empty or not a string"
    argv = shlex.split(entry)
    assert argv[:2] == ["python", "-m"] and len(argv) > 2 and re.fullmatch(r"jobs\.\w+", argv[2]), \
        f"{where}: must start with `python -m jobs.<name>`, got {entry[:60]!r}"
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, f"{where}: module {module} does not exist"
    sub = subcommand_of(module)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args([sub, *argv[3:]])
        except SystemExit:
            raise AssertionError(f"{where}: `securevqa {sub}` rejects the arguments: "
                                 f"{err.getvalue().strip().splitlines()[-1]}") from None
    return module, args


def entrypoint_problems(args: Any, where: str) -> list[str]:
    """Flags that make no sense on a cluster: local paths, a forward group larger than the batch."""
    problems = []
    for flag in URI_FLAGS:
        value = getattr(args, flag, None)
        if value is not None and not str(value).startswith("s3://"):
            problems.append(f"{where}: --{flag.replace('_', '-')} {value}: pods share no filesystem, use s3://")
    if (getattr(args, "forward_videos", None) or 1) > (getattr(args, "batch_size", None) or 1):
        problems.append(f"{where}: --forward-videos {args.forward_videos} > --batch-size {args.batch_size}: "
                        "a forward pass never sees more videos than an actor's batch")
    return problems


# ----------------------------------------------------------------------------- resources

@dataclass(frozen=True)
class GpuPool:
    """The GPU workers a job's actors can land on, as Ray sees them."""

    where: str  # file and field the numbers come from
    cpus_per_node: float
    gpus_per_node: float
    max_nodes: int
    min_nodes: int
    head_cpus: float = 0.0  # Ray CPUs of the head (0: it runs no tasks)

    def full(self) -> dict[str, float]:
        return {"CPU": self.head_cpus + self.max_nodes * self.cpus_per_node,
                "GPU": self.max_nodes * self.gpus_per_node}

    def at_start(self) -> dict[str, float]:
        """`ray.cluster_resources()` when a job starts on the idle cluster (zero totals are absent)."""
        res = {"CPU": self.head_cpus + self.min_nodes * self.cpus_per_node, "GPU": self.min_nodes * self.gpus_per_node}
        return {k: v for k, v in res.items() if v}


def pool_from_raycluster(rc: dict[str, Any], where: str) -> tuple[GpuPool | None, list[str]]:
    problems: list[str] = []
    head_params = dig(rc, ("spec", "headGroupSpec", "rayStartParams"), where, problems) or {}
    if "num-cpus" in head_params:
        head_cpus = float(head_params["num-cpus"])
    else:
        limits = dig(rc, ("spec", "headGroupSpec", "template", "spec", "containers", 0, "resources", "limits"),
                     where, problems) or {}
        head_cpus = quantity(limits.get("cpu", 0))
    pools = []
    for i, g in enumerate(dig(rc, ("spec", "workerGroupSpecs"), where, problems) or []):
        base = ("spec", "workerGroupSpecs", i)
        limits = dig(g, ("template", "spec", "containers", 0, "resources", "limits"), where, problems) or {}
        params = g.get("rayStartParams") or {}
        gpus = float(params["num-gpus"]) if "num-gpus" in params else quantity(limits.get("nvidia.com/gpu", 0))
        if not gpus:
            continue
        cpus = float(params["num-cpus"]) if "num-cpus" in params else quantity(limits.get("cpu", 0))
        pools.append(GpuPool(f"{where}: {fmt_path(base)} (group {g.get('groupName')!r})", cpus, gpus,
                             int(g.get("maxReplicas", 0)), int(g.get("minReplicas", 0)), head_cpus))
    if len(pools) != 1:
        problems.append(f"{where}: spec.workerGroupSpecs: expected exactly one GPU group, found {len(pools)}")
        return None, problems
    return pools[0], problems


def pool_from_rayup(cfg: dict[str, Any], where: str) -> tuple[GpuPool | None, list[str]]:
    types = cfg.get("available_node_types") or {}
    head = types.get(cfg.get("head_node_type"), {})
    gpu_types = [(name, t) for name, t in types.items() if (t.get("resources") or {}).get("GPU", 0) > 0]
    if len(gpu_types) != 1:
        return None, [f"{where}: available_node_types: expected exactly one GPU node type, found {len(gpu_types)}"]
    name, t = gpu_types[0]
    r = t["resources"]
    return GpuPool(f"{where}: available_node_types.{name}", float(r.get("CPU", 0)), float(r["GPU"]),
                   int(t.get("max_workers", 0)), int(t.get("min_workers", 0)),
                   float((head.get("resources") or {}).get("CPU", 0))), []


def start_problems(opts: Any, pool: GpuPool, where: str) -> list[str]:
    """What `pipeline.stages.driver.pool_strategy` decides when the job starts on the idle cluster: the GPU group is at
    minReplicas then (the autoscaler adds pods only for actors that ask for GPUs)."""
    import ray

    from pipeline.stages import driver

    cold = pool.at_start()
    with mock.patch.object(ray, "cluster_resources", return_value=cold), contextlib.redirect_stdout(io.StringIO()):
        try:
            with tempfile.TemporaryDirectory() as empty:  # a stage output with nothing committed yet
                _, resources = driver.pool_strategy(opts, KeyedTable(empty), "check")
        except ValueError as e:
            return [(f"{where}: at job start the cluster has {cold or 'no CPUs or GPUs'} ({pool.where} starts at "
                     f"{pool.min_nodes} nodes) and the stage refuses to plan: {e}")]
    if not resources["num_gpus"]:
        how = ("--actors-per-gpu auto falls back to CPU actors" if opts.actors_per_gpu == "auto"
               else "without --actors-per-gpu/--gpus-per-actor the actors reserve no GPU")
        return [(f"{where}: at job start the cluster has {cold or 'no CPUs or GPUs'} ({pool.where} starts at "
                 f"{pool.min_nodes} nodes), so {how}: the run would score on CPUs and never scale the GPU group")]
    return []


def fit_problems(args: Any, pool: GpuPool, where: str) -> list[str]:
    """Do the job's actors fit `pool`? Per-actor resources and pool size from `plan_actors` at the group's
    full size; for `--actors-per-gpu auto`, the largest count auto can pick there (its CPU cap)."""
    from jobs.cli import spec_and_options
    from pipeline.stages.resources import actors_per_gpu, plan_actors

    _, opts = spec_and_options(args, {})
    problems = start_problems(opts, pool, where)
    if opts.actors_per_gpu == "auto":
        worst = actors_per_gpu(1e9, 1.0, cpus_per_gpu=pool.cpus_per_node / pool.gpus_per_node,
                               cpus_per_actor=opts.cpus_per_actor)
        opts = replace(opts, actors_per_gpu=worst)
        where = f"{where} (auto at its maximum, {worst} per GPU)"
    try:
        plan = plan_actors(opts, pool.full())
    except ValueError as e:
        return problems + [f"{where}: plan_actors refuses the run on {pool.where}: {e}"]
    if plan.num_gpus <= 0:
        return problems + [f"{where}: the actors reserve no GPU (num_gpus {plan.num_gpus}) on {pool.where}"]
    by_gpu = math.floor(pool.gpus_per_node / plan.num_gpus + 1e-9)
    by_cpu = math.floor(pool.cpus_per_node / plan.num_cpus + 1e-9) if plan.num_cpus > 0 else math.inf
    per_node = min(by_gpu, by_cpu)
    shape = (f"actor = {plan.num_gpus:g} GPU + {plan.num_cpus:g} CPU, node = {pool.gpus_per_node:g} GPU + "
             f"{pool.cpus_per_node:g} CPU ({pool.where})")
    if per_node < 1:
        return problems + [f"{where}: an actor does not fit a node: {shape}"]
    if by_cpu < by_gpu:
        problems.append(f"{where}: CPUs are the bottleneck: a node fits {by_cpu} actors by CPU but {by_gpu} by GPU, "
                        f"so part of each GPU stays idle: {shape}")
    if plan.size > pool.max_nodes * per_node:
        problems.append(f"{where}: {plan.size} actors need {math.ceil(plan.size / per_node)} nodes at {per_node} per "
                        f"node, the group has at most {pool.max_nodes}: the job would wait forever ({shape})")
    left = pool.cpus_per_node - min(per_node, plan.size) * plan.num_cpus
    if left < 1 and pool.head_cpus < 1:
        problems.append(f"{where}: a full node keeps {left:g} CPUs for Ray Data's tasks and the head has none: "
                        f"repartition/read tasks could never run ({shape})")
    return problems


# ----------------------------------------------------------------------------- Kubernetes objects

def k8s_problems(doc: Any, kind: str, where: str) -> list[str]:
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"{where}: apiVersion: expected ray.io/v1, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != kind:
        problems.append(f"{where}: kind: expected {kind}, got {doc.get('kind')!r}")
    name = dig(doc, ("metadata", "name"), where, problems)
    if name is not None:
        if not (isinstance(name, str) and DNS1035.fullmatch(name)):
            problems.append(f"{where}: metadata.name {name!r}: not a DNS-1035 label")
        elif len(name) > NAME_LIMITS[kind]:
            problems.append(f"{where}: metadata.name {name!r}: longer than KubeRay's {NAME_LIMITS[kind]} for a {kind}")
    return problems


def _container_problems(c: dict[str, Any], at: str, where: str) -> list[str]:
    problems = []
    if not c.get("image"):
        problems.append(f"{where}: {at}.image: missing")
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    for key in ("cpu", "memory"):
        if key not in lim:
            problems.append(f"{where}: {at}.resources.limits.{key}: missing")
    for key in sorted(set(req) | set(lim)):
        try:
            if key not in req or key not in lim or quantity(req[key]) != quantity(lim[key]):
                problems.append(f"{where}: {at}.resources: requests.{key} {req.get(key)!r} != limits.{key} "
                                f"{lim.get(key)!r} (Ray sizes itself from limits; keep them equal)")
        except ValueError as e:
            problems.append(f"{where}: {at}.resources.{key}: {e}")
    return problems


def _start_param_problems(params: Any, at: str, where: str) -> list[str]:
    if not isinstance(params, dict):
        return [f"{where}: {at}.rayStartParams: missing or not a mapping"]
    return [f"{where}: {at}.rayStartParams.{k}: {v!r} is not a string (the CRD's map[string]string; quote it)"
            for k, v in params.items() if not isinstance(v, str)]


def raycluster_problems(rc: Any, where: str) -> list[str]:
    import ray

    problems = k8s_problems(rc, "RayCluster", where)
    if problems and not isinstance(rc, dict):
        return problems
    spec = dig(rc, ("spec",), where, problems) or {}
    if spec.get("rayVersion") != ray.__version__:
        problems.append(f"{where}: spec.rayVersion {spec.get('rayVersion')!r} != installed Ray {ray.__version__}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{where}: spec.enableInTreeAutoscaling: must be true (the GPU group scales from 0)")

    head = dig(rc, ("spec", "headGroupSpec"), where, problems) or {}
    problems += _start_param_problems(head.get("rayStartParams"), "spec.headGroupSpec", where)
    if (head.get("rayStartParams") or {}).get("num-cpus") != "0":
        problems.append(f"{where}: spec.headGroupSpec.rayStartParams.num-cpus: must be \"0\" (no work on the head)")
    containers = dig(rc, ("spec", "headGroupSpec", "template", "spec", "containers"), where, problems) or []
    if not containers:
        problems.append(f"{where}: spec.headGroupSpec.template.spec.containers: empty")
    for i, c in enumerate(containers):
        problems += _container_problems(c, f"spec.headGroupSpec.template.spec.containers[{i}]", where)
    if containers and "nvidia.com/gpu" in ((containers[0].get("resources") or {}).get("limits") or {}):
        problems.append(f"{where}: spec.headGroupSpec: the head asks for a GPU; it should be CPU-only")

    groups = dig(rc, ("spec", "workerGroupSpecs"), where, problems) or []
    if not groups:
        problems.append(f"{where}: spec.workerGroupSpecs: empty")
    for gi, g in enumerate(groups):
        at = f"spec.workerGroupSpecs[{gi}]"
        for key in ("groupName", "minReplicas", "maxReplicas"):
            if key not in g:
                problems.append(f"{where}: {at}.{key}: missing")
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", g.get("minReplicas", 0)), g.get("maxReplicas", 0)
        if not all(isinstance(x, int) for x in (lo, n, hi)) or not 0 <= lo <= n <= hi or hi < 1:
            problems.append(f"{where}: {at}: need 0 <= minReplicas ({lo}) <= replicas ({n}) <= maxReplicas ({hi}), "
                            "maxReplicas >= 1")
        params = g.get("rayStartParams")
        problems += _start_param_problems(params, at, where)
        params = params if isinstance(params, dict) else {}
        pod = (g.get("template") or {}).get("spec") or {}
        cs = pod.get("containers") or []
        if not cs:
            problems.append(f"{where}: {at}.template.spec.containers: empty")
            continue
        for ci, c in enumerate(cs):
            problems += _container_problems(c, f"{at}.template.spec.containers[{ci}]", where)
        lim = (cs[0].get("resources") or {}).get("limits") or {}
        ray_at = f"{at}.template.spec.containers[0].resources.limits"
        for param, key in (("num-cpus", "cpu"), ("num-gpus", "nvidia.com/gpu")):
            if param in params:
                try:
                    if float(params[param]) != quantity(lim.get(key, 0)):
                        problems.append(f"{where}: {at}.rayStartParams.{param} {params[param]!r} != "
                                        f"{ray_at}.{key} {lim.get(key)!r}")
                except ValueError as e:
                    problems.append(f"{where}: {at}.rayStartParams.{param}: {e}")
        if quantity(lim.get("nvidia.com/gpu", 0)) > 0:
            if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations") or []):
                problems.append(f"{where}: {at}.template.spec.tolerations: none for nvidia.com/gpu (GPU nodes are "
                                "usually tainted with it)")
            shm = [m for m in cs[0].get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"]
            vols = {v.get("name"): v for v in pod.get("volumes") or []}
            vol = vols.get(shm[0].get("name")) if shm else None
            if not vol or (vol.get("emptyDir") or {}).get("medium") != "Memory":
                problems.append(f"{where}: {at}.template.spec: no memory-backed emptyDir on /dev/shm for the "
                                "object store")
            elif "sizeLimit" in vol["emptyDir"] and "memory" in lim and \
                    quantity(vol["emptyDir"]["sizeLimit"]) < 0.3 * quantity(lim["memory"]):
                problems.append(f"{where}: {at}.template.spec.volumes[{vol['name']}].emptyDir.sizeLimit is below the "
                                "object store's default 30% of the pod's memory")
    return problems


def rayjob_spec_problems(spec: Any, at: str, where: str, cluster_name: str) -> list[str]:
    """A RayJob spec (or a RayCronJob's jobTemplate) that runs on the existing RayCluster `cluster_name`;
    the rules follow KubeRay's validation of clusterSelector mode."""
    if not isinstance(spec, dict):
        return [f"{where}: {at}: missing or not a mapping"]
    problems = []
    if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
        problems.append(f"{where}: {at}.entrypoint: missing")
    selector = spec.get("clusterSelector")
    if not isinstance(selector, dict) or selector.get("ray.io/cluster") != cluster_name:
        problems.append(f"{where}: {at}.clusterSelector['ray.io/cluster']: expected {cluster_name!r} (the "
                        f"RayCluster's metadata.name), got {selector!r}")
    if "rayClusterSpec" in spec:
        problems.append(f"{where}: {at}.rayClusterSpec: jobs use the one RayCluster (clusterSelector), not their own")
    if spec.get("submissionMode", "K8sJobMode") not in ("K8sJobMode", "HTTPMode"):
        problems.append(f"{where}: {at}.submissionMode {spec.get('submissionMode')!r}: use K8sJobMode (SidecarMode "
                        "does not work with clusterSelector, InteractiveMode waits for a manual submit)")
    if spec.get("backoffLimit", 0) not in (0, None):
        problems.append(f"{where}: {at}.backoffLimit: KubeRay rejects backoffLimit > 0 with clusterSelector")
    if spec.get("suspend"):
        problems.append(f"{where}: {at}.suspend: not supported with clusterSelector")
    if spec.get("shutdownAfterJobFinishes"):
        problems.append(f"{where}: {at}.shutdownAfterJobFinishes: must be false, the cluster is shared")
    if spec.get("ttlSecondsAfterFinished", 0):
        problems.append(f"{where}: {at}.ttlSecondsAfterFinished: not allowed without shutdownAfterJobFinishes")
    deadline = spec.get("activeDeadlineSeconds")
    if not (isinstance(deadline, int) and deadline > 0):
        problems.append(f"{where}: {at}.activeDeadlineSeconds {deadline!r}: set a positive bound, else actors that "
                        "can never be placed keep the job waiting forever")
    env = spec.get("runtimeEnvYAML")
    if env is not None:
        try:
            parsed = yaml.safe_load(env)
        except yaml.YAMLError as e:
            parsed = f"invalid YAML: {e}"
        if not isinstance(parsed, dict):
            problems.append(f"{where}: {at}.runtimeEnvYAML: not a YAML mapping ({parsed!r})")
    return problems


def raycronjob_problems(cj: Any, where: str, cluster_name: str) -> list[str]:
    problems = k8s_problems(cj, "RayCronJob", where)
    if not isinstance(cj, dict):
        return problems
    schedule = dig(cj, ("spec", "schedule"), where, problems)
    if schedule is not None:
        problems += [f"{where}: spec.schedule: {p}" for p in cron_problems(schedule)]
    template = dig(cj, ("spec", "jobTemplate"), where, problems)
    problems += rayjob_spec_problems(template, "spec.jobTemplate", where, cluster_name)
    deadline = (template or {}).get("activeDeadlineSeconds")
    if isinstance(schedule, str) and daily_schedule(schedule) and isinstance(deadline, int) and deadline >= 86400:
        problems.append(f"{where}: spec.jobTemplate.activeDeadlineSeconds {deadline}: a daily run must end before "
                        "the next one starts")
    return problems


# ----------------------------------------------------------------------------- ray up

def rayup_problems(cfg: Any, where: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(cfg, dict):
        return [f"{where}: not a mapping"]
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type"):
        if key not in cfg:
            problems.append(f"{where}: {key}: missing")
    if (cfg.get("provider") or {}).get("type") != "aws":
        problems.append(f"{where}: provider.type: expected aws, got {(cfg.get('provider') or {}).get('type')!r}")
    types = cfg.get("available_node_types") or {}
    if cfg.get("head_node_type") not in types:
        problems.append(f"{where}: head_node_type {cfg.get('head_node_type')!r} is not in available_node_types")
    for name, t in types.items():
        at = f"available_node_types.{name}"
        for key in ("resources", "node_config"):
            if key not in t:
                problems.append(f"{where}: {at}.{key}: missing")
        if "InstanceType" not in (t.get("node_config") or {}):
            problems.append(f"{where}: {at}.node_config.InstanceType: missing")
        lo, hi = t.get("min_workers", 0), t.get("max_workers", 0)
        if name != cfg.get("head_node_type") and not 0 <= lo <= hi <= cfg.get("max_workers", 0):
            problems.append(f"{where}: {at}: need 0 <= min_workers ({lo}) <= max_workers ({hi}) <= max_workers "
                            f"of the cluster ({cfg.get('max_workers')})")
    head = types.get(cfg.get("head_node_type"), {})
    if (head.get("resources") or {}).get("CPU") != 0 or (head.get("resources") or {}).get("GPU", 0):
        problems.append(f"{where}: available_node_types.{cfg.get('head_node_type')}.resources: the head should be "
                        "{\"CPU\": 0} (no work on it) and have no GPU")
    docker = cfg.get("docker") or {}
    if not docker.get("image") and not (docker.get("head_image") and docker.get("worker_image")):
        problems.append(f"{where}: docker.image: missing (every node runs the project image)")
    gpus_everywhere = any("--gpus" in o or "--runtime=nvidia" in o
                          for o in (docker.get("run_options") or []) + (docker.get("head_run_options") or []))
    if gpus_everywhere:
        problems.append(f"{where}: docker.run_options/head_run_options: --gpus on the CPU-only head; put it in "
                        "worker_run_options")
    if not any(re.search(r"--gpus[= ]all", o) for o in docker.get("worker_run_options") or []):
        problems.append(f"{where}: docker.worker_run_options: missing --gpus all (torch would see no GPU)")
    head_cmds = " ; ".join(cfg.get("head_start_ray_commands") or [])
    worker_cmds = " ; ".join(cfg.get("worker_start_ray_commands") or [])
    for needle in ("ray start --head", "--autoscaling-config=~/ray_bootstrap_config.yaml", "--dashboard-host=0.0.0.0"):
        if needle not in head_cmds:
            problems.append(f"{where}: head_start_ray_commands: missing {needle!r}")
    if "ray start --address=$RAY_HEAD_IP:6379" not in worker_cmds:
        problems.append(f"{where}: worker_start_ray_commands: missing 'ray start --address=$RAY_HEAD_IP:6379'")
    return problems


# ----------------------------------------------------------------------------- Dockerfile

@functools.cache
def dockerfile() -> tuple[list[tuple[str, str]], dict[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def parse_dockerfile(text: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(instructions with continuations joined and ARG references expanded, ARG defaults)."""
    lines, buf = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    args: dict[str, str] = {}
    out = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "ARG":
            name, eq, value = rest.strip().partition("=")
            if eq:
                args[name] = value.strip().strip("\"'")
        rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), rest)
        out.append((op, rest.strip()))
    return out, args


def _glob(pattern: str) -> re.Pattern[str]:
    """A .dockerignore glob as a regex: `*` and `?` stay within one path element, `**` spans any depth."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's ignore rule for `path` (relative to the build context): the last pattern matching the path
    or one of its parent directories decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        neg = raw.startswith("!")
        rx = _glob((raw[1:] if neg else raw).strip("/"))
        if any(rx.fullmatch(p) for p in prefixes):
            ignored = not neg
    return ignored


def dockerignore_patterns() -> list[str]:
    return [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def dockerfile_problems(instructions: list[tuple[str, str]], args: dict[str, str], where: str) -> list[str]:
    import ray
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    problems: list[str] = []
    runs = " \n".join(rest for op, rest in instructions if op == "RUN")
    froms = [rest for op, rest in instructions if op == "FROM"]
    base = froms[-1].split()[0] if froms else ""
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-[\w.-]+", base)
    if not m:
        problems.append(f"{where}: FROM {base!r}: expected an nvidia/cuda:<version>-... image")
    wheel_index = re.findall(r"download\.pytorch\.org/whl/(cu\d+)", runs)
    if not wheel_index:
        problems.append(f"{where}: RUN pip install torch: not from the CUDA wheel index download.pytorch.org/whl/cuXYZ")
    elif m and {f"cu{m.group(1)}{m.group(2)}"} != set(wheel_index):
        problems.append(f"{where}: FROM {base}: CUDA {m.group(1)}.{m.group(2)} does not match the torch wheel index "
                        f"{sorted(set(wheel_index))}")

    make = (ROOT / "Makefile").read_text()
    make_torch = re.search(r"^TORCH_CPU\s*:?=\s*torch==(\S+)", make, re.MULTILINE)
    torch_pins = set(re.findall(r"torch==([\w.+]+)", runs))
    if not make_torch:
        problems.append("Makefile: TORCH_CPU: no torch==<version> pin")
    elif torch_pins != {make_torch.group(1)}:
        problems.append(f"{where}: torch pins {sorted(torch_pins)} != Makefile TORCH_CPU torch=={make_torch.group(1)}")

    ray_pins = set(re.findall(r"ray\[[\w,]*\]==([\w.]+)", runs))
    if ray_pins != {ray.__version__} or args.get("RAY_VERSION") != ray.__version__:
        problems.append(f"{where}: Ray pins {sorted(ray_pins)} / ARG RAY_VERSION={args.get('RAY_VERSION')!r} != "
                        f"installed Ray {ray.__version__}")
    project = pyproject()["project"]
    ray_req = next((Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray"), None)
    if ray_req is None or not ray_req.specifier.contains(args.get("RAY_VERSION", "0"), prereleases=True):
        problems.append(f"{where}: ARG RAY_VERSION={args.get('RAY_VERSION')!r} does not satisfy pyproject.toml's {ray_req}")
    py = args.get("PYTHON_VERSION", "")
    if not SpecifierSet(project["requires-python"]).contains(py):
        problems.append(f"{where}: ARG PYTHON_VERSION={py!r} does not satisfy requires-python {project['requires-python']}")
    if f"python{py}" not in runs:
        problems.append(f"{where}: RUN: python{py} is never installed")
    apt = " ".join(rest for op, rest in instructions if op == "RUN" and "apt-get install" in rest)
    for pkg in ("ffmpeg", "wget", "rsync", "openssh-client"):
        if not re.search(rf"(?<![\w-]){re.escape(pkg)}(?![\w-])", apt):
            problems.append(f"{where}: apt-get install: missing {pkg}")
    extras = re.findall(r"pip install\s+[\"']?\.\[([\w,\s]+)\]", runs)
    wanted = {"s3", "decord"}
    if not extras or not wanted <= {e.strip() for e in extras[-1].split(",")}:
        problems.append(f"{where}: RUN pip install .[s3,decord]: the project is not installed with its extras")
    elif not wanted <= set(project.get("optional-dependencies", {})):
        problems.append(f"{where}: extras {sorted(wanted)} are not all defined in pyproject.toml")
    users = [rest for op, rest in instructions if op == "USER"]
    if not users or users[-1] != "ray":
        problems.append(f"{where}: USER: the image must end as user ray (KubeRay expects it), got {users[-1:]}")
    if not re.search(r"useradd\b[^\n]*--home-dir /home/ray\b[^\n]*\bray\b", runs):
        problems.append(f"{where}: RUN useradd: no user ray with home /home/ray")
    labels = " ".join(rest for op, rest in instructions if op == "LABEL")
    version = project["version"]
    if not re.search(rf"org\.opencontainers\.image\.version=\"?{re.escape(version)}\"?", labels):
        problems.append(f"{where}: LABEL org.opencontainers.image.version: expected {version} (pyproject.toml)")
    patterns = dockerignore_patterns() if DOCKERIGNORE.exists() else []
    for op, rest in instructions:
        if op != "COPY":
            continue
        for src in [s for s in rest.split()[:-1] if not s.startswith("--")]:
            if not (ROOT / src).exists():
                problems.append(f"{where}: COPY {src}: not in the build context (repository root)")
            elif dockerignored(src, patterns):
                problems.append(f"{where}: COPY {src}: excluded by {rel(DOCKERIGNORE)}")
    return problems


# ----------------------------------------------------------------------------- runtime env

def runtime_env_problems(env: Any, where: str, *, for_working_dir: bool = True) -> list[str]:
    """A valid Ray runtime env with str -> str env_vars; `for_working_dir`: the one used with `--working-dir .`
    (no working_dir of its own, excludes that keep the venv, .git, outputs and videos home)."""
    from ray.runtime_env import RuntimeEnv

    if not isinstance(env, dict):
        return [f"{where}: not a mapping"]
    problems = []
    if for_working_dir and "working_dir" in env:
        problems.append(f"{where}: working_dir: pass it on the command line (--working-dir .), not in this file")
    try:
        RuntimeEnv(**env)
    except (TypeError, ValueError) as e:
        problems.append(f"{where}: Ray rejects it as a runtime_env: {e}")
    env_vars = env.get("env_vars")
    if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        problems.append(f"{where}: env_vars: must map strings to strings (quote numbers), got {env_vars!r}")
    excludes = env.get("excludes") or []
    probes = (".venv/bin/python", "bench_output/x", "demo_output/videos/a.mp4", "clips/b.mp4", ".git/HEAD")
    for probe in probes if for_working_dir else ():
        if not _excluded(probe, excludes):
            problems.append(f"{where}: excludes: {probe} would be uploaded")
    return problems


def _excluded(path: str, excludes: list[str]) -> bool:
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", excludes)
    parts = path.split("/")
    return any(spec.match_file("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def upload_listing(root: Path, excludes: list[str]) -> dict[str, int]:
    """Files (and sizes) `ray job submit --working-dir <root>` would upload with these excludes, walked by
    Ray's own packager; .gitignore is not applied, so the excludes alone must keep the upload small."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: dict[str, int] = {}

    def visit(p: Path) -> None:
        if p.is_file():
            files[p.relative_to(root).as_posix()] = p.stat().st_size

    _dir_travel(root, [_get_excludes(root, excludes)], visit, include_gitignore=False)
    return files


# ----------------------------------------------------------------------------- README

def readme_entrypoints(text: str) -> list[str]:
    """Every `python -m jobs.<name> ...` command in the README's code blocks (continuations joined)."""
    out = []
    for block in re.findall(r"```[\w-]*\n(.*?)```", text, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            i = line.find("python -m jobs.")
            if i >= 0:
                out.append(line[i:].strip())
    return out


def all_entrypoints() -> list[tuple[str, str, str]]:
    """(id, where, entrypoint) of every job command infra/ runs or documents."""
    rj, cj = load(RAYJOB), load(RAYCRONJOB)
    out = [("rayjob", f"{rel(RAYJOB)}: spec.entrypoint", rj["spec"]["entrypoint"]),
           ("raycronjob", f"{rel(RAYCRONJOB)}: spec.jobTemplate.entrypoint", cj["spec"]["jobTemplate"]["entrypoint"])]
    for i, e in enumerate(readme_entrypoints(README.read_text())):
        out.append((f"readme-{i}", f"{rel(README)}: command {i + 1}", e))
    return out


def cluster_name() -> str:
    return load(RAYCLUSTER)["metadata"]["name"]


def kuberay_pool() -> GpuPool:
    pool, problems = pool_from_raycluster(load(RAYCLUSTER), rel(RAYCLUSTER))
    assert pool is not None and not problems, "\n".join(problems)
    return pool


def rayup_pool() -> GpuPool:
    pool, problems = pool_from_rayup(load(RAYUP), rel(RAYUP))
    assert pool is not None and not problems, "\n".join(problems)
    return pool


def report(problems: list[str]) -> None:
    assert not problems, "\n" + "\n".join(problems)


# ============================================================================= tests: files

@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")), ids=lambda p: rel(p))
def test_every_yaml_parses_to_one_mapping(path: Path) -> None:
    assert isinstance(load(path), dict), f"{rel(path)}: not a YAML mapping"


def test_expected_files_exist() -> None:
    missing = [rel(p) for p in (DOCKERFILE, DOCKERIGNORE, RAYCLUSTER, RAYJOB, RAYCRONJOB, RAYUP, RUNTIME_ENV, README)
               if not p.is_file()]
    assert not missing, f"missing: {missing}"


def test_raycluster() -> None:
    report(raycluster_problems(load(RAYCLUSTER), rel(RAYCLUSTER)))


def test_rayjob() -> None:
    rj = load(RAYJOB)
    problems = k8s_problems(rj, "RayJob", rel(RAYJOB))
    report(problems + rayjob_spec_problems(rj.get("spec"), "spec", rel(RAYJOB), cluster_name()))


def test_raycronjob() -> None:
    report(raycronjob_problems(load(RAYCRONJOB), rel(RAYCRONJOB), cluster_name()))


@pytest.mark.parametrize("expr", ["0 2 * * *", "*/15 * * * *", "0 0-6/2 1,15 * MON-FRI", "30 3 * JAN,jul sun"])
def test_cron_validator_accepts(expr: str) -> None:
    assert cron_problems(expr) == []


@pytest.mark.parametrize("expr", ["0 2 * *", "60 2 * * *", "0 24 * * *", "0 2 0 * *", "0 2 * 13 *", "0 2 * * 7",
                                  "*/0 * * * *", "5-1 * * * *", "0 2 * * FUN", "@daily", 5])
def test_cron_validator_rejects(expr: Any) -> None:
    assert cron_problems(expr), f"{expr!r} should be rejected"


def test_ray_up_config() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load(RAYUP)
    problems = rayup_problems(cfg, rel(RAYUP))
    try:  # Ray's own schema and defaults, exactly what `ray up` runs first (offline)
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except (ValueError, RuntimeError, jsonschema.ValidationError) as e:
        problems.append(f"{rel(RAYUP)}: Ray's cluster launcher rejects it: {e}")
    report(problems)


def test_dockerfile() -> None:
    instructions, args = dockerfile()
    report(dockerfile_problems(instructions, args, rel(DOCKERFILE)))


def test_dockerignore_keeps_the_context_small_and_the_sources_in() -> None:
    patterns = dockerignore_patterns()
    problems = [f"{rel(DOCKERIGNORE)}: {p} is sent to the builder" for p in
                (".venv/bin/python", ".git/HEAD", "bench_output/x.json", "demo_output/videos/a.mp4",
                 "demo_model_output/run/state.pt", "clips/deep/b.mp4") if not dockerignored(p, patterns)]
    problems += [f"{rel(DOCKERIGNORE)}: {p} is excluded but the image needs it" for p in
                 ("pyproject.toml", "README.md", "model/__init__.py", "pipeline/stages/driver.py", "jobs/cli.py")
                 if dockerignored(p, patterns)]
    report(problems)


def test_one_image_everywhere_and_its_tag_names_the_versions() -> None:
    import ray

    rc, cfg = load(RAYCLUSTER), load(RAYUP)
    images = {}
    for i, c in enumerate(rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]):
        images[f"{rel(RAYCLUSTER)}: spec.headGroupSpec...containers[{i}].image"] = c.get("image")
    for gi, g in enumerate(rc["spec"]["workerGroupSpecs"]):
        for i, c in enumerate(g["template"]["spec"]["containers"]):
            images[f"{rel(RAYCLUSTER)}: spec.workerGroupSpecs[{gi}]...containers[{i}].image"] = c.get("image")
    docker = cfg.get("docker") or {}
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            images[f"{rel(RAYUP)}: docker.{key}"] = docker[key]
    for name, t in (cfg.get("available_node_types") or {}).items():
        if "worker_image" in (t.get("docker") or {}):
            images[f"{rel(RAYUP)}: available_node_types.{name}.docker.worker_image"] = t["docker"]["worker_image"]
    distinct = set(images.values())
    assert len(distinct) == 1, "more than one image:\n" + "\n".join(f"{k}: {v}" for k, v in images.items())
    image = distinct.pop()
    assert image and ":" in image.rsplit("/", 1)[-1], f"image {image!r} has no tag"
    tag = image.rsplit(":", 1)[1]
    _, args = dockerfile()
    version = pyproject()["project"]["version"]
    for part in (version, f"ray{ray.__version__}", args.get("TORCH_CUDA", "?")):
        assert part in tag, f"image tag {tag!r} does not name {part!r} (pyproject version, Ray, torch CUDA build)"
    assert image in README.read_text(), f"{rel(README)}: does not show how to build {image}"


def test_ray_version_agrees_everywhere() -> None:
    import ray

    _, args = dockerfile()
    rc = load(RAYCLUSTER)
    versions = {f"{rel(RAYCLUSTER)}: spec.rayVersion": rc["spec"]["rayVersion"],
                f"{rel(DOCKERFILE)}: ARG RAY_VERSION": args.get("RAY_VERSION"),
                "ray installed in .venv": ray.__version__}
    assert len(set(versions.values())) == 1, versions


def test_runtime_env() -> None:
    report(runtime_env_problems(load(RUNTIME_ENV), rel(RUNTIME_ENV)))


@pytest.mark.parametrize("path,field", [(RAYJOB, ("spec",)), (RAYCRONJOB, ("spec", "jobTemplate"))],
                         ids=["rayjob", "raycronjob"])
def test_job_env_vars_equal_runtime_env(path: Path, field: tuple[str, ...]) -> None:
    spec = load(path)
    for key in field:
        spec = spec[key]
    at = f"{rel(path)}: {'.'.join(field)}.runtimeEnvYAML"
    assert "runtimeEnvYAML" in spec, f"{at}: missing"
    job_env = yaml.safe_load(spec["runtimeEnvYAML"])
    want = load(RUNTIME_ENV)["env_vars"]
    assert job_env.get("env_vars") == want, f"{at}: env_vars {job_env.get('env_vars')} != {rel(RUNTIME_ENV)}'s {want}"
    report(runtime_env_problems(job_env, at, for_working_dir=False))


def test_aws_region_agrees() -> None:
    region = load(RUNTIME_ENV)["env_vars"].get("AWS_DEFAULT_REGION")
    assert region == load(RAYUP)["provider"]["region"], \
        f"{rel(RUNTIME_ENV)}: env_vars.AWS_DEFAULT_REGION {region!r} != {rel(RAYUP)}: provider.region"


def test_working_dir_upload_is_small() -> None:
    files = upload_listing(ROOT, load(RUNTIME_ENV)["excludes"])
    total = sum(files.values())
    biggest = sorted(files.items(), key=lambda kv: -kv[1])[:5]
    assert total < MAX_UPLOAD, f"{rel(RUNTIME_ENV)}: excludes leave {total / 2**20:.1f} MiB to upload; largest: {biggest}"
    assert "jobs/cli.py" in files and "pipeline/stages/driver.py" in files, f"{rel(RUNTIME_ENV)}: excludes drop the code"
    leaked = [f for f in files if f.startswith((".venv/", ".git/")) or f.endswith(".mp4")]
    assert not leaked, f"{rel(RUNTIME_ENV)}: excludes let through {leaked[:5]}"


def test_infra_readme_documents_the_commands() -> None:
    text = README.read_text()
    needed = [f"docker build -f {rel(DOCKERFILE)}", f"kubectl apply -f {rel(RAYCLUSTER)}",
              f"kubectl apply -f {rel(RAYJOB)}", f"kubectl apply -f {rel(RAYCRONJOB)}", f"ray up {rel(RAYUP)}",
              f"--runtime-env {rel(RUNTIME_ENV)} --working-dir .", "tests/test_infra.py"]
    missing = [n for n in needed if n not in re.sub(r"\\\n\s*", " ", text)]
    assert not missing, f"{rel(README)}: does not mention {missing}"
    assert readme_entrypoints(text), f"{rel(README)}: no `python -m jobs.<name>` example"


# ============================================================================= tests: entry points and resources

ENTRYPOINTS = all_entrypoints()


@pytest.mark.parametrize("where,entry", [(w, e) for _, w, e in ENTRYPOINTS], ids=[i for i, _, _ in ENTRYPOINTS])
def test_entrypoint_parses_with_the_real_cli(where: str, entry: str) -> None:
    _, args = parse_entrypoint(entry, where)
    report(entrypoint_problems(args, where))


def test_subcommand_mapping() -> None:
    for path in sorted((ROOT / "jobs").glob("*.py")):
        if path.stem in ("__init__", "cli", "demo", "demo_model", "build_data"):  # their own commands
            continue
        assert subcommand_of(f"jobs.{path.stem}") == path.stem.replace("_", "-"), path


@pytest.mark.parametrize("pool_name", ["kuberay", "ray-up"])
@pytest.mark.parametrize("where,entry", [(w, e) for _, w, e in ENTRYPOINTS], ids=[i for i, _, _ in ENTRYPOINTS])
def test_actors_fit_the_gpu_workers(where: str, entry: str, pool_name: str) -> None:
    _, args = parse_entrypoint(entry, where)
    if not hasattr(args, "actors_per_gpu"):
        pytest.skip("not an actor-pool job")
    pool = kuberay_pool() if pool_name == "kuberay" else rayup_pool()
    report(fit_problems(args, pool, where))


# ============================================================================= negative tests: the checkers catch it

def _mutated_job_args(old: str, new: str) -> Any:
    rj = load(RAYJOB)
    entry = rj["spec"]["entrypoint"]
    assert old in entry, f"test needs {old!r} in {rel(RAYJOB)}: spec.entrypoint"
    return parse_entrypoint(entry.replace(old, new), "mutated")[1]


@pytest.mark.parametrize("old,new,expect", [
    ("--actors 8 ", "--actors 40 ", "wait forever"),                      # more actors than 8 pods x 2 hold
    ("--cpus-per-actor 4", "--cpus-per-actor 6", "Ray Data's tasks"),      # 2 x 6 = all 12 CPUs of a pod
    ("--cpus-per-actor 4", "--cpus-per-actor 8", "CPUs are the bottleneck"),  # 1 actor by CPU, 2 by GPU
    ("--cpus-per-actor 4", "--cpus-per-actor 16", "does not fit a node"),
    # The GPU group starts at 0 pods: at job start the cluster has neither CPUs nor GPUs.
    ("--actors 8 --actors-per-gpu 2", "--actors-per-gpu auto", "GPU group scaled to zero"),
    ("--actors-per-gpu 2", "--actors-per-gpu auto", "refuses to plan"),    # CPU actors x 4 CPUs > no CPUs
    ("--actors 8 --actors-per-gpu 2", "", "reserve no GPU"),               # defaults: CPU actors
])
def test_fit_checker_catches(old: str, new: str, expect: str) -> None:
    problems = fit_problems(_mutated_job_args(old, new), kuberay_pool(), "mutated")
    assert any(expect in p for p in problems), problems


def test_fit_checker_auto_worst_case() -> None:
    """With a warm GPU group, auto is judged at the most actors it can pick: its CPU cap keeps one CPU per GPU
    for Ray Data, (12 - 1) // 4 = 2 per GPU, which fits; at 3 CPUs per actor it would pick 3 and still fit."""
    args = _mutated_job_args("--actors-per-gpu 2", "--actors-per-gpu auto")
    warm = replace(kuberay_pool(), min_nodes=1)
    assert fit_problems(args, warm, "mutated") == []
    args = _mutated_job_args("--actors-per-gpu 2 --cpus-per-actor 4", "--actors-per-gpu auto --cpus-per-actor 3")
    assert fit_problems(args, warm, "mutated") == []
    # the cold cluster (GPU group at 0) is refused with a clear message instead of planning CPU actors
    cold = fit_problems(args, kuberay_pool(), "mutated")
    assert cold and "give a number" in cold[0], cold


@pytest.mark.parametrize("mutate,expect", [
    (lambda s: s["clusterSelector"].update({"ray.io/cluster": "other"}), "clusterSelector"),
    (lambda s: s.update(backoffLimit=3), "backoffLimit"),
    (lambda s: s.update(shutdownAfterJobFinishes=True), "shutdownAfterJobFinishes"),
    (lambda s: s.pop("activeDeadlineSeconds"), "activeDeadlineSeconds"),
    (lambda s: s.update(submissionMode="SidecarMode"), "submissionMode"),
    (lambda s: s.update(rayClusterSpec={}), "rayClusterSpec"),
    (lambda s: s.update(runtimeEnvYAML="env_vars: [unclosed"), "runtimeEnvYAML"),
])
def test_rayjob_checker_catches(mutate: Any, expect: str) -> None:
    rj = load(RAYJOB)
    mutate(rj["spec"])
    problems = rayjob_spec_problems(rj["spec"], "spec", "mutated", cluster_name())
    assert any(expect in p for p in problems), problems


def test_raycronjob_checker_catches_a_bad_schedule() -> None:
    cj = load(RAYCRONJOB)
    cj["spec"]["schedule"] = "0 25 * * *"
    assert any("spec.schedule" in p and "hour" in p for p in raycronjob_problems(cj, "mutated", cluster_name()))


@pytest.mark.parametrize("mutate,expect", [
    (lambda s: s["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": 12}), "is not a string"),
    (lambda s: s["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": "16"}), "num-cpus '16' !="),
    (lambda s: s["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": "2"}), "num-gpus '2' !="),
    (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": "4"}), "no work on the head"),
    (lambda s: s.update(rayVersion="2.9.0"), "spec.rayVersion"),
    (lambda s: s["workerGroupSpecs"][0].update(minReplicas=9), "minReplicas"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"].pop("tolerations"), "tolerations"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"].pop("volumes"), "/dev/shm"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["requests"]
     .update(cpu="6"), "requests.cpu"),
])
def test_raycluster_checker_catches(mutate: Any, expect: str) -> None:
    rc = load(RAYCLUSTER)
    mutate(rc["spec"])
    problems = raycluster_problems(rc, "mutated")
    assert any(expect in p for p in problems), problems


@pytest.mark.parametrize("old,new,expect", [
    ("ARG TORCH_VERSION=2.13.0", "ARG TORCH_VERSION=2.12.0", "Makefile TORCH_CPU"),
    ("ARG TORCH_CUDA=cu128", "ARG TORCH_CUDA=cu126", "does not match the torch wheel index"),
    ("ARG RAY_VERSION=2.60.0", "ARG RAY_VERSION=2.50.0", "RAY_VERSION"),
    ("ARG PYTHON_VERSION=3.12", "ARG PYTHON_VERSION=3.10", "requires-python"),
    ("USER ray", "USER root", "USER"),
    ("ffmpeg ", "", "ffmpeg"),
    ('".[s3,decord]"', '"."', ".[s3,decord]"),
])
def test_dockerfile_checker_catches(old: str, new: str, expect: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"test needs {old!r} in {rel(DOCKERFILE)}"
    instructions, args = parse_dockerfile(text.replace(old, new))
    problems = dockerfile_problems(instructions, args, "mutated")
    assert any(expect in p for p in problems), problems


def test_rayup_checker_catches() -> None:
    cfg = load(RAYUP)
    cfg["docker"]["run_options"].append("--gpus all")
    cfg["available_node_types"]["gpu_worker"]["min_workers"] = 9
    cfg["head_node_type"] = "nope"
    problems = rayup_problems(cfg, "mutated")
    for expect in ("CPU-only head", "min_workers (9)", "head_node_type 'nope'"):
        assert any(expect in p for p in problems), (expect, problems)


def test_runtime_env_checker_catches() -> None:
    env = load(RUNTIME_ENV)
    env["excludes"] = [e for e in env["excludes"] if e not in (".venv/", '*.mp4')]
    env["env_vars"]["OMP_NUM_THREADS"] = 4
    env["working_dir"] = "."
    problems = runtime_env_problems(env, "mutated")
    for expect in (".venv/bin/python would be uploaded", "clips/b.mp4 would be uploaded", "env_vars", "working_dir"):
        assert any(expect in p for p in problems), (expect, problems)


def test_upload_listing_applies_the_excludes(tmp_path: Path) -> None:
    for name in (".venv/bin/python", "jobs/cli.py", "demo_output/videos/a.mp4", "clips/b.mp4", "tests/t.py",
                 "pipeline/__pycache__/x.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * 10)
    assert set(upload_listing(tmp_path, load(RUNTIME_ENV)["excludes"])) == {"jobs/cli.py"}
    assert ".venv/bin/python" in upload_listing(tmp_path, ["*.mp4"])
