"""Both stages on a multi-node Ray cluster simulated in one machine (`ray.cluster_utils.Cluster`), one
worker node removed while stage 2 runs. Run as its own process (a driver joins one Ray cluster per
process): `python -m tests.helpers.cluster_sim WORKDIR` from the repository root; prints one JSON line
for tests/test_multinode.py.

Nodes: a head with 1 CPU (the driver and Ray Data's own tasks), a CPU-only node with 2 CPUs (preparation
tasks only: no actor fits there) and three worker nodes declaring one GPU each. The score job runs on a
cold cache, so every video's inter embedding and score come from one preparation pass. The pool asks
for two GPU actors, so the third GPU node is the spare that takes over when a node with an actor
disappears (a preempted spot instance, the autoscaler's replacement).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pandas as pd

from tests.helpers import videos as tv
from tests.helpers.micro import micro_checkpoint

N_VIDEOS = 48
BATCH = 2
MB = 2**20
# Every simulated node on loopback (Ray's single-machine mode picks 127.0.0.1), never the host's address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def main(work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.io.table import KeyedTable
    from pipeline.stages.driver import load_table
    from pipeline.stages.options import ModelSpec, RunOptions
    from pipeline.stages.scoring import score

    paths = []
    for i in range(N_VIDEOS):
        paths.append(tv.write_video(work / f"v{i:03d}.mp4", num_frames=10 + i % 7, width=80, height=64))
    manifest = pd.DataFrame({"video_id": [p.stem for p in paths], "uri": [str(p) for p in paths]})
    spec = ModelSpec(checkpoint=str(micro_checkpoint(work / "micro.pt")))

    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * MB, "include_dashboard": False})
    cpu_node = cluster.add_node(num_cpus=2, num_gpus=0, object_store_memory=80 * MB)
    workers = [cluster.add_node(num_cpus=2, num_gpus=1, object_store_memory=80 * MB) for _ in range(3)]
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    cluster.wait_for_nodes()
    resources = ray.cluster_resources()

    out = str(work / "scores")
    store = KeyedTable(out)
    removed: dict = {}

    def remove_a_busy_node() -> None:
        """Once stage 2 has committed a few shards, remove a worker node that is running an actor."""
        deadline = time.time() + 600
        while time.time() < deadline and not removed:
            if (store.version() or 0) >= 3:  # three batches committed
                t = store.read(columns=["worker"]).to_pandas()
                busy = {w.split()[0].removeprefix("node=") for w in t["worker"]}
                for node in workers:
                    if node.node_id[:12] in busy:
                        removed.update(node=node.node_id[:12], committed_before=len(store.committed_keys()))
                        cluster.remove_node(node, allow_graceful=False)
                        return
            time.sleep(0.05)

    opts = RunOptions(actors=2, actors_per_gpu=1, batch_size=BATCH, seed=0, threads=1)
    t0 = time.perf_counter()
    inter_summary = None
    s2 = None
    watcher = threading.Thread(target=remove_a_busy_node, daemon=True)
    try:
        watcher.start()
        s2, inter_summary = score(manifest, str(work / "cache"), out, spec, opts)
    finally:
        watcher.join(timeout=1)
    table = load_table(out)
    raw_rows = len(KeyedTable(out).read())  # every row any reader sees
    deadline = time.time() + 30  # the GCS marks a removed node dead after its health checks time out
    while removed and sum(n["Alive"] for n in ray.nodes()) > 4 and time.time() < deadline:
        time.sleep(0.5)
    result = {
        "resources": {k: v for k, v in resources.items() if k in ("CPU", "GPU")},
        "inter_line": inter_summary.line(), "score_line": s2.line(), "seconds": time.perf_counter() - t0,
        "videos": N_VIDEOS, "rows": len(table), "unique_videos": int(table["video_id"].nunique()),
        "ok": int((table["status"] == "ok").sum()), "raw_rows": raw_rows, "removed": removed,
        "workers": sorted(set(table["worker"])), "nodes_alive": sum(n["Alive"] for n in ray.nodes()),
        "cpu_node": cpu_node.node_id[:12], "gpu_nodes": [n.node_id[:12] for n in workers],
        "cache_rows": len(load_table(str(work / "cache"))),
        "expected_keys_present": sorted(s2.keys) == sorted(table["key"]),
    }
    ray.shutdown()
    cluster.shutdown()
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
