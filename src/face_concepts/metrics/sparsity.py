"""Concentration and sparsity metrics of docs/method.md §9.3: C-Gini, code density, Hoyer sparsity.

- :func:`gini` concentrates on the global importance vector (higher: fewer concepts matter).
- :func:`density` is what the FACE authors call "sparsity": the mean fraction of non-zero codes
  per row (lower is sparser). :func:`hoyer` is a scale-free sparsity in [0, 1] (higher is sparser).
"""

from __future__ import annotations

import math
import warnings

import torch

from face_concepts._core.validation import as_float_tensor, check_float


def gini(importance: torch.Tensor) -> float:
    """Gini index ``Σ_k (2k − r − 1) x_(k) / (r Σ x)`` of ``x`` sorted ascending (k = 1..r).

    Defined values: 0 for an all-zero vector (nothing is concentrated) and for ``r = 1``; the
    maximum, for a single non-zero entry, is ``(r − 1) / r``. Invariant to permutation and to
    positive scaling. Negative entries (a signed importance such as Gradient×Input) enter by
    magnitude, with a ``RuntimeWarning``, because the index is defined for non-negative mass.

    Examples
    --------
    >>> gini(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    0.75
    >>> gini(torch.tensor([2.0, 2.0]))
    0.0
    """
    x = as_float_tensor(importance, "importance", ndim=1, dtype=torch.float64)
    if bool((x < 0).any()):
        warnings.warn(
            "importance has negative entries; the Gini index uses their magnitudes",
            RuntimeWarning,
            stacklevel=2,
        )
        x = x.abs()
    total = float(x.sum())
    if total == 0.0:
        return 0.0
    r = x.shape[0]
    k = torch.arange(1, r + 1, dtype=torch.float64)
    return float(((2 * k - r - 1) * torch.sort(x).values).sum() / (r * total))


def density(U_hat: torch.Tensor, threshold: float = 0.0) -> float:
    """Mean over rows of the fraction of codes with ``|u| > threshold`` (the authors' "sparsity").

    The single encoder is non-negative and produces exact zeros, so the default ``threshold = 0``
    counts exactly the non-zero codes. Lower is sparser.

    Examples
    --------
    >>> density(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    0.25
    """
    U = as_float_tensor(U_hat, "U_hat")
    threshold = check_float(threshold, "threshold", minimum=0.0)
    return float((U.abs() > threshold).double().mean(dim=1).mean())


def hoyer(U_hat: torch.Tensor) -> float:
    """Mean over rows of Hoyer's sparsity ``(√r − ‖u‖₁/‖u‖₂) / (√r − 1)``, in [0, 1].

    1 for a one-hot row, 0 for a row with equal magnitudes everywhere; invariant to scaling each
    row and to permuting columns. Defined values: an all-zero row counts as 1 (no active code,
    as sparse as possible), and with ``r = 1`` every row counts as 1 (a single code is one-hot).

    Examples
    --------
    >>> hoyer(torch.tensor([[0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    0.5
    """
    U = as_float_tensor(U_hat, "U_hat", dtype=torch.float64)
    r = U.shape[1]
    if r == 1:
        return 1.0
    l1 = U.abs().sum(dim=1)
    l2 = U.norm(dim=1)
    zero = l2 == 0
    ratio = l1 / torch.where(zero, torch.ones_like(l2), l2)
    score = (math.sqrt(r) - ratio) / (math.sqrt(r) - 1)
    # Rounding can push ‖u‖₁/‖u‖₂ a hair outside [1, √r].
    score = torch.where(zero, torch.ones_like(score), score).clamp(0.0, 1.0)
    return float(score.mean())
