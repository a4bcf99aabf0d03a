"""Seeded fit / held-out split of an image set, so metrics can be reported on unseen images."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from face_concepts._core.seeding import make_generator
from face_concepts._core.validation import check_int


def train_test_split_indices(
    n: int, test_size: float | int = 0.25, random_state: int | torch.Generator | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted ``(fit_indices, heldout_indices)`` of a seeded random split of ``n`` items.

    ``test_size`` is a fraction in (0, 1) (rounded, at least 1 item) or a count in
    ``[1, n − 1]``; both parts are never empty. The permutation comes from a local CPU generator
    seeded by ``random_state``, so the split is the same on every machine.

    Examples
    --------
    >>> fit, held = train_test_split_indices(8, test_size=0.25, random_state=0)
    >>> len(fit), len(held)
    (6, 2)
    """
    n = check_int(n, "n", minimum=2)
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool):
        n_test = check_int(test_size, "test_size", minimum=1, maximum=n - 1)
    elif isinstance(test_size, numbers.Real) and not isinstance(test_size, bool):
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        n_test = min(n - 1, max(1, round(float(test_size) * n)))
    else:
        raise TypeError(f"test_size must be a float fraction or an int count, got {test_size!r}")
    perm = torch.randperm(n, generator=make_generator(random_state)).numpy()
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
