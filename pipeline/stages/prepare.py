"""CPU preparation: one decoding pass turns a video into the uint8 inputs of both branches.

What the model stage receives, per video (docs/capacity.md, "Preparation and inference"):
- inter: the distinct frames the 16 inter segments touch, each resized once on uint8 to the inter size
  (`model.transforms.resize_frames`, dtype uint8), plus the (segments, segment_len) index that rebuilds the
  overlapping segments from them (`inter_input`, on the model's side);
- intra: the K fragment clips, uint8 (K, 3, T, S, S), cut from each frame as it is decoded
  (`model.transforms.draw_fragment_grid`), so no full-size frame is kept or copied to float;
- the state of the video's generator after the draws of the clip offsets and fragment grids, so the
  model stage draws the guardian maps from exactly where the preparation stopped (a seeded run replays
  whatever the batching or the node).

Each frame either branch needs is decoded once (`VideoReader.visit`). Bytes per video are bounded by the
sampling, not by the source resolution: at most segments x segment_len inter frames of 224 x 224 x 3
(77 MB for the paper preset, all frames of a 10 s, 30 fps video: 45 MB) and K clips (19 MB).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model import SamplingConfig
from model.transforms import continuous_sample_indices, draw_fragment_grid, resize_frames, skip_sample_indices
from pipeline.io.video import VideoReader

# A decoded video in memory (T, H, W, 3) uint8, or anything with `VideoReader`'s `info` (num_frames, height,
# width) and `visit` (the training frame cache's `CachedFrames`).
FrameSource = VideoReader | torch.Tensor


@dataclass
class PreparedVideo:
    """The uint8 model inputs of one video (see the module doc); a branch not asked for is None."""

    inter_frames: np.ndarray | None = None  # (U, h, w, 3) uint8, distinct inter frames, resized
    inter_index: np.ndarray | None = None  # (segments, segment_len) int32 positions in inter_frames
    clips: np.ndarray | None = None  # (K, 3, T, S, S) uint8 fragment clips

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.inter_frames, self.inter_index, self.clips) if a is not None)


def _visit(source: FrameSource, indices: np.ndarray, fn: Callable[[int, np.ndarray], None]) -> None:
    """fn(i, rgb (H, W, 3) uint8) once per distinct index of `indices`."""
    if isinstance(source, torch.Tensor):
        for i in np.unique(indices).tolist():
            fn(i, source[i].numpy())
    else:
        source.visit(indices, fn)


def _size(source: FrameSource) -> tuple[int, int, int]:
    """(frames, height, width); raises ValueError for a frame tensor that is not (T, H, W, 3) uint8."""
    if isinstance(source, torch.Tensor):
        if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != torch.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {tuple(source.shape)} {source.dtype}")
        return source.shape[0], source.shape[1], source.shape[2]
    return source.info.num_frames, source.info.height, source.info.width


def prepare_video(source: FrameSource, sampling: SamplingConfig, *, inter: bool, clips: int,
                  generator: torch.Generator | None) -> PreparedVideo:
    """Decode what `inter` (the inter segments, docs/design.md §2.2) and `clips` (that many intra clips
    with their fragments, §2.1; 0 for none) need, each frame once. The intra draws (clip offsets, then
    each clip's fragment grid) consume `generator` in the same order as `inference.intra_clips`, so the
    fragments are identical to it for the same generator state. Raises what the decoder raises
    (pipeline.io.video.VideoDecodeError) and ValueError for a malformed frame tensor.
    """
    s = sampling
    n, height, width = _size(source)
    out = PreparedVideo()
    wanted: list[np.ndarray] = []
    inter_slot: dict[int, int] = {}
    if inter:
        idx = continuous_sample_indices(n, num_segments=s.inter_segments, segment_len=s.inter_segment_len).numpy()
        unique, inverse = np.unique(idx, return_inverse=True)
        inter_slot = {int(f): u for u, f in enumerate(unique)}
        out.inter_frames = np.empty((len(unique), s.inter_size, s.inter_size, 3), np.uint8)
        out.inter_index = inverse.reshape(idx.shape).astype(np.int32)
        wanted.append(unique)
    uses: dict[int, list[tuple[int, int]]] = {}
    grids = []
    if clips:
        clip_idx = skip_sample_indices(n, clip_len=s.clip_len, frame_interval=s.frame_interval, num_clips=clips,
                                       generator=generator)
        grids = [draw_fragment_grid(s.clip_len, height, width, generator=generator, grid=s.fragment_grid,
                                    patch=s.fragment_patch) for _ in range(clips)]
        for k, row in enumerate(clip_idx.tolist()):
            for p, f in enumerate(row):
                uses.setdefault(f, []).append((k, p))
        side = s.fragment_size
        out.clips = np.empty((clips, 3, s.clip_len, side, side), np.uint8)
        wanted.append(np.asarray(sorted(uses), dtype=np.int64))
    if not wanted:
        return out

    def take(i: int, rgb: np.ndarray) -> None:
        if i in inter_slot:
            # A read-only frame (the frame cache's memory map) is copied: torch.from_numpy warns on one, though
            # the resize only reads it. (1, H, W, 3): channels-last memory, as the uint8 resize wants.
            frame = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy())[None]
            small = resize_frames(frame, size=s.inter_size, layout="THWC", dtype=torch.uint8)  # (3, 1, h, w)
            out.inter_frames[inter_slot[i]] = small[:, 0].permute(1, 2, 0).numpy()
        for k, p in uses.get(i, ()):
            out.clips[k, :, p] = grids[k].cut_frame(rgb, p).transpose(2, 0, 1)

    _visit(source, np.concatenate(wanted), take)
    return out


def inter_input(frames: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The inter segments (B?, S, 3, L, h, w) float32 on the 0-255 scale from prepared uint8 frames
    (..., U, h, w, 3) and their (..., S, L) index (`PreparedVideo.inter_frames`, `inter_index`); runs
    wherever the tensors are (the model's device)."""
    if frames.ndim == 4:
        seg = frames[index.long()]  # (S, L, h, w, 3)
    else:
        seg = torch.stack([f[i.long()] for f, i in zip(frames, index)])
    return seg.movedim(-1, -4).to(torch.float32)  # (..., S, 3, L, h, w)


# ----------------------------------------------------------------------------- between the two Ray Data stages

# The columns a preparation task adds to a manifest batch for the model stage. Arrays travel as raw uint8
# (or float32 for a cached embedding) bytes with their shapes in `prep`, a JSON object that also holds
# the output row as the preparation left it (identity, status, video facts, decode seconds).
PREPARED_COLUMNS = ("prep", "inter_frames", "inter_index", "clips", "generator", "embedding")


def encode_prepared(row: dict, video: PreparedVideo | None = None, generator: torch.Generator | None = None,
                    embedding: np.ndarray | None = None) -> dict:
    """The PREPARED_COLUMNS of one video: its output row so far, its uint8 inputs, the state of its
    generator after the preparation's draws, and a cached inter embedding (float32) if it has one."""
    arrays = {"inter_frames": None, "inter_index": None, "clips": None, "embedding": None}
    if video is not None:
        arrays.update(inter_frames=video.inter_frames, inter_index=video.inter_index, clips=video.clips)
    if embedding is not None:
        arrays["embedding"] = np.ascontiguousarray(embedding, dtype=np.float32)
    shapes = {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items() if a is not None}
    out = {k: (None if a is None else a.tobytes()) for k, a in arrays.items()}
    out["generator"] = None if generator is None else generator.get_state().numpy().tobytes()
    out["prep"] = json.dumps({"row": row, "shapes": shapes})
    return out


def decode_prepared(record: Mapping[str, Any]) -> tuple[dict, PreparedVideo | None, torch.Generator | None,
                                                         np.ndarray | None]:
    """(row, inputs or None, generator restored to where the preparation left it, cached embedding) of
    one prepared record (`encode_prepared`)."""
    meta = json.loads(record["prep"])
    arrays = {}
    for name, (dtype, shape) in meta["shapes"].items():
        # a writable copy: the bytes Ray hands over are read-only, and torch refuses to wrap those safely
        arrays[name] = np.frombuffer(bytearray(record[name]), dtype=dtype).reshape(shape)
    video = None
    if any(k in arrays for k in ("inter_frames", "clips")):
        video = PreparedVideo(arrays.get("inter_frames"), arrays.get("inter_index"), arrays.get("clips"))
    generator = None
    if record.get("generator") is not None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(record["generator"]), dtype=torch.uint8))
    return meta["row"], video, generator, arrays.get("embedding")
