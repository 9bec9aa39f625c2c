"""The pipeline on a multi-node Ray cluster simulated on this machine, a CPU-only node preparing videos
beside the GPU nodes, one GPU node lost midway: the job completes and every video is present exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # a subprocess that starts a four-node Ray


def test_node_removed_midway_every_video_once(tmp_path):
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.cluster_sim", str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))
    n = r["videos"]
    assert r["resources"] == {"CPU": 9.0, "GPU": 3.0}  # head 1 + CPU-only node 2 + 3 nodes x (2 CPUs, 1 GPU)
    # a node running an actor went away while stage 2 was under way ...
    assert r["removed"], "no node was removed: the stage finished before the watcher acted"
    assert 0 < r["removed"]["committed_before"] < n
    assert r["nodes_alive"] == 4
    # ... and the job still completed: every video once, all scored
    assert r["rows"] == r["unique_videos"] == r["ok"] == n and r["expected_keys_present"]
    assert f"score: {n} videos: {n} done, 0 failed" in r["score_line"]
    # A batch in flight on the lost node is computed again elsewhere; its keys are committed once, so
    # every reader of the Delta table (not only ours) sees each video once.
    assert r["raw_rows"] == n
    # rows came from more than one node, each actor holding a Ray GPU while torch (rightly) runs on the CPU
    nodes = {w.split()[0] for w in r["workers"]}
    assert len(nodes) >= 2 and f"node={r['removed']['node']}" in nodes
    assert all(" gpus=" in w and " gpus=- " not in w and " device=cpu precision=" in w for w in r["workers"])
    # the model ran on GPU nodes only, the preparation also on the CPU-only node (a cold cache: each
    # video's embedding and score from one pass, both committed once)
    model_nodes = {w.split()[0].removeprefix("node=") for w in r["workers"]}
    prep_nodes = {w.split("prep=")[1] for w in r["workers"]}
    assert r["cpu_node"] not in model_nodes and r["cpu_node"] in prep_nodes
    assert r["cache_rows"] == n and f"extract-inter: {n} videos: {n} done" in r["inter_line"]
