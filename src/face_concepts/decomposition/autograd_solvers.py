"""The autograd solvers ``pgd`` and ``adam`` (docs/method.md §4), on the materialised objective.

``pgd`` — alternating projected gradient with Armijo backtracking, through autograd on the
materialised objective: works for any differentiable head; monotone by the sufficient-decrease
test. It stops when one iteration's relative decrease ``(L_{t-1} − L_t) / L_{t-1}`` is below
``tol``, or after ``max_iter`` iterations with a ``ConvergenceWarning``.

``adam`` — the FACE authors' solver, reproduced for parity: joint Adam on ``(U, W)`` at lr 5e-4,
clamp at 0 after each step, stop when the absolute loss change is below ``tol`` (1e-3) or after
22,000 steps.

The blockwise ``hals`` solver and the helpers shared by every solver live in ``solvers.py``;
the registry of all of them by name in ``registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from face_concepts.decomposition.losses import Terms, kl_rows
from face_concepts.decomposition.problem import Problem
from face_concepts.decomposition.solvers import SolverResult, _finish, _record, evaluate


def _loss_terms(
    prob: Problem, U: torch.Tensor, W: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mse, kl) on the materialised reconstruction, as the authors' code computes them."""
    R = U @ W
    mse = F.mse_loss(R, prob.A)
    if prob.kl_weight > 0:
        return mse, kl_rows(prob.target_logP, prob.kl_head.logits(R), prob.target_P).mean()
    return mse, torch.zeros((), dtype=mse.dtype, device=mse.device)


def _materialised_loss(prob: Problem, U: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    mse, kl = _loss_terms(prob, U, W)
    return mse + prob.kl_weight * kl if prob.kl_weight > 0 else mse


def pg_block(
    f: Callable[[torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    step: float,
    n_steps: int,
    *,
    project: bool = True,
) -> tuple[torch.Tensor, float]:
    """``n_steps`` projected-gradient steps on ``f`` over X ≥ 0 with Armijo backtracking
    (``project=False``: over all X, for the signed bank).

    Accepts a step only when ``f(X⁺) ≤ f(X) + ⟨g, X⁺ − X⟩ + ‖X⁺ − X‖² / (2 step)``, which
    implies ``f(X⁺) ≤ f(X)``. Returns the new X and the step to start from next time.
    """
    for _ in range(n_steps):
        Xg = X.detach().requires_grad_(True)
        with torch.enable_grad():
            fx_t = f(Xg)
            (g,) = torch.autograd.grad(fx_t, Xg)
        fx = float(fx_t.detach())
        accepted = False
        with torch.no_grad():
            for _ in range(40):
                Xn = (X - step * g).clamp_(min=0) if project else X - step * g
                d = Xn - X
                bound = fx + float((g * d).sum()) + float((d * d).sum()) / (2 * step)
                if float(f(Xn)) <= bound:
                    accepted = True
                    break
                step *= 0.5
        if not accepted:
            break
        X = Xn
        step *= 2.0
    return X.detach(), step


def solve_pgd(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    inner_steps: int = 5,
    callback: Callable[[int, Terms], None] | None = None,
    signed: bool = False,
) -> SolverResult:
    """Alternating projected gradient (autograd): any differentiable head. ``signed``: ``W``
    unconstrained (the signed bank, ``semi_nmf.py``); the codes stay ≥ 0."""
    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    prev = evaluate(prob, U, W)
    _record(res.history, prev)
    su, sw = 1.0, 1.0
    for t in range(1, max_iter + 1):
        U, su = pg_block(partial(_materialised_loss, prob, W=W), U, su, inner_steps)
        W, sw = pg_block(
            partial(_materialised_loss, prob, U), W, sw, inner_steps, project=not signed
        )
        cur = evaluate(prob, U, W)
        _record(res.history, cur)
        res.n_iter = t
        if callback is not None:
            callback(t, cur)
        if prev.total <= 0 or (prev.total - cur.total) / prev.total < tol:
            res.converged = True
            break
        prev = cur
    _finish(res.history, res.n_iter, max_iter, res.converged, "pgd")
    res.U, res.W = U, W
    return res


def solve_adam(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = 22000,
    tol: float = 1e-3,
    lr: float = 5e-4,
    callback: Callable[[int, Terms], None] | None = None,
) -> SolverResult:
    """The FACE authors' loop: joint Adam on the materialised loss, clamp, absolute-change stop.

    ``history["total"][t]`` is the loss the authors' loop computes at step ``t`` (before that
    step's update); the stop test is ``|L_t − L_{t−1}| < tol`` on those values.
    """
    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    U = U.clone().requires_grad_(True)
    W = W.clone().requires_grad_(True)
    opt = torch.optim.Adam([U, W], lr=lr)
    prev = None
    for t in range(1, max_iter + 1):
        opt.zero_grad()
        with torch.enable_grad():
            mse, kl = _loss_terms(prob, U, W)
            loss = mse + prob.kl_weight * kl if prob.kl_weight > 0 else mse
            loss.backward()
        opt.step()
        with torch.no_grad():
            U.clamp_(min=0)
            W.clamp_(min=0)
        value = float(loss.detach())  # (float of a tensor that requires grad warns)
        terms = Terms(value, float(mse.detach()), float(kl.detach()))
        _record(res.history, terms)
        res.n_iter = t
        if callback is not None:
            callback(t, terms)
        if prev is not None and abs(prev - value) < tol:
            res.converged = True
            break
        prev = value
    _finish(res.history, res.n_iter, max_iter, res.converged, "adam")
    res.U, res.W = U.detach(), W.detach()
    return res
