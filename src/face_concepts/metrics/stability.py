"""Concept stability of docs/method.md §9.4: agreement of concept banks refitted on different folds.

Concepts are defined up to permutation and scale, so banks are compared after L2-normalising
their rows and matching them with the Hungarian algorithm on ``1 − cosine``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.model_selection import KFold

from face_concepts._core.validation import as_float_tensor, check_int


def matched_cosine(W1: torch.Tensor, W2: torch.Tensor) -> float:
    """Mean cosine of the best one-to-one matching between the rows of two banks.

    Rows are L2-normalised first (an all-zero row has cosine 0 with everything). Banks with
    different numbers of concepts are allowed: ``min(r1, r2)`` pairs are matched.

    Examples
    --------
    >>> W = torch.rand(3, 5)
    >>> round(matched_cosine(W, 2 * W[[2, 0, 1]]), 6)
    1.0
    """
    A = as_float_tensor(W1, "W1", dtype=torch.float64, device="cpu")
    B = as_float_tensor(W2, "W2", dtype=torch.float64, device="cpu")
    if A.shape[1] != B.shape[1]:
        raise ValueError(
            f"banks must have the same number of features, got {A.shape[1]} and {B.shape[1]}"
        )
    A = torch.nn.functional.normalize(A, dim=1)
    B = torch.nn.functional.normalize(B, dim=1)
    cos = (A @ B.T).numpy()
    rows, cols = linear_sum_assignment(1.0 - cos)
    return float(cos[rows, cols].mean())


def stability(banks: Sequence[torch.Tensor]) -> float:
    """Mean :func:`matched_cosine` over all pairs of banks (10 pairs for 5 folds).

    Examples
    --------
    >>> W = torch.rand(4, 6)
    >>> round(stability([W, W, W]), 6)
    1.0
    """
    if isinstance(banks, torch.Tensor) and banks.ndim == 3:
        banks = list(banks)
    if len(banks) < 2:
        raise ValueError(f"stability needs at least 2 concept banks, got {len(banks)}")
    return float(np.mean([matched_cosine(a, b) for a, b in combinations(banks, 2)]))


def fold_indices(
    n_samples: int,
    n_splits: int = 5,
    random_state: int = 42,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> list[np.ndarray]:
    """Training-row indices of each ``KFold(n_splits, shuffle=True, random_state)`` split.

    With ``groups`` (one image id per row, e.g. for patches) the folds are drawn over the unique
    groups, so all rows of an image fall on the same side of every split.

    Examples
    --------
    >>> [len(i) for i in fold_indices(10)]
    [8, 8, 8, 8, 8]
    """
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    n_splits = check_int(n_splits, "n_splits", minimum=2)
    kfold = KFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    if groups is None:
        if n_samples < n_splits:
            raise ValueError(
                f"n_splits={n_splits} folds need at least as many rows, got {n_samples}"
            )
        return [np.sort(train) for train, _ in kfold.split(np.arange(n_samples))]
    labels = np.asarray(groups)
    if labels.shape != (n_samples,):
        raise ValueError(
            f"groups must have one entry per row ({n_samples}), got shape {labels.shape}"
        )
    unique, inverse = np.unique(labels, return_inverse=True)
    if len(unique) < n_splits:
        raise ValueError(
            f"n_splits={n_splits} folds need at least as many groups, got {len(unique)}"
        )
    return [np.flatnonzero(np.isin(inverse, train)) for train, _ in kfold.split(unique)]


def stability_folds(
    A: torch.Tensor,
    fit_fn: Callable[[torch.Tensor], torch.Tensor],
    n_splits: int = 5,
    random_state: int = 42,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> float:
    """C-Stab: refit on each training split of a seeded K-fold and compare the banks.

    ``fit_fn(A_subset) -> W`` refits a concept bank (r, p) on the rows it is given; the
    docs/method.md §9.4 defaults are 5 folds over images with ``random_state=42`` (the authors' setting).
    Pass ``groups`` (image id per row) when ``A`` holds several patches per image.

    Examples
    --------
    >>> A = torch.rand(20, 6)
    >>> fit = lambda X: X[:3] * 0 + torch.eye(3, 6)  # a fit that ignores its data
    >>> stability_folds(A, fit)
    1.0
    """
    data = as_float_tensor(A, "A")
    if not callable(fit_fn):
        raise TypeError(f"fit_fn must be callable (A_subset -> W), got {type(fit_fn).__name__}")
    folds = fold_indices(data.shape[0], n_splits, random_state, groups)
    banks = [fit_fn(data[torch.as_tensor(idx, device=data.device)]) for idx in folds]
    return stability(banks)
