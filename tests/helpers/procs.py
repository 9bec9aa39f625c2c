"""Running the CLI as a separate process, and killing it as a crash would (tests of resumability)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.helpers import REPO


def cli_subprocess(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **(env_extra or {})}
    env["RAY_ADDRESS"] = "local"  # its own Ray: never the test session's, nor any other running on this machine
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, its local Ray (raylet, GCS: some start their own sessions) and the actors."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(procs, timeout=10)
