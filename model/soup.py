"""Weight averaging ("model soup", Wortsman et al., ICML 2022; WiSE-FT, Wortsman et al., CVPR 2022) of SecureVQA
checkpoints fine-tuned from one start: the demo model's best weights are such an average (docs/training.md,
"Weight averaging").

Only the trained part (intra backbone, fusion, head) is averaged. The inter weights must be identical in
every checkpoint: the fusion of each one learned on the embeddings its fast pathway gives, so an average
over different fast pathways would pair a fusion with embeddings none of its members saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = ["average_checkpoints", "soup_weights"]


def soup_weights(n: int, weights: Sequence[float] | None = None) -> list[float]:
    """The members' shares: uniform when `weights` is None, else `weights` scaled to sum to 1.
    Raises ValueError for n < 2, a length other than n, a share that is negative or not finite, or an
    all-zero sum."""
    if n < 2:
        raise ValueError(f"an average needs at least 2 checkpoints, got {n}")
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} shares for {n} checkpoints: give one share per checkpoint")
    if not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"shares must be finite and >= 0 with a positive sum, got {w}")
    return [x / sum(w) for x in w]


def _differing(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys in one and not the other, or whose tensors differ; float tensors (weights, statistics) first."""
    keys = (set(a) ^ set(b)) | {k for k in set(a) & set(b) if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])}
    return sorted(keys, key=lambda k: (k in a and k in b and not a[k].is_floating_point(), k))


def average_checkpoints(checkpoints: Sequence[Mapping], weights: Sequence[float] | None = None, *,
                        sources: Sequence[str] | None = None) -> dict:
    """The weighted average of our-format checkpoints (as `read_checkpoint` returns them, `"format":
    "securevqa"`), as a checkpoint of that format: floating-point tensors of "securevqa" averaged with the
    shares `soup_weights` gives, integer tensors (counters) and "inter" taken from the first, metadata
    {"average": {"sources", "weights"}}.

    Raises ValueError when a checkpoint is not of our format, the configs differ, the "securevqa" keys or
    shapes differ (named), or the inter weights differ (the differing keys named; see the module doc).
    """
    weights = soup_weights(len(checkpoints), weights)
    names = list(sources) if sources is not None else [f"checkpoint {i}" for i in range(len(checkpoints))]
    for c, name in zip(checkpoints, names):
        if not isinstance(c, Mapping) or c.get("format") != "securevqa":
            raise ValueError(f"{name} is not a SecureVQA checkpoint of this project's format (save_checkpoint)")
    first = checkpoints[0]
    for c, name in zip(checkpoints[1:], names[1:]):
        if c["config"] != first["config"]:
            diff = sorted(k for k in set(first["config"]) | set(c["config"])
                          if first["config"].get(k) != c["config"].get(k))
            raise ValueError(f"{name} has another architecture than {names[0]} (config keys {diff})")
    states = [c["securevqa"] for c in checkpoints]
    shape_diff = sorted({k for s in states[1:] for k in set(states[0]) ^ set(s)} |
                        {k for s in states[1:] for k in set(states[0]) & set(s) if s[k].shape != states[0][k].shape})
    if shape_diff:
        raise ValueError(f"the checkpoints' trained weights do not match: keys {shape_diff[:12]}")
    inters = [c.get("inter") for c in checkpoints]
    if any(i is None for i in inters) and not all(i is None for i in inters):
        raise ValueError("some checkpoints carry inter weights and some do not: average checkpoints of one run's "
                         "lineage, whose fast pathway is the same")
    for inter, name in zip(inters[1:], names[1:]):
        if inters[0] is not None and (diff := _differing(inters[0], inter)):
            raise ValueError(f"{name} has other inter (fast pathway) weights than {names[0]} ({len(diff)} keys "
                             f"differ, e.g. {', '.join(diff[:3])}): each fusion learned on its own embeddings, so "
                             "average only runs fine-tuned from one start, which share the fast pathway")
    averaged = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            averaged[k] = sum(w * s[k].double() for w, s in zip(weights, states)).to(v.dtype)
        else:
            averaged[k] = v.clone()
    return {**{k: v for k, v in first.items() if k not in ("securevqa", "metadata")}, "securevqa": averaged,
            "metadata": {"average": {"sources": names, "weights": weights}}}
