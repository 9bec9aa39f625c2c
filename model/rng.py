"""Explicit random generators: fresh by default (security), replayable on request (reproducibility)."""

from __future__ import annotations

import hashlib

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


def derive_seed(seed: int | None, *parts: object) -> int | None:
    """A seed for one use (a video, an epoch, a step) derived from a run seed, or None (fresh) when the
    run has none. Hash-based, so a replay does not depend on the order or batching of the work."""
    if seed is None:
        return None
    blob = ":".join(map(str, (seed, *parts))).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1
