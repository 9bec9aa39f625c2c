"""A stage-1 preparation that dies like a native decoder crash (SIGSEGV) on files named crash*: the stage's
crash handling is tested with it (tests/test_score_job.py). It dies in the preparation task, or in the
actor when the driver isolates videos one at a time (the actor then prepares its video itself)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from pipeline.stages.inter import InterExtractor


class CrashingExtractor(InterExtractor):
    def prepare(self, batch: Any):
        if any(Path(str(u)).name.startswith("crash") for u in batch["uri"]):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().prepare(batch)
