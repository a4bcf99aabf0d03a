"""The signed concept bank: Semi-NMF with FACE's KL term (``bank="signed"``).

``min_{U ≥ 0, W} α‖A − U W‖² + β Σ_i KL(P_i ‖ softmax(h(U_i W)))`` — the objective of
``solvers.py`` with the bank ``W`` unconstrained: the codes stay non-negative (a patch is an
additive mix of concepts) while a concept is a *direction* of the layer's signed feature space
(Ding, Li & Jordan 2010, "Convex and semi-nonnegative matrix factorizations"). It is what a
layer with signed activations needs (MobileNetV3, EfficientNet, ConvNeXt, RegNet blocks,
transformers' tokens): ``A`` itself may then be signed.

The solver has the structure of ``hals`` (alternating blocks, monotone):

- **U-block**: unchanged (``solvers._u_block``): a projected Newton iteration per row with an
  affine head and λ > 0, MM-HALS sweeps (exact non-negative least squares) at λ = 0. Neither
  assumes ``W ≥ 0``.
- **W-block**: an *unconstrained* convex problem. At λ = 0 it is least squares, solved exactly:
  ``W = (UᵀU)⁻¹ UᵀA`` (Cholesky, with a relative jitter for a rank-deficient ``UᵀU``). At λ > 0
  one Newton-CG step of ``newton_cg.bank_newton_step`` without the projection (the same exact
  Hessian-vector products, ``(UᵀU)⁻¹`` preconditioner and Armijo search).
- **start**: ``init="signed-svd"`` (``init.signed_svd``), then for λ > 0 a plain Semi-NMF warm
  start (λ = 0, to ``solvers.WARM_TOL``), as the non-negative path does.

Non-affine heads (ConvNeXt's LayerNorm head) use the same solvers as the non-negative bank with
the W-step unprojected (``autograd_solvers.solve_pgd(signed=True)``, and ``linearised`` likewise). The mini-batch W-update is :func:`minimise_surrogate_signed`
(closed form). ``adam`` (the authors' parity solver) has no signed variant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from face_concepts.decomposition.autograd_solvers import solve_pgd
from face_concepts.decomposition.hals import MAX_ITER, solve_hals
from face_concepts.decomposition.jacobian import solve_jacobian
from face_concepts.decomposition.linearised import solve_linearised
from face_concepts.decomposition.losses import Terms, factored_objective
from face_concepts.decomposition.newton_cg import bank_newton_step
from face_concepts.decomposition.problem import Problem
from face_concepts.decomposition.quasi_newton import solve_lbfgs
from face_concepts.decomposition.solvers import (
    SolverResult,
)

BANKS = ("nonnegative", "signed")
# HALS sweeps per U-block of the signed bank: on the benchmark data (centred, bank="signed", λ = 0)
# 10 sweeps stopped sooner and lower than 5 or 3 (4.4 s against 5.0 s and 6.5 s; benchmarks/
# solver.py --only-inner 3,10,5, results/solver.md section 9), unlike the non-negative bank
# (solvers.MAX_INNER).
SIGNED_MAX_INNER = 10
JITTER = 1e-10  # relative ridge on UᵀU (a concept whose codes are all 0 gets a zero direction)


def least_squares_bank(UtU: torch.Tensor, UtA: torch.Tensor) -> torch.Tensor:
    """``argmin_W ‖A − U W‖²`` from the Gram products: ``(UᵀU + εI)⁻¹ UᵀA``, in float64."""
    G = UtU.double()
    eps = JITTER * float(G.diagonal().mean()) + 1e-300
    L = torch.linalg.cholesky(G + eps * torch.eye(G.shape[0], dtype=G.dtype, device=G.device))
    return torch.cholesky_solve(UtA.double(), L).to(UtA.dtype)


def bank_step(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    Z: torch.Tensor | None,
    f_cur: Terms,
    UtA: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, Terms, torch.Tensor]:
    """The signed W-block from ``(U, W)`` whose objective is ``f_cur``: exact least squares at
    λ = 0, one unprojected Newton-CG step at λ > 0. Returns ``(W, logits or None, terms, UᵀA)``;
    never raises the objective (a least-squares step that would, in rounding, is not taken)."""
    UtA = U.T @ prob.A if UtA is None else UtA
    if prob.kl_weight > 0:
        return bank_newton_step(prob, U, W, Z, f_cur, UtA=UtA, signed=True)
    UtU = U.T @ U
    Wn = least_squares_bank(UtU, UtA)
    terms = factored_objective(prob.sq_norm_A, UtA, UtU, Wn, prob.n, prob.p, 0.0, 0.0)
    if terms.total > f_cur.total:
        return W, Z, f_cur, UtA
    return Wn, None, terms, UtA


def solve_semi_nmf(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = MAX_ITER,
    tol: float = 1e-5,
    max_inner: int = SIGNED_MAX_INNER,
    warm_start: bool = False,
    extrapolate: bool = True,
    callback: Callable[[int, Terms], None] | None = None,
) -> SolverResult:
    """Alternating U-block / signed W-block updates (module docstring): the loop of ``hals``
    (``hals.solve_hals``) with :func:`bank_step` as its W-block; its stop rule (windowed relative
    decrease below ``tol``, else ``max_iter`` with a warning). ``warm_start`` (λ > 0): first fit
    plain Semi-NMF from ``(U, W)`` to ``WARM_TOL``."""
    return solve_hals(
        prob, U, W, max_iter=max_iter, tol=tol, max_inner=max_inner, warm_start=warm_start,
        extrapolate=extrapolate, callback=callback, signed_w_block=bank_step,
    )  # fmt: skip


# The signed counterparts of ``registry.SOLVERS`` (``FACE(bank="signed", solver=...)``).
SOLVERS: dict[str, Callable[..., SolverResult]] = {
    "hals": solve_semi_nmf,
    "pgd": functools.partial(solve_pgd, signed=True),
    "linearised": functools.partial(solve_linearised, signed=True),
    "jacobian": functools.partial(solve_jacobian, signed_w_block=bank_step),
    "lbfgs": functools.partial(solve_lbfgs, signed=True),
}


def check_bank(bank: Any, solver: str) -> bool:
    """Validate ``bank`` (and that ``solver`` has a signed variant); True for the signed bank."""
    if bank not in BANKS:
        raise ValueError(f"bank must be one of {list(BANKS)}, got {bank!r}")
    signed = bank == "signed"
    if signed and solver not in ("auto", *SOLVERS):
        raise ValueError(
            f"solver={solver!r} has no signed bank (it is the authors' non-negative Adam loop); "
            f"with bank='signed' use solver 'auto', {' or '.join(map(repr, SOLVERS))}"
        )
    return signed


# ----------------------------------------------------------------------------- mini-batch
def minimise_surrogate_signed(
    Q: Any, K_eig: tuple[torch.Tensor, torch.Tensor] | None, p: int, dtype: torch.dtype
) -> torch.Tensor:
    """The exact minimiser over all ``W`` of the mini-batch surrogate ``Q_s``
    (``surrogate.Surrogate``, whose statistics are ``S = S_uu``, ``S_a = S_ua``)::

        Q_s(W) = (1/p)(⟨S, WWᵀ⟩ − 2⟨S_a, W⟩) + λ(⟨M, W⟩ + ½ s ⟨S, W K Wᵀ⟩)

    Its gradient vanishes at ``S W (2/p · I + λ s K) = (2/p) S_a − λ M``: a Cholesky solve on
    the concept side (r × r) and, with ``K = E diag(k) Eᵀ`` (``K_eig = (k, E)`` from
    :func:`eig_of`, once per fit), a diagonal solve on the feature side.
    """
    S, Sa = Q.st.UtU, Q.st.UtA
    a2 = 2.0 / p
    rhs = a2 * Sa
    if Q.lam > 0:
        rhs = rhs - Q.lam * Q.linear()
    X = least_squares_bank(S, rhs)  # S⁻¹ rhs (float64)
    if Q.lam > 0:
        assert K_eig is not None  # given when λ > 0
        k, E = K_eig
        X = ((X.double() @ E) / (a2 + Q.lam * Q.s * k)) @ E.T
    else:
        X = X / a2
    return X.to(dtype)


def eig_of(K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues clamped ≥ 0, eigenvectors)`` of the symmetric PSD ``K``, in float64."""
    k, E = torch.linalg.eigh(K.double())
    return k.clamp(min=0), E


__all__ = [
    "BANKS",
    "SOLVERS",
    "bank_step",
    "check_bank",
    "eig_of",
    "least_squares_bank",
    "minimise_surrogate_signed",
    "solve_semi_nmf",
]
