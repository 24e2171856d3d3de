"""What a seed means: ``torch.Generator("cpu")`` seeded with it, so an image matches across devices.

A request without a seed gets a random one, recorded in its outputs so it can be reproduced. In
a batch, image *i* gets its own generator seeded ``seed + i`` (as A1111), so that seed alone
reproduces it.
"""

from __future__ import annotations

import secrets

SEED_RANGE = 2**31  # seeds are drawn from [0, 2**31), as A1111's


def pick_seed(seed: int | None) -> int:
    """``seed``, or a fresh random one when it is None."""
    return seed if seed is not None else secrets.randbelow(SEED_RANGE)


def generator(seed: int):
    """diffusers' meaning of a seed: a CPU generator."""
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def generators(seed: int, n: int):
    """One generator for one image; a list seeded ``seed + i`` for a batch of ``n``."""
    return generator(seed) if n == 1 else [generator(seed + i) for i in range(n)]
