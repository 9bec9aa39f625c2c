"""Where the model runs: device choice, mixed precision per device, host-to-device copies.

Pure PyTorch. The pipeline calls these; the decisions are functions of plain arguments so the GPU
logic is tested on CPU-only machines.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def select_device(requested: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None): the first GPU torch sees, else the CPU; 'cpu', 'cuda', 'cuda:N' as given.

    Under Ray each actor sees only its own GPU(s) through CUDA_VISIBLE_DEVICES, so 'cuda' is the
    actor's GPU: the choice comes from torch, never from Ray's GPU ids (docs/design.md §4).
    """
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but torch sees no CUDA GPU (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'}); use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} requested but torch sees {torch.cuda.device_count()} GPU(s)")
    elif device.type not in ("cpu", "meta"):
        raise ValueError(f"unsupported device {device}: use auto, cpu or cuda[:N]")
    return device


def uses_autocast(precision: str, device_type: str) -> bool:
    """bf16 on a GPU is torch.autocast (fp32 weights, bf16 tensor-core matmuls, fp32 reductions).

    On CPU, bf16 means bf16 matmul weights stored once (SwinTransformer3D.set_matmul_dtype): CPU
    autocast re-casts every weight on every call and gained only 1.3x here (docs/design.md §6), the stored
    weights 1.6x (docs/performance.md).
    """
    return precision == "bf16" and device_type == "cuda"


def autocast(precision: str, device_type: str, force: bool = False) -> AbstractContextManager:
    """The autocast region of a bf16 forward pass on a GPU; `force` applies it on any device (tests
    run the GPU path on CPU this way). fp32 never autocasts."""
    if precision == "bf16" and (force or uses_autocast(precision, device_type)):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to `device`. For an accelerator the tensor is pinned first and copied without
    blocking, so the copy overlaps the host's work on the next batch instead of stalling it; uint8
    clips are copied as uint8 (a quarter of the float bytes) and converted on the device."""
    if device.type == "cpu" or x.device == device:
        return x
    if x.device.type == "cpu" and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


__all__ = ["autocast", "select_device", "to_device", "uses_autocast"]
