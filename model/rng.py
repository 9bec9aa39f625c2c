"""Explicit random generators: fresh by default (security), replayable on request (reproducibility)."""

from __future__ import annotations

import torch


def make_generator(seed: int | None = None, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded with `seed`, or from the OS's entropy when `seed` is None.

    torch's default generator starts from the same fixed seed in every process, so relying on it would
    hand an attacker the guardian maps and fragment offsets of every run: never fall back to it.
    """
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def resolve(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else make_generator()
