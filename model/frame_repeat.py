"""Frame repetition, the frame-rate drop a clip shows (the training set's "fps" condition,
docs/training_data.md), for the frame-repeat ranking target (docs/training.md, "the model reads frame drops from
within one token")."""

from __future__ import annotations

import torch

__all__ = ["repeat_frames"]


def repeat_frames(clips: torch.Tensor, factor: int, phase: int | torch.Tensor = 0) -> torch.Tensor:
    """A frame-rate drop seen through a clip: each frame held for `factor` clip frames, as when a video keeps
    every k-th frame and repeats it (the training set's "fps" condition, docs/training_data.md) and the clip
    samples it every `frame_interval` frames, with factor = k // frame_interval.

    clips: (..., T, H, W), any dtype (the frame axis is the third from last); `phase`: where the held frames
    fall, an int or a LongTensor of shape clips.shape[:-4] (one per clip), taken modulo `factor`. Frame t
    becomes frame t - ((t + phase) mod factor): a clip starting p frames after a kept frame has phase p. The
    frames before the first kept one inside the clip hold frame 0 (the kept frame lies before the clip).
    Returns a new tensor of the same shape and dtype. Raises ValueError when factor < 1 or clips have fewer
    than 3 dimensions.
    """
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
    if clips.ndim < 3:
        raise ValueError(f"clips must be (..., T, H, W), got shape {tuple(clips.shape)}")
    t = torch.arange(clips.shape[-3], device=clips.device)
    phase = torch.as_tensor(phase, dtype=torch.long, device=clips.device)
    lead = clips.shape[:-4] if clips.ndim >= 4 else ()
    if phase.ndim and tuple(phase.shape) != tuple(lead):
        raise ValueError(f"phase must be an int or shaped {tuple(lead)}, got {tuple(phase.shape)}")
    idx = (t - (t + phase[..., None]) % int(factor)).clamp_(min=0)  # (*lead, T) or (T,)
    if idx.ndim == 1:
        return clips.index_select(clips.ndim - 3, idx)
    flat = clips.reshape(-1, *clips.shape[-4:])  # (N, C, T, H, W)
    out = torch.stack([c.index_select(1, i) for c, i in zip(flat, idx.reshape(-1, idx.shape[-1]))])
    return out.view_as(clips)
