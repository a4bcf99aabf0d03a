"""Solvers for ``min_{U, W ≥ 0} L(U, W)`` (method.md §2), chosen from a registry.

``hals`` (default for affine heads and plain NMF) — alternating block updates. With λ > 0 the
U-block takes ``U_NEWTON_STEPS`` projected Newton iterations (``newton.py``: exact per-row
Hessians, Armijo along the projection arc; monotone); measured on the 3,311 real MobileNetV2 rows
at 150 iterations, it ends 7 % (λ = 1) and 61 % (λ = 100) below the majorise-minimise U-step
described next, which remains the U-step for λ = 0 and the W-step always: *majorise-minimise
HALS*. The objective is
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
from .newton import solve_codes_newton

U_NEWTON_STEPS = 2  # projected Newton iterations per U-block update (affine head, λ > 0)


@dataclass
class Problem:
    """Data of one factorisation: ``A``, the head and the target ``log P``."""

    A: torch.Tensor
    head: Head | None
    kl_weight: float
    logP: torch.Tensor | None = None
    P: torch.Tensor | None = None
    P64: torch.Tensor | None = None
    neg_entropy: torch.Tensor | None = None  # Σ_c P log P per row (constant of the KL), float64
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
        prob.P = logP.exp()
        prob.P64 = logP.double().exp()
        prob.neg_entropy = (prob.P64 * logP.double()).sum(dim=1)
        if head.is_affine:
            prob.Vc = head.V - head.V.mean(dim=0, keepdim=True)
    return prob


_SPECTRAL_CACHE: list[tuple[torch.Tensor, float]] = []


def centred_spectral_norm_sq(prob: Problem) -> float:
    """``‖V_c‖₂²`` (needed by W steps only), cached per head weight tensor: an SVD of a
    (C, p) matrix costs seconds and the same head is used by every fit and encode.
    """
    if prob.Vc_sq_norm > 0:
        return prob.Vc_sq_norm
    V = prob.head.V
    for cached, value in _SPECTRAL_CACHE:  # compared by content: a stale hit would break the bound
        if (
            cached.shape == V.shape
            and cached.dtype == V.dtype
            and cached.device == V.device
            and torch.equal(cached, V)
        ):
            prob.Vc_sq_norm = value
            return value
    value = float(torch.linalg.matrix_norm(prob.Vc.double(), ord=2)) ** 2
    _SPECTRAL_CACHE.insert(0, (V.detach().clone(), value))
    del _SPECTRAL_CACHE[4:]
    prob.Vc_sq_norm = value
    return value


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


def _recon_from(prob: Problem, cross: torch.Tensor, UtU: torch.Tensor, WWt: torch.Tensor) -> float:
    """``mean (A − UW)²`` from ``⟨U, AWᵀ⟩`` (or ``⟨UᵀA, W⟩``) and the two Gram matrices."""
    quad = float((UtU.double() * WWt.double()).sum())
    return max(prob.sq_norm_A - 2.0 * float(cross) + quad, 0.0) * prob.alpha


def _kl_of(prob: Problem, Z: torch.Tensor | None) -> float:
    """Mean ``KL(P ‖ softmax Z)`` = mean(Σ P log P − ⟨P, Z⟩ + logsumexp Z), P precomputed."""
    if Z is None:
        return 0.0
    # In float64: the three terms are of the size of the logits while their sum (the KL) can
    # be tiny, and float32 rounding here would be noise in the stopping rule.
    Zd = Z.double()
    return float(
        (prob.neg_entropy - (prob.P64 * Zd).sum(dim=1) + torch.logsumexp(Zd, dim=1)).mean()
    )


@dataclass
class _Curvature:
    """Adaptive scale ``s ∈ (0, 1]`` of the KL curvature bound, one per block.

    ``s = 1`` is Böhning's bound, which guarantees descent. Smaller ``s`` takes longer steps
    where the softmax is far flatter than the bound (confident predictions); a step that raises
    the objective is redone with a larger ``s`` (backtracking), so descent is kept.
    """

    s: float = 1.0

    def next_try(self) -> bool:
        if self.s >= 1.0:
            return False
        self.s = min(1.0, 4.0 * self.s)
        return True

    def relax(self) -> None:
        self.s = max(0.5 * self.s, 1e-6)


def u_step(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    Z: torch.Tensor | None,
    max_inner: int,
    f_cur: float = float("inf"),
    curv: _Curvature | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """MM-HALS update of ``U`` with ``W`` fixed. Returns ``(U, logits h(UW) or None, objective)``.

    ``Z``: current logits ``h(UW)`` (computed when None); ``f_cur``: current objective.
    """
    a2 = 2.0 * prob.alpha
    WWt = W @ W.T
    AWt = prob.A @ W.T
    if prob.kl_weight == 0:
        Un = _hals_sweeps(
            U.T.contiguous(), a2 * WWt, a2 * AWt.T.contiguous(), max_inner
        ).T.contiguous()
        return Un, None, _recon_from(prob, (Un.double() * AWt.double()).sum(), Un.T @ Un, WWt)
    head = prob.head
    curv = curv or _Curvature()
    M = W @ head.V.T
    if Z is None:
        Z = torch.addmm(head.b, U, M)
    G = torch.softmax(Z, dim=1) - prob.P
    Mc = W @ prob.Vc.T
    Hk = (0.5 * prob.beta) * (Mc @ Mc.T)
    R0 = a2 * AWt - prob.beta * (G @ M.T)
    UH = U @ Hk
    while True:
        # Sweep on Uᵀ so that each concept's codes are a contiguous row.
        Rt = (R0 + curv.s * UH).T.contiguous()
        Un = _hals_sweeps(U.T.contiguous(), a2 * WWt + curv.s * Hk, Rt, max_inner).T.contiguous()
        Zn = torch.addmm(head.b, Un, M)
        f_new = _recon_from(
            prob, (Un.double() * AWt.double()).sum(), Un.T @ Un, WWt
        ) + prob.kl_weight * _kl_of(prob, Zn)
        if f_new <= f_cur or not curv.next_try():
            break
    curv.relax()
    return Un, Zn, f_new


def _u_block(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    Z: torch.Tensor | None,
    max_inner: int,
    f_cur: float,
    curv: _Curvature,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """The U-block update of ``hals``: projected Newton (``newton.py``) when the head is affine
    and λ > 0, else the MM-HALS ``u_step``. Returns ``(U, logits h(UW) or None, objective)``.
    """
    if prob.kl_weight == 0:
        return u_step(prob, U, W, Z, max_inner, f_cur, curv)
    U, _ = solve_codes_newton(prob, W, U, max_iter=U_NEWTON_STEPS, tol=0.0, f0=f_cur)
    terms, Z = _terms_at(prob, U, W)
    return U, Z, terms.total


def w_step(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    Z: torch.Tensor | None,
    max_inner: int,
    f_cur: float = float("inf"),
    curv: _Curvature | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, float, torch.Tensor]:
    """MM-HALS update of ``W`` with ``U`` fixed. Returns ``(W, logits or None, objective, UᵀA)``."""
    a2 = 2.0 * prob.alpha
    UtU = U.T @ U
    UtA = U.T @ prob.A
    if prob.kl_weight == 0:
        Wn = _hals_sweeps(W.clone(), a2 * UtU, a2 * UtA, max_inner)
        return Wn, None, _recon_from(prob, (UtA.double() * Wn.double()).sum(), UtU, Wn @ Wn.T), UtA
    head = prob.head
    curv = curv or _Curvature()
    if Z is None:
        Z = torch.addmm(head.b, U, W @ head.V.T)
    G = torch.softmax(Z, dim=1) - prob.P
    c0 = 0.5 * prob.beta * centred_spectral_norm_sq(prob)
    R0 = a2 * UtA - prob.beta * ((U.T @ G) @ head.V)
    UtUW = UtU @ W
    while True:
        Wn = _hals_sweeps(W.clone(), (a2 + curv.s * c0) * UtU, R0 + (curv.s * c0) * UtUW, max_inner)
        Zn = torch.addmm(head.b, U, Wn @ head.V.T)
        f_new = _recon_from(
            prob, (UtA.double() * Wn.double()).sum(), UtU, Wn @ Wn.T
        ) + prob.kl_weight * _kl_of(prob, Zn)
        if f_new <= f_cur or not curv.next_try():
            break
    curv.relax()
    return Wn, Zn, f_new, UtA


def _finish(history: dict, t: int, max_iter: int, converged: bool, name: str) -> None:
    if not converged and t >= max_iter:
        warnings.warn(
            f"solver {name!r} stopped at max_iter={max_iter} before reaching tol; increase max_iter "
            "or loosen tol (the result is usable but not converged)",
            ConvergenceWarning,
            stacklevel=4,
        )


def _terms_at(
    prob: Problem, U: torch.Tensor, W: torch.Tensor, UtA: torch.Tensor | None = None
) -> tuple[Terms, torch.Tensor | None]:
    """Factored objective at ``(U, W)`` and the logits ``Z`` (reused by the next U step)."""
    Z = prob.head.code_logits(U, W) if prob.kl_weight > 0 else None
    kl = _kl_of(prob, Z)
    UtA = U.T @ prob.A if UtA is None else UtA
    return factored_objective(
        prob.sq_norm_A, UtA, U.T @ U, W, prob.n, prob.p, kl, prob.kl_weight
    ), Z


class _Extrapolation:
    """Safeguarded extrapolation between iterations (Ang & Gillis, 2019, "HALS-e").

    After an MM-HALS iteration moved ``X_prev → X``, try ``max(0, X + β (X − X_prev))``; keep it
    only if the objective is lower, so monotonicity is preserved. β grows after a success and
    shrinks (with a lower cap) after a failure.
    """

    def __init__(
        self, beta: float = 0.5, gamma: float = 1.05, gamma_bar: float = 1.01, eta: float = 1.5
    ) -> None:
        self.beta, self.beta_bar = beta, 1.0
        self.gamma, self.gamma_bar, self.eta = gamma, gamma_bar, eta

    def propose(self, X: torch.Tensor, X_prev: torch.Tensor) -> torch.Tensor:
        return (X + self.beta * (X - X_prev)).clamp_(min=0)

    def update(self, accepted: bool) -> None:
        if accepted:
            self.beta = min(self.beta_bar, self.gamma * self.beta)
            self.beta_bar = min(1.0, self.gamma_bar * self.beta_bar)
        else:
            self.beta_bar = self.beta
            self.beta = self.beta / self.eta


def solve_hals(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    max_inner: int = 10,
    extrapolate: bool = True,
    callback: Callable[[int, Terms], None] | None = None,
) -> SolverResult:
    """Alternating majorise-minimise HALS (affine heads or λ = 0). See the module docstring."""
    if not prob.factored:
        raise ValueError("solver='hals' needs an affine head (or kl_weight=0); use solver='pgd'")
    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    ex = _Extrapolation()
    cu, cw = _Curvature(), _Curvature()
    with torch.no_grad():
        prev, Z = _terms_at(prob, U, W)
        _record(res.history, prev)
        for t in range(1, max_iter + 1):
            U_old, W_old = U, W
            U, Z, f_u = _u_block(prob, U, W, Z, max_inner, prev.total, cu)
            W, Z, _, UtA = w_step(prob, U, W, Z, max_inner, f_u, cw)
            cur = factored_objective(
                prob.sq_norm_A, UtA, U.T @ U, W, prob.n, prob.p, _kl_of(prob, Z), prob.kl_weight
            )
            if extrapolate and t > 1:
                Ue, We = ex.propose(U, U_old), ex.propose(W, W_old)
                trial, Ze = _terms_at(prob, Ue, We)
                accepted = trial.total < cur.total
                if accepted:
                    U, W, cur, Z = Ue, We, trial, Ze
                ex.update(accepted)
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
        fx = float(fx.detach())
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
        U, su = pg_block(lambda X, W=W: _materialised_loss(prob, X, W), U, su, inner_steps)
        W, sw = pg_block(lambda X, U=U: _materialised_loss(prob, U, X), W, sw, inner_steps)
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


class small_problem_threads:
    """Run tiny problems on one thread: their many small kernels lose more to thread
    synchronisation (badly so on a busy machine) than they gain. Restores the setting on exit.
    """

    WORK_THRESHOLD = 3e7  # n · (p + C) · r below this counts as small

    def __init__(self, prob: Problem, r: int) -> None:
        C = prob.head.V.shape[0] if (prob.head is not None and prob.head.is_affine) else 0
        self.small = prob.A.device.type == "cpu" and prob.n * (prob.p + C) * r < self.WORK_THRESHOLD
        self.saved = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.small:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)


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
