"""Quasi-Monte Carlo mask designs for Sobol total indices (docs/method.md §8.1).

A design for ``r`` concepts is built from ``N_d`` points of a low-discrepancy sequence in
``2r`` dimensions: ``A_s`` is the first ``r`` columns, ``B_s`` the last ``r``, and for each
concept ``i`` the replicated matrix ``C^i`` is ``A_s`` with column ``i`` taken from ``B_s``.
The masks are stacked as ``[A_s; B_s; C^1; …; C^r]`` (``N_d (r + 2)`` rows), the layout and
the point sets of Craft-xai 0.0.3 (``craft.sobol.sampler.HaltonSequence``), so that both give
identical masks and hence identical indices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import qmc

from face_concepts._core.seeding import numpy_rng
from face_concepts._core.validation import check_choice, check_int

DESIGNS = ("halton", "sobol")


def _points(n_dims: int, n_designs: int, design: str, random_state: Any) -> np.ndarray:
    if design == "halton":
        # Unscrambled, as in the CRAFT and FACE code: deterministic, no random_state involved.
        sampler = qmc.Halton(n_dims, scramble=False)
    else:
        rng = numpy_rng(random_state)
        try:
            sampler = qmc.Sobol(n_dims, scramble=True, rng=rng)
        except TypeError:  # scipy < 1.15 names the argument `seed`
            sampler = qmc.Sobol(n_dims, scramble=True, seed=rng)
    # Craft casts the float64 points to float32 before building the design; doing the same
    # keeps the masks bit-identical to its own.
    return sampler.random(n_designs).astype(np.float32)


def replicated_design(sampling_a: np.ndarray, sampling_b: np.ndarray) -> np.ndarray:
    """Stack ``[A; B; C^1; …; C^r]`` where ``C^i`` is ``A`` with column ``i`` from ``B``.

    Parameters
    ----------
    sampling_a, sampling_b : ndarray of shape (n_designs, n_concepts)

    Returns
    -------
    ndarray of shape (n_designs * (n_concepts + 2), n_concepts)

    Examples
    --------
    >>> a, b = np.zeros((2, 3)), np.ones((2, 3))
    >>> replicated_design(a, b)[4:6]
    array([[1., 0., 0.],
           [1., 0., 0.]])
    """
    n_concepts = sampling_a.shape[1]
    replicated = np.repeat(sampling_a[None], n_concepts, axis=0)  # (r, N_d, r)
    idx = np.arange(n_concepts)
    replicated[idx, :, idx] = sampling_b.T
    return np.concatenate([sampling_a, sampling_b, replicated.reshape(-1, n_concepts)], axis=0)


def sobol_design(
    n_concepts: int,
    n_designs: int = 32,
    design: str = "halton",
    *,
    random_state: Any = None,
) -> torch.Tensor:
    """Masks in ``[0, 1]^r`` for the Sobol total indices of ``n_concepts`` concepts.

    Parameters
    ----------
    n_concepts : int
        Number of concepts ``r`` (dimensions perturbed).
    n_designs : int, default 32
        Number of points ``N_d`` of the base design.
    design : {"halton", "sobol"}
        ``"halton"``: scipy's unscrambled Halton sequence (CRAFT/FACE default, deterministic).
        ``"sobol"``: scipy's scrambled Sobol sequence seeded by ``random_state`` (use a power
        of two for ``n_designs`` to keep its balance properties; scipy warns otherwise).
    random_state : None, int or generator
        Only used by ``design="sobol"``.

    Returns
    -------
    Tensor of shape (n_designs * (n_concepts + 2), n_concepts), float32
        Rows ``[A_s; B_s; C^1; …; C^r]``.

    Examples
    --------
    >>> sobol_design(3, 8).shape
    torch.Size([40, 3])
    """
    n_concepts = check_int(n_concepts, "n_concepts", minimum=1)
    n_designs = check_int(n_designs, "n_designs", minimum=2)
    check_choice(design, "design", DESIGNS)
    points = _points(2 * n_concepts, n_designs, design, random_state)
    masks = replicated_design(points[:, :n_concepts], points[:, n_concepts:])
    return torch.from_numpy(np.ascontiguousarray(masks))
