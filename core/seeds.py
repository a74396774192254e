"""Derived seeds: every random stream of a run is seeded from the pipeline seed and what it is for.

Hashing ``(seed, *parts)`` gives independent streams for every purpose (shuffling of epoch 3, noise of
input 17 for certifier 0, ...) that depend on nothing else, so resumed, reordered or sharded work draws
exactly what an uninterrupted run would have drawn, for any seed in ``[0, 2**63)``.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed determined by ``seed`` and ``parts`` alone."""
    text = "/".join(str(p) for p in (seed, *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(seed: int, *parts: object, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded with :func:`derive_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *parts))
    return gen
