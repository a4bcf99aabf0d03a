"""The FACE objective (docs/method.md §2.1) as pure functions.

``L(U, W) = mean_ij (A − U W)²_ij + λ · (1/n) Σ_i KL(P_i ‖ Q_i)`` with ``P = softmax(h(A))``,
``Q = softmax(h(U W))`` — the authors' code scaling (``F.mse_loss`` + ``F.kl_div(...,
reduction="batchmean")``), so their λ values transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from face_concepts._core.validation import as_float_tensor, check_float
from face_concepts.models.head import AffineHead

# The one message for a KL term without a head (the objective, FACE, streaming fits, encode).
HEAD_REQUIRED = (
    "head is required when kl_weight > 0: pass the classifier head (features -> logits), "
    "or use kl_weight=0 (NMF) for a plain factorisation"
)
# What FACE and NMF advise for activations with negative entries (a layer before its ReLU).
SIGNED_HINT = (
    "pass bank='signed' for a signed concept bank (codes >= 0, each concept a signed "
    "direction), or use a post-ReLU layer"
)


def kl_rows(
    target_log_probs: torch.Tensor, logits: torch.Tensor, target_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row ``KL(P_i ‖ softmax(logits_i))`` given ``log P`` (natural log); ``P`` if known.

    Summed as ``Σ_c P_c (log P_c − log softmax_c)``: float32 rounding is relative to
    ``Σ_c P_c |log P_c − log softmax_c|``, which vanishes with the KL, not to the size of the
    logits as in the expanded form ``Σ P log P − P·z + logsumexp z``.
    """
    P = target_log_probs.exp() if target_probs is None else target_probs
    return (P * (target_log_probs - torch.log_softmax(logits, dim=1))).sum(dim=1)


def face_objective(
    A: torch.Tensor,
    U: torch.Tensor,
    W: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor] | None,
    kl_weight: float,
) -> float:
    """The docs/method.md §2.1 objective, computed the obvious way (materialising ``U W``).

    Parameters
    ----------
    A : Tensor (n, p)
        Non-negative activations.
    U : Tensor (n, r)
        Codes.
    W : Tensor (r, p)
        Concept bank.
    head : callable or None
        Maps (n, p) features to (n, C) logits. ``None`` only with ``kl_weight == 0``.
    kl_weight : float
        λ ≥ 0.

    Returns
    -------
    float
        ``F.mse_loss(U @ W, A) + λ · mean_i KL(softmax h(A)_i ‖ softmax h(U W)_i)`` (the KL by
        :func:`kl_rows`; equal to ``F.kl_div(..., reduction="batchmean")``).

    Examples
    --------
    >>> A = torch.rand(6, 4); U = torch.rand(6, 2); W = torch.rand(2, 4)
    >>> head = torch.nn.Linear(4, 3)
    >>> face_objective(A, U, W, head, 0.0) == float(((A - U @ W) ** 2).mean())
    True
    """
    A = as_float_tensor(A, "A")
    U = as_float_tensor(U, "U", dtype=A.dtype, device=A.device)
    W = as_float_tensor(W, "W", dtype=A.dtype, device=A.device)
    kl_weight = check_float(kl_weight, "kl_weight", minimum=0.0)
    if U.shape[0] != A.shape[0] or W.shape[1] != A.shape[1] or U.shape[1] != W.shape[0]:
        raise ValueError(
            f"shapes do not chain: A {tuple(A.shape)}, U {tuple(U.shape)}, W {tuple(W.shape)}"
        )
    with torch.no_grad():
        R = U @ W
        value = F.mse_loss(R, A)
        if kl_weight > 0:
            if head is None:
                raise ValueError(HEAD_REQUIRED)
            value = value + kl_weight * kl_rows(torch.log_softmax(head(A), dim=1), head(R)).mean()
    return float(value)


@dataclass
class Terms:
    """Objective parts at one point: ``total = recon + kl_weight * kl``."""

    total: float
    recon: float
    kl: float


def factored_objective(
    sq_norm_A: float,
    UtA: torch.Tensor,
    UtU: torch.Tensor,
    W: torch.Tensor,
    n: int,
    p: int,
    kl: float,
    kl_weight: float,
) -> Terms:
    """Objective from Gram products: ``‖A − UW‖² = ‖A‖² − 2⟨UᵀA, W⟩ + ⟨UᵀU, WWᵀ⟩``.

    The inner products are accumulated in float64 to limit cancellation in float32.
    """
    cross = float((UtA.double() * W.double()).sum())
    quad = float((UtU.double() * (W.double() @ W.double().T)).sum())
    recon = max(sq_norm_A - 2.0 * cross + quad, 0.0) / (n * p)
    return Terms(recon + kl_weight * kl, recon, kl)


def objective_and_grads(
    A: torch.Tensor,
    U: torch.Tensor,
    W: torch.Tensor,
    V: torch.Tensor,
    b: torch.Tensor,
    kl_weight: float,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Objective and its gradients for an affine head ``h(x) = x Vᵀ + b``, factored.

    Never forms ``U W`` or its logits: logits are ``U (W Vᵀ) + b``; the reconstruction
    gradient uses ``A Wᵀ``, ``W Wᵀ``, ``UᵀU`` and ``UᵀA``.
    """
    n, p = A.shape
    alpha, beta = 1.0 / (n * p), kl_weight / n
    WWt, UtU, AWt, UtA = W @ W.T, U.T @ U, A @ W.T, U.T @ A
    gU = 2 * alpha * (U @ WWt - AWt)
    gW = 2 * alpha * (UtU @ W - UtA)
    kl = 0.0
    if kl_weight > 0:
        head = AffineHead(V, b)
        logP = torch.log_softmax(head.logits(A), dim=1)
        M, _ = head.code_space(W)
        Z = head.code_logits(U, W)
        kl = float(kl_rows(logP, Z).mean())
        G = torch.softmax(Z, dim=1) - logP.exp()
        gU = gU + beta * G @ M.T
        gW = gW + beta * (U.T @ G) @ V
    terms = factored_objective(float((A.double() ** 2).sum()), UtA, UtU, W, n, p, kl, kl_weight)
    return terms.total, gU, gW
