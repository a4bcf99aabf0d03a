"""Faithfulness metrics of docs/method.md §9.1 on the prediction: Acc, D_KL, certified agreement;
and the helpers every faithfulness metric shares (input checks, the logits of a reconstruction
and of masked codes). C-Deletion / C-Insertion are in ``curves.py``, C-μFidelity in
``mu_fidelity.py``.

Every function takes codes ``U_hat`` (n, r) produced by the single encoder and the concept bank
``W`` (r, p); none of them encodes. The head ``h`` maps (n, p) activations to (n, C) logits.
When the head is affine (``h(x) = x Vᵀ + b``, see :mod:`face_concepts.models.head`) the logits of a
reconstruction are computed as ``U (W Vᵀ) + b``, so ``U W`` is never materialised; any other
head is called on ``U W`` in row batches.

Masked codes (:func:`_iter_masked`) are evaluated in a few batched head calls: the masks are
stacked into a (K, n, r) tensor, never looped over images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from face_concepts._core.validation import as_float_tensor, check_int
from face_concepts.decomposition.losses import kl_rows
from face_concepts.models.head import AffineHead

Head = Callable[[torch.Tensor], torch.Tensor]

# Rows of (p or C)-wide activations per head call: bounds memory on large inputs while
# keeping the number of calls small (the r + 1 deletion steps of 1,000 images take ~4 calls).
DEFAULT_BATCH_SIZE = 8192


def _check_codes(U_hat: object, W: object) -> tuple[torch.Tensor, torch.Tensor]:
    U = as_float_tensor(U_hat, "U_hat")
    Wt = as_float_tensor(W, "W", device=U.device)
    if U.shape[1] != Wt.shape[0]:
        raise ValueError(
            f"U_hat has {U.shape[1]} columns but W has {Wt.shape[0]} rows; "
            "both must equal the number of concepts"
        )
    dtype = torch.promote_types(U.dtype, Wt.dtype)
    return U.to(dtype), Wt.to(dtype)


def _check_activations(A_bar: object, U: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    A = as_float_tensor(A_bar, "A_bar", dtype=U.dtype, device=U.device)
    if A.shape != (U.shape[0], W.shape[1]):
        raise ValueError(
            f"A_bar must have shape (n_images, n_features) = {(U.shape[0], W.shape[1])} "
            f"to match U_hat and W, got {tuple(A.shape)}"
        )
    return A


def _check_importance(importance: object, r: int, U: torch.Tensor) -> torch.Tensor:
    imp = as_float_tensor(importance, "importance", ndim=1, dtype=torch.float64, device=U.device)
    if imp.shape[0] != r:
        raise ValueError(f"importance must have length n_concepts = {r}, got {imp.shape[0]}")
    return imp


def _check_class(class_id: object, n_classes: int) -> int:
    return check_int(class_id, "class_id", minimum=0, maximum=n_classes - 1)


def _module_place(head: Head) -> tuple[torch.dtype, torch.device] | None:
    if isinstance(head, nn.Module):
        for t in head.parameters():
            return t.dtype, t.device
    return None


def head_logits(
    X: torch.Tensor, head: Head, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Logits ``h(X)`` computed without gradients, in row batches, in ``X``'s dtype and device.

    Examples
    --------
    >>> head_logits(torch.ones(3, 4), torch.nn.Linear(4, 2)).shape
    torch.Size([3, 2])
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    place = _module_place(head)
    out = []
    with torch.no_grad():
        for start in range(0, X.shape[0], batch_size):
            x = X[start : start + batch_size]
            if place is not None:
                # The head decides the compute precision and device; results come back to X's.
                x = x.to(dtype=place[0], device=place[1])
            out.append(head(x).to(dtype=X.dtype, device=X.device))
    return torch.cat(out)


def reconstruction_logits(
    U_hat: torch.Tensor, W: torch.Tensor, head: Head, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Logits ``h(Û W)``; for an affine head ``Û (W Vᵀ) + b`` without forming ``Û W``.

    Examples
    --------
    >>> U, W = torch.rand(5, 3), torch.rand(3, 4)
    >>> reconstruction_logits(U, W, torch.nn.Linear(4, 2)).shape
    torch.Size([5, 2])
    """
    U, Wt = _check_codes(U_hat, W)
    return _masked_logits(U, Wt, head, torch.ones(1, U.shape[1], dtype=U.dtype), batch_size)[0]


def _iter_masked(
    U: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    keep: torch.Tensor,
    batch_size: int,
    column: object = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, logits)``, logits (k, n, C) of ``(U ⊙ keep[j]) W`` for a chunk of masks.

    With ``column`` (a class id) only that logit is returned, shape (k, n, 1); for an affine
    head only that column of ``W Vᵀ`` is then multiplied.
    """
    n = U.shape[0]
    per_call = max(1, check_int(batch_size, "batch_size", minimum=1) // n)
    affine = AffineHead.of(head)
    if affine is not None:
        M, b = affine.code_space(W)  # (r, C): the head seen from code space (W is in U's dtype)
        if column is not None:
            cid = _check_class(column, M.shape[1])
            M, b = M[:, cid : cid + 1], b[cid : cid + 1]
    keep = keep.to(dtype=U.dtype, device=U.device)
    with torch.no_grad():
        for start in range(0, keep.shape[0], per_call):
            codes = U.unsqueeze(0) * keep[start : start + per_call].unsqueeze(1)  # (k, n, r)
            flat_codes = codes.reshape(-1, U.shape[1])  # one 2-D matmul beats a batched one
            if affine is not None:
                yield start, torch.addmm(b, flat_codes, M).reshape(codes.shape[0], n, -1)
                continue
            flat = head_logits(flat_codes @ W, head, batch_size=batch_size)
            if column is not None:
                cid = _check_class(column, flat.shape[1])
                flat = flat[:, cid : cid + 1]
            yield start, flat.reshape(codes.shape[0], n, -1)


def _masked_logits(
    U: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    keep: torch.Tensor,
    batch_size: int,
    column: object = None,
) -> torch.Tensor:
    return torch.cat([c for _, c in _iter_masked(U, W, head, keep, batch_size, column)])


def accuracy_on_reconstruction(
    A_bar: torch.Tensor,
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    class_id: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[float, float, float]:
    """Return ``(acc, agreement, acc_original)``.

    ``acc`` = fraction of images whose arg-max of ``h(Û W)`` is ``class_id``; ``agreement`` =
    fraction whose arg-max on ``Û W`` equals the arg-max on ``Ā`` (whatever the class);
    ``acc_original`` = ``acc(Ā)``. A class that is never predicted gives ``acc = 0``.

    Examples
    --------
    >>> A = torch.rand(6, 4); U = torch.rand(6, 3); W = torch.rand(3, 4)
    >>> acc, agree, acc0 = accuracy_on_reconstruction(A, U, W, torch.nn.Linear(4, 2), 0)
    """
    U, Wt = _check_codes(U_hat, W)
    A = _check_activations(A_bar, U, Wt)
    logits_a = head_logits(A, head, batch_size=batch_size)
    logits_r = reconstruction_logits(U, Wt, head, batch_size=batch_size)
    return _accuracy_from_logits(logits_a, logits_r, _check_class(class_id, logits_a.shape[1]))


def _accuracy_from_logits(
    logits_a: torch.Tensor, logits_r: torch.Tensor, class_id: int
) -> tuple[float, float, float]:
    pred_a, pred_r = logits_a.argmax(dim=1), logits_r.argmax(dim=1)
    acc = float((pred_r == class_id).double().mean())
    agreement = float((pred_r == pred_a).double().mean())
    acc_original = float((pred_a == class_id).double().mean())
    return acc, agreement, acc_original


def kl_divergence(
    A_bar: torch.Tensor,
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Mean over images of ``KL(softmax h(Ā) ‖ softmax h(Û W))`` (natural log, nats).

    Examples
    --------
    >>> A = torch.rand(6, 4); U = torch.rand(6, 3); W = torch.rand(3, 4)
    >>> kl_divergence(A, U, W, torch.nn.Linear(4, 2)) >= 0
    True
    """
    U, Wt = _check_codes(U_hat, W)
    A = _check_activations(A_bar, U, Wt)
    logits_a = head_logits(A, head, batch_size=batch_size)
    return _kl_from_logits(logits_a, reconstruction_logits(U, Wt, head, batch_size=batch_size))


def _kl_from_logits(logits_a: torch.Tensor, logits_r: torch.Tensor) -> float:
    return float(_kl_rows_from_logits(logits_a, logits_r).mean())


def _kl_rows_from_logits(logits_a: torch.Tensor, logits_r: torch.Tensor) -> torch.Tensor:
    """Per-image ``KL(softmax logits_a ‖ softmax logits_r)`` in float64 (the losses kernel)."""
    # log-softmax in float64 keeps tiny probabilities from underflowing to log(0).
    return kl_rows(torch.log_softmax(logits_a.double(), dim=1), logits_r.double())


def certified_agreement(
    A_bar: torch.Tensor,
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Share of images whose top-1 agreement is *certified* by the KL (the paper's Pinsker bound).

    Let ``p = softmax h(Ā_i)`` (the model), ``q = softmax h(Û_i W)`` (the reconstruction), ``a``
    the top-1 class of ``p`` and ``m = p_a − max_{c≠a} p_c`` its margin. If ``q``'s top-1 were
    another class ``b`` (``q_b ≥ q_a``), then ``p_a − p_b ≤ (p_a − q_a) + (q_b − p_b)``, so
    ``m ≤ |p_a − q_a| + |p_b − q_b| ≤ Σ_c |p_c − q_c| = 2·TV(p, q)``. Pinsker's inequality
    ``TV(p, q) ≤ √(KL(p ‖ q) / 2)`` then gives ``m ≤ √(2·KL(p ‖ q))``. Contrapositive: an image
    with ``m > √(2·KL(p ‖ q))`` keeps its top-1 class (strictly: ``q_a − q_b ≥ m − 2·TV > 0``)
    for *every* ``q`` in that KL ball, not only this one. The share of such images is therefore
    a lower bound on :func:`accuracy_on_reconstruction`'s agreement; images whose top two
    classes tie under ``p`` (``m = 0``) are never certified.

    Examples
    --------
    >>> A = torch.rand(6, 4); W = torch.rand(3, 4); U = torch.rand(6, 3)
    >>> 0 <= certified_agreement(A, U, W, torch.nn.Linear(4, 2)) <= 1
    True
    """
    U, Wt = _check_codes(U_hat, W)
    A = _check_activations(A_bar, U, Wt)
    logits_a = head_logits(A, head, batch_size=batch_size)
    return _certified_from_logits(
        logits_a, reconstruction_logits(U, Wt, head, batch_size=batch_size)
    )


def _certified_from_logits(logits_a: torch.Tensor, logits_r: torch.Tensor) -> float:
    if logits_a.shape[0] == 0:
        return float("nan")
    p = torch.softmax(logits_a.double(), dim=1)
    if p.shape[1] < 2:  # one class: nothing can swap
        return 1.0
    top2 = p.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    kl = _kl_rows_from_logits(logits_a, logits_r).clamp_min(0.0)  # rounding can dip below 0
    return float((margin > torch.sqrt(2.0 * kl)).double().mean())
