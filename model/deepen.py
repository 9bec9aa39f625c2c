"""Deepen a trained SecureVQA: more Swin blocks per stage, the same function at the start.

A small model that does not fit its own training data may lack capacity, and starting a larger one from
a random initialisation throws away what the small one learned (docs/training.md, "Probes of
2026-12-07", measures what three more blocks bought the demo model: 0.01 of training fit). Here the new
blocks are appended to the end of their stages with their residual branches zeroed (the attention's output
projection and the MLP's second linear layer, weights and biases), so each is the identity on its input and
the deepened model scores every clip exactly as the original did; training then grows them from
there (the zero-initialised last layer of a residual branch, as in Goyal et al. 2017 and Net2Net's
identity growth). Everything else keeps its weights: the patch embedding, the existing blocks, the
merging layers, the final norm, the fusion and the head. Block i of a stage attends in shifted windows
when i is odd, as everywhere in the Swin (docs/design.md §2.1), so an appended block takes the parity of
its position. Pure PyTorch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .config import SecureVQAConfig
from .securevqa import SecureVQA


def deepened_config(cfg: SecureVQAConfig, depths: Sequence[int]) -> SecureVQAConfig:
    """`cfg` with `depths` Swin blocks per stage, named "<name>-deep<d1><d2>..." (the name is only a label).

    Raises ValueError: a different number of stages, or a stage with fewer blocks than `cfg` has."""
    depths = tuple(int(d) for d in depths)
    old = cfg.swin.depths
    if len(depths) != len(old):
        raise ValueError(f"depths {depths} name {len(depths)} stages; the model has {len(old)} ({old})")
    if any(d < o for d, o in zip(depths, old)):
        raise ValueError(f"depths {depths} would remove blocks of {old}: deepening only adds blocks")
    base = cfg.name.split("-deep")[0]
    name = base if depths == old else f"{base}-deep{''.join(map(str, depths))}"
    return dataclasses.replace(cfg, name=name, swin=dataclasses.replace(cfg.swin, depths=depths))


def deepen(vqa: SecureVQA, depths: Sequence[int], *, init_seed: int = 0) -> SecureVQA:
    """A new SecureVQA with `depths` Swin blocks per stage that computes what `vqa` computes.

    `vqa` is left untouched. The new blocks' parameters other than the zeroed residual outputs (norms,
    qkv, position tables, first MLP layer) start as a freshly built model's, drawn from `init_seed`. The
    result is in fp32, in eval mode and on `vqa`'s device, with `vqa`'s guardian switch and head dropout.

    Raises ValueError: as `deepened_config`.
    """
    cfg = deepened_config(vqa.cfg, depths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        grown = SecureVQA(cfg, guardian=vqa.guardian)
    device = next(vqa.parameters()).device
    grown.to(device)
    old = {k: v.float() for k, v in vqa.state_dict().items()}
    state = grown.state_dict()
    for key in old:
        state[key] = old[key]  # every key of the original exists in the deeper model (blocks are appended)
    grown.load_state_dict(state)
    for stage, old_depth in zip(grown.intra.layers, vqa.cfg.swin.depths):
        for block in list(stage.blocks)[old_depth:]:
            for layer in (block.attn.proj, block.mlp.fc2):
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    grown.set_head_dropout(vqa.head.dropout.p)
    return grown.eval()


__all__ = ["deepen", "deepened_config"]
