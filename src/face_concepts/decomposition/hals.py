"""The ``hals`` loop (docs/method.md §4): alternating block updates of ``U`` and ``W``.

The block steps, the stop test and the extrapolation it uses are in ``solvers.py`` (whose
docstring describes the method); the registry of all solvers is ``registry.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from sklearn.exceptions import ConvergenceWarning

from face_concepts.decomposition.joint import JointSchedule, JointStep
from face_concepts.decomposition.losses import Terms, factored_objective
from face_concepts.decomposition.newton_cg import bank_newton_step
from face_concepts.decomposition.problem import Problem
from face_concepts.decomposition.solvers import (
    MAX_INNER,
    STALL_FACTOR,
    STATIONARITY_PATIENCE,
    STATIONARITY_TOL,
    WARM_MAX_ITER,
    WARM_TOL,
    SolverResult,
    _Curvature,
    _Extrapolation,
    _finish,
    _kl_of,
    _record,
    _stop_test,
    _terms_at,
    _u_block,
    kkt_residual,
    w_step,
)

# The default cap on the iterations of the fit at λ (its start has its own, WARM_MAX_ITER per
# stage). Fits at λ = 100 can converge slowly: with the cap at 1,000 (until session 36) three of
# the solver benchmark's seven λ = 100 fits (r = 50; a 1,000-row subset; the signed bank) reached
# it, 0.02-0.98 % above where they stop by their own rule, at 1,021-1,755 iterations
# (benchmarks/results/solver.md section 23).
MAX_ITER = 2000
# The windowed decrease (in units of tol) below which a small full joint Newton step stops a fit.
NEWTON_STOP_GUARD = 10.0
# λ continuation: a fit at λ ≥ CONTINUATION_FROM starts, after its plain-NMF warm start, with
# fits at λ / 10^k (k = K, …, 1) down to LOWEST_STAGE, each to WARM_TOL. From plain NMF fits at
# λ = 100 ended higher, mostly at their iteration cap; from the stages they end lower and mostly
# stop by their own rule (benchmarks/results/solver.md section 15). At λ = 10 a start at λ = 1
# bought nothing (an ad hoc run), hence the threshold.
CONTINUATION_FROM = 100.0
LOWEST_STAGE = 1.0
# True: the signed bank too. Off: at λ = 100 its fit from the stages stopped by its rule but ended
# higher than its fit from plain Semi-NMF, which reached its cap (solver.md section 15).
CONTINUATION_SIGNED = False


def continuation_stages(kl_weight: float) -> list[float]:
    """The λ of the stages a fit at ``kl_weight`` starts with, increasing: ``kl_weight / 10^k``
    for every ``k ≥ 1`` that keeps it at least ``LOWEST_STAGE``, when ``kl_weight`` is at least
    ``CONTINUATION_FROM`` (none below)."""
    stages: list[float] = []
    if kl_weight < CONTINUATION_FROM:
        return stages
    lam = kl_weight / 10.0
    while lam >= LOWEST_STAGE:
        stages.insert(0, lam)
        lam /= 10.0
    return stages


def _plain_warm_start(
    prob: Problem, U: torch.Tensor, W: torch.Tensor, signed_w_block: WBlock | None, max_inner: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Plain NMF (Semi-NMF with ``signed_w_block``) from ``(U, W)`` to ``WARM_TOL``: the start
    of a FACE fit. Returns ``(U, W, iterations)``."""
    plain = Problem(A=prob.A, head=None, kl_weight=0.0, sq_norm_A=prob.sq_norm_A)
    with warnings.catch_warnings():
        # A warm start that is not converged is still a start: no warning for it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm = solve_hals(
            plain, U, W, max_iter=WARM_MAX_ITER, tol=WARM_TOL, max_inner=max_inner,
            signed_w_block=signed_w_block, stationarity_tol=None,
        )  # fmt: skip
    return warm.U, warm.W, warm.n_iter


def _newton_stationary(
    step: JointStep | None, before: Terms, after: Terms, tol: float, history: list[float]
) -> bool:
    """Whether a full joint Newton step (``t`` = 1) lowered the objective by less than ``tol``
    (relative) while the windowed decrease is already below ``NEWTON_STOP_GUARD`` times
    ``tol``: the quadratic model's minimiser is then where the fit is, a stationary point to
    within ``tol``, and the windowed test would only spend more iterations confirming it. (The
    guard: its CG is truncated, so a small full step alone can come early, while the fit still
    moves.)"""
    if step is None or step.t < 1.0:
        return False
    small = before.total - after.total <= tol * abs(before.total)
    return small and _stop_test(history, NEWTON_STOP_GUARD * tol)


@dataclass
class _StationarityGate:
    """The plain-NMF gate of the windowed test: a KKT residual (``kkt_residual``) of at most
    ``tol``, waited for at most ``patience`` iterations at which the windowed test passed."""

    tol: float
    patience: int
    waited: int = 0

    def open(self, prob: Problem, U: torch.Tensor, W: torch.Tensor, cur: Terms) -> bool:
        if kkt_residual(prob, U, W, None, cur.total) <= self.tol:
            return True
        self.waited += 1
        return self.waited >= self.patience


def _windowed_stop(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    cur: Terms,
    history: list[float],
    tol: float,
    gate: _StationarityGate | None,
) -> bool:
    """The windowed test (``_stop_test``); with a ``gate`` it also asks for first-order
    optimality (``_StationarityGate``), unless the windowed decrease is already below
    ``STALL_FACTOR · tol`` (the fit no longer moves). Only for plain NMF: its residual costs two
    r-row products there."""
    if not _stop_test(history, tol):
        return False
    if gate is None or _stop_test(history, STALL_FACTOR * tol):
        return True
    return gate.open(prob, U, W, cur)


# A W-block: (problem, U, W, logits, objective after the U-block, UᵀA) -> (W, logits, terms, UᵀA)
WBlock = Callable[..., tuple[torch.Tensor, torch.Tensor | None, Terms, torch.Tensor]]


def solve_hals(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = MAX_ITER,
    tol: float = 1e-5,
    max_inner: int = MAX_INNER,
    extrapolate: bool | None = None,
    w_solver: str = "newton",
    warm_start: bool = False,
    callback: Callable[[int, Terms], None] | None = None,
    signed_w_block: WBlock | None = None,
    joint: bool = True,
    stationarity_tol: float | None = STATIONARITY_TOL,
) -> SolverResult:
    """Alternating block updates (affine heads or λ = 0). See the module docstring.

    ``tol``: stop once the objective's relative decrease, averaged over the last ``WINDOW``
    iterations, is below it (see ``_stop_test``). ``w_solver``: the W-block with λ > 0,
    ``"newton"`` (projected Newton-CG, ``bank_newton``) or ``"mm"`` (majorise-minimise HALS).
    ``extrapolate`` (default: with the MM blocks only): safeguarded extrapolation between
    iterations. ``warm_start`` (λ > 0): first fit plain NMF from ``(U, W)`` to ``WARM_TOL``.
    ``signed_w_block``: the W-block of the signed bank (``semi_nmf.bank_step``; W unconstrained,
    its extrapolation not clamped, extrapolation on by default): the same loop serves both banks.
    With ``warm_start`` at λ ≥ ``CONTINUATION_FROM`` (the non-negative bank) the warm start is
    followed by fits at ``continuation_stages(λ)`` (λ/10, λ/100, … ≥ 1, increasing), each to
    ``WARM_TOL``, counted in ``warm_iter``. A ``callback`` with a ``stage`` method also sees
    the stages' iterations and is told which λ they are at (``stage(λ)``, then ``stage(None)``
    for the fit itself); any other callback sees the fit at λ only.
    ``joint`` (the non-negative bank with λ > 0 and ``w_solver="newton"``): once the plain
    iterations slow down, the W block becomes a joint Newton step on ``(U, W)`` while those
    pay (``joint.JointSchedule``).
    ``stationarity_tol`` (plain NMF, λ = 0, the non-negative bank; ``None``: off): the windowed
    test stops only at a KKT residual of at most this, once the fit no longer moves, or after
    ``STATIONARITY_PATIENCE`` iterations at which it passed without them (``_windowed_stop``).
    """
    if not prob.factored:
        raise ValueError("solver='hals' needs an affine head (or kl_weight=0); use solver='pgd'")
    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    if warm_start and prob.kl_weight > 0:
        U, W, res.warm_iter = _plain_warm_start(prob, U, W, signed_w_block, max_inner)
        signed = signed_w_block is not None
        stages = continuation_stages(prob.kl_weight) if CONTINUATION_SIGNED or not signed else []
        announce = getattr(callback, "stage", None)  # _Progress: says which λ its lines are at
        for lam in stages:
            if announce is not None:
                announce(lam)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # a start, as above
                stage = solve_hals(
                    replace(prob, kl_weight=lam), U, W, max_iter=WARM_MAX_ITER, tol=WARM_TOL,
                    max_inner=max_inner, extrapolate=extrapolate, w_solver=w_solver,
                    # only a callback that is told the stage sees its iterations: the others
                    # (the benchmarks' recorders) see the fit at λ alone, as before
                    callback=callback if announce is not None else None,
                    signed_w_block=signed_w_block, joint=joint,
                )  # fmt: skip
            U, W, res.warm_iter = stage.U, stage.W, res.warm_iter + stage.n_iter
        if announce is not None and stages:
            announce(None)
    newton_w = prob.kl_weight > 0 and w_solver == "newton"
    if extrapolate is None:
        extrapolate = signed_w_block is not None or not newton_w
    gate = (
        None
        if stationarity_tol is None or prob.kl_weight > 0 or signed_w_block is not None
        else _StationarityGate(stationarity_tol, STATIONARITY_PATIENCE)
    )
    ex = _Extrapolation()
    cu, cw = _Curvature(), _Curvature()
    schedule = JointSchedule(joint)
    with torch.no_grad():
        prev, Z = _terms_at(prob, U, W)
        _record(res.history, prev)
        for t in range(1, max_iter + 1):
            U_old, W_old = U, W
            U, Z, f_u, UtA = _u_block(prob, U, W, Z, max_inner, prev.total, cu)
            step = None
            if signed_w_block is not None:
                W, Z, cur, UtA = signed_w_block(prob, U, W, Z, f_u, UtA)
            elif newton_w:
                step = schedule.step(prob, U, W, Z, f_u, UtA, res.history["total"])
                if step is not None:
                    U, W, Z, cur, UtA = step.U, step.W, step.Z, step.terms, step.UtA
                else:
                    W, Z, cur, UtA = bank_newton_step(prob, U, W, Z, f_u, UtA=UtA)
            else:
                W, Z, _, UtA = w_step(prob, U, W, Z, max_inner, f_u.total, cw)
                cur = factored_objective(
                    prob.sq_norm_A, UtA, U.T @ U, W, prob.n, prob.p, _kl_of(prob, Z), prob.kl_weight
                )
            if extrapolate and t > 1:
                Ue = ex.propose(U, U_old)
                # the signed bank's W is not clamped at 0
                We = ex.propose(W, W_old) if signed_w_block is None else W + ex.beta * (W - W_old)
                trial, Ze = _terms_at(prob, Ue, We)
                accepted = trial.total < cur.total
                if accepted:
                    U, W, cur, Z = Ue, We, trial, Ze
                ex.update(accepted)
            _record(res.history, cur)
            res.n_iter = t
            if callback is not None:
                callback(t, cur)
            if _windowed_stop(
                prob, U, W, cur, res.history["total"], tol, gate
            ) or _newton_stationary(step, f_u, cur, tol, res.history["total"]):
                res.converged = True
                break
            prev = cur
    _finish(res.history, res.n_iter, max_iter, res.converged, "hals")
    res.U, res.W = U, W
    return res
