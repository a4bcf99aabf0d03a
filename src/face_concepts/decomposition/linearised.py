"""``linearised``: the FACE solver for heads that are not affine (an intermediate layer's head is
the rest of the network), with one head evaluation (forward + backward) per iteration.

``pgd`` evaluates such a head at least 21 times per outer iteration (5 projected-gradient steps
per block, each with a forward, a backward and a line-search forward), and for an intermediate
layer one head call costs as much as a whole last-layer fit (benchmarks/results/
intermediate_layer.md). Here the head is linearised once per iteration instead: at the current
reconstruction ``X_t = U_t W_t`` one forward and one backward give ``G = ∂(λ·KL)/∂X``, and

    S(X) = α‖A − X‖² + λ·KL(X_t) + ⟨G, X − X_t⟩ + (L/2)‖X − X_t‖²

is minimised over ``X = U W`` (U, W ≥ 0; W free for the signed bank). Completing the square,
``S(X) = (α + L/2)‖B − X‖² + const`` with ``B = (αA + (L/2)X_t − G/2) / (α + L/2)``: a plain
NMF (Semi-NMF) of a fixed target, solved by a few HALS sweeps from ``(U_t, W_t)`` without
touching the head. ``S`` is an upper bound of the objective ``F`` near ``X_t`` once ``L`` is at
least the local smoothness of the KL term; it is not known, so it is found as in proximal-
gradient methods: the step is kept only when ``F(X) ≤ S(X)`` (checked with one head forward,
whose graph then gives the next iteration's ``G``), else ``L`` doubles and the inner solve
restarts from ``(U_t, W_t)``; after an accepted step ``L`` halves. Every accepted step satisfies
``F(X_{t+1}) ≤ S(X_{t+1}) ≤ S(X_t) = F(X_t)``: the objective is monotone. A fixed point is a
stationary point of ``F`` (the surrogate has ``F``'s gradient at ``X_t``).

Stop: the same windowed relative decrease as ``hals`` (``solvers._stop_test``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from face_concepts.decomposition.losses import Terms, kl_rows
from face_concepts.decomposition.problem import Problem
from face_concepts.decomposition.solvers import (
    SolverResult,
    _finish,
    _hals_sweeps,
    _record,
    _stop_test,
)

INNER_SWEEPS = 3  # alternating (U, W) HALS rounds on the surrogate per outer iteration
MAX_BACKTRACK = 30  # L doublings before an iteration gives up (the point is then stationary)


class _Evaluation:
    """``F(X)`` from one head forward kept with its graph; ``grad()`` then gives
    ``G = ∂(λ·KL)/∂X`` with one backward (called only for an accepted point)."""

    def __init__(self, prob: Problem, X: torch.Tensor) -> None:
        recon = float(((prob.A - X) ** 2).mean())
        self._X, self._kl = None, None
        self.logits: torch.Tensor | None = None  # h(X), detached (kl_weight > 0)
        if prob.kl_weight <= 0:
            self.terms = Terms(recon, recon, 0.0)
            return
        self._X = X.detach().requires_grad_(True)
        with torch.enable_grad():
            Z = prob.kl_head.logits(self._X)
            self._kl = prob.kl_weight * kl_rows(prob.target_logP, Z, prob.target_P).mean()
        self.logits = Z.detach()
        kl = float(self._kl.detach()) / prob.kl_weight
        self.terms = Terms(recon + prob.kl_weight * kl, recon, kl)

    def grad(self) -> torch.Tensor | None:
        if self._kl is None:
            return None
        assert self._X is not None  # set with _kl
        (G,) = torch.autograd.grad(self._kl, self._X)
        self._X = self._kl = None
        return G


def _nmf_of(
    B: torch.Tensor, U: torch.Tensor, W: torch.Tensor, signed: bool, update_W: bool
) -> tuple:
    """A few alternating HALS rounds on ``min ‖B − U W‖²`` from ``(U, W)`` (copies);
    ``update_W=False``: the codes only (the single encoder's problem)."""
    U, W = U.clone(), W.clone()
    WWt = W @ W.T
    for _ in range(INNER_SWEEPS):
        Ut = _hals_sweeps(U.T.contiguous(), WWt, W @ B.T, max_inner=1)
        U = Ut.T.contiguous()
        if not update_W:
            continue
        UtU, UtB = U.T @ U, U.T @ B
        if signed:
            ridge = 1e-10 * UtU.diagonal().mean().clamp(min=1e-30)
            eye = torch.eye(UtU.shape[0], dtype=UtU.dtype, device=UtU.device)
            W = torch.linalg.solve(UtU + ridge * eye, UtB)
        else:
            W = _hals_sweeps(W, UtU, UtB, max_inner=1)
        WWt = W @ W.T
    return U, W


def solve_linearised(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    callback: Callable[[int, Terms], None] | None = None,
    signed: bool = False,
    update_W: bool = True,
) -> SolverResult:
    """Prox-linear majorise–minimise for any differentiable head (see the module docstring).

    One head forward + backward per accepted iteration (plus one forward per rejected trial).
    ``res.n_head_calls`` counts the forwards. ``update_W=False`` keeps ``W`` fixed: the codes
    given the bank (the single encoder's problem for such heads; no warning at ``max_iter``).
    """
    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    alpha = 1.0 / prob.A.numel()  # the reconstruction term is a mean over entries
    X = U @ W
    ev = _Evaluation(prob, X)
    cur, G = ev.terms, ev.grad()
    n_calls = 1
    _record(res.history, cur)
    # Initial curvature: the first trial moves X by about 10 % of its norm along -G (then L
    # adapts by doubling on rejection and halving on acceptance).
    L = 0.0 if G is None else float(G.norm()) / max(0.1 * float(X.norm()), 1e-30)
    for t in range(1, max_iter + 1):
        accepted = False
        for _ in range(MAX_BACKTRACK):
            B = (
                prob.A
                if G is None
                else (alpha * prob.A + 0.5 * L * X - 0.5 * G) / (alpha + 0.5 * L)
            )
            Un, Wn = _nmf_of(B, U, W, signed, update_W)
            Xn = Un @ Wn
            ev = _Evaluation(prob, Xn)
            n_calls += 1
            new = ev.terms
            if G is None:  # λ = 0: plain HALS on A, monotone by construction
                accepted = new.total <= cur.total
                break
            D = Xn - X
            # S(Xn): the linearised KL around X plus the exact reconstruction at Xn
            bound = cur.total - cur.recon + new.recon
            bound += float((G * D).sum()) + 0.5 * L * float((D * D).sum())
            if new.total <= bound + 1e-12 * abs(bound):
                accepted = True
                break
            L *= 2.0
        if not accepted:  # no L gave a decrease: (U, W) is stationary to working precision
            res.converged = True
            break
        U, W, X, cur, G = Un, Wn, Xn, new, ev.grad()
        L *= 0.5
        _record(res.history, cur)
        res.n_iter = t
        if callback is not None:
            callback(t, cur)
        if _stop_test(res.history["total"], tol):
            res.converged = True
            break
    if update_W:
        _finish(res.history, res.n_iter, max_iter, res.converged, "linearised")
    res.U, res.W = U, W
    res.n_head_calls = n_calls
    return res
