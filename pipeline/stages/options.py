"""What a stage runs (`ModelSpec`: which model, its version) and how (`RunOptions`)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model import InterEmbedder, SecureVQA, create_model
from model.registry import UNTRAINED_PRESET, default_weights, get_weights

log = logging.getLogger("securevqa.stages")

# ----------------------------------------------------------------------------- run configuration

@dataclass(frozen=True)
class ModelSpec:
    """Which model a stage runs; everything an actor needs to build it, and its version."""

    preset: str | None = None  # None: the checkpoint's own config; with no checkpoint or weights, the default
    checkpoint: str | None = None
    inter_checkpoint: str | None = None
    precision: str = "fp32"  # fp32, bf16, or auto (per model and machine: pipeline/stages/precision.py)
    guardian: bool = True
    device: str = "auto"  # auto: the GPU torch sees (under Ray: the actor's own), else the CPU
    weights: str | None = None  # a registered name (model/registry.py, `securevqa weights`), not with checkpoint/preset

    def __post_init__(self) -> None:
        """Raises ValueError: `weights` with `checkpoint` or `preset`, or an unknown `weights` name."""
        if self.weights is not None:
            if self.checkpoint is not None or self.preset is not None:
                raise ValueError(f"weights {self.weights!r} carry their own file and preset: "
                                 "give weights, or a checkpoint and/or preset, not both")
            get_weights(self.weights)

    @property
    def default_weights(self) -> bool:
        """No checkpoint, preset or weights, and the registry's default entry (model.registry.DEFAULT_WEIGHTS,
        the demo model) is installed: that entry is the model. Without it, the untrained UNTRAINED_PRESET."""
        return (self.checkpoint is None and self.preset is None and self.weights is None
                and default_weights() is not None)

    @property
    def weights_name(self) -> str | None:
        """The registered weights `build` loads: `weights`, or the default entry (`default_weights`)."""
        if self.weights is not None:
            return self.weights
        return default_weights().name if self.default_weights else None  # type: ignore[union-attr]

    def build(self, storage_options: Mapping[str, Any] | None = None, *, resolve_auto: bool = True
              ) -> tuple[SecureVQA, InterEmbedder]:
        """The models on their device in their precision. precision "auto" picks fp32 or bf16 per model on
        this machine (`precision.resolve_auto`: a calibration cached per CPU type, logged); with
        `resolve_auto=False` it builds fp32 (what versions are computed from).
        Raises what create_model raises (a named entry not installed, or failing its sha256 check)."""
        auto = self.precision == "auto"
        common = dict(inter_checkpoint=self.inter_checkpoint, precision="fp32" if auto else self.precision,
                      device=self.device, guardian=self.guardian, storage_options=storage_options)
        if (weights := self.weights_name) is not None:
            vqa, inter = create_model(weights=weights, **common)  # type: ignore[arg-type]
        else:
            preset = self.preset or ("paper" if self.checkpoint else UNTRAINED_PRESET)
            vqa, inter = create_model(preset, checkpoint=self.checkpoint, **common)  # type: ignore[arg-type]
        if auto and resolve_auto:
            from .precision import apply_choice, resolve_auto as choose

            device = next(vqa.parameters()).device
            choice = choose(vqa, inter, device)
            log.info("precision auto: intra %s, inter %s (%s)", choice.intra, choice.inter, choice.why)
            apply_choice(vqa, inter, choice, device)
        return vqa, inter

    def versions(self, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Version strings of the inter and intra models (config hash + weights fingerprint), and the
        preset's number of test clips."""
        # auto: the fp32 weights name the model (the precision each machine picks is in each row's worker)
        vqa, inter = self.build(storage_options, resolve_auto=False)
        return {"inter": model_version(inter, self.guardian, INTER_PREPARATION),
                "score": model_version(vqa, self.guardian), "test_clips": vqa.cfg.sampling.test_clips,
                "sampling": vqa.cfg.sampling}


# How the pipeline resizes the inter frames, part of the inter version (and so of every stage-1 cache key):
# "uint8-aa-bilinear" = PyTorch's uint8 antialiased bilinear kernel (pipeline/stages/prepare.py), whose
# embeddings differ slightly from the float32 resize of earlier versions (docs/capacity.md).
INTER_PREPARATION = "uint8-aa-bilinear"


def model_version(module: SecureVQA | InterEmbedder, guardian: bool, preparation: str | None = None) -> str:
    """`cfg.name-hash` of the config, guardian setting, weights and, where given, the input preparation."""
    h = hashlib.sha256(module.cfg.version().encode())
    h.update(f"guardian={guardian}".encode())
    if preparation is not None:
        h.update(f"preparation={preparation}".encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return f"{module.cfg.name}-{h.hexdigest()[:12]}"


@dataclass
class RunOptions:
    storage_options: dict[str, Any] = field(default_factory=dict)
    actors: int | None = None  # None: one per GPU, else one per 2 CPUs
    batch_size: int = 8  # videos per actor call and per commit
    gpus_per_actor: float | None = None  # None: 1 / actors_per_gpu where the cluster has GPUs, else 0
    actors_per_gpu: int | str | None = None  # actors sharing a GPU (None: 1; "auto": `auto_actors_per_gpu`)
    forward_videos: int | None = None  # videos per forward pass (None: the whole batch on a GPU, 1 on CPU)
    cpus_per_actor: float = 1.0  # logical CPUs Ray reserves per actor
    prepare_cpus: float = 1.0  # logical CPUs Ray reserves per preparation task (decode and cut, one thread)
    # Object-store memory a run may fill with prepared batches waiting for the model (Ray Data pauses the
    # preparation beyond it). A 10 s 1080p video prepares to about 64 MB for both branches.
    prepared_buffer_mb: int = 1024
    threads: int | None = None  # torch threads per actor (None: cpus_per_actor)
    clips: int | None = None  # None: the preset's test clips
    seed: int | None = None  # None: fresh guardian maps and offsets; an int replays a run
    retry_errors: bool = False  # recompute rows that failed last time (e.g. transient I/O)
    progress_s: float = 60.0  # seconds between progress lines of a running stage (0: every batch)
    stream: int | None = None  # video stream to read in every file (None: the default moving one; video.py)
    # Commits between compactions of the output table while a stage runs (0: never): delta-rs' commit
    # time grows with the table's file count (docs/tables.md), compaction keeps it flat.
    compact_every: int = 100

    def key_extra(self) -> tuple[str, ...]:
        """What besides the file and model versions tells rows apart: a chosen stream is other input."""
        return () if self.stream is None else (f"stream={self.stream}",)
