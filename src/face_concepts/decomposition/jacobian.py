"""``jacobian``: FACE for heads that are not affine, with the head's curvature between head calls.

An intermediate layer's head is the rest of the network: one call on all rows costs seconds
(benchmarks/results/intermediate_layer.md), so a fit must call it as rarely as possible.
``linearised.py`` calls it once per iteration but models the KL between calls by its gradient
plus an isotropic ``(L/2)‖X − X_t‖²``; it needs many iterations. Here, between two head calls,
the head is replaced by an affine model and the whole FACE problem on that model is solved by the
fast affine engine (``hals``, factored logits, exact softmax curvature):

    h̃_i(x) = z_i + J (x − x_i)          z_i = h(x_i), x_i the i-th row of X_t = U_t W_t

with ``J`` the head's Jacobian (C × p) at the mean row, computed once by forward-mode AD (p
tangents; with ``W`` fixed, the codes' problem, along the bank's row space only: r tangents,
the same model, since it sees ``J`` only through ``J Wᵀ``). Each row keeps its own anchor ``z_i`` (a per-row bias ``z_i − J x_i``), so the model
is exact at ``X_t``. Its gradient is not (``J`` is not each row's Jacobian); the linear term
``⟨G − G̃, X⟩`` (``G`` the true gradient of ``λ·KL`` at ``X_t`` from one backward, ``G̃`` the
model's) makes it so, and folds into the reconstruction target:
``α‖A − X‖² + ⟨Δ, X⟩ = α‖A − Δ/(2α) − X‖² + const``. A proximal term ``μα‖X − X_t‖²``
(Levenberg–Marquardt damping) keeps the step where the model holds; it folds into the target
too. Each outer iteration: one head forward and backward at
``X_t``; ``INNER_ITER`` ``hals`` iterations on the model problem (no head call; projected Newton
on the codes when ``W`` is fixed); one head forward at the result, kept if the true objective
decreased (``μ`` then halves), else ``μ`` grows and the model is solved again, up to
``MAX_TRIES`` times. When all of them are rejected, or ``μ`` reaches ``MU_HANDOVER`` (each step
is then a short gradient step: the head is too far from affine across its rows for one
Jacobian), the rest of the fit is ``lbfgs``'s (``quasi_newton.py``: L-BFGS-B on the true
objective, one head call per iteration). With ``warm_start`` (what ``FACE`` uses) the fit starts
from plain NMF of the rows, as ``hals``'s does: no head call. docs/method.md §4.9 has the details
and the measurements.

Every accepted iterate lowers the true objective (monotone). A fixed point is a stationary point
of the true objective: the model has the true value and gradient at ``X_t``.

Stop: the relative decrease per outer iteration, averaged over the last ``WINDOW`` (3) outer
iterations, is below ``tol`` (``solvers._stop_test``; default 1e-4 in ``registry.DEFAULTS``:
an outer iteration is a whole model solve, worth tens of ``hals`` iterations), or no step
found, or when the undamped model promises less than ``max(tol/10, PROMISE_ULPS ulps)``
(rounding: not worth a head call).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from sklearn.exceptions import ConvergenceWarning

from face_concepts.decomposition._head import Head
from face_concepts.decomposition.hals import WBlock, _plain_warm_start, solve_hals
from face_concepts.decomposition.linearised import _Evaluation, solve_linearised
from face_concepts.decomposition.losses import Terms
from face_concepts.decomposition.newton import solve_codes_newton
from face_concepts.decomposition.problem import Problem, make_problem
from face_concepts.decomposition.quasi_newton import TOL as LBFGS_TOL
from face_concepts.decomposition.quasi_newton import solve_lbfgs
from face_concepts.decomposition.solvers import (
    MAX_INNER,
    SolverResult,
    _finish,
    _record,
    _stop_test,
    evaluate,
)

INNER_ITER = 20  # hals iterations on the affine model per head call
INNER_TOL = 1e-7  # and their stop tolerance
MAX_TRIES = 5  # damped model solves per outer iteration before the fit goes to lbfgs
MU_HANDOVER = 64.0  # damping at which the model is judged misleading (three fourfold raises)
LBFGS_ITER_RATIO = 5  # lbfgs iterations per outer iteration left when the fit is handed over
TOL = 1e-4  # the default stop (registry.DEFAULTS); lbfgs's iterations are cheaper, its TOL looser
PROMISE_ULPS = 100  # a model decrease below this many ulps (relative) is rounding: no head call
WINDOW = 3  # the stop averages the relative decrease over this many outer iterations


class _RowAffine:
    """The model head ``x ↦ x Jᵀ + b_i`` with one bias row per data row (``affine_parameters``
    is what ``models.head.AffineHead`` reads)."""

    def __init__(self, J: torch.Tensor, B: torch.Tensor) -> None:
        self.J, self.B = J, B

    def affine_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.J, self.B

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.B, X, self.J.T)


_JIT_DEPRECATION = r"`torch\.jit\.script` is deprecated"


def head_jacobian(head: Head, x: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """``∂h/∂x`` (C × p) at one row ``x``: forward mode (one tangent per direction), else
    reverse mode. With ``basis`` (p × k, orthonormal columns) only along those directions:
    ``(∂h/∂x · basis) · basisᵀ``, exact on their span, for k tangents instead of p."""

    def f(v: torch.Tensor) -> torch.Tensor:
        return head.logits(v[None])[0]

    def along(c: torch.Tensor) -> torch.Tensor:
        assert basis is not None
        return f(x + basis @ c)

    x = x.detach()
    g: Callable[[torch.Tensor], torch.Tensor] = f if basis is None else along
    at = x if basis is None else x.new_zeros(basis.shape[1])
    try:
        with warnings.catch_warnings():
            # PyTorch's own deprecation notice, raised when its first forward-mode pass imports
            # torch._decomp.decompositions_for_jvp: not the user's business
            warnings.filterwarnings("ignore", _JIT_DEPRECATION, FutureWarning)
            J = torch.func.jacfwd(g)(at)
    except Exception:  # a layer without forward-mode AD: reverse mode, one row per class
        J = torch.autograd.functional.jacobian(g, at, vectorize=True)
    J = J.detach().to(x.dtype)
    return J if basis is None else J @ basis.T


def row_space_basis(W: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns (p × r) whose span holds the rows of ``W`` (r × p); r ≤ p."""
    return torch.linalg.qr(W.detach().T, mode="reduced").Q


def _model_problem(
    prob: Problem, J: torch.Tensor, X: torch.Tensor, Z: torch.Tensor, G: torch.Tensor, mu: float
) -> Problem:
    """The affine model of ``prob`` at ``X`` (logits ``Z``, true gradient ``G``) plus the
    proximal term ``(μα)‖X' − X‖²``, as one FACE problem: ``(1 + μ)α‖B − X'‖² + λ KL̃`` is
    ``α‖B − X'‖² + λ/(1 + μ) KL̃`` up to the factor ``1 + μ``."""
    alpha = 1.0 / prob.A.numel()
    G_model = (prob.beta * (torch.softmax(Z, dim=1) - prob.target_P)) @ J
    B = (prob.A - (G - G_model) / (2.0 * alpha) + mu * X) / (1.0 + mu)
    head = Head(_RowAffine(J, Z - X @ J.T), dtype=X.dtype, device=X.device)
    return make_problem(B, head, prob.kl_weight / (1.0 + mu), logP=prob.target_logP)


def solve_jacobian(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    callback: Callable[[int, Terms], None] | None = None,
    signed_w_block: WBlock | None = None,
    update_W: bool = True,
    warm_start: bool = False,
) -> SolverResult:
    """Affine-model FACE for any differentiable head (see the module docstring).

    ``res.n_head_calls`` counts head forwards (one backward follows each accepted one).
    ``update_W=False``: the codes given the bank (the single encoder's problem).
    ``signed_w_block``: the signed bank's W-block (``semi_nmf.bank_step``).
    ``warm_start``: first fit plain NMF (Semi-NMF) from ``(U, W)``, as ``hals`` does; no head call.
    """
    signed = signed_w_block is not None
    if prob.kl_weight <= 0:
        return solve_linearised(
            prob, U, W, max_iter=max_iter, tol=tol, callback=callback, signed=signed,
            update_W=update_W,
        )  # fmt: skip
    warm_iter = 0
    if warm_start and update_W:
        U, W, warm_iter = _plain_warm_start(prob, U, W, signed_w_block, MAX_INNER)
    res = SolverResult(U=U, W=W, n_iter=0, converged=False, warm_iter=warm_iter)
    X = U @ W
    # With W fixed the model problem sees J only through J Wᵀ (its logits U'(J Wᵀ)ᵀ, its target
    # through G̃ Wᵀ), so J along W's row space is the same model: r tangents instead of p.
    basis = None if update_W or W.shape[0] >= W.shape[1] else row_space_basis(W)
    J = head_jacobian(prob.kl_head, X.mean(dim=0), basis)
    ev = _Evaluation(prob, X)
    cur, Z, G = ev.terms, ev.logits, ev.grad()
    n_calls = 1
    floor = PROMISE_ULPS * torch.finfo(prob.A.dtype).eps
    mu = 0.0  # proximal weight, in units of α (a Levenberg–Marquardt damping)
    capped = False  # a hand-over to lbfgs that ran out of iterations
    _record(res.history, cur)
    for t in range(1, max_iter + 1):
        assert G is not None and Z is not None
        accepted, stationary = None, False
        for _ in range(MAX_TRIES):
            model = _model_problem(prob, J, X, Z, G, mu)
            Un, Wn, promised = _solve_model(model, U, W, signed_w_block, update_W)
            if promised * (1.0 + mu) <= max(0.1 * tol, floor) * abs(cur.total):
                if mu == 0:  # the undamped model sees nothing worth a head call: stationary
                    stationary = True
                    break
                mu = 0.0  # (a small promise may only be the damping's)
                continue
            ev = _Evaluation(prob, Un @ Wn)
            n_calls += 1
            if ev.terms.total < cur.total:
                accepted = (Un, Wn, ev)
                mu = mu / 2.0 if mu >= 2.0 else 0.0
                break
            mu = 4.0 * mu if mu > 0 else 1.0
        if stationary:
            res.converged = True
            break
        if accepted is not None:
            U, W, ev = accepted
            X = U @ W
            cur, Z, G = ev.terms, ev.logits, ev.grad()
            _record(res.history, cur)
            res.n_iter = t
            if callback is not None:
                callback(t, cur)
            if _stop_test(res.history["total"], tol, WINDOW):
                res.converged = True
                break
        if accepted is None or (mu >= MU_HANDOVER and res.n_iter < max_iter):
            # The model misled (MAX_TRIES damped solves rejected, or a damping so strong that
            # its steps are short gradient steps): this head is too far from affine across its
            # rows for one Jacobian. The rest of the fit is lbfgs's, from the current point.
            announce = getattr(callback, "handover", None)  # (verbose progress lines)
            if announce is not None:
                announce("lbfgs", res.n_iter, "the head's affine model misleads here")
            rest = solve_lbfgs(
                prob, U, W, max_iter=LBFGS_ITER_RATIO * (max_iter - res.n_iter),
                tol=tol * LBFGS_TOL / TOL, callback=callback, signed=signed, update_W=update_W,
                start=cur, first_iter=res.n_iter + 1, warn=False,
            )  # fmt: skip
            n_calls += rest.n_head_calls
            res.handover_iter = res.n_iter
            res.history = {k: v + rest.history[k][1:] for k, v in res.history.items()}
            res.n_iter += rest.n_iter
            res.converged = rest.converged
            U, W = rest.U, rest.W
            capped = not rest.converged  # lbfgs used up what was left of max_iter
            break
    if update_W:  # (a hand-over's cap is this fit's: the warning names jacobian's max_iter)
        _finish(
            res.history, max_iter if capped else res.n_iter, max_iter, res.converged, "jacobian"
        )
    res.U, res.W = U, W
    res.n_head_calls = n_calls
    return res


def _solve_model(
    model: Problem, U: torch.Tensor, W: torch.Tensor, signed_w_block: Any, update_W: bool
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``INNER_ITER`` iterations of the affine engine on the model problem (no head call).
    Returns ``(U, W, the decrease of the model's objective)``."""
    with torch.no_grad():
        f0 = evaluate(model, U, W).total
        if not update_W:
            Un, _ = solve_codes_newton(model, W, U, max_iter=INNER_ITER, tol=INNER_TOL, f0=f0)
            return Un, W, f0 - evaluate(model, Un, W).total
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            inner = solve_hals(
                model, U, W, max_iter=INNER_ITER, tol=INNER_TOL, signed_w_block=signed_w_block
            )
    return inner.U, inner.W, f0 - inner.history["total"][-1]


__all__ = ["head_jacobian", "row_space_basis", "solve_jacobian"]
