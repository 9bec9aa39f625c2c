"""The design card's main entry point end to end, as the README's "Run on a Ray cluster" runs it:
`ray job submit --working-dir . -- python -m jobs.score ...` against a Ray head of its own, here through Ray's
job submission client (what the `ray job submit` CLI calls).

The head is a real `ray start --head` process with its job server (the `job` extra, `ray[default]`): on
loopback, on free ports, in its own temp dir, with token authentication on and a token of its own (passed to
the head in RAY_AUTH_TOKEN and to the client as a header: the test needs no ~/.ray/auth_token and writes none).
It never touches the session's `ray_local` cluster (never `ray stop`, which would stop every Ray on the
machine), and it is stopped in a `finally`: SIGTERM to `ray start --block` (Ray stops what it started), then
SIGKILL for any process of its tree still alive.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import REPO
from tests.helpers import videos as tv

pytestmark = pytest.mark.slow

N_VIDEOS = 3
HEAD_START_S = 180  # `ray start --head` until its job agent takes jobs: 20-60 s on 2 busy cores
JOB_S = 600  # upload, runtime env, both stages on 3 tiny videos: about 2 min on 2 busy cores


def _job_server_missing() -> str | None:
    """Why this Ray has no job server (the dashboard needs ray[default]), or None."""
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:  # a Ray that moved it: let the head's own error speak
        return None
    error = get_dashboard_dependency_error()
    return str(error) if error else None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Head:
    """`ray start --head --block` in a subprocess; `address` is its job server's URL."""

    def __init__(self) -> None:
        ray_cli = Path(sys.executable).with_name("ray")
        if not ray_cli.exists():
            pytest.skip(f"no `ray` command beside {sys.executable}")
        # Unix socket paths live under the temp dir and must stay under ~107 characters: a short dir in /tmp.
        self.temp_dir = tempfile.mkdtemp(prefix="rayjob_", dir="/tmp")
        self.token = secrets.token_hex(32)
        gcs, dashboard, agent, client = _free_ports(4)
        self.address = f"http://127.0.0.1:{dashboard}"
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")}
        env.update({
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP 127.0.0.1: nothing listens beyond loopback
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops at once (no 30 s drain)
            # The job's `python` is whatever the head's PATH finds: this interpreter (the venv's).
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        })
        self.log_path = Path(self.temp_dir) / "ray_start.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(ray_cli), "start", "--head", "--block", "--disable-usage-stats",
             "--node-ip-address", "127.0.0.1", "--port", str(gcs),
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
             "--dashboard-agent-listen-port", str(agent), "--ray-client-server-port", str(client),
             "--num-cpus", "2", "--object-store-memory", str(256 * 2**20), "--temp-dir", self.temp_dir],
            env=env, cwd=self.temp_dir, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def client(self):
        """A JobSubmissionClient once the job server answers (it raises until then)."""
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + HEAD_START_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"`ray start --head` exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})
            except Exception as e:  # ConnectionError until the dashboard is up
                if time.monotonic() > deadline:
                    raise AssertionError(f"no job server at {self.address} after {HEAD_START_S} s ({e}):\n"
                                         f"{self.log()}") from None
            time.sleep(2)

    def submit(self, client, **kwargs) -> str:
        """client.submit_job, retried while the head's job agent has not registered yet (the job server
        answers first and refuses with "No available agent to submit job, please try again later")."""
        deadline = time.monotonic() + HEAD_START_S
        while True:
            try:
                return client.submit_job(**kwargs)
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
            if self.proc.poll() is not None:
                raise AssertionError(f"`ray start --head` exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(2)

    def stop(self) -> None:
        import psutil

        procs = _tree(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # stops the processes it started (no drain: see env)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass
        for p in procs + _tree(self.proc.pid):
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()
        psutil.wait_procs(procs, timeout=10)
        self._log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def head():
    missing = _job_server_missing()
    if missing:
        pytest.skip(f"the job server needs ray[default] (`pip install -e '.[job]'`): {missing}")
    h = Head()
    try:
        yield h
    finally:
        h.stop()


def test_ray_job_submit_runs_the_score_job(head, tmp_path):
    from ray.job_submission import JobStatus

    from pipeline.stages.driver import load_table

    videos = tmp_path / "videos"
    videos.mkdir()
    paths = {f"v{i}": tv.write_video(videos / f"v{i}.mp4", num_frames=40 + 8 * i) for i in range(N_VIDEOS)}
    manifest = videos / "manifest.csv"
    pd.DataFrame({"video_id": list(paths), "uri": [str(p) for p in paths.values()]}).to_csv(manifest, index=False)
    cache, out = tmp_path / "inter", tmp_path / "scores"  # absolute: the job runs in its unpacked working_dir

    client = head.client()
    job = head.submit(
        client,
        entrypoint=f"python -m jobs.score --input {manifest} --cache {cache} --output {out} "
                   "--preset tiny --clips 1 --actors 1 --threads 2 --seed 0",
        runtime_env={"working_dir": str(REPO),
                     "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}})
    started = time.monotonic()
    try:
        status = client.get_job_status(job)
        while not status.is_terminal() and time.monotonic() - started < JOB_S:
            time.sleep(2)
            status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, \
            f"job {job}: {status} after {time.monotonic() - started:.0f} s\n{logs[-6000:]}"
    finally:
        try:
            if not client.get_job_status(job).is_terminal():
                client.stop_job(job)
        except Exception:  # the head is gone: Head.stop() cleans up what is left
            pass
    assert f"score: {N_VIDEOS} videos: {N_VIDEOS} done, 0 failed" in logs, logs[-3000:]

    table = load_table(str(out))
    assert sorted(table["video_id"]) == sorted(paths), table[["video_id", "status"]]
    assert (table["status"] == "ok").all(), table[["video_id", "status", "error"]]
    assert table["key"].is_unique
    assert all(math.isfinite(s) for s in table["score"]), table[["video_id", "score"]]
