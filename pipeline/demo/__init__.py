"""Demo and training sets built from content that installed packages ship (docs/training_data.md):
`sources`, the virtual `camera` that films photographs, `distortions`, `codec` (encoders and frame
helpers), `labels`, and `build`.
`python -m jobs.build_data` builds a set from the command line."""

from pipeline.demo.build import (
    DEFAULT_SPLITS,
    EXTRA_VAL_SPLIT,
    TRAINING_COLUMNS,
    build_demo_set,
    build_training_set,
    split_table,
)
from pipeline.demo.camera import CameraPath, camera_path, film_still
from pipeline.demo.distortions import DEFAULT_DISTORTIONS, DISTORTION_TYPES, TRAINING_DISTORTIONS
from pipeline.demo.labels import CONDITION_MOS, LABEL_RULES, apply_label_rule, label_table, mos_from_ssim, ssim_video
from pipeline.demo.sources import DemoDataError, Source, file_sha256, shipped_sources, shipped_stills, training_sources

__all__ = [
    "CONDITION_MOS",
    "CameraPath",
    "DEFAULT_DISTORTIONS",
    "DEFAULT_SPLITS",
    "DISTORTION_TYPES",
    "DemoDataError",
    "EXTRA_VAL_SPLIT",
    "LABEL_RULES",
    "Source",
    "TRAINING_COLUMNS",
    "TRAINING_DISTORTIONS",
    "apply_label_rule",
    "build_demo_set",
    "build_training_set",
    "camera_path",
    "file_sha256",
    "film_still",
    "label_table",
    "mos_from_ssim",
    "shipped_sources",
    "shipped_stills",
    "split_table",
    "ssim_video",
    "training_sources",
]
