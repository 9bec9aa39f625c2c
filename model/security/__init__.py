"""Attacks on a quality model and SecureVQA's defenses against them (docs/design.md §3)."""
