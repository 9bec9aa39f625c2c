"""Training SecureVQA with Ray Train: the recipe (`config`), data on a worker (`data`, `frame_cache`,
`datasets` for label files), the per-worker loop (`loop`), what a run writes (`history`) and the driver
with the small-dataset protocol (`run`)."""

from pipeline.training.config import STATE_FILE, TrainConfig, TrainRun
from pipeline.training.data import ClipDataset, GroupedBatchSampler
from pipeline.training.history import plot_history, read_history
from pipeline.training.loop import build_model, evaluate, train_loop, train_step
from pipeline.training.run import calibrate_inter, train, train_splits

__all__ = [
    "STATE_FILE", "ClipDataset", "GroupedBatchSampler", "TrainConfig", "TrainRun", "build_model", "calibrate_inter",
    "evaluate", "plot_history", "read_history", "train", "train_loop", "train_splits", "train_step",
]
