"""User-facing entry points: build models from presets, load any supported checkpoint or named weights,
save our own.

    from model import create_model
    vqa, inter = create_model("paper", checkpoint="s3://bucket/securevqa.pt")
    vqa, inter = create_model(weights="tiny-demo")   # model/registry.py; `securevqa weights` lists them
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import torch

from .checkpoint import (
    CheckpointMismatchError,
    detect_format,
    load_state_dict_strict,
    mmaction_swin_to_backbone,
    pytorchvideo_to_fastpath,
    read_checkpoint,
    reference_to_securevqa,
    unwrap_state_dict,
)
from .config import SecureVQAConfig, get_config
from .device import select_device, uses_autocast
from .registry import Weights, get_weights
from .securevqa import InterEmbedder, SecureVQA
from .soup import average_checkpoints

FORMAT = "securevqa"
FORMAT_VERSION = 1
# Index buffers and similar are recomputed from sizes, never loaded.
_RECOMPUTED = (r"relative_position_index$",)


def _sub(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _config_of(ckpt: Any, config: SecureVQAConfig | str | None) -> SecureVQAConfig:
    if isinstance(config, str):
        return get_config(config)
    if config is not None:
        return config
    if isinstance(ckpt, Mapping) and ckpt.get("format") == FORMAT:
        return SecureVQAConfig.from_dict(ckpt["config"])
    return get_config("paper")


def load_securevqa_weights(model: SecureVQA, ckpt: Any, *, source: str = "<checkpoint>") -> None:
    """Intra backbone + fusion head from our format or the reference SecureVQA training layout."""
    fmt = detect_format(ckpt)
    if fmt == FORMAT:
        load_state_dict_strict(model, ckpt["securevqa"], source=source)
    elif fmt == "reference":
        load_state_dict_strict(model, reference_to_securevqa(unwrap_state_dict(ckpt)), source=source)
    else:
        raise ValueError(
            f"{source} is a {fmt} checkpoint, not a SecureVQA one: load it with "
            "load_intra_pretrained (Video Swin) or load_inter_weights (SlowFast)"
        )


def load_intra_pretrained(model: SecureVQA, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Initialise the intra backbone from Video Swin K400 (mmaction) weights.

    The classifier is dropped; the GRPB fragment tables do not exist in Video Swin and start at zero.
    """
    sd = mmaction_swin_to_backbone(unwrap_state_dict(read_checkpoint(uri, storage_options)))
    for k, v in model.intra.state_dict().items():
        if k.endswith("fragment_position_bias_table"):
            sd.setdefault(k, torch.zeros_like(v))
    load_state_dict_strict(model.intra, sd, source=uri, ignore=_RECOMPUTED)


def load_inter_weights(
    embedder: InterEmbedder,
    source: str | os.PathLike[str] | Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Fast-pathway weights from a pytorchvideo SlowFast R50 checkpoint or from our own format.

    `source`: a path or URI, or a checkpoint already read with `read_checkpoint`.
    """
    if isinstance(source, Mapping):
        ckpt, name = source, "<checkpoint>"
    else:
        name = os.fspath(source)
        ckpt = read_checkpoint(name, storage_options)
    fmt = detect_format(ckpt)
    if fmt == FORMAT:
        if ckpt.get("inter") is None:
            raise ValueError(f"{name} holds no inter (fast pathway) weights")
        sd = ckpt["inter"]
    elif fmt == "pytorchvideo_slowfast":
        sd = pytorchvideo_to_fastpath(unwrap_state_dict(ckpt))
    else:
        raise ValueError(f"{name} is a {fmt} checkpoint: it holds no SlowFast fast-pathway weights")
    load_state_dict_strict(embedder.fastpath, sd, source=name)


def create_model(
    preset: str | SecureVQAConfig | None = None,
    *,
    checkpoint: str | None = None,
    weights: str | Weights | None = None,
    inter_checkpoint: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",  # or "auto": model.device.select_device
    guardian: bool = True,
    init_seed: int = 0,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[SecureVQA, InterEmbedder]:
    """Build (SecureVQA, InterEmbedder) in eval mode, optionally loading weights.

    `preset`: the architecture (default "paper"). `checkpoint`: our format (carries its own config,
    which wins over `preset`) or the reference SecureVQA layout. `weights`: instead of `checkpoint`,
    a registered name (model/registry.py) or a `Weights` entry: its file, checked against the
    registered sha256, loaded as `checkpoint` would be, with the entry's preset.
    `inter_checkpoint`: a pytorchvideo SlowFast checkpoint; when omitted and the checkpoint is ours
    with inter weights, those are used. Paths or fsspec URIs (s3:// ...).
    Weights not loaded from a checkpoint are initialised from `init_seed`, so even an untrained
    model is the same model on every run (the guardian maps stay fresh: they take a generator).

    Raises ValueError: `weights` with `checkpoint` or `preset`, or an unknown name (the message lists
    the known ones); model.registry.WeightsNotInstalledError (a FileNotFoundError): the entry's file is
    absent; model.registry.WeightsIntegrityError (a ValueError): its sha256 is not the registered one
    (both digests named); CheckpointMismatchError: the weights do not fit the architecture.
    """
    if weights is not None:
        if checkpoint is not None or preset is not None:
            raise ValueError("create_model: weights= names the checkpoint and its preset; "
                             "pass it without checkpoint= and preset=")
        entry = weights if isinstance(weights, Weights) else get_weights(weights)
        ckpt, source, preset = entry.read(storage_options), f"weights {entry.name!r} ({entry.location})", entry.preset
    else:
        ckpt = read_checkpoint(checkpoint, storage_options) if checkpoint else None
        source = str(checkpoint)
    cfg = _config_of(ckpt, preset if ckpt is None or detect_format(ckpt) != FORMAT else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        vqa, inter = SecureVQA(cfg, guardian=guardian), InterEmbedder(cfg, guardian=guardian)
    if ckpt is not None:
        load_securevqa_weights(vqa, ckpt, source=source)
        if inter_checkpoint is None and detect_format(ckpt) == FORMAT and ckpt.get("inter") is not None:
            load_inter_weights(inter, ckpt)
    if inter_checkpoint:
        load_inter_weights(inter, inter_checkpoint, storage_options)
    dev = select_device(device)
    amp = uses_autocast(precision, dev.type)
    vqa.eval().set_precision(precision, amp=amp).to(dev)  # type: ignore[arg-type]
    inter.set_precision(precision, amp=amp).to(dev)  # type: ignore[arg-type]
    return vqa, inter


def save_checkpoint(
    uri: str,
    vqa: SecureVQA,
    inter: InterEmbedder | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write our format: plain tensors and builtins only, so `weights_only=True` can read it back."""
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": vqa.cfg.to_dict(),
        "config_version": vqa.cfg.version(),
        "securevqa": {k: v.detach().float().cpu() for k, v in vqa.state_dict().items()},
        "inter": None if inter is None else {k: v.detach().cpu() for k, v in inter.fastpath.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    if "://" in uri:
        import fsspec

        with fsspec.open(uri, "wb", **dict(storage_options or {})) as f:
            f.write(buf.getvalue())
    else:
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
        tmp = uri + ".tmp"
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, uri)  # atomic: a crash never leaves half a checkpoint


def _read_for_average(uri: str, storage_options: Mapping[str, Any] | None) -> Any:
    try:
        return read_checkpoint(uri, storage_options)
    except FileNotFoundError:
        raise
    except Exception as e:  # not a torch file at all: a text file, random bytes, a directory
        first_line = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(f"{uri} is not a readable checkpoint ({type(e).__name__}: {first_line})") from e


def average_weights(
    checkpoints: list[str],
    output: str,
    weights: list[float] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the weighted average of our-format checkpoints (paths or fsspec URIs) to `output`
    (model/soup.py: same architecture and inter weights required; `weights` scaled to sum to 1, default
    uniform). The average is loaded into a model strictly before it is saved, so the file reads back as any
    checkpoint does. Returns the metadata written ({"average": {"sources", "weights"}}).

    Raises ValueError (model.soup.average_checkpoints, or a file that is not a torch checkpoint) and
    FileNotFoundError for a missing checkpoint.
    """
    avg = average_checkpoints([_read_for_average(c, storage_options) for c in checkpoints], weights,
                              sources=[os.fspath(c) for c in checkpoints])
    cfg = SecureVQAConfig.from_dict(avg["config"])
    vqa, inter = SecureVQA(cfg), InterEmbedder(cfg)
    load_securevqa_weights(vqa, avg, source="the average")
    if avg.get("inter") is not None:
        load_inter_weights(inter, avg)
    save_checkpoint(output, vqa, inter if avg.get("inter") is not None else None, metadata=avg["metadata"],
                    storage_options=storage_options)
    return avg["metadata"]


__all__ = [
    "CheckpointMismatchError",
    "average_weights",
    "create_model",
    "load_inter_weights",
    "load_intra_pretrained",
    "load_securevqa_weights",
    "save_checkpoint",
]
