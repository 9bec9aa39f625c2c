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

The cache never fills its disk: a video whose frames would leave less than the larger of `MIN_FREE_BYTES` and
`MIN_FREE_SHARE` of its disk free (or the `min_free_bytes` given) is not cached; `open` returns None for it and
the caller decodes it as without a cache (`ClipDataset` does), so training goes on at the uncached speed for
those videos only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io.storage import content_key

__all__ = ["MIN_FREE_BYTES", "MIN_FREE_SHARE", "CachedFrames", "FrameCache", "frames_of"]

log = logging.getLogger("securevqa.training")

# What the cache leaves free on its disk. A full disk fails every other writer on the machine: the run's
# checkpoints, Ray's object spilling, a package install (this project's virtual environment takes about
# 5 GB). A 200-content training set takes about 64 GB of cache (docs/training.md).
MIN_FREE_BYTES = 8 * 2**30
# ... and at least this share of it: Ray counts a node's disk as full above 95% used (its default
# local_fs_capacity_threshold) and then fails object creation and spilling; on a 252 GB disk 8 GiB left
# free was 96.8% used (stop 42: "is over 95% full" from the raylet while a run trained).
MIN_FREE_SHARE = 0.06


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
    `min_free_bytes`: what the cache leaves free on its disk (default: the larger of `MIN_FREE_BYTES` and
    `MIN_FREE_SHARE` of the disk; `reserve()` says how much that is); videos that do not fit are named in
    `left_out` and read by their decoder instead.
    """

    def __init__(self, root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None,
                 min_free_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.storage_options = dict(storage_options or {})
        self.min_free_bytes = None if min_free_bytes is None else int(min_free_bytes)  # None: the default rule
        self.left_out: set[str] = set()  # uris not cached for lack of room

    def path(self, uri: str) -> Path:
        key = content_key(uri, storage_options=self.storage_options)
        return self.root / (hashlib.sha256(f"{uri}\n{key}".encode()).hexdigest()[:24] + ".npy")

    def open(self, uri: str) -> CachedFrames | None:
        """The video's cached frames, decoded now if needed; None when they would not fit on the disk
        (see `min_free_bytes`): read the video with its decoder then."""
        path = self._ensure(uri)[0]
        return CachedFrames(path) if path is not None else None

    def warm(self, uris: Iterable[str]) -> int:
        """Decode every video not cached yet; returns how many were decoded and cached (`left_out` names
        those that did not fit)."""
        return sum(self._ensure(uri)[1] for uri in uris)

    def reserve(self) -> int:
        """Bytes the cache leaves free on its disk (the `min_free_bytes` given, else the default rule)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.min_free_bytes is not None:
            return self.min_free_bytes
        return max(MIN_FREE_BYTES, int(MIN_FREE_SHARE * shutil.disk_usage(self.root).total))

    def _fits(self, nbytes: int) -> bool:
        reserve = self.reserve()  # creates root, whose disk is asked
        return shutil.disk_usage(self.root).free - nbytes >= reserve

    def _ensure(self, uri: str) -> tuple[Path | None, bool]:
        """The entry's path (None: not cached, no room), and whether it was decoded and cached now."""
        path = self.path(uri)
        if path.exists():
            return path, False
        if uri in self.left_out or not self._fits(0):  # checked first: a full disk costs no decode
            return self._leave_out(uri), False
        return (path, True) if self._decode(uri, path) else (self._leave_out(uri), False)

    def _leave_out(self, uri: str) -> None:
        if not self.left_out:
            gib = self.reserve() / 2**30
            log.warning(f"frame cache {self.root}: {uri} would leave less than {gib:.1f} GiB of its disk free; "
                        "it and every video that does not fit are decoded each time instead of cached")
        self.left_out.add(uri)

    def _decode(self, uri: str, path: Path) -> bool:
        from pipeline.stages.batching import open_video

        with open_video(uri, self.storage_options) as video:
            info = video.info
            if not self._fits(info.num_frames * info.height * info.width * 3):  # the entry's size, before decoding
                return False
            frames = video.read(np.arange(info.num_frames)).numpy()
        if not self._fits(frames.nbytes):  # the header's frame count can be short of what decodes
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, frames)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
        return True


@contextmanager
def frames_of(uri: str, cache: FrameCache | None, storage_options: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """The video's frame source (`info.num_frames`, `read`): its cached frames where `cache` holds them (the same
    frames as the decoder's), else its decoder, closed on exit."""
    cached = cache.open(uri) if cache is not None else None
    if cached is not None:
        yield cached
        return
    from pipeline.stages.batching import open_video

    with open_video(uri, storage_options or {}) as video:
        yield video
