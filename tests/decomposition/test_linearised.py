"""The ``linearised`` solver (heads that are not affine): oracles and the head-call budget."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from _nonaffine import Counting, mlp_data, run_quiet
from face_concepts.decomposition import FACE, face_objective
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.autograd_solvers import solve_pgd
from face_concepts.decomposition.hals import solve_hals
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.linearised import solve_linearised
from face_concepts.decomposition.problem import make_problem

_data, _run = mlp_data, run_quiet


@pytest.mark.parametrize("lam", [1.0, 30.0])
def test_monotone_and_at_least_as_good_as_pgd_with_far_fewer_head_calls(lam, tol):
    A, mlp = _data()
    head = Counting(mlp)
    prob = make_problem(A, Head(head, dtype=A.dtype, device=A.device), lam)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    head.calls = 0
    lin = _run(solve_linearised, prob, U0, W0, max_iter=400, tol=1e-7)
    lin_calls = head.calls
    head.calls = 0
    pgd = _run(solve_pgd, prob, U0, W0, max_iter=400, tol=1e-7)
    pgd_calls = head.calls
    h = np.array(lin.history["total"])
    assert np.all(np.diff(h) <= tol["monotone"] * h[:-1])
    assert h[-1] <= pgd.history["total"][-1] * (1 + 1e-3)
    # one forward (+ its backward) per accepted iteration, one more per rejected trial
    assert lin.n_head_calls == lin_calls
    assert lin_calls <= 3 * lin.n_iter + 2
    assert lin_calls * 5 < pgd_calls
    # the history is the true objective at the returned point
    assert lin.history["total"][-1] == pytest.approx(
        float(face_objective(A, lin.U, lin.W, mlp, lam)), rel=1e-9
    )


def test_an_affine_head_reaches_the_objective_of_hals():
    """The linearisation is generic: on an affine head it must find hals' optimum (oracle)."""
    A, _ = _data(seed=1)
    lin_head = torch.nn.Linear(A.shape[1], 5).double()
    torch.manual_seed(1)
    prob = make_problem(A, Head(lin_head, dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    ours = _run(solve_linearised, prob, U0, W0, max_iter=3000, tol=1e-9)
    ref = _run(solve_hals, prob, U0, W0, max_iter=3000, tol=1e-9)
    assert ours.history["total"][-1] == pytest.approx(ref.history["total"][-1], rel=2e-3)


def test_first_order_stationarity_at_the_stop():
    """Projected gradient (autograd on the materialised objective) small at convergence."""
    A, mlp = _data(seed=2)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 3.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    res = _run(solve_linearised, prob, U0, W0, max_iter=5000, tol=1e-10)
    logP = torch.log_softmax(mlp(A), dim=1).detach()

    def objective(U, W):  # the §2 objective written out directly (the oracle)
        X = U @ W
        kl = (logP.exp() * (logP - torch.log_softmax(mlp(X), dim=1))).sum(1).mean()
        return ((A - X) ** 2).mean() + 3.0 * kl

    def kkt(U, W):  # the norm of the projected gradient over U, W >= 0
        U, W = U.clone().requires_grad_(True), W.clone().requires_grad_(True)
        gU, gW = torch.autograd.grad(objective(U, W), (U, W))
        parts = [torch.where(X > 0, g, g.clamp(max=0)) for X, g in ((U, gU), (W, gW))]
        return float(torch.cat([q.flatten() for q in parts]).norm())

    before, after = kkt(U0, W0), kkt(res.U, res.W)
    assert after < 1e-2 * before


def test_face_solver_linearised_for_a_non_affine_head():
    """By name (``auto`` now picks ``jacobian``, tests/decomposition/test_jacobian.py)."""
    A, mlp = _data(seed=3)
    head = Counting(mlp)
    est = FACE(head, n_concepts=3, kl_weight=1.0, max_iter=50, random_state=0, solver="linearised")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(A)
    assert est.solver_ == "linearised"
    h = np.array(est.loss_history_["total"])
    assert np.all(np.diff(h) <= 1e-12 * h[:-1])
