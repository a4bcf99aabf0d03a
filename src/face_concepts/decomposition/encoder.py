"""The single non-negative encoder (docs/method.md §6).

Codes for new activations minimise the *same* objective as the fit, over ``U ≥ 0`` with the
concept bank ``W`` fixed: ``mean (A − U W)² + λ · KL(softmax h(A) ‖ softmax h(U W))``. With
``kl_weight = 0`` it is non-negative least squares. Every method and metric in face-concepts
encodes through this function, so comparisons isolate the factorisation. The bank may be signed
(``bank="signed"``, ``semi_nmf.py``): the codes are non-negative all the same, and ``A`` may then
be signed too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from face_concepts._core.validation import as_float_tensor, check_float, check_int
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.jacobian import solve_jacobian
from face_concepts.decomposition.losses import HEAD_REQUIRED, kl_rows
from face_concepts.decomposition.newton import solve_codes_newton
from face_concepts.decomposition.problem import make_problem
from face_concepts.decomposition.registry import DEFAULTS
from face_concepts.decomposition.solvers import (
    Problem,
    _Curvature,
    evaluate,
    small_problem_threads,
    u_step,
)

# The codes' stop (W fixed) for an affine head or λ = 0: each row's problem is convex and every
# iteration costs a few small products, so the codes are solved to rounding.
CODES_STOP = (500, 1e-7)
# HALS sweeps per iteration of the λ = 0 codes (NNLS with W fixed: no alternation, so unlike
# solvers.MAX_INNER more sweeps only solve the same problem more exactly).
NNLS_SWEEPS = 10


def _warm_start(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    # Clamped ridge least squares: a cheap start that is exact when the LS solution is ≥ 0.
    G = W @ W.T
    eps = 1e-10 * float(G.diagonal().sum()) + 1e-30
    G = G + eps * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    try:
        X = torch.linalg.solve(G, W @ A.T)
    except torch.linalg.LinAlgError:
        # A bank so small (or so dependent) that the ridge vanishes in float rounding: the
        # least-squares start by the pseudo-inverse instead (the iterations then refine it).
        X = torch.linalg.pinv(G, hermitian=True) @ (W @ A.T)
    return X.T.clamp_(min=0).contiguous()


def code_stop(
    prob: Problem, max_iter: int | None = None, tol: float | None = None
) -> tuple[int, float]:
    """``(max_iter, tol)`` of the codes' solve: the given values, else ``CODES_STOP`` for an
    affine head (or λ = 0) and the ``jacobian`` solver's own defaults for a head that is not
    affine (each of its iterations calls the head)."""
    default = (
        CODES_STOP
        if prob.kl_weight == 0 or prob.factored
        else (int(DEFAULTS["jacobian"]["max_iter"]), DEFAULTS["jacobian"]["tol"])
    )
    return (
        default[0] if max_iter is None else max_iter,
        default[1] if tol is None else tol,
    )


def solve_codes(
    prob: Problem,
    W: torch.Tensor,
    U: torch.Tensor,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
    resolves: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Minimise the objective over U ≥ 0 with W fixed, starting at ``U``; returns (U, iterations).

    Affine head with λ > 0: projected Newton (``newton.py``; ``resolves``: its re-solves of a
    step that clips codes, default ``newton.RESOLVES``); a head that is not affine: the head's
    affine model between head calls (``jacobian.py``, W fixed); λ = 0: exact HALS sweeps of
    NNLS. ``max_iter``/``tol`` default to :func:`code_stop`'s.
    """
    max_iter, tol = code_stop(prob, max_iter, tol)
    if prob.kl_weight > 0 and not prob.factored:
        res = solve_jacobian(prob, U, W, max_iter=max_iter, tol=tol, update_W=False)
        return res.U, res.n_iter
    prev = evaluate(prob, U, W).total
    if prob.kl_weight > 0 and prob.factored:
        return solve_codes_newton(
            prob, W, U, max_iter=max_iter, tol=tol, f0=prev, resolves=resolves
        )
    it = 0
    curv = _Curvature()
    Z = None
    for it in range(1, max_iter + 1):  # noqa: B007 (returned after the loop)
        with torch.no_grad():
            U, Z, cur = u_step(prob, U, W, Z, NNLS_SWEEPS, prev, curv)
        if prev <= 0 or (prev - cur) / prev < tol:
            break
        prev = cur
    return U, it


def encode(
    A: torch.Tensor,
    W: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    kl_weight: float = 0.0,
    max_iter: int | None = None,
    tol: float | None = None,
    U0: torch.Tensor | None = None,
    batch_size: int | None = None,
    signed: bool | None = None,
) -> torch.Tensor:
    """Non-negative codes ``U`` for activations ``A`` given the concept bank ``W``.

    Parameters
    ----------
    A : Tensor (n, p)
        Non-negative activations.
    W : Tensor (r, p)
        Concept bank (fixed).
    head : callable or None
        Classifier head; required when ``kl_weight > 0``.
    kl_weight : float
        λ of the KL term; 0 gives non-negative least squares.
    max_iter, tol : int, float, optional
        Stop when the relative objective decrease of one pass is below ``tol``. Default
        (``code_stop``): 500 and 1e-7; with ``kl_weight > 0`` and a head that is not affine (an
        intermediate layer's, seconds per call) the ``jacobian`` solver's own, 200 and 1e-4.
    U0 : Tensor (n, r), optional
        Warm start; default is clamped least squares.
    batch_size : int, optional
        Encode rows in chunks of this size (rows are independent, so results do not change).
    signed : bool or None
        Whether ``W`` is a signed bank (then ``A`` may be signed); None: whether ``W`` has a
        negative entry. A non-negative bank needs ``A ≥ 0``.

    Returns
    -------
    Tensor (n, r), non-negative.

    Examples
    --------
    >>> W = torch.eye(2, 3); A = torch.tensor([[1.0, 2.0, 0.0]])
    >>> encode(A, W)
    tensor([[1., 2.]])
    """
    A = as_float_tensor(A, "A")
    W = as_float_tensor(W, "W", dtype=A.dtype, device=A.device)
    if signed is None:
        signed = bool((W < 0).any())
    if not signed:
        as_float_tensor(A, "A", non_negative=True)
    kl_weight = check_float(kl_weight, "kl_weight", minimum=0.0)
    if max_iter is not None:
        check_int(max_iter, "max_iter", minimum=1)
    if W.shape[1] != A.shape[1]:
        raise ValueError(f"A has {A.shape[1]} features but W has {W.shape[1]} columns")
    h = None
    if kl_weight > 0:
        if head is None:
            raise ValueError(HEAD_REQUIRED)
        h = Head(head, dtype=A.dtype, device=A.device)
    n = A.shape[0]
    bs = n if batch_size is None else check_int(batch_size, "batch_size", minimum=1)
    out = []
    for s in range(0, n, bs):
        Ab = A[s : s + bs]
        prob = make_problem(Ab, h, kl_weight)
        U = (
            _warm_start(Ab, W)
            if U0 is None
            else as_float_tensor(U0, "U0", dtype=A.dtype, device=A.device)[s : s + bs].clone()
        )
        with small_problem_threads(prob, W.shape[0]):
            U, _ = solve_codes(prob, W, U, max_iter=max_iter, tol=tol)
        out.append(U)
    return torch.cat(out, dim=0)


__all__ = ["encode", "kl_rows"]
