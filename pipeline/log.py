"""Logging of library code: the `securevqa` logger hierarchy.

Library modules log to `logging.getLogger("securevqa.<part>")` and never print; the command line
(`jobs/cli.py`) chooses the level and the format once with `configure`. Ray worker processes (stage
actors, Ray Train workers) start without handlers, so the code that runs there calls `configure` with
the level the driver had (`driver_level`), and their lines reach the driver's log through Ray.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

ROOT = "securevqa"
FORMAT = "%(message)s"  # lines read like the job's own output: "score: 3 videos: 3 done, ..."

# Ray's own loggers: at INFO they describe every dataset execution (plans, operator stats), which
# buries the job's progress lines in a non-interactive log; kept at WARNING unless --verbose.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


class _StandardStream(logging.StreamHandler):
    """Writes to whatever sys.stdout or sys.stderr is at the time of each line (a test's capture, a
    notebook's redirect), not to the object it was when the handler was made."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name_ = name

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return getattr(sys, self.name_)

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass


def configure(level: int = logging.INFO, stream: str = "stderr", *, quiet_ray: bool = True) -> None:
    """One handler on the `securevqa` logger writing `FORMAT` lines to sys.stderr or sys.stdout
    (`stream`), at `level`. Calling it again replaces the handler (no duplicate lines)."""
    root = logging.getLogger(ROOT)
    for h in list(root.handlers):
        if isinstance(h, _StandardStream):
            root.removeHandler(h)
    handler = _StandardStream(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    if quiet_ray:
        quiet_ray_logs(level)


def quiet_ray_logs(level: int = logging.INFO) -> None:
    """Ray's loggers at WARNING (or `level` if higher), and Ray Data's progress bars only on a terminal
    (in a job log each bar redraw is a line). Call again after `ray.init` and after importing
    `ray.data`: both configure Ray's loggers anew."""
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    if "ray.data" in sys.modules:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()
        # Ray Data's memory-issue detector repeats one 8-line warning (an actor holds a model: more memory
        # than Ray reserved for it) every few seconds of a stage, 14 times in one demo run; --verbose keeps it.
        memory = getattr(getattr(ctx, "issue_detectors_config", None), "high_memory_detector_config", None)
        if memory is not None and hasattr(memory, "detection_time_interval_s"):
            memory.detection_time_interval_s = -1


def duration(seconds: float) -> str:
    """A time left for progress lines: "12m05s", "1h07m", or "unknown time"."""
    if seconds == float("inf"):
        return "unknown time"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def driver_level() -> int:
    """The effective level of the `securevqa` logger here (on the driver), to hand to worker processes."""
    return logging.getLogger(ROOT).getEffectiveLevel()


def configure_worker(level: int, *, root_writes: bool | None = None) -> None:
    """In a Ray worker process: the driver's `level`, written to stdout (which Ray forwards to the
    driver's log). Does nothing where a handler is already installed (a local, in-process call).

    `root_writes`: the process's root logger already writes every line to the console (Ray Train workers:
    Ray Train configures it, and its application log file, in each worker), so the `securevqa` lines only
    get the level and reach the console through it; a handler of ours would print each line twice. None:
    true where the root logger holds one of Ray's handlers."""
    root = logging.getLogger(ROOT)
    if root_writes is None:
        ray_handlers = [h for h in logging.getLogger().handlers if type(h).__module__.startswith("ray.")]
        root_writes = root.propagate and bool(ray_handlers)
    if any(isinstance(h, _StandardStream) for h in root.handlers):
        return
    if root_writes:
        root.setLevel(level)
        return
    configure(level, "stdout", quiet_ray=False)
