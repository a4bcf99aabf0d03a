"""The ``lbfgs`` solver (L-BFGS-B on the true objective): oracles, bounds, stop, hand-over."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from _nonaffine import (
    Counting,
    mlp_data,
    projected_gradient_norm,
    run_quiet,
    written_out_objective,
)
from face_concepts.decomposition import FACE, face_objective
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.hals import solve_hals
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.problem import make_problem
from face_concepts.decomposition.quasi_newton import MEMORY, _Objective, solve_lbfgs
from face_concepts.decomposition.semi_nmf import SOLVERS as SIGNED_SOLVERS


def _monotone(history, tol):
    h = np.array(history)
    return bool(np.all(np.diff(h) <= tol["monotone"] * h[:-1]))


def test_objective_and_gradient_are_the_definition_and_autograd_of_it():
    """Oracle: §2's objective written out and its autograd gradient."""
    A, mlp = mlp_data(seed=1)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 2.0)
    U, W = initialize(A, 3, "random", random_state=0)
    fg = _Objective(prob, U, W, update_W=True)
    f, g = fg(fg.pack(U, W))
    Ur, Wr = U.clone().requires_grad_(True), W.clone().requires_grad_(True)
    ref = written_out_objective(A, mlp, 2.0, Ur, Wr)
    gU, gW = torch.autograd.grad(ref, (Ur, Wr))
    assert f == pytest.approx(float(ref), rel=1e-12)
    assert np.allclose(g, np.concatenate([gU.flatten().numpy(), gW.flatten().numpy()]), rtol=1e-10)


def test_same_point_as_scipy_lbfgsb_on_the_written_out_objective():
    """Oracle: scipy's L-BFGS-B driven by hand on the written-out objective, same start, same memory,
    same number of iterations: the same iterate to rounding."""
    A, mlp = mlp_data(seed=2)
    lam, n, r, p = 1.0, A.shape[0], 3, A.shape[1]
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), lam)
    U0, W0 = initialize(A, r, "nndsvda", random_state=0)
    ours = run_quiet(solve_lbfgs, prob, U0, W0, max_iter=25, tol=0.0)

    def fg(z):
        U = torch.from_numpy(z[: n * r].reshape(n, r)).requires_grad_(True)
        W = torch.from_numpy(z[n * r :].reshape(r, p)).requires_grad_(True)
        f = written_out_objective(A, mlp, lam, U, W)
        gU, gW = torch.autograd.grad(f, (U, W))
        return float(f), np.concatenate([gU.flatten().numpy(), gW.flatten().numpy()])

    z0 = np.concatenate([U0.flatten().numpy(), W0.flatten().numpy()])
    ref = minimize(fg, z0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * z0.size,
                   options={"maxiter": 25, "maxcor": MEMORY, "ftol": 0, "gtol": 0})  # fmt: skip
    assert ours.n_iter == ref.nit == 25
    assert torch.allclose(ours.W, torch.from_numpy(ref.x[n * r :].reshape(r, p)), atol=1e-10)
    assert ours.history["total"][-1] == pytest.approx(ref.fun, rel=1e-10)


def test_affine_head_reaches_the_hals_optimum():
    """For an affine head it cannot see as affine, lbfgs reaches hals' optimum (oracle)."""
    A, _ = mlp_data(seed=1)
    lin = torch.nn.Linear(A.shape[1], 5).double()
    prob = make_problem(A, Head(Counting(lin), dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    ours = run_quiet(solve_lbfgs, prob, U0, W0, max_iter=3000, tol=1e-12)
    ref_prob = make_problem(A, Head(lin, dtype=A.dtype, device=A.device), 1.0)
    ref = run_quiet(solve_hals, ref_prob, U0, W0, max_iter=3000, tol=1e-10)
    assert ours.history["total"][-1] == pytest.approx(ref.history["total"][-1], rel=1e-5)


@pytest.mark.parametrize("lam", [1.0, 30.0])
def test_monotone_bounded_and_first_order_stationary(lam, tol):
    A, mlp = mlp_data(seed=3)
    head = Counting(mlp)
    prob = make_problem(A, Head(head, dtype=A.dtype, device=A.device), lam)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    head.calls = 0  # (make_problem called it once, for the targets)
    res = run_quiet(solve_lbfgs, prob, U0, W0, max_iter=2000, tol=1e-12)
    assert _monotone(res.history["total"], tol)
    assert float(res.U.min()) >= 0 and float(res.W.min()) >= 0
    assert res.n_head_calls == head.calls  # every evaluation is one head call, counted
    # the history ends at the objective of the returned factors (oracle: the definition)
    assert res.history["total"][-1] == pytest.approx(
        float(face_objective(A, res.U, res.W, mlp, lam)), rel=1e-9
    )
    start = projected_gradient_norm(A, mlp, lam, U0, W0)
    assert projected_gradient_norm(A, mlp, lam, res.U, res.W) < 1e-3 * start


def test_stop_rule_waits_a_window_then_stops_on_slow_progress():
    from face_concepts.decomposition.solvers import WINDOW, _stop_test

    A, mlp = mlp_data(seed=4)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    res = run_quiet(solve_lbfgs, prob, U0, W0, max_iter=1000, tol=1e-3)
    h = res.history["total"]
    assert res.converged and WINDOW <= res.n_iter < 1000
    assert _stop_test(h, 1e-3, WINDOW)
    assert not any(_stop_test(h[: t + 1], 1e-3, WINDOW) for t in range(WINDOW, res.n_iter))


def test_codes_only_keeps_the_bank():
    A, mlp = mlp_data(seed=4)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 2.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    res = run_quiet(solve_lbfgs, prob, U0, W0, max_iter=300, tol=1e-10, update_W=False)
    assert torch.equal(res.W, W0)
    assert res.history["total"][-1] < res.history["total"][0]


def test_signed_bank_may_go_negative_and_codes_stay_non_negative(tol):
    A, mlp = mlp_data(seed=5)
    A = A - 0.5
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "signed-svd", random_state=0, signed=True)
    res = run_quiet(SIGNED_SOLVERS["lbfgs"], prob, U0, W0, max_iter=200, tol=1e-8)
    assert _monotone(res.history["total"], tol)
    assert bool((res.U >= 0).all()) and bool((res.W < 0).any())
    assert res.history["total"][-1] < 0.9 * res.history["total"][0]


def test_face_takes_it_by_name():
    A, mlp = mlp_data(seed=3)
    est = FACE(Counting(mlp), n_concepts=3, kl_weight=1.0, solver="lbfgs", random_state=0)
    U = est.fit_transform(A)
    assert est.solver_ == "lbfgs" and est.converged_
    assert est.objective_ == pytest.approx(
        float(face_objective(A, U, est.concept_bank_, mlp, 1.0)), rel=1e-9
    )


def test_the_bundled_openblas_runs_one_thread_during_the_solve_and_is_restored():
    """Its threads would spin between L-BFGS-B's BLAS calls and take the cores from the head;
    PyTorch's own threads are left as they are."""
    from threadpoolctl import ThreadpoolController

    from face_concepts.decomposition.quasi_newton import BUNDLED_OPENBLAS

    def blas_threads() -> list[int]:
        return [
            c.num_threads
            for c in ThreadpoolController().select(prefix=BUNDLED_OPENBLAS).lib_controllers
        ]

    before, torch_threads = blas_threads(), torch.get_num_threads()
    assert before, "scipy and numpy load their bundled OpenBLAS"
    seen: list[tuple[list[int], int]] = []
    A, mlp = mlp_data(seed=1)

    class Recording(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((blas_threads(), torch.get_num_threads()))
            return mlp(x)

    prob = make_problem(A, Head(Recording(), dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    run_quiet(solve_lbfgs, prob, U0, W0, max_iter=5, tol=0.0)
    assert seen and all(threads == [1] * len(before) for threads, _ in seen[1:])
    assert all(t == torch_threads for _, t in seen)
    assert blas_threads() == before  # restored
