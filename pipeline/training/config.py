"""What a training run is: the recipe (`TrainConfig`, docs/design.md §2.4) and where it runs (`TrainRun`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model.losses import LossConfig
from model.registry import REGISTRY_FILE
from pipeline.demo.build import FRAME_DROP_CONDITIONS, FRAME_DROP_LEVELS

STATE_FILE = "state.pt"


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class TrainConfig:
    """What is trained and how. The defaults are the reference recipe (docs/design.md §2.4)."""

    preset: str = "paper"
    init_checkpoint: str | None = None  # a SecureVQA checkpoint to start from (ours or the reference layout)
    intra_pretrained: str | None = None  # Video Swin K400 weights (mmaction) for the intra backbone
    inter_checkpoint: str | None = None  # SlowFast R50 K400 weights (pytorchvideo) for the fast pathway
    epochs: int = 30
    batch_size: int = 12  # videos per optimizer step, over all workers
    head_lr: float = 1e-3  # fusion + regression head
    backbone_lr: float = 1e-4  # intra Swin backbone
    weight_decay: float = 0.05
    warmup_epochs: float = 2.5
    ema_decay: float = 0.999
    loss: LossConfig = field(default_factory=LossConfig)
    freeze_backbone: bool = False  # small-dataset protocol: only fusion and head learn
    head_dropout: float | None = None  # None: the preset's (0.5); training only, inference has none
    reinit_head: bool = False  # small-dataset protocol: fusion and head start afresh
    # Swin blocks per stage after loading the weights (model/deepen.py): appended blocks start as the identity,
    # so a small model that stopped fitting its training data grows from what it learned (docs/training.md,
    # "Probes of 2026-12-07"). None: the architecture of the preset or the checkpoint.
    deepen: tuple[int, ...] | None = None
    val_clips: int | None = None  # clips per validation video (None: the preset's test clips)
    guardian: bool = True
    # Batches of `group_size` clips from each of batch/group_size groups (e.g. source content): the
    # losses rank within a batch, and same-content clips make quality, not content, the difference.
    group_column: str | None = None
    group_size: int = 4
    align_groups: bool = False  # a group's clips in a batch share clip offsets and fragments (GroupedBatchSampler)
    grad_clip: float | None = None  # max global gradient norm per step (None: no clipping)
    # Videos of the training split whose clips estimate the frozen fast pathway's BatchNorm statistics
    # before stage 1 (0: keep the weights' own; model.slowfast.FastPathway.calibrate_batchnorm_).
    calibrate_inter: int = 0
    # Make that many of the fast pathway's stem channels (the last ones; 0: none) temporal-difference filters
    # before that calibration (needs calibrate_inter > 0;
    # model.slowfast.FastPathway.difference_stem_) and start the fusion blind to the new embedding
    # (model.fusion.Fusion.forget_inter_). A random pathway sees appearance and no frame holds; this one reads the
    # hold factor (docs/training.md, "A temporal-difference stem for the fast pathway"). Once, when switching.
    difference_stem: int = 0
    # Weight of the texture-statistics target on the final intra tokens (model/pretext.py; 0: none). It
    # makes a randomly initialised Swin measure local energy, which a pooled quality loss barely teaches.
    texture_weight: float = 0.0
    # Weight of the fidelity target (model/pretext.py FidelityHead; 0: none): each final intra token also
    # regresses its cell's SSIM and log MSE against the clean version of the clip, which the manifest's
    # `reference` column names (a frame-aligned video of the same size; docs/training.md, run E).
    fidelity_weight: float = 0.0
    # Weight of the condition target (model/pretext.py ConditionHead; 0: none): the pooled intra features also
    # name each training video's processing condition, the value of the manifest's `condition_column`.
    condition_weight: float = 0.0
    condition_column: str = "condition"
    # Weight of the frame-repeat ranking target (0: none; docs/training.md, "Run X"). Each step, `repeat_clips`
    # clips of the batch are also scored with their frames held as a frame-rate drop of each factor k of
    # `repeat_levels` ((k, label drop) pairs: k in video frames, the drop in label units below the clip's
    # own), with the same fragments and inter embedding, and a margin hinge (the loss's `margin` per label
    # unit) asks the scores to fall in that order. The labels give fps k 2 and k 4 a full MOS apart, but
    # nothing else in a step isolates frame repetition, and trained models read the two alike. Clips whose
    # condition (`condition_column`) is in `repeat_skip` never serve: they repeat frames already.
    repeat_weight: float = 0.0
    repeat_clips: int = 2
    repeat_levels: tuple[tuple[int, float], ...] = ()
    repeat_skip: tuple[str, ...] = ()
    # Where the held frames fall in the clip: None, a phase drawn per clip; 0, held from the clip's first frame,
    # as in every test clip of a 64-frame video (4 parts of 16 frames, offset 0), where each temporal token's
    # two frames are equal at k 2 and at k 4 and only neighbouring tokens tell the two apart (run X).
    repeat_phase: int | None = None
    # The held versions also get held inter segments (pipeline/training/held_inter.py: each base video's inter
    # frames decoded per step and embedded by the frozen pathway) instead of the base video's cached embedding,
    # so the target reaches the inter branch (worth it with a difference stem, which sees holds).
    repeat_inter: bool = False
    # Which pairs the target ranks: "all", the clip above each held version and the held versions by their
    # drops; "held", only the held versions among themselves (k 2 above k 4), which opens the gap between
    # frame-drop levels without asking every held version to fall below its clip (run AG).
    repeat_pairs: str = "all"
    seed: int | None = None  # None: the driver draws one (recorded in history.json, so a run can be replayed)

    def __post_init__(self) -> None:
        if self.difference_stem < 0:
            raise ValueError(f"difference_stem is a number of stem channels, >= 0, got {self.difference_stem}")
        if self.difference_stem and self.calibrate_inter <= 0:
            raise ValueError("the difference stem changes every BatchNorm's input: give calibrate_inter > 0 "
                             "(--calibrate-inter N) with it")
        if self.repeat_weight < 0 or self.repeat_clips < 1:
            raise ValueError(f"repeat_weight must be >= 0 and repeat_clips >= 1, got {self.repeat_weight}, "
                             f"{self.repeat_clips}")
        if self.repeat_weight > 0 and not self.repeat_levels:
            raise ValueError("the frame-repeat target (repeat_weight > 0) needs repeat_levels: (factor, label drop) "
                             "pairs; `securevqa train --recipe demo` carries the demo training set's")
        if self.repeat_inter and self.repeat_weight <= 0:
            raise ValueError("repeat_inter holds the inter segments of the frame-repeat target's clips: give "
                             "repeat_weight > 0 with it")
        if self.repeat_pairs not in ("all", "held"):
            raise ValueError(f"repeat_pairs must be 'all' or 'held', got {self.repeat_pairs!r}")
        if self.repeat_pairs == "held" and len(self.repeat_levels) < 2:
            raise ValueError("repeat_pairs 'held' ranks held versions among themselves: give two or more "
                             "repeat_levels")
        if self.repeat_phase is not None and self.repeat_phase < 0:
            raise ValueError(f"repeat_phase must be None or >= 0, got {self.repeat_phase}")
        for k, drop in self.repeat_levels:
            if int(k) != k or k < 2 or drop <= 0:
                raise ValueError(f"repeat_levels: factor must be an integer >= 2 and the label drop > 0, got "
                                 f"({k}, {drop})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def small_dataset_protocol(cls, **overrides: Any) -> "TrainConfig":
        """The recipe of the small-dataset protocol (`train_splits`, docs/training.md): 10 epochs of
        batches of 16, backbone frozen, fusion and head re-initialised; `overrides` change any field."""
        return cls(**{"epochs": 10, "batch_size": 16, "freeze_backbone": True, "reinit_head": True, **overrides})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["loss"] = LossConfig(**d.get("loss", {}))
        if d.get("deepen") is not None:
            d["deepen"] = tuple(d["deepen"])  # a JSON round trip makes it a list
        if "repeat_levels" in d:
            d["repeat_levels"] = tuple((int(k), float(drop)) for k, drop in d["repeat_levels"])
        if "repeat_skip" in d:
            d["repeat_skip"] = tuple(d["repeat_skip"])
        return cls(**d)


@dataclass(frozen=True)
class TrainRun:
    """Where and on what a run executes."""

    workers: int = 1  # Ray Train workers (DDP when > 1)
    use_gpu: bool | None = None  # None: one GPU per worker where the cluster has GPUs
    cpus_per_worker: float = 1.0
    threads: int | None = None  # torch threads per worker (default: cpus_per_worker)
    loader_workers: int = 1  # DataLoader processes decoding clips per training worker
    cache_uri: str | None = None  # stage-1 cache (default: OUTPUT/inter); share it with the score job
    storage_options: dict[str, Any] = field(default_factory=dict)
    progress_every: int = 10  # steps between progress lines
    # Local folder where every training video is decoded once (pipeline/training/frame_cache.py); None: decode
    # the sampled frames on the fly every step.
    frame_cache: str | None = None


# Run D's recipe (docs/training.md, "Run D"): the demo model from a random initialisation. The CPU-sized
# preset, batches of 2 contents x 2 versions sharing clip offsets and fragments, a pairwise margin loss
# within contents, the fast pathway's BatchNorm calibrated on 32 training videos, and the
# texture-statistics target that teaches the randomly initialised Swin to measure local energy.
DEMO_SCRATCH_RECIPE = TrainConfig(
    preset="tiny-cpu", epochs=30, batch_size=8, group_column="source", group_size=2, align_groups=True,
    loss=LossConfig(kind="margin", margin=0.1, batch_weight=0.1), grad_clip=1.0, head_lr=1e-3, backbone_lr=5e-4,
    warmup_epochs=2, ema_decay=0.995, val_clips=2, head_dropout=0.1, calibrate_inter=32, texture_weight=1.0,
)
# Run D's best weights (epoch 23, raw; val SRCC 0.572): where the demo recipe starts. They carry the
# calibrated fast pathway, so the demo recipe does not calibrate again.
DEMO_INIT = REGISTRY_FILE.parent / "demo_init_run_d.pt"
# The demo model's recipe (`make demo-model`; docs/training.md, "Run E"): run D's, continued from its best
# weights with the fidelity target (each token regresses its cell's SSIM and log MSE against the clean
# version) and a larger whole-batch term against content offsets.
DEMO_RECIPE = dataclasses.replace(
    DEMO_SCRATCH_RECIPE, init_checkpoint=str(DEMO_INIT), calibrate_inter=0, fidelity_weight=1.0,
    loss=LossConfig(kind="margin", margin=0.1, batch_weight=0.5), epochs=16, warmup_epochs=1, backbone_lr=3e-4,
    # the frame-repeat target's levels, off until --repeat-weight (run X): the training set's frame-rate drops
    repeat_levels=FRAME_DROP_LEVELS, repeat_skip=FRAME_DROP_CONDITIONS,
)

# Named starting points of `securevqa train --recipe NAME`; the options a user passes change fields of it.
RECIPES: dict[str, TrainConfig] = {
    "reference": TrainConfig(),
    "splits": TrainConfig.small_dataset_protocol(),
    "demo": DEMO_RECIPE,
    "demo-scratch": DEMO_SCRATCH_RECIPE,
}
