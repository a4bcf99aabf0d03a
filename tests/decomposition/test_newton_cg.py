"""The W-block projected Newton-CG, the KKT residual, the NMF warm start and the windowed stop
(decomposition/newton_cg.py, solvers.py) against oracles: autograd (gradient, Hessian-vector
products), scipy's L-BFGS-B on the W-subproblem in float64 (the block optimum), the KKT
conditions, and analytic histories.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from _tiny import affine_problem
from face_concepts.decomposition import face_objective
from face_concepts.decomposition import newton_cg as ncg
from face_concepts.decomposition import solvers as sv
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.hals import solve_hals
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.problem import make_problem

_problem = affine_problem


def test_bank_gradient_and_hvp_match_autograd():
    A, U, W, lin, prob = _problem(0, lam=3.0)
    Z = torch.addmm(lin.bias, U, W @ lin.weight.T).detach()
    g, hvp = ncg.bank_derivatives(prob, U, W, Z, U.T @ U, U.T @ A)
    f = lambda X: face_objective_t(A, U, X, lin, 3.0)  # noqa: E731
    g_ref = torch.autograd.functional.jacobian(f, W.clone())
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    D = torch.randn(W.shape, generator=torch.Generator().manual_seed(3), dtype=W.dtype)
    _, hvp_ref = torch.autograd.functional.hvp(f, W.clone(), D)
    torch.testing.assert_close(hvp(D), hvp_ref, rtol=1e-8, atol=1e-12)


def face_objective_t(A, U, W, lin, lam):
    """The objective as a differentiable tensor (materialised, float64)."""
    R = U @ W
    logP = torch.log_softmax(lin(A), dim=1).detach()
    logQ = torch.log_softmax(lin(R), dim=1)
    kl = (logP.exp() * (logP - logQ)).sum(dim=1).mean()
    return ((A - R) ** 2).mean() + lam * kl


@pytest.mark.parametrize("lam", [0.5, 20.0])
def test_bank_steps_are_monotone_and_reach_the_block_optimum(lam):
    A, U, W, lin, prob = _problem(1, lam=lam, scale=2.0)
    terms = sv.evaluate(prob, U, W)
    values = [terms.total]
    for _ in range(60):  # CG run to exactness: the step is then Newton's
        W, _, terms, _ = ncg.bank_newton_step(prob, U, W, None, terms, cg_iterations=W.numel())
        values.append(terms.total)
    assert np.all(np.diff(values) <= 1e-13 * np.abs(values[:-1]))
    assert float(W.min()) >= 0

    def fg(w):
        X = torch.from_numpy(w).view_as(W).requires_grad_(True)
        val = face_objective_t(A, U, X, lin, lam)
        (grad,) = torch.autograd.grad(val, X)
        return float(val), grad.numpy().ravel().copy()

    ref = minimize(fg, np.random.default_rng(0).random(W.numel()), jac=True, method="L-BFGS-B",
                   bounds=[(0, None)] * W.numel(), options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})  # fmt: skip
    assert values[-1] <= ref.fun * (1 + 1e-8)
    assert face_objective(A, U, W, lin, lam) == pytest.approx(values[-1], rel=1e-10)
    # KKT of the block: gradient ≥ 0 where W = 0, ≈ 0 where W > 0.
    Z = torch.addmm(lin.bias, U, W @ lin.weight.T).detach()
    g, _ = ncg.bank_derivatives(prob, U, W, Z, U.T @ U, U.T @ A)
    assert float((W - (W - g).clamp(min=0)).abs().max()) < 1e-7 * float(g.abs().max() + 1)


def test_kkt_residual_is_scale_free_and_vanishes_at_a_solution():
    _, U, W, _, prob = _problem(2, lam=1.0)
    start = sv.kkt_residual(prob, U, W, None, sv.evaluate(prob, U, W).total)
    D = torch.tensor([0.5, 2.0, 7.0], dtype=U.dtype)
    scaled = sv.kkt_residual(prob, U * D, W / D[:, None], None, sv.evaluate(prob, U, W).total)
    assert scaled == pytest.approx(start, rel=1e-10)
    res = solve_hals(prob, U, W, max_iter=3000, tol=0.0)
    end = sv.kkt_residual(prob, res.U, res.W, None, res.history["total"][-1])
    assert end < 1e-3 * start


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_warm_start_fits_plain_nmf_first():
    A, _, _, lin, _ = _problem(3, lam=1.0)
    U0, W0 = initialize(A.float(), 3, "nndsvda")
    A32 = A.float()
    prob32 = make_problem(A32, Head(lin.float(), dtype=A32.dtype, device=A32.device), 1.0)
    res = solve_hals(prob32, U0, W0, max_iter=50, tol=1e-5, warm_start=True)
    plain = sv.Problem(A=A32, head=None, kl_weight=0.0, sq_norm_A=prob32.sq_norm_A)
    nmf = solve_hals(
        plain, U0, W0, max_iter=sv.WARM_MAX_ITER, tol=sv.WARM_TOL, stationarity_tol=None
    )
    assert res.warm_iter == nmf.n_iter > 0
    assert res.history["total"][0] == pytest.approx(
        sv.evaluate(prob32, nmf.U, nmf.W).total, rel=1e-6
    )
    cold = solve_hals(prob32, U0, W0, max_iter=1, tol=1e-5)
    assert cold.warm_iter == 0
    assert cold.history["total"][0] == pytest.approx(sv.evaluate(prob32, U0, W0).total, rel=1e-6)


def test_windowed_stop_rule():
    w = sv.WINDOW
    # Mean relative decrease over the window: (100 − 99.991) / (w · 100) = 9e-6 < 1e-5.
    slow = [100.0] + [100.0 - 0.009 * (i + 1) / w for i in range(w)]
    assert sv._stop_test(slow, 1e-5)
    # One stalled iteration inside a fast window does not stop it.
    fast = [100.0 - i for i in range(w)] + [100.0 - (w - 1)]
    assert not sv._stop_test(fast, 1e-5)
    # tol = 0: only a window without any decrease stops.
    assert sv._stop_test([5.0] * (w + 1), 0.0)
    assert not sv._stop_test([5.0] * w + [4.999], 0.0)
    # Early iterations use the window they have.
    assert not sv._stop_test([10.0, 5.0], 1e-5)


def test_randomized_svd_matches_the_full_svd_on_a_large_matrix():
    from face_concepts.decomposition import init as ini

    g = torch.Generator().manual_seed(5)
    n, p, r = 900, 600, 6
    # Low rank plus noise, singular values decaying: the regime of pooled activations.
    L = torch.rand(n, 12, generator=g) @ torch.rand(12, p, generator=g)
    A = (L + 0.01 * torch.rand(n, p, generator=g)).float()
    assert n * p >= ini.RANDOMIZED_SVD_MIN_SIZE
    _, S1, V1 = ini._thin_svd(A, r)
    _, S, Vh = torch.linalg.svd(A.double(), full_matrices=False)
    torch.testing.assert_close(S1, S[:r], rtol=1e-4, atol=0)
    cos = (V1 * Vh[:r]).sum(dim=1).abs()
    assert float(cos.min()) > 1 - 1e-4
    U2, W2 = ini.nndsvd(A, r, variant="nndsvda")
    assert U2.shape == (n, r) and W2.shape == (r, p) and float(U2.min()) >= 0


def test_verbose_fit_reports_solver_progress_on_stderr(capsys):
    from face_concepts import FACE

    A, _, _, lin, _ = _problem(4, n=40)
    FACE(lin, 3, kl_weight=1.0, max_iter=12, tol=0.0, random_state=0, verbose=True).fit(A)
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.startswith("hals iteration")]
    assert [ln.split(":")[0] for ln in lines] == ["hals iteration 1", "hals iteration 10"]
    assert all(" s" in ln and "objective" in ln and "KL" in ln for ln in lines)
    assert out.out == ""
    FACE(lin, 3, kl_weight=1.0, max_iter=12, tol=0.0, random_state=0).fit(A)
    assert capsys.readouterr().err.count("iteration") == 0
