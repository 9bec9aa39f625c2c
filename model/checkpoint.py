"""Checkpoint interop: read from a path or any fsspec URI, convert known layouts, load strictly.

Formats understood:
- the project's own: {"format": "securevqa", "config": {...}, "state_dict": {...}} (see `save_checkpoint`);
- the reference SecureVQA training checkpoint: {"state_dict": {"fragments_backbone.*", "vqa_head.*"}};
- Video Swin K400 (mmaction): {"state_dict": {"backbone.*", "cls_head.*"}}; the classifier is dropped;
- pytorchvideo SlowFast R50: {"model_state": {"blocks.N.multipathway_blocks.{0,1}...."}}; slow pathway dropped.

Every read goes through `torch.load(..., weights_only=True)`: a checkpoint never executes code.
Every load is strict: a mismatch raises `CheckpointMismatchError` naming the missing, unexpected and
wrongly-shaped keys.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn


class CheckpointMismatchError(RuntimeError):
    """A state dict does not fit a module; lists every offending key."""

    def __init__(
        self,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"checkpoint {source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_preview(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if mismatched:
            shown = [f"{k} (checkpoint {tuple(a)}, model {tuple(b)})" for k, a, b in mismatched]
            lines.append(f"  wrongly-shaped keys ({len(mismatched)}): {_preview(shown)}")
        super().__init__("\n".join(lines))


def _preview(items: list[str], n: int = 12) -> str:
    head = ", ".join(items[:n])
    return head + (f", ... and {len(items) - n} more" if len(items) > n else "")


def read_checkpoint(uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Any:
    """Read a torch checkpoint from a local path or an fsspec URI (s3://, gs://, memory://, ...)."""
    uri = os.fspath(uri)
    if "://" not in uri:
        if not os.path.exists(uri):
            raise FileNotFoundError(f"checkpoint not found: {uri}")
        return torch.load(uri, map_location="cpu", weights_only=True)
    import fsspec  # only needed for remote URIs

    with fsspec.open(uri, "rb", **dict(storage_options or {})) as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "<state_dict>",
    ignore: Iterable[str] = (),
) -> None:
    """Load `state_dict` into `module`, all or nothing.

    Values are cast to each parameter's dtype (e.g. float16 checkpoints into a float32 model).
    Keys matching a regex in `ignore` are skipped on both sides (e.g. recomputed index buffers).
    """
    patterns = [re.compile(p) for p in ignore]

    def kept(k: str) -> bool:
        return not any(p.search(k) for p in patterns)

    target = {k: v for k, v in module.state_dict().items() if kept(k)}
    given = {k: v for k, v in state_dict.items() if kept(k)}
    missing = sorted(set(target) - set(given))
    unexpected = sorted(set(given) - set(target))
    mismatched = [
        (k, tuple(given[k].shape), tuple(target[k].shape))
        for k in sorted(set(given) & set(target))
        if tuple(given[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched)
    with torch.no_grad():
        for k, v in given.items():
            target[k].copy_(v.to(dtype=target[k].dtype))


# ----------------------------------------------------------------------------- key conversions

def pytorchvideo_to_fastpath(model_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the fast-pathway keys of a pytorchvideo SlowFast state dict, in `FastPathway` naming.

    `blocks.N.multipathway_blocks.1.<rest>` -> `blocks.N.<rest>`; slow pathway (index 0), fusion
    and head keys are dropped: the fast pathway never reads them.
    """
    out = {}
    for k, v in model_state.items():
        m = re.match(r"^blocks\.(\d+)\.multipathway_blocks\.1\.(.+)$", k)
        if m:
            out[f"blocks.{m.group(1)}.{m.group(2)}"] = v
    if not out:
        raise CheckpointMismatchError(
            "pytorchvideo SlowFast", ["blocks.*.multipathway_blocks.1.*"], sorted(model_state)[:12], []
        )
    return out


def mmaction_swin_to_backbone(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Video Swin K400 (mmaction) -> intra backbone keys; classifier dropped, index buffers dropped."""
    out = {
        k[len("backbone."):]: v
        for k, v in state_dict.items()
        if k.startswith("backbone.") and "relative_position_index" not in k
    }
    if not out:
        raise CheckpointMismatchError("mmaction Video Swin", ["backbone.*"], sorted(state_dict)[:12], [])
    return out


# Reference SecureVQA head names -> ours (module `model.fusion.FusionHead`).
_REFERENCE_HEAD_RENAMES = (
    ("vqa_head.Embeddings_fusion.shffleconv.", "head.fusion.mix."),
    ("vqa_head.Embeddings_fusion.Intra.bottleneckBlock.", "head.fusion.to_intra."),
    ("vqa_head.Embeddings_fusion.Inter.bottleneckBlock.", "head.fusion.to_inter."),
    ("vqa_head.fc_hid.", "head.fc_hid."),
    ("vqa_head.fc_last.", "head.fc_last."),
)


def reference_to_securevqa(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference SecureVQA training checkpoint -> `SecureVQA` keys (intra backbone and head only).

    The fast pathway is not part of the reference checkpoint: it is loaded from SlowFast weights.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if "relative_position_index" in k:
            continue  # a buffer we recompute
        if k.startswith("fragments_backbone."):
            out["intra." + k[len("fragments_backbone."):]] = v
            continue
        for old, new in _REFERENCE_HEAD_RENAMES:
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            out[k] = v  # unknown: left as is so the strict load names it
    return out


def unwrap_state_dict(ckpt: Any) -> Mapping[str, torch.Tensor]:
    """The state dict inside the common container layouts."""
    if isinstance(ckpt, Mapping):
        for key in ("state_dict", "model_state", "model", "module"):
            if key in ckpt and isinstance(ckpt[key], Mapping):
                return ckpt[key]
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
    raise ValueError("no state dict found in checkpoint (expected 'state_dict' or 'model_state')")


def detect_format(ckpt: Any) -> str:
    """One of 'securevqa', 'reference', 'mmaction_swin', 'pytorchvideo_slowfast'."""
    if isinstance(ckpt, Mapping) and ckpt.get("format") == "securevqa":
        return "securevqa"
    sd = unwrap_state_dict(ckpt)
    keys = list(sd)
    if any(k.startswith("fragments_backbone.") for k in keys):
        return "reference"
    if any(k.startswith("backbone.") for k in keys):
        return "mmaction_swin"
    if any(".multipathway_blocks." in k for k in keys):
        return "pytorchvideo_slowfast"
    raise ValueError(f"unrecognised checkpoint layout; first keys: {_preview(sorted(keys))}")
