"""Training data on a worker: labelled clips decoded on the fly (or from the frame cache) and batches grouped by content."""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from model import make_generator
from model.rng import derive_seed
from pipeline.stages.inference import intra_clips
from pipeline.training.frame_cache import FrameCache, frames_of

# ----------------------------------------------------------------------------- data

class ClipDataset(Dataset):
    """Labelled videos -> (K fragment clips uint8, cached inter embedding, MOS), decoded on the fly.

    Randomness of item i in epoch e comes from `derive_seed(seed, salt, e, i)`: fresh clip offsets and
    fragments every epoch, the same ones on a replay, whichever loader process decodes the item. An item
    may also be `(i, draw)` (`GroupedBatchSampler(aligned=True)`): then the randomness comes from
    `derive_seed(seed, salt, e, "draw", draw)`, so items sharing a draw (versions of one source content,
    frame-aligned) get the same clip offsets and fragment positions.

    `with_reference`: items also carry the clips of the row's `reference` video (its clean version,
    frame-aligned, same size) cut with the same randomness, so at the same frames and fragment positions:
    the target of the fidelity read-out (model/pretext.py). Items are then 5-tuples.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], embeddings: Mapping[str, torch.Tensor], sampling: Any,
                 num_clips: int, seed: int | None, salt: str, storage_options: Mapping[str, Any],
                 frame_cache: FrameCache | None = None, with_reference: bool = False) -> None:
        self.rows, self.sampling = list(rows), sampling
        # One tensor for all rows' inter embeddings, not one per video: a loader process receives the dataset
        # pickled (make_loader), and torch shares each tensor through its own file descriptor.
        keys = list(dict.fromkeys(r["inter_key"] for r in self.rows))
        missing = [k for k in keys if k not in embeddings][:5]
        if missing:
            raise KeyError(f"no inter embedding for {missing} (stage 1 must cover every row)")
        sizes = [len(embeddings[k]) for k in keys]
        self.inter = torch.cat([embeddings[k] for k in keys]) if keys else torch.empty(0)
        starts = torch.tensor([0, *sizes]).cumsum(0).tolist()
        self.inter_at = {k: (starts[j], sizes[j]) for j, k in enumerate(keys)}
        self.with_reference = with_reference
        if with_reference and not all(r.get("reference") for r in self.rows):
            missing = [r["video_id"] for r in self.rows if not r.get("reference")][:5]
            raise ValueError(f"the fidelity target needs a reference video for every training row; none for {missing}")
        self.num_clips, self.seed, self.salt = num_clips, seed, salt
        self.storage_options = dict(storage_options)
        self.frame_cache = frame_cache
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def _clips(self, uri: str, seed: int | None) -> torch.Tensor:
        g = make_generator(seed)
        with frames_of(uri, self.frame_cache, self.storage_options) as video:  # cached: tests/test_frame_cache.py
            return intra_clips(video, self.sampling, self.num_clips, g)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple:
        if isinstance(item, tuple):
            i, draw = item
            seed = derive_seed(self.seed, self.salt, self.epoch, "draw", draw)
        else:
            i = item
            seed = derive_seed(self.seed, self.salt, self.epoch, i)
        r = self.rows[i]
        try:
            clips = self._clips(r["uri"], seed)
            # the same seed: the reference's clips come from the same frames and fragment positions
            reference = self._clips(r["reference"], seed) if self.with_reference else None
        except Exception as exc:
            raise RuntimeError(f"training video {r['video_id']} ({r['uri']}): {exc}") from exc
        start, n = self.inter_at[r["inter_key"]]
        item_ = (clips, self.inter[start:start + n], float(r["mos"]), i)
        if reference is not None and reference.shape != clips.shape:
            raise RuntimeError(f"training video {r['video_id']}: its reference {r['reference']} gives clips of "
                               f"{tuple(reference.shape)}, not {tuple(clips.shape)}: it must be frame-aligned and "
                               "of the same size")
        return item_ if reference is None else (*item_, reference)


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of `per_group` items from each of `batch_size // per_group` distinct groups (e.g. source
    contents), drawn from `generator`: every item at most once per epoch, a group at most once per batch.

    `aligned`: each item comes as `(index, draw)`, the items of one group in a batch sharing a draw, so
    `ClipDataset` samples them at the same clip offsets and fragment positions. For versions of one
    source (clean and degraded, frame-aligned) the clips then differ in quality only: the fragments
    of different draws of one content differ ~10x more than a degradation changes them (measured on
    the untrained model, docs/training.md), which drowns the quality signal of a step."""

    def __init__(self, groups: Sequence[Any], batch_size: int, per_group: int, generator: torch.Generator,
                 aligned: bool = False) -> None:
        if batch_size % per_group or batch_size < 2 * per_group:
            raise ValueError(f"batch size {batch_size} must be a multiple (>= 2x) of the group size {per_group}")
        self.groups, self.k, self.per_group, self.aligned = list(groups), batch_size // per_group, per_group, aligned
        members: dict[Any, list[int]] = {}
        for i, g in enumerate(self.groups):
            members.setdefault(g, []).append(i)
        if len(members) < self.k:
            raise ValueError(f"{len(members)} groups cannot fill batches of {self.k} distinct groups")
        chunks: list[list[int]] = []
        for items in members.values():
            order = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
            chunks += [order[j:j + per_group] for j in range(0, len(order) - per_group + 1, per_group)]
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        self.batches: list[list[int]] = []
        open_batches: list[list[list[int]]] = []
        for c in chunks:  # first open batch without this chunk's group, else a new one
            for b in open_batches:
                if all(self.groups[o[0]] != self.groups[c[0]] for o in b):
                    b.append(c)
                    break
            else:
                open_batches.append([c])
            for b in [b for b in open_batches if len(b) == self.k]:
                self.batches.append([i for chunk in b for i in chunk])
                open_batches.remove(b)

    def __iter__(self):
        if not self.aligned:
            return iter(self.batches)
        p = self.per_group
        return iter([[(i, b * self.k + j // p) for j, i in enumerate(batch)] for b, batch in enumerate(self.batches)])

    def __len__(self) -> int:
        return len(self.batches)


def loader_init(_: int) -> None:
    """DataLoader `worker_init_fn`: one torch thread per decoding process."""
    torch.set_num_threads(1)  # decoding processes must not compete with the model's threads


def make_loader(dataset: Dataset, num_workers: int, **kwargs: Any) -> DataLoader:
    """The DataLoader of training and validation clips: `num_workers` decoding processes (0: decode in this one),
    each with one torch thread, started from a fork server, never forked from the training process.

    Why: a process forked after its parent decoded video inherits the decoder's locks in whatever state its
    threads held them, and can wait on them forever (PyAV 18.1.1 did: docs/training.md "Loader processes").
    The fork server is a fresh interpreter that imports torch, PyAV and this module once and decodes nothing,
    so every loader process starts clean and still starts fast. `kwargs` go to `DataLoader` as they are.
    """
    if num_workers > 0:
        context = multiprocessing.get_context("forkserver")
        # Only takes effect before the server starts (once per process); replaces the default preload of
        # `__main__`, which under Ray is its worker script.
        context.set_forkserver_preload(["torch", "av", __name__])
        kwargs = {"multiprocessing_context": context, **kwargs}
    return DataLoader(dataset, num_workers=num_workers, worker_init_fn=loader_init, **kwargs)
