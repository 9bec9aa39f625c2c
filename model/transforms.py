"""Frame sampling and pixel transforms for both SecureVQA branches (docs/design.md §2.1, §2.2).

Pure tensor functions: no I/O, no global RNG state of our own. Every random function takes an
explicit ``torch.Generator`` so that pipeline stages can seed per video and replay exactly.
``None`` means fresh randomness from the OS's entropy (``model.rng.make_generator``), never torch's
default generator, whose seed is the same in every process: guardian maps and fragment offsets
must not be predictable to an attacker. Pass a seeded generator to replay.

Pixel values stay on the 0-255 scale until :func:`normalize`, which always comes last.
Videos are uint8 ``(C,T,H,W)`` (model layout) or ``(T,H,W,C)`` (decoder layout); every
function that takes a video returns ``(C,T,H,W)``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .rng import resolve

__all__ = ["MEAN", "STD", "FragmentGrid", "apply_guardian_map", "continuous_sample_indices", "draw_fragment_grid",
           "grid_fragments", "guardian_map", "normalize", "resize_frames", "skip_sample_indices", "to_cthw"]

# Kinetics/ImageNet statistics on the 0-255 scale, shared by both branches (docs/design.md §2).
MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

_LAYOUTS = ("CTHW", "THWC")


# ----------------------------------------------------------------------------- validation


def _positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int >= 1 or raise ValueError (bools are rejected on purpose)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        v = operator.index(value)  # accepts int and 0-dim integer tensors, rejects floats
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def _size_pair(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """Normalise an int or (h, w) pair to a tuple of two positive ints."""
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or an (h, w) pair, got {size!r}")
        return _positive_int(size[0], f"{name}[0]"), _positive_int(size[1], f"{name}[1]")
    s = _positive_int(size, name)
    return s, s


def to_cthw(video: torch.Tensor, layout: str = "CTHW", *, channels: int | None = 3) -> torch.Tensor:
    """Validate a 4-D video and return it as a (C,T,H,W) view (no copy).

    ``channels`` guards against passing one layout under the other's name (e.g. a CTHW clip
    declared as THWC would show 224 "channels"); ``None`` skips that check.
    """
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video must be a torch.Tensor, got {type(video).__name__}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if video.ndim != 4:
        raise ValueError(
            f"video must be 4-D ({layout}), got shape {tuple(video.shape)} ({video.ndim}-D)"
        )
    out = video if layout == "CTHW" else video.permute(3, 0, 1, 2)
    c, t, h, w = out.shape
    if channels is not None and c != channels:
        raise ValueError(
            f"expected {channels} channels for a {layout} video, got shape "
            f"{tuple(video.shape)} (wrong layout?)"
        )
    if min(c, t, h, w) < 1:
        raise ValueError(f"video has an empty dimension: {layout} shape {tuple(video.shape)}")
    return out


# ----------------------------------------------------------------------------- temporal sampling


def skip_sample_indices(
    num_frames: int,
    *,
    clip_len: int = 32,
    frame_interval: int = 2,
    num_clips: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Intra-branch "skip" sampling (docs/design.md §2.1): frame indices, LongTensor (num_clips, clip_len).

    The N frames are split into ``num_clips`` parts of length L = N // num_clips. In each part a
    start offset is drawn uniformly from [0, L - span) when L > span (span = clip_len *
    frame_interval), else 0. Frame k is part_start + offset + frame_interval * k, modulo N, so short
    videos wrap around. When N < num_clips (L == 0) every part starts at frame 0.
    Offsets are fresh on every call (the reference draws them at test time too).
    """
    n = _positive_int(num_frames, "num_frames")
    clip_len = _positive_int(clip_len, "clip_len")
    frame_interval = _positive_int(frame_interval, "frame_interval")
    num_clips = _positive_int(num_clips, "num_clips")

    part_len = n // num_clips
    span = clip_len * frame_interval
    starts = torch.arange(num_clips, dtype=torch.long) * part_len
    if part_len > span:
        generator = resolve(generator)
        dev = generator.device
        offsets = torch.randint(
            0, part_len - span, (num_clips,), generator=generator, device=dev
        ).to("cpu")
        starts = starts + offsets
    steps = torch.arange(clip_len, dtype=torch.long) * frame_interval
    return (starts[:, None] + steps[None, :]) % n


def continuous_sample_indices(
    num_frames: int, *, num_segments: int = 16, segment_len: int = 32
) -> torch.Tensor:
    """Inter-branch continuous sampling (docs/design.md §2.2): LongTensor (num_segments, segment_len).

    rate = N // num_segments; segment i covers frames [i*rate, i*rate + segment_len), and indices
    past the end repeat the last frame. Deterministic: the frozen inter embeddings are cached.
    """
    n = _positive_int(num_frames, "num_frames")
    num_segments = _positive_int(num_segments, "num_segments")
    segment_len = _positive_int(segment_len, "segment_len")
    rate = n // num_segments
    idx = torch.arange(num_segments, dtype=torch.long)[:, None] * rate + torch.arange(
        segment_len, dtype=torch.long
    )
    return idx.clamp_(max=n - 1)


# ----------------------------------------------------------------------------- spatial transforms


def _upsampled_size(h: int, w: int, min_side: int) -> tuple[int, int]:
    """Size with the short side exactly ``min_side`` and the long side scaled by the same ratio.

    Integer round-half-up arithmetic: ``scale_factor``-style float products can floor to 223.
    """
    if h <= w:
        return min_side, max(min_side, (2 * w * min_side + h) // (2 * h))
    return max(min_side, (2 * h * min_side + w) // (2 * w)), min_side


def _bilinear(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (C,T,H,W) clip to ``size``; uint8 comes back as uint8 (round + clamp),
    floating input stays floating and differentiable (attacks backpropagate through it)."""
    frames = video.transpose(0, 1).to(torch.float32)  # (T,C,H,W): frames are the batch
    out = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
    if video.dtype != torch.uint8:
        return out.transpose(0, 1)
    return out.round_().clamp_(0, 255).to(torch.uint8).transpose(0, 1)


@dataclass(frozen=True)
class FragmentGrid:
    """Where a clip's fragments are cut (docs/design.md §2.1): the draws of `grid_fragments`, made once.

    ``rows``/``cols``: LongTensor (blocks, grid, grid), the top-left corner of each cell's patch in
    block b (frames [b*align, (b+1)*align) of the clip) on a frame of ``size`` (the upsampled size when
    the source's short side is below grid*patch, else the source size ``source``). Drawing the grid
    first lets a decoder cut each frame's fragments as it arrives (`cut`), without keeping the clip's
    full-size frames.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    size: tuple[int, int]
    source: tuple[int, int]
    grid: int
    patch: int
    align: int

    @property
    def side(self) -> int:
        return self.grid * self.patch

    def cut_frame(self, frame: np.ndarray, position: int) -> np.ndarray:
        """The fragments (side, side, 3) of one decoded frame (H, W, 3) uint8 at ``position`` in the clip:
        equal to ``cut(frame[None], position, layout="THWC")`` permuted, by 49 slice copies instead of a
        gather (the pipeline's per-frame path). Frames that need upsampling go through `cut`."""
        if tuple(frame.shape[:2]) != self.source:
            raise ValueError(f"a frame of size {tuple(frame.shape[:2])} for a fragment grid drawn on {self.source}")
        if self.size != self.source:
            # torch.from_numpy warns on a read-only frame (a memory map), though `cut` only reads it: copy that one
            frame = frame if frame.flags.writeable else frame.copy()
            return self.cut(torch.from_numpy(frame)[None], position, layout="THWC")[:, 0].permute(1, 2, 0).numpy()
        b = min(position // self.align, self.rows.shape[0] - 1)
        rows, cols, p = self.rows[b].tolist(), self.cols[b].tolist(), self.patch
        out = np.empty((self.side, self.side, frame.shape[2]), frame.dtype)
        for i in range(self.grid):
            for j in range(self.grid):
                r, c = rows[i][j], cols[i][j]
                out[i * p:(i + 1) * p, j * p:(j + 1) * p] = frame[r:r + p, c:c + p]
        return out

    def cut(self, frames: torch.Tensor, first: int = 0, *, layout: str = "CTHW") -> torch.Tensor:
        """Fragments (C, T, side, side) of ``frames``, frames ``first .. first+T-1`` of the clip (same dtype:
        uint8 or floating 0-255). Raises ValueError if the frames are not the grid's source size."""
        v = to_cthw(frames, layout)
        if tuple(v.shape[-2:]) != self.source:
            raise ValueError(f"frames of size {tuple(v.shape[-2:])} for a fragment grid drawn on {self.source}")
        t = v.shape[1]
        dev = v.device
        grid, patch = self.grid, self.patch
        block = (torch.arange(first, first + t, device=dev) // self.align).clamp_(max=self.rows.shape[0] - 1)
        p = torch.arange(patch, device=dev)
        t_idx = torch.arange(t, device=dev).view(t, 1, 1, 1, 1)
        # One advanced-indexing gather straight into output order (T, grid_i, patch_y, grid_j, patch_x),
        # instead of grid*grid*blocks Python slices.
        r_idx = self.rows.to(dev)[block].view(t, grid, 1, grid, 1) + p.view(1, 1, patch, 1, 1)
        c_idx = self.cols.to(dev)[block].view(t, grid, 1, grid, 1) + p.view(1, 1, 1, 1, patch)
        if self.size == self.source:
            out = v[:, t_idx, r_idx, c_idx]  # (C, T, grid, patch, grid, patch)
        else:
            out = _bilinear_at(v, self.size, t_idx, r_idx, c_idx)
        return out.reshape(v.shape[0], t, self.side, self.side)


def draw_fragment_grid(
    num_frames: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator | None = None,
    grid: int = 7,
    patch: int = 32,
    align: int = 32,
) -> FragmentGrid:
    """The random part of `grid_fragments` for a clip of ``num_frames`` frames of ``height`` x ``width``
    (docs/design.md §2.1): one patch offset per cell and per block of ``align`` frames. Consumes the
    generator exactly as `grid_fragments` does (rows, then columns), so either replays the other."""
    t = _positive_int(num_frames, "num_frames")
    grid = _positive_int(grid, "grid")
    patch = _positive_int(patch, "patch")
    align = _positive_int(align, "align")
    h, w = _positive_int(height, "height"), _positive_int(width, "width")
    source = (h, w)
    out_side = grid * patch
    if min(h, w) < out_side:
        # The grid is laid on the upsampled frame, but only the pixels the patches read are computed
        # (`_bilinear_at`): upsampling a 1024x16 frame whole would take 14336x224 pixels per frame.
        h, w = _upsampled_size(h, w, out_side)
    cell_h, cell_w = h // grid, w // grid
    num_blocks = -(-t // align)
    generator = resolve(generator)
    dev = generator.device

    def offsets(cell: int) -> torch.Tensor:
        if cell > patch:
            return torch.randint(0, cell - patch, (num_blocks, grid, grid), generator=generator, device=dev).cpu()
        return torch.zeros((num_blocks, grid, grid), dtype=torch.long)

    # Draw order (rows, then columns) is part of the replay contract for a given seed.
    off_r, off_c = offsets(cell_h), offsets(cell_w)
    # The min(..., H - patch) clamp of docs/design.md §2.1 is kept for fidelity; after the upsampling above
    # H // grid >= patch, so it never binds here.
    cells = torch.arange(grid)
    rows = (cells * cell_h).clamp(max=h - patch)[None, :, None] + off_r  # (blocks, grid_i, grid_j)
    cols = (cells * cell_w).clamp(max=w - patch)[None, None, :] + off_c
    return FragmentGrid(rows, cols, (h, w), source, grid, patch, align)


def grid_fragments(
    video: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    layout: str = "CTHW",
    grid: int = 7,
    patch: int = 32,
    align: int = 32,
) -> torch.Tensor:
    """Spatial grid sampling ("fragments", docs/design.md §2.1): (C, T, grid*patch, grid*patch), same dtype.

    Frames whose short side is below grid*patch are first upsampled (bilinear) so the short side is
    exactly grid*patch; the grid is then laid on the *upsampled* frame (unlike the reference, whose
    small videos only ever sample their top-left corner). Cell (i, j) starts at
    (min(i*(H//grid), H-patch), min(j*(W//grid), W-patch)); a patch x patch crop is taken at a random
    offset in [0, H//grid - patch) x [0, W//grid - patch) (0 when the cell is not larger than the
    patch). Offsets are drawn per cell and per block of ``align`` frames and shared inside a block,
    so patches are aligned in time. uint8 is the pipeline's input; floating input (0-255) is the
    attacks' differentiable path, with the same draws for the same generator state.
    `draw_fragment_grid` + `FragmentGrid.cut`, in one call.
    """
    v = to_cthw(video, layout)
    if not (v.dtype == torch.uint8 or v.dtype.is_floating_point):
        raise ValueError(f"grid_fragments expects a uint8 or floating video, got {v.dtype}")
    _, t, h, w = v.shape
    fg = draw_fragment_grid(t, h, w, generator=generator, grid=grid, patch=patch, align=align)
    return fg.cut(v)


def _bilinear_at(video: torch.Tensor, size: tuple[int, int], t_idx: torch.Tensor, r_idx: torch.Tensor,
                 c_idx: torch.Tensor) -> torch.Tensor:
    """``_bilinear(video, size)[:, t_idx, r_idx, c_idx]`` without building the resized frames.

    The same arithmetic as PyTorch's bilinear kernel (align_corners=False, explicit output size):
    source coordinate max((dst + 0.5) * in / out - 0.5, 0) in float32, the two neighbours along each
    axis, rows blended after columns. Memory is that of the output, whatever the frame size.
    """
    _, _, h_in, w_in = video.shape
    dev = video.device

    def axis(idx: torch.Tensor, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32, device=dev)
        src = ((idx.to(torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
        i0 = src.to(torch.long)
        i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
        return i0, i1, src - i0

    y0, y1, ly = axis(r_idx, h_in, size[0])
    x0, x1, lx = axis(c_idx, w_in, size[1])
    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:  # gather first: convert only what is read
        return video[:, t_idx, yy, xx].to(torch.float32)

    out = (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) + ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1))
    if video.dtype != torch.uint8:
        return out.to(video.dtype)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_frames(
    video: torch.Tensor,
    *,
    size: int | Sequence[int] = 224,
    layout: str = "CTHW",
    chunk: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resize every frame to ``size`` (bilinear, antialias, aspect ratio not kept; docs/design.md §2.2).

    Returns (C, T, h, w) on the 0-255 scale in ``dtype``:
    - float32 (default): no rounding; uint8 or floating input, converted ``chunk`` frames at a time so a
      long high-resolution video is never converted to float in one piece.
    - uint8: uint8 input only, resized by PyTorch's uint8 antialiased kernel on channels-last frames
      (fixed-point weights: within 1 level of the float32 result, measured 0.26 on average), which never
      makes a float copy of a full-size frame. What the pipeline's preparation uses (docs/capacity.md).
    Raises ValueError for another dtype, or uint8 output from floating input.
    """
    v = to_cthw(video, layout)
    if not (v.dtype == torch.uint8 or v.dtype.is_floating_point):
        raise ValueError(f"resize_frames expects a uint8 or floating video, got {v.dtype}")
    if dtype not in (torch.float32, torch.uint8):
        raise ValueError(f"resize_frames returns float32 or uint8, not {dtype}")
    out_hw = _size_pair(size)
    chunk = _positive_int(chunk, "chunk")
    if dtype == torch.uint8:
        if v.dtype != torch.uint8:
            raise ValueError(f"uint8 resizing needs uint8 frames, got {v.dtype}")
        frames = v.transpose(0, 1).contiguous(memory_format=torch.channels_last)  # (T, C, H, W), NHWC in memory
        out8 = F.interpolate(frames, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        return out8.transpose(0, 1)
    c, t, _, _ = v.shape
    out = torch.empty((c, t, *out_hw), dtype=torch.float32, device=v.device)
    for s in range(0, t, chunk):
        frames = v[:, s : s + chunk].transpose(0, 1).to(torch.float32)  # (t, C, H, W)
        resized = F.interpolate(
            frames, size=out_hw, mode="bilinear", align_corners=False, antialias=True
        )
        out[:, s : s + chunk] = resized.transpose(0, 1)
    return out


# ----------------------------------------------------------------------------- guardian map


def guardian_map(
    *,
    generator: torch.Generator | None = None,
    channels: int = 3,
    size: int | Sequence[int] = 224,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random guardian map (docs/design.md §2.1): float32 (channels, 1, h, w), entries uniform in {-1, +1}.

    The singleton time axis broadcasts one map over all frames of a clip.
    """
    channels = _positive_int(channels, "channels")
    h, w = _size_pair(size)
    generator = resolve(generator)
    bits = torch.randint(0, 2, (channels, 1, h, w), generator=generator, device=generator.device)
    gmap = bits.to(torch.float32).mul_(2).sub_(1)
    return gmap if device is None else gmap.to(device)


def apply_guardian_map(x: torch.Tensor, gmap: torch.Tensor) -> torch.Tensor:
    """Return clamp(x + gmap, 0, 255) as float32 (docs/design.md §2.1), before normalisation.

    ``x``: 0-255 scale, uint8 or float, (C,T,H,W) or batched (...,C,T,H,W); ``gmap`` broadcasts over
    frames (and batch). Differentiable w.r.t. floating ``x`` so attacks can backpropagate through it
    (the gradient is zero where the clamp saturates, as in the true function).
    """
    if x.ndim < 4:
        raise ValueError(f"x must be (...,C,T,H,W), got shape {tuple(x.shape)}")
    if gmap.ndim < 4 or gmap.shape[-4] != x.shape[-4] or gmap.shape[-2:] != x.shape[-2:]:
        raise ValueError(
            f"guardian map of shape {tuple(gmap.shape)} does not match x of shape "
            f"{tuple(x.shape)} (need matching channels and H, W)"
        )
    if gmap.shape[-3] not in (1, x.shape[-3]):
        raise ValueError(f"guardian map time axis must be 1 or T, got shape {tuple(gmap.shape)}")
    xf = x.to(torch.float32)
    return torch.clamp(xf + gmap.to(device=xf.device, dtype=torch.float32), 0.0, 255.0)


# ----------------------------------------------------------------------------- normalisation


def normalize(
    x: torch.Tensor,
    *,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """(x - mean) / std per channel on the 0-255 scale; channel axis is -4 ((C,T,H,W) or batched).

    Returns float32; the last pixel step before either backbone.
    """
    if x.ndim < 4:
        raise ValueError(f"x must be (...,C,T,H,W), got shape {tuple(x.shape)}")
    if len(mean) != x.shape[-4] or len(std) != x.shape[-4]:
        raise ValueError(
            f"mean/std have {len(mean)}/{len(std)} entries but x has {x.shape[-4]} channels "
            f"(axis -4 of shape {tuple(x.shape)})"
        )
    if any(s == 0 for s in std):
        raise ValueError(f"std must be non-zero, got {tuple(std)}")
    xf = x.to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32, device=xf.device).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=xf.device).view(-1, 1, 1, 1)
    return (xf - m) / s
