"""``lbfgs``: FACE for heads far from affine, by L-BFGS-B on ``(U, W)`` jointly (docs/method.md §4.10).

``jacobian`` (§4.9) replaces the head between two calls by one affine model. Where the head is
far from affine across the rows (MobileNetV2 split at ``features.14``: a plain NMF of the rows
with a mean squared error of 0.0066 moves the prediction by a KL of 3.7), that model misleads,
its Levenberg–Marquardt damping grows until each step is a short gradient step, and the fit
crawls: on 12 photos it ended at its 200-iteration cap at the objective 0.551, where handing the
fit over to this solver converges at 0.126 in less than half the time
(``benchmarks/results/intermediate_layer.md``, the solver table).

Here every evaluation is the true objective and its gradient (one head forward and one backward
on all rows), and L-BFGS-B (Byrd, Lu, Nocedal & Zhu, 1995; scipy's implementation) builds the
curvature from the last ``MEMORY`` gradient differences, with the bounds ``U ≥ 0`` and ``W ≥ 0``
(``W`` unbounded for the signed bank) handled by its projected search. Its line search accepts a
step only with sufficient decrease, so the accepted iterates lower the objective.

Stop: ``hals``'s windowed rule (``solvers._stop_test``: the relative decrease per iteration,
averaged over the last ``WINDOW`` iterations, below ``tol``), tested from iteration ``WINDOW`` on
(its first steps are scaled gradient steps, which can be short). scipy's own tolerances are off; when
its line search finds no decrease the point is stationary to working precision (the objective is
evaluated in the problem's dtype) and the fit counts as converged.

The variables travel between the problem's device and scipy (float64, host) once per evaluation:
on a GPU that is one synchronisation per head call (not measured: no GPU was lent).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from face_concepts.decomposition.autograd_solvers import _loss_terms
from face_concepts.decomposition.losses import Terms
from face_concepts.decomposition.problem import Problem
from face_concepts.decomposition.solvers import (
    WINDOW,
    SolverResult,
    _finish,
    _record,
    _stop_test,
)

TOL = 1e-3  # the default stop (registry.DEFAULTS): one iteration is one head call
# gradient differences kept (scipy's maxcor): at MobileNetV2 features.14 (192 rows, 5,120
# variables) 50 ended 5.8 % lower than scipy's 10 in as many iterations (intermediate_layer.md,
# `nonaffine_solvers.py --memories 10,50`); 2 · 50 float64 vectors of the variables' size
MEMORY = 50
MAX_LINE_SEARCH = 20  # evaluations per line search (scipy's maxls)
BUNDLED_OPENBLAS = (
    "libscipy_openblas"  # file-name prefix of the OpenBLAS in scipy's and numpy's wheels
)


class _Objective:
    """The true objective and its gradient at a flat float64 vector of the free blocks."""

    def __init__(self, prob: Problem, U: torch.Tensor, W: torch.Tensor, update_W: bool) -> None:
        self.prob, self.W_fixed, self.update_W = prob, W, update_W
        self.shapes = [U.shape, W.shape] if update_W else [U.shape]
        self.calls = 0
        self.last: tuple[float, Terms] | None = None

    def pack(self, *blocks: torch.Tensor) -> np.ndarray:
        return np.concatenate([b.detach().double().cpu().numpy().ravel() for b in blocks])

    def unpack(self, z: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        A = self.prob.A
        flat = torch.from_numpy(z).to(dtype=A.dtype, device=A.device)
        n_u = self.shapes[0].numel()
        U = flat[:n_u].reshape(self.shapes[0])
        W = flat[n_u:].reshape(self.shapes[1]) if self.update_W else self.W_fixed
        return U, W

    def __call__(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        prob = self.prob
        U, W = self.unpack(z)
        blocks = [U.requires_grad_(True)] + ([W.requires_grad_(True)] if self.update_W else [])
        with torch.enable_grad():
            recon, kl = _loss_terms(prob, U, W)  # (the materialised objective's two terms)
            total = recon + prob.kl_weight * kl
            grads = torch.autograd.grad(total, blocks)
        self.calls += 1
        terms = Terms(float(total.detach()), float(recon.detach()), float(kl.detach()))
        self.last = (terms.total, terms)
        return terms.total, self.pack(*grads)

    def terms_at(self, fun: float, z: np.ndarray) -> Terms:
        """The terms of the iterate scipy reports (its last evaluation, or evaluated again)."""
        if self.last is None or self.last[0] != fun:
            self(z)
        assert self.last is not None
        return self.last[1]


@contextlib.contextmanager
def _bundled_openblas_single_threaded() -> Iterator[None]:
    """One thread for the OpenBLAS that scipy's and numpy's wheels bundle, while L-BFGS-B runs.

    Its threads busy-wait after each of L-BFGS-B's small BLAS calls and take the cores from
    the head call that follows (PyTorch's threads): on a 2-core machine the whole fit at
    MobileNetV2's features.14 ran several times slower (intermediate_layer.md, session 28's
    solver table). Only those libraries (``libscipy_openblas*``) are limited, not PyTorch's.
    """
    from threadpoolctl import ThreadpoolController

    with ThreadpoolController().select(prefix=BUNDLED_OPENBLAS).limit(limits=1):
        yield


def solve_lbfgs(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    callback: Callable[[int, Terms], None] | None = None,
    signed: bool = False,
    update_W: bool = True,
    start: Terms | None = None,
    first_iter: int = 1,
    warn: bool = True,
) -> SolverResult:
    """L-BFGS-B on the true objective (see the module docstring).

    ``signed``: ``W`` unbounded (the signed bank). ``update_W=False``: the codes given the bank
    (the single encoder's problem). ``res.n_head_calls`` counts evaluations (one head forward
    and one backward each). ``start`` and ``first_iter``: when another solver hands its fit
    over, the objective at ``(U, W)`` and the number of the first iteration here (for
    ``callback``); ``warn=False``: no ConvergenceWarning at ``max_iter`` (the caller's).
    """
    from scipy.optimize import minimize

    res = SolverResult(U=U, W=W, n_iter=0, converged=False)
    fg = _Objective(prob, U, W, update_W)
    z0 = fg.pack(U, W) if update_W else fg.pack(U)
    if start is None:
        with _bundled_openblas_single_threaded():  # (as every head call of the solve)
            fg(z0)
        assert fg.last is not None
        start = fg.last[1]
    _record(res.history, start)
    bounds: list[tuple[float | None, float | None]] = [(0.0, None)] * U.numel()
    if update_W:
        bounds += [(None, None) if signed else (0.0, None)] * W.numel()

    accepted: list[np.ndarray] = []  # the last iterate (scipy's x may be a trial point)

    def step(intermediate_result: Any) -> None:
        terms = fg.terms_at(float(intermediate_result.fun), intermediate_result.x)
        accepted[:] = [intermediate_result.x.copy()]
        _record(res.history, terms)
        res.n_iter += 1
        if callback is not None:
            callback(first_iter - 1 + res.n_iter, terms)
        # (not before a whole window: the first steps, scaled gradient steps, can be short)
        if res.n_iter >= WINDOW and _stop_test(res.history["total"], tol, WINDOW):
            res.converged = True
            raise StopIteration

    with warnings.catch_warnings(), _bundled_openblas_single_threaded():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's notes on float32 rounding
        out = minimize(
            fg,
            z0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            callback=step,
            options={
                "maxiter": max_iter,
                "maxfun": max_iter * MAX_LINE_SEARCH,
                "maxcor": MEMORY,
                "maxls": MAX_LINE_SEARCH,
                "ftol": 0.0,
                "gtol": 0.0,
            },
        )
    # scipy's status 1: its iteration or evaluation limit; otherwise (no stop of ours) it
    # stopped on its own: no decrease along its line search (stationary to the precision of
    # the objective) or a zero projected gradient
    capped = not res.converged and out.status == 1
    res.converged = not capped
    if update_W and warn:  # (the codes' solves of the encoder do not warn, as linearised's)
        _finish(res.history, max_iter if capped else res.n_iter, max_iter, res.converged, "lbfgs")
    if accepted:  # the last iterate, whose objective ends the history; the start otherwise
        U_out, W_out = fg.unpack(accepted[0])
        res.U, res.W = U_out.detach().clone(), W_out.detach().clone()
    res.n_head_calls = fg.calls
    return res


__all__ = ["solve_lbfgs"]
