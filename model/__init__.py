"""SecureVQA model: pure PyTorch, no Ray, no I/O beyond reading checkpoints."""

from .api import (
    CheckpointMismatchError,
    create_model,
    load_inter_weights,
    load_intra_pretrained,
    load_securevqa_weights,
    save_checkpoint,
)
from .config import PRESETS, FastPathwayConfig, HeadConfig, SamplingConfig, SecureVQAConfig, SwinConfig, get_config
from .rng import make_generator
from .securevqa import InterEmbedder, SecureVQA

__all__ = [
    "PRESETS",
    "CheckpointMismatchError",
    "FastPathwayConfig",
    "HeadConfig",
    "InterEmbedder",
    "SamplingConfig",
    "SecureVQA",
    "SecureVQAConfig",
    "SwinConfig",
    "create_model",
    "get_config",
    "load_inter_weights",
    "load_intra_pretrained",
    "load_securevqa_weights",
    "make_generator",
    "save_checkpoint",
]
