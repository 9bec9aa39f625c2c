"""Decoded frames of training videos, kept once on local disk and memory-mapped: decode each video once,
not once per epoch.

Training draws fresh clip offsets and fragments every step, so it needs every frame of a video, every
epoch; re-decoding costs a CPU core beside the model on a laptop (docs/training.md has the step-time
table). `FrameCache(root).open(uri)` returns a frame source with the decoder's interface (`info.num_frames`,
`read(indices)` -> (N, H, W, 3) uint8), backed by an uncompressed `.npy` file that the OS page cache keeps
in memory and every DataLoader process shares. The frames are exactly the decoder's (`tests/test_frame_cache.py`).

Meant for training sets of short clips: a 64-frame 288x512 clip takes 28 MB; a 10-minute 1080p video
would take 90 GB. Entries are keyed by the file's content identity (`storage.content_key`: size and
mtime, or ETag and version on object stores), so a changed file is decoded again; writes are atomic.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io.storage import content_key

__all__ = ["CachedFrames", "FrameCache"]


@dataclass(frozen=True)
class _Info:
    num_frames: int
    height: int
    width: int


class CachedFrames:
    """A decoded video on disk with `VideoReader`'s reading interface (`info.num_frames`, `read`)."""

    def __init__(self, path: Path) -> None:
        self._frames = np.load(path, mmap_mode="r")  # (T, H, W, 3) uint8
        self.info = _Info(*map(int, self._frames.shape[:3]))

    def read(self, indices: Iterable[int] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 frames at `indices` (repeats allowed), like `VideoReader.read`."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else list(indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.info.num_frames):
            raise IndexError(f"frame indices {idx.min()}..{idx.max()} outside 0..{self.info.num_frames - 1}")
        return torch.from_numpy(np.ascontiguousarray(self._frames[idx]))

    def visit(self, indices: Iterable[int] | torch.Tensor | np.ndarray, fn: Callable[[int, np.ndarray], None]) -> None:
        """fn(i, frame (H, W, 3) uint8) once per distinct index, like `VideoReader.visit`."""
        for i in np.unique(np.asarray(indices)).tolist():
            fn(i, np.ascontiguousarray(self._frames[i]))


class FrameCache:
    """Every frame of each video, decoded once into `root` (a local folder).

    `open(uri)` decodes on first use (through `stages.open_video`, local or remote) and memory-maps after.
    """

    def __init__(self, root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.storage_options = dict(storage_options or {})

    def path(self, uri: str) -> Path:
        key = content_key(uri, storage_options=self.storage_options)
        return self.root / (hashlib.sha256(f"{uri}\n{key}".encode()).hexdigest()[:24] + ".npy")

    def open(self, uri: str) -> CachedFrames:
        return CachedFrames(self._ensure(uri)[0])

    def warm(self, uris: Iterable[str]) -> int:
        """Decode every video not cached yet; returns how many were decoded."""
        return sum(self._ensure(uri)[1] for uri in uris)

    def _ensure(self, uri: str) -> tuple[Path, bool]:
        """The entry's path, and whether it had to be decoded now."""
        path = self.path(uri)
        if path.exists():
            return path, False
        self._decode(uri, path)
        return path, True

    def _decode(self, uri: str, path: Path) -> None:
        from pipeline.stages.batching import open_video

        with open_video(uri, self.storage_options) as video:
            frames = video.read(np.arange(video.info.num_frames)).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, frames)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
