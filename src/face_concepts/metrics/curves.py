"""C-Deletion and C-Insertion (docs/method.md §9.1): the deletion / insertion curves of the
class probability as concepts are removed / added in order of importance, and their areas.

Deletion and insertion evaluate all ``r + 1`` masked code matrices (k = 0..r) in a few batched
head calls: the masks are stacked into a (K, n, r) tensor, never looped over images.
"""

from __future__ import annotations

import warnings

import torch

from face_concepts._core.validation import as_float_tensor
from face_concepts.metrics.faithfulness import (
    DEFAULT_BATCH_SIZE,
    Head,
    _check_class,
    _check_codes,
    _check_importance,
    _iter_masked,
)


def concept_order(importance: torch.Tensor) -> torch.Tensor:
    """Concept indices sorted by importance, descending; ties keep the lower index first.

    Examples
    --------
    >>> concept_order(torch.tensor([0.1, 0.5, 0.1, 0.3])).tolist()
    [1, 3, 0, 2]
    """
    imp = as_float_tensor(importance, "importance", ndim=1)
    return torch.sort(imp, descending=True, stable=True).indices


def _curve(
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    class_id: int,
    importance: torch.Tensor,
    batch_size: int,
    *,
    deletion: bool,
) -> torch.Tensor:
    U, Wt = _check_codes(U_hat, W)
    r = U.shape[1]
    imp = _check_importance(importance, r, U)
    rank = torch.empty(r, dtype=torch.long, device=U.device)
    rank[concept_order(imp)] = torch.arange(r, device=U.device)
    steps = torch.arange(r + 1, device=U.device).unsqueeze(1)
    # Row k keeps concept i iff its rank is >= k (deletion) or < k (insertion).
    keep = rank.unsqueeze(0) >= steps if deletion else rank.unsqueeze(0) < steps
    hits = torch.empty(r + 1, dtype=torch.float64)
    for start, logits in _iter_masked(U, Wt, head, keep, batch_size):
        cid = _check_class(class_id, logits.shape[2])
        hits[start : start + logits.shape[0]] = (
            (logits.argmax(dim=2) == cid).double().mean(dim=1).cpu()
        )
    return hits


def deletion_curve(
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    class_id: int,
    importance: torch.Tensor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """``d(k)``, k = 0..r: accuracy after zeroing the k most important columns of ``Û``.

    Returns a float64 tensor of length ``r + 1``; ``d(0)`` is the accuracy on ``Û W``.

    Examples
    --------
    >>> U, W = torch.rand(6, 3), torch.rand(3, 4)
    >>> deletion_curve(U, W, torch.nn.Linear(4, 2), 0, torch.tensor([0.5, 0.2, 0.3])).shape
    torch.Size([4])
    """
    return _curve(U_hat, W, head, class_id, importance, batch_size, deletion=True)


def insertion_curve(
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    class_id: int,
    importance: torch.Tensor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """``s(k)``, k = 0..r: accuracy when only the k most important columns of ``Û`` are kept.

    ``s(0)`` is the accuracy of ``h(0)`` (the bias alone), ``s(r)`` the accuracy on ``Û W``.

    Examples
    --------
    >>> U, W = torch.rand(6, 3), torch.rand(3, 4)
    >>> insertion_curve(U, W, torch.nn.Linear(4, 2), 0, torch.tensor([0.5, 0.2, 0.3])).shape
    torch.Size([4])
    """
    return _curve(U_hat, W, head, class_id, importance, batch_size, deletion=False)


def _check_curve(curve: object) -> torch.Tensor:
    c = as_float_tensor(curve, "curve", ndim=1, dtype=torch.float64)
    if c.shape[0] < 2:
        raise ValueError(f"curve must have r + 1 >= 2 points (k = 0..r), got {c.shape[0]}")
    return c


def _aopc(curve: object, divisor_extra: int, *, warn: bool = True) -> float:
    c = _check_curve(curve)
    if warn and float(c[0]) == 0.0:
        warnings.warn(
            "deletion curve starts at d(0) = 0 (the class is never predicted on the "
            "reconstruction); C-Deletion is 0 or negative and says nothing about the concepts",
            RuntimeWarning,
            stacklevel=3,
        )
    return float((c[0] - c).sum() / (c.shape[0] + divisor_extra))


def c_deletion(curve: torch.Tensor) -> float:
    """AOPC of a deletion curve: ``Σ_{k=0}^{r} (d(0) − d(k)) / (r + 1)`` (docs/method.md §9.1).

    If the class is never predicted (``d(0) = 0``) the score is 0 when the curve stays at 0 and
    negative when deleting concepts makes the class appear; a ``RuntimeWarning`` says so.

    Examples
    --------
    >>> c_deletion(torch.tensor([1.0, 0.0, 0.0]))
    0.6666666666666666
    """
    return _aopc(curve, 0)


def c_deletion_paper(curve: torch.Tensor) -> float:
    """The authors' C-Deletion: the same sum divided by ``r + 2`` (paper-parity value).

    Examples
    --------
    >>> c_deletion_paper(torch.tensor([1.0, 0.0, 0.0]))
    0.5
    """
    return _aopc(curve, 1)


def c_insertion(curve: torch.Tensor) -> float:
    """Trapezoid area under an insertion curve over ``k ∈ [0, r]``, divided by ``r``.

    Examples
    --------
    >>> c_insertion(torch.tensor([0.0, 1.0, 1.0]))
    0.75
    """
    c = _check_curve(curve)
    return float(torch.trapezoid(c) / (c.shape[0] - 1))
