"""Seeded randomness: a local CPU ``torch.Generator`` per call, never global seeds.

Random draws happen on the CPU and are then moved, so the same ``random_state`` gives the
same start on CPU and GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def make_generator(random_state: Any) -> torch.Generator:
    """Return a CPU generator from ``None`` (fresh entropy), an int, or a generator."""
    if isinstance(random_state, torch.Generator):
        return random_state
    g = torch.Generator(device="cpu")
    if random_state is None:
        g.seed()
    elif isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {random_state}")
        g.manual_seed(int(random_state))
    else:
        raise TypeError(
            f"random_state must be None, an int or a torch.Generator, got {type(random_state).__name__}"
        )
    return g


def numpy_rng(random_state: Any) -> np.random.Generator:
    """NumPy counterpart of :func:`make_generator` (for scipy/sklearn interop)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=random_state)))
    return np.random.default_rng(random_state)


def rand(
    shape: tuple[int, ...], generator: torch.Generator, *, dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """Uniform [0, 1) draw on the CPU, then moved to ``device``."""
    return torch.rand(shape, generator=generator, dtype=dtype).to(device)
