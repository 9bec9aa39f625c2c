"""What a result is measured on: the machine's CPU (benchmarks name it with every figure; the precision
calibration keys its cache on it)."""

from __future__ import annotations

import platform
from pathlib import Path

# CPU flags that decide whether bf16 arithmetic is native (AVX-512 BF16, AMX) on x86.
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows, else "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bf16_flags() -> list[str]:
    """The bf16-relevant CPU flags this machine has (`_BF16_FLAGS`; empty where /proc/cpuinfo is absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in _BF16_FLAGS if f in have]
    except OSError:
        pass
    return []
