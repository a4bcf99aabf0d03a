"""Projected Newton for the codes (decomposition/newton.py) against oracles.

Oracles: autograd (gradient, Hessian), the objective evaluated directly in float64 (the
accurate per-row differences), scipy's L-BFGS-B per row in float64 (the optimum), and the
KKT conditions of the bound-constrained problem.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from face_concepts.decomposition import encode, face_objective
from face_concepts.decomposition import newton as nt
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.encoder import _warm_start, solve_codes
from face_concepts.decomposition.problem import make_problem
from face_concepts.decomposition.solvers import evaluate, u_step


def _problem(seed: int, n=12, p=9, r=4, C=7, lam=1.0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, p, generator=g, dtype=dtype)
    W = torch.rand(r, p, generator=g, dtype=dtype)
    lin = torch.nn.Linear(p, C).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(scale * torch.randn(C, p, generator=g, dtype=dtype))
        lin.bias.copy_(torch.randn(C, generator=g, dtype=dtype))
    head = Head(lin, dtype=dtype, device=A.device)
    return A, W, lin, head, make_problem(A, head, lam)


def _row_objective(A, W, lin, lam, U):
    """Per-row f_i in float64, computed the obvious way."""
    A, W, U = A.double(), W.double(), U.double()
    V, b = lin.weight.detach().double(), lin.bias.detach().double()
    logP = torch.log_softmax(A @ V.T + b, dim=1)
    logQ = torch.log_softmax(U @ W @ V.T + b, dim=1)
    return ((A - U @ W) ** 2).mean(dim=1) + lam * (logP.exp() * (logP - logQ)).sum(dim=1)


def test_hessian_and_gradient_match_autograd():
    A, W, lin, head, prob = _problem(0, lam=2.5)
    pc = nt.precompute(prob, W)
    U = torch.rand(A.shape[0], W.shape[0], generator=torch.Generator().manual_seed(1)).double()
    S = torch.softmax(torch.addmm(head.b, U, pc.M), dim=1)
    H = nt.hessians(pc, S)
    for i in range(A.shape[0]):
        f = lambda u, i=i: _row_objective(A[i : i + 1], W, lin, 2.5, u[None])[0]  # noqa: E731
        H_ref = torch.autograd.functional.hessian(f, U[i].clone())
        torch.testing.assert_close(H[i], H_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("size", [1e-9, 1e-3, 1.0, 200.0])
def test_row_decrease_is_the_exact_difference(size):
    # float32 inputs: the difference must stay accurate where f itself cannot resolve it, and
    # be right (not NaN, not 0) for huge moves where the softmax underflowed.
    A, W, lin, head, _ = _problem(2, lam=3.0, dtype=torch.float32, scale=4.0)
    prob = make_problem(A, head, 3.0)
    pc = nt.precompute(prob, W)
    g = torch.Generator().manual_seed(3)
    U = torch.rand(A.shape[0], W.shape[0], generator=g)
    Un = (U + size * torch.randn(U.shape, generator=g)).clamp(min=0)
    logS = torch.log_softmax(torch.addmm(head.b, U, pc.M), dim=1)
    S = logS.exp()
    rows = nt.Rows(U, pc.AWt, prob.P, logS, S, S @ pc.M.T, prob.P @ pc.M.T)
    got = nt.row_decrease(pc, rows, Un)
    ref = _row_objective(A, W, lin, 3.0, Un) - _row_objective(A, W, lin, 3.0, U)
    assert torch.isfinite(got).all()
    # relative to the size of the change itself (float32 inputs), not to f
    np.testing.assert_allclose(got.double(), ref, rtol=1e-3, atol=1e-6 * float(ref.abs().max()))


def _lbfgsb_codes(A, W, lin, lam):
    """The oracle optimum: each row minimised by scipy's L-BFGS-B in float64."""
    out = []
    for i in range(A.shape[0]):

        def fun(x, i=i):
            u = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            f = _row_objective(A[i : i + 1], W, lin, lam, u[None])[0]
            (gr,) = torch.autograd.grad(f, u)
            return float(f.detach()), gr.numpy()

        x0 = np.full(W.shape[0], 0.1)
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * W.shape[0],
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})  # fmt: skip
        out.append(res.x)
    return torch.tensor(np.array(out))


@pytest.mark.parametrize("resolves", [0, nt.RESOLVES])
@pytest.mark.parametrize(("seed", "lam", "scale"), [(4, 1.0, 1.0), (5, 30.0, 3.0), (6, 1e-3, 1.0)])
def test_newton_reaches_the_lbfgsb_optimum_and_kkt(seed, lam, scale, resolves):
    A, W, lin, _head, prob = _problem(seed, n=10, lam=lam, scale=scale)
    U0 = _warm_start(A, W)
    f0 = evaluate(prob, U0, W).total
    U, iters = nt.solve_codes_newton(prob, W, U0, max_iter=100, tol=1e-14, f0=f0, resolves=resolves)
    U_ref = _lbfgsb_codes(A, W, lin, lam)
    f, f_ref = _row_objective(A, W, lin, lam, U), _row_objective(A, W, lin, lam, U_ref)
    assert (f <= f_ref + 1e-10 * f_ref.abs() + 1e-13).all(), (f - f_ref).max()
    assert iters < 100
    # KKT: gradient ≥ 0 where u = 0, ≈ 0 where u > 0
    Ur = U.clone().requires_grad_()
    (gr,) = torch.autograd.grad(_row_objective(A, W, lin, lam, Ur).sum(), Ur)
    assert (U >= 0).all()
    scale_g = 1e-7 * (1.0 + float(gr.abs().max()))
    free, bound = gr[U > 1e-9], gr[U <= 1e-9]
    assert free.numel() > 0 and bound.numel() > 0  # both cases of the KKT conditions occur
    assert float(free.abs().max()) < scale_g
    assert float(bound.min()) > -scale_g


def test_newton_iterations_never_raise_the_objective():
    A, W, lin, _head, prob = _problem(7, n=40, lam=50.0, scale=5.0, dtype=torch.float32)
    U = _warm_start(A, W)
    f_prev = _row_objective(A, W, lin, 50.0, U)
    for _ in range(8):
        U, _ = nt.solve_codes_newton(prob, W, U, max_iter=1, tol=0.0, f0=1.0)
        f = _row_objective(A, W, lin, 50.0, U)
        # per row, up to float32 rounding of the inputs
        assert (f <= f_prev + 1e-5 * f_prev.abs()).all(), (f - f_prev).max()
        f_prev = f


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_newton_codes_reports_the_objective_at_its_codes(dtype):
    """The objective it returns (``f0`` minus the rows' accurate decreases) is the objective at
    the codes it returns (oracle: the per-row objective in float64, the obvious way); given the
    logits of its start, it takes the same steps bit for bit."""
    A, W, lin, head, prob = _problem(9, n=40, lam=5.0, scale=3.0, dtype=dtype)
    U = _warm_start(A, W)
    f = float(_row_objective(A, W, lin, 5.0, U).mean())
    for _ in range(4):
        Z = torch.addmm(head.b, U, nt.precompute(prob, W).M)
        Un, _, f_new = nt.newton_codes(prob, W, U, max_iter=2, tol=0.0, f0=f, logits=Z)
        plain, _ = nt.solve_codes_newton(prob, W, U, max_iter=2, tol=0.0, f0=f)
        assert torch.equal(Un, plain)
        exact = float(_row_objective(A, W, lin, 5.0, Un).mean())
        rel = 1e-12 if dtype == torch.float64 else 1e-6
        assert f_new == pytest.approx(exact, rel=rel)
        assert f_new < f
        U, f = Un, exact


def test_newton_beats_the_majorise_minimise_sweeps_it_replaced():
    # Same start, same number of iterations: the old MM-HALS U-steps end higher.
    A, W, _lin, _head, prob = _problem(8, n=30, lam=10.0, scale=3.0)
    U0 = _warm_start(A, W)
    f0 = evaluate(prob, U0, W).total
    U_n, _ = nt.solve_codes_newton(prob, W, U0, max_iter=10, tol=0.0, f0=f0)
    U_mm, Z, f = U0, None, f0
    with torch.no_grad():
        for _ in range(10):
            U_mm, Z, f = u_step(prob, U_mm, W, Z, 10, f)
    assert evaluate(prob, U_n, W).total < evaluate(prob, U_mm, W).total


def test_encoder_uses_newton_for_affine_heads_and_matches_materialised_objective():
    A, W, lin, _head, prob = _problem(9, n=15, lam=2.0)
    U = encode(A, W, lin, kl_weight=2.0)
    U_direct, _ = solve_codes(prob, W, _warm_start(A, W), max_iter=500, tol=1e-7)
    torch.testing.assert_close(U, U_direct)
    U_ref = _lbfgsb_codes(A, W, lin, 2.0)
    assert face_objective(A, U, W, lin, 2.0) <= face_objective(A, U_ref, W, lin, 2.0) * (1 + 1e-9)


def _quadratic_model(H, g, U, d):
    """Per row gᵀΔ + ½ΔᵀHΔ with Δ = [U − d]₊ − U, written out row by row."""
    out = []
    for i in range(U.shape[0]):
        step = (U[i] - d[i]).clamp(min=0) - U[i]
        out.append(float(g[i] @ step + 0.5 * step @ H[i] @ step))
    return torch.tensor(out, dtype=torch.float64)


def test_the_resolved_step_sends_the_clipped_codes_to_zero_and_models_lower():
    A, W, _lin, head, prob = _problem(10, n=40, r=6, lam=30.0, scale=3.0)
    U = _warm_start(A, W) + 0.05  # every code positive: all free, many pushed below 0
    pc = nt.precompute(prob, W)
    S = torch.softmax(torch.addmm(head.b, U, pc.M), dim=1)
    sM = S @ pc.M.T
    g = nt.code_gradient(pc, U, sM - prob.P @ pc.M.T)
    H = nt.hessians(pc, S, sM)
    free = nt.free_set(U, g)
    plain = nt.newton_direction(H, g, free)
    resolved = nt.newton_direction(H, g, free, U, resolves=3)
    changed = (resolved != plain).any(dim=1)
    assert int(((U - plain) < 0).any(dim=1).sum()) >= 10  # the case the re-solve is for
    assert int(changed.sum()) >= 5
    for i in changed.nonzero().flatten().tolist():
        zero = (resolved[i] == U[i]) & free[i]  # sent exactly to 0
        rest = free[i] & ~zero
        assert zero.any()
        # the rest solves the Newton system with those codes at 0 (float64: to rounding)
        lhs = H[i][rest][:, rest] @ resolved[i][rest]
        rhs = g[i][rest] - H[i][rest][:, zero] @ U[i][zero]
        torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=1e-10)
    m_res, m_plain = _quadratic_model(H, g, U, resolved), _quadratic_model(H, g, U, plain)
    assert (m_res <= m_plain + 1e-12).all() and (m_res[changed] < m_plain[changed]).all()


def test_resolves_reach_the_same_codes_in_fewer_iterations():
    A, W, lin, _head, prob = _problem(11, n=60, r=8, lam=30.0, scale=3.0)
    U0 = _warm_start(A, W)
    f0 = evaluate(prob, U0, W).total
    runs = {
        k: nt.solve_codes_newton(prob, W, U0, max_iter=200, tol=1e-12, f0=f0, resolves=k)
        for k in (0, nt.RESOLVES)
    }
    (U_plain, it_plain), (U_res, it_res) = runs[0], runs[nt.RESOLVES]
    assert it_res < it_plain
    f_plain = _row_objective(A, W, lin, 30.0, U_plain)
    f_res = _row_objective(A, W, lin, 30.0, U_res)
    torch.testing.assert_close(f_res, f_plain, rtol=1e-9, atol=1e-12)


def test_settled_rows_are_left_out_and_the_codes_are_the_same(monkeypatch):
    A, W, lin, _head, prob = _problem(12, n=80, r=6, lam=10.0, scale=3.0)
    U0 = _warm_start(A, W)
    f0 = evaluate(prob, U0, W).total
    sizes: list[int] = []
    real = nt.hessians

    def recording(pc, S, sM=None):
        sizes.append(S.shape[0])
        return real(pc, S, sM)

    monkeypatch.setattr(nt, "hessians", recording)
    U_all, it_all = None, 0
    for drop in (False, True):
        monkeypatch.setattr(nt, "DROP_SETTLED_ROWS", drop)
        sizes.clear()
        U, it = nt.solve_codes_newton(prob, W, U0, max_iter=200, tol=1e-12, f0=f0)
        if not drop:
            assert sizes == [80] * it  # every row, every iteration
            U_all, it_all = U, it
    assert sizes[0] == 80 and sizes[-1] < 80 and sizes == sorted(sizes, reverse=True)
    f_all = _row_objective(A, W, lin, 10.0, U_all)
    f_drop = _row_objective(A, W, lin, 10.0, U)
    torch.testing.assert_close(f_drop, f_all, rtol=1e-9, atol=1e-12)
    assert it <= it_all + 2
