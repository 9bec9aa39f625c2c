"""A stage-1 actor that dies like a native decoder crash (SIGSEGV) on files named crash*: the stage's
crash handling is tested with it (tests/test_score_job.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from pipeline.stages.inter import InterExtractor


class CrashingExtractor(InterExtractor):
    def prepare(self, r: Any):
        if Path(str(r.uri)).name.startswith("crash"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().prepare(r)
