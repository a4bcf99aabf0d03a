"""Solvers for ``min_{U, W ≥ 0} L(U, W)`` (method.md §2), chosen from a registry.

``hals`` (default for affine heads and plain NMF) — *majorise-minimise HALS*. The objective is
convex in each block. For a block we build a quadratic upper bound that touches the objective at
the current point — exact for the reconstruction term; for the KL term, a first-order expansion
plus Böhning's bound on the softmax curvature, ``∇²_z logsumexp(z) ≼ ½ (I − 11ᵀ/C)`` — and
minimise it over the non-negative orthant with a few HALS (exact coordinate) sweeps. Every sweep
lowers the bound, and the bound lies above the objective, so **the objective never increases**
(up to floating-point rounding). For ``U`` the bound's curvature is the r×r matrix
``2α WWᵀ + (β/2) M_c M_cᵀ`` (``M_c = W V_cᵀ``, ``V_c`` the class-centred head weights); for ``W``
it is ``(2α + β‖V_c‖₂²/2) UᵀU``; with ``α = 1/(np)``, ``β = λ/n``. Everything is factored: ``U W``
and its logits are never formed (logits are ``U (W Vᵀ) + b``).

``pgd`` — alternating projected gradient with Armijo backtracking, through autograd on the
materialised objective: works for any differentiable head; monotone by the sufficient-decrease
test.

``adam`` — the FACE authors' solver, reproduced for parity: joint Adam on ``(U, W)`` at lr 5e-4,
clamp at 0 after each step, stop when the absolute loss change is below ``tol`` (1e-3) or after
22,000 steps.

Stopping rule of ``hals`` and ``pgd``: stop after iteration ``t`` when
``(L_{t-1} − L_t) / L_{t-1} < tol`` (relative decrease over one outer iteration, default 1e-5),
or after ``max_iter`` iterations (a ``ConvergenceWarning`` is raised then).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning

from ._head import Head
from .losses import Terms, factored_objective, kl_rows


@dataclass
class Problem:
    """Data of one factorisation: ``A``, the head and the target ``log P``."""

    A: torch.Tensor
    head: Head | None
    kl_weight: float
    logP: torch.Tensor | None = None
    sq_norm_A: float = 0.0
    Vc_sq_norm: float = 0.0
    Vc: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def p(self) -> int:
        return self.A.shape[1]

    @property
    def alpha(self) -> float:
        return 1.0 / (self.n * self.p)

    @property
    def beta(self) -> float:
        return self.kl_weight / self.n

    @property
    def factored(self) -> bool:
        return self.kl_weight == 0 or (self.head is not None and self.head.is_affine)


def make_problem(
    A: torch.Tensor, head: Head | None, kl_weight: float, logP: torch.Tensor | None = None
) -> Problem:
    """Precompute what every iteration reuses (target distribution, norms)."""
    prob = Problem(A=A, head=head, kl_weight=kl_weight)
    prob.sq_norm_A = float((A.double() ** 2).sum())
    if kl_weight > 0:
        if head is None:
            raise ValueError("a head is required when kl_weight > 0")
        if logP is None:
            with torch.no_grad():
                logP = torch.log_softmax(head.logits(A), dim=1)
        prob.logP = logP
        if head.is_affine:
            prob.Vc = head.V - head.V.mean(dim=0, keepdim=True)
            prob.Vc_sq_norm = float(torch.linalg.matrix_norm(prob.Vc.double(), ord=2)) ** 2
    return prob


@dataclass
class SolverResult:
    U: torch.Tensor
    W: torch.Tensor
    n_iter: int
    converged: bool
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"total": [], "recon": [], "kl": []}
    )


def evaluate(
    prob: Problem, U: torch.Tensor, W: torch.Tensor, Z: torch.Tensor | None = None
) -> Terms:
    """Objective terms at ``(U, W)``; factored when possible. ``Z``: logits if already known."""
    with torch.no_grad():
        kl = 0.0
        if prob.kl_weight > 0:
            if Z is None:
                Z = prob.head.code_logits(U, W)
            kl = float(kl_rows(prob.logP, Z).mean())
        if prob.factored:
            return factored_objective(
                prob.sq_norm_A, U.T @ prob.A, U.T @ U, W, prob.n, prob.p, kl, prob.kl_weight
            )
        recon = float(((prob.A - U @ W) ** 2).mean())
        return Terms(recon + prob.kl_weight * kl, recon, kl)


def _record(history: dict[str, list[float]], t: Terms) -> None:
    history["total"].append(t.total)
    history["recon"].append(t.recon)
    history["kl"].append(t.kl)


def _hals_sweeps(X: torch.Tensor, Q: torch.Tensor, R: torch.Tensor, max_inner: int) -> torch.Tensor:
    """Minimise ``½ tr(Xᵀ Q X) − tr(Rᵀ X)`` over X ≥ 0 (X is (r, m)) by HALS row sweeps, in place.

    Row ``k`` is set to its exact minimiser with the other rows fixed. Inner sweeps stop early
    once a sweep moves X by less than 1 % (in norm) of the first sweep's move (Gillis & Glineur's
    accelerated HALS rule).
    """
    diag = Q.diagonal().tolist()
    first = None
    for _ in range(max_inner):
        moved = X.new_zeros(())
        for k, qkk in enumerate(diag):
            if qkk <= 0:
                continue
            new = (X[k] + (R[k] - Q[k] @ X) / qkk).clamp_(min=0)
            moved += (new - X[k]).square().sum()
            X[k] = new
        moved = float(moved)
        if first is None:
            first = moved
        if moved <= 1e-4 * first or moved == 0.0:
            break
    return X


def u_step(
    prob: Problem, U: torch.Tensor, W: torch.Tensor, Z: torch.Tensor | None, max_inner: int
) -> torch.Tensor:
    """One MM-HALS update of ``U`` with ``W`` fixed (``Z``: current logits ``h(UW)`` or None)."""
    a2 = 2.0 * prob.alpha
    Q = a2 * (W @ W.T)
    R = a2 * (prob.A @ W.T)
    if prob.kl_weight > 0:
        head = prob.head
        M = W @ head.V.T
        if Z is None:
            Z = torch.addmm(head.b, U, M)
        G = torch.softmax(Z, dim=1) - prob.logP.exp()
        Mc = W @ prob.Vc.T
        H = (0.5 * prob.beta) * (Mc @ Mc.T)
        Q = Q + H
        R = R - prob.beta * (G @ M.T) + U @ H
    # Sweep on Uᵀ so that each concept's codes are a contiguous row.
    return _hals_sweeps(U.T.contiguous(), Q, R.T.contiguous(), max_inner).T.contiguous()


def w_step(
    prob: Problem, U: torch.Tensor, W: torch.Tensor, max_inner: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One MM-HALS update of ``W`` with ``U`` fixed. Returns ``(W, UᵀA)``."""
    a2 = 2.0 * prob.alpha
    UtU = U.T @ U
    UtA = U.T @ prob.A
    Q = a2 * UtU
    R = a2 * UtA
    if prob.kl_weight > 0:
        head = prob.head
        Z = torch.addmm(head.b, U, W @ head.V.T)
        G = torch.softmax(Z, dim=1) - prob.logP.exp()
        c = 0.5 * prob.beta * prob.Vc_sq_norm
        Q = Q + c * UtU
        R = R - prob.beta * ((U.T @ G) @ head.V) + c * (UtU @ W)
    return _hals_sweeps(W, Q, R, max_inner), UtA


def _finish(history: dict, t: int, max_iter: int, converged: bool, name: str) -> None:
    if not converged and t >= max_iter:
        warnings.warn(
            f"solver {name!r} stopped at max_iter={max_iter} before reaching tol; increase max_iter "
            "or loosen tol (the result is usable but not converged)",
            ConvergenceWarning,
            stacklevel=4,
        )


def solve_hals(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    max_inner: int = 10,
    callback: Callable[[int, Terms], None] | None = None,
) -> SolverResult:
    """Alternating majorise-minimise HALS (affine heads or λ = 0). See the module docstring."""
    if not prob.factored:
        raise ValueError("solver='hals' needs an affine head (or kl_weight=0); use solver='pgd'")
    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    with torch.no_grad():
        prev = evaluate(prob, U, W)
        _record(res.history, prev)
        Z = None
        for t in range(1, max_iter + 1):
            U = u_step(prob, U, W, Z, max_inner)
            W, UtA = w_step(prob, U, W, max_inner)
            Z = prob.head.code_logits(U, W) if prob.kl_weight > 0 else None
            kl = float(kl_rows(prob.logP, Z).mean()) if Z is not None else 0.0
            cur = factored_objective(
                prob.sq_norm_A, UtA, U.T @ U, W, prob.n, prob.p, kl, prob.kl_weight
            )
            _record(res.history, cur)
            res.n_iter = t
            if callback is not None:
                callback(t, cur)
            if prev.total <= 0 or (prev.total - cur.total) / prev.total < tol:
                res.converged = True
                break
            prev = cur
    _finish(res.history, res.n_iter, max_iter, res.converged, "hals")
    res.U, res.W = U, W
    return res


def _loss_terms(
    prob: Problem, U: torch.Tensor, W: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mse, kl) on the materialised reconstruction, as the authors' code computes them."""
    R = U @ W
    mse = F.mse_loss(R, prob.A)
    if prob.kl_weight > 0:
        logQ = torch.log_softmax(prob.head.logits(R), dim=1)
        return mse, F.kl_div(logQ, prob.logP, reduction="batchmean", log_target=True)
    return mse, torch.zeros((), dtype=mse.dtype, device=mse.device)


def _materialised_loss(prob: Problem, U: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    mse, kl = _loss_terms(prob, U, W)
    return mse + prob.kl_weight * kl if prob.kl_weight > 0 else mse


def pg_block(
    f: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, step: float, n_steps: int
) -> tuple[torch.Tensor, float]:
    """``n_steps`` projected-gradient steps on ``f`` over X ≥ 0 with Armijo backtracking.

    Accepts a step only when ``f(X⁺) ≤ f(X) + ⟨g, X⁺ − X⟩ + ‖X⁺ − X‖² / (2 step)``, which
    implies ``f(X⁺) ≤ f(X)``. Returns the new X and the step to start from next time.
    """
    for _ in range(n_steps):
        Xg = X.detach().requires_grad_(True)
        with torch.enable_grad():
            fx = f(Xg)
            (g,) = torch.autograd.grad(fx, Xg)
        fx = float(fx)
        accepted = False
        with torch.no_grad():
            for _ in range(40):
                Xn = (X - step * g).clamp_(min=0)
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
) -> SolverResult:
    """Alternating projected gradient (autograd): any differentiable head."""
    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    prev = evaluate(prob, U, W)
    _record(res.history, prev)
    su, sw = 1.0, 1.0
    for t in range(1, max_iter + 1):
        U, su = pg_block(lambda X: _materialised_loss(prob, X, W), U, su, inner_steps)
        W, sw = pg_block(lambda X: _materialised_loss(prob, U, X), W, sw, inner_steps)
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
        value = float(loss)
        terms = Terms(value, float(mse), float(kl))
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


SOLVERS: dict[str, Callable[..., SolverResult]] = {
    "hals": solve_hals,
    "pgd": solve_pgd,
    "adam": solve_adam,
}
DEFAULTS: dict[str, dict[str, float]] = {
    "hals": {"max_iter": 1000, "tol": 1e-5},
    "pgd": {"max_iter": 1000, "tol": 1e-5},
    "adam": {"max_iter": 22000, "tol": 1e-3},
}
