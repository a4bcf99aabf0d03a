"""The signed concept bank (decomposition/semi_nmf.py, ``bank="signed"``) against oracles:
autograd (gradient and Hessian-vector products at a signed W), a slow and obvious
re-implementation of Ding, Li & Jordan's (2010) multiplicative Semi-NMF updates, the truncated
SVD (no rank-r factorisation can do better), scipy's NNLS (the encoder at λ = 0), and the
mini-batch path's epoch objective.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize, nnls
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from face_concepts.decomposition import FACE, NMF, encode, face_objective, objective_and_grads
from face_concepts.decomposition import newton_cg as ncg
from face_concepts.decomposition import semi_nmf as sn
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.init import initialize, signed_svd
from face_concepts.decomposition.problem import make_problem


def signed_planted(n=80, p=12, r=3, C=5, seed=0, noise=0.05, dtype=torch.float64):
    """``A = U W + noise`` with ``U ≥ 0`` and a signed ``W`` (so ``A`` is signed), a linear head."""
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, r, generator=g, dtype=dtype)
    W = torch.randn(r, p, generator=g, dtype=dtype)
    A = U @ W + noise * torch.randn(n, p, generator=g, dtype=dtype)
    head = torch.nn.Linear(p, C).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(C, p, generator=g, dtype=dtype))
        head.bias.copy_(torch.randn(C, generator=g, dtype=dtype))
    return A, head


def _quiet_fit(est, A, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit_transform(A, **kw)


def _ding_semi_nmf(A: np.ndarray, U: np.ndarray, iterations: int):
    """Ding, Li & Jordan (2010), Semi-NMF for ``A ≈ U W`` with ``U ≥ 0`` (their ``X ≈ F Gᵀ``
    with ``F = Wᵀ``, ``G = U``): ``W = (UᵀU)⁻¹UᵀA``, then
    ``U ← U ⊙ sqrt(((AWᵀ)⁺ + U (WWᵀ)⁻) / ((AWᵀ)⁻ + U (WWᵀ)⁺))``, element by element."""
    U = U.copy()
    n, r = U.shape
    for _ in range(iterations):
        W = np.linalg.solve(U.T @ U, U.T @ A)
        AW, WW = A @ W.T, W @ W.T
        for i in range(n):
            for k in range(r):
                pos = max(AW[i, k], 0.0) + sum(U[i, j] * max(-WW[j, k], 0.0) for j in range(r))
                neg = max(-AW[i, k], 0.0) + sum(U[i, j] * max(WW[j, k], 0.0) for j in range(r))
                U[i, k] *= np.sqrt(pos / max(neg, 1e-300))
    W = np.linalg.solve(U.T @ U, U.T @ A)
    return U, W


def test_gradient_and_hvp_at_a_signed_bank_match_autograd(tol):
    A, head = signed_planted(n=40, p=9)
    g = torch.Generator().manual_seed(1)
    U = torch.rand(A.shape[0], 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, A.shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    lam = 3.0

    def loss_of(U, W):
        R = U @ W
        return F.mse_loss(R, A) + lam * F.kl_div(
            torch.log_softmax(head(R), 1), torch.softmax(head(A), 1).detach(), reduction="batchmean"
        )

    loss = loss_of(U, W)
    gU, gW = torch.autograd.grad(loss, (U, W))
    V, b = head.weight.detach(), head.bias.detach()
    f, fU, fW = objective_and_grads(A, U.detach(), W.detach(), V, b, lam)
    assert abs(f - float(loss.detach())) <= tol["objective_f64"] * abs(float(loss.detach()))
    torch.testing.assert_close(fU, gU, rtol=0, atol=tol["grad_f64"])
    torch.testing.assert_close(fW, gW, rtol=0, atol=tol["grad_f64"])
    # the W-block's derivatives, used unprojected by the signed bank
    prob = make_problem(A, Head(head, dtype=A.dtype, device=A.device), lam)
    Ud, Wd = U.detach(), W.detach()
    Z = head(Ud @ Wd).detach()
    g_w, hvp = ncg.bank_derivatives(prob, Ud, Wd, Z, Ud.T @ Ud, Ud.T @ A)
    torch.testing.assert_close(g_w, gW, rtol=0, atol=tol["grad_f64"])
    D = torch.randn(Wd.shape, generator=g, dtype=Wd.dtype)
    _, hvp_ref = torch.autograd.functional.hvp(lambda X: loss_of(Ud, X), Wd.clone(), D)
    torch.testing.assert_close(hvp(D), hvp_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 1.0, 30.0])
def test_signed_fit_is_monotone_with_signed_bank_and_nonnegative_codes(lam, tol):
    A, head = signed_planted()
    assert float(A.min()) < 0
    est = FACE(head, n_concepts=3, kl_weight=lam, bank="signed", max_iter=200, tol=0)
    U = _quiet_fit(est, A)
    h = np.array(est.loss_history_["total"])
    assert len(h) == est.n_iter_ + 1 and est.solver_ == "hals" and est.init_ == "signed-svd"
    assert np.all(np.diff(h) <= tol["monotone"] * h[:-1]), np.diff(h).max()
    assert float(U.min()) >= 0 and float(est.concept_bank_.min()) < 0
    assert est.objective_ == pytest.approx(
        face_objective(A, U, est.concept_bank_, head, lam), rel=1e-9
    )


@pytest.mark.parametrize("solver", ["auto", "pgd"])
def test_signed_solvers_are_monotone_for_a_non_affine_head(tol, solver):
    A, _ = signed_planted(n=40, p=8)
    mlp = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)).double()
    est = FACE(mlp, n_concepts=3, kl_weight=1.0, bank="signed", max_iter=30, tol=0, solver=solver)
    U = _quiet_fit(est, A)
    h = np.array(est.loss_history_["total"])
    assert (
        est.solver_ == ("jacobian" if solver == "auto" else "pgd")
        and float(U.min()) >= 0
        and float(est.concept_bank_.min()) < 0
    )
    assert np.all(np.diff(h) <= tol["monotone"] * h[:-1])
    # progress from the init (jacobian's history starts after its plain Semi-NMF warm start)
    U0, W0 = initialize(A, 3, est.init_, random_state=0, signed=True)
    assert h[-1] < 0.5 * float(face_objective(A, U0, W0, mlp, 1.0))


def test_lambda0_reaches_dings_semi_nmf_and_stays_above_the_svd_bound():
    A, _ = signed_planted(n=30, p=8, r=3, noise=0.3, seed=3)
    r = 3
    g = torch.Generator().manual_seed(4)
    U0 = torch.rand(A.shape[0], r, generator=g, dtype=A.dtype) + 0.2  # Ding: positive start
    W0 = torch.linalg.solve(U0.T @ U0, U0.T @ A)
    Ud, Wd = _ding_semi_nmf(A.numpy(), U0.numpy(), iterations=300)
    ding = float(((A.numpy() - Ud @ Wd) ** 2).mean())
    ours = {}
    for init, kw in (("custom", {"U0": U0, "W0": W0}), ("auto", {})):
        est = NMF(r, bank="signed", init=init, max_iter=2000, tol=1e-10)
        U = _quiet_fit(est, A, **kw)
        ours[init] = float(((A - U @ est.concept_bank_) ** 2).mean())
        assert float(U.min()) >= 0
    S = torch.linalg.svdvals(A)
    svd_bound = float((S[r:] ** 2).sum()) / A.numel()  # best rank-r fit, signs free
    assert ding > svd_bound
    for value in ours.values():
        assert svd_bound * (1 - 1e-9) <= value <= ding * (1 + 1e-6), (value, ding, svd_bound)


def test_signed_svd_init_reproduces_the_half_rank_svd():
    A = torch.randn(25, 10, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    U, W = signed_svd(A, 4)
    assert float(U.min()) >= 0 and U.shape == (25, 4) and W.shape == (4, 10)
    Us, S, Vh = torch.linalg.svd(A, full_matrices=False)
    assert bool((Us[:, :2].amin(0) < 0).all() and (Us[:, :2].amax(0) > 0).all())  # both parts
    torch.testing.assert_close(W[0], -W[1])  # a direction and its opposite
    torch.testing.assert_close(U @ W, (Us[:, :2] * S[:2]) @ Vh[:2], rtol=0, atol=1e-10)


def test_agreement_rises_with_lambda_on_planted_data():
    A, head = signed_planted(n=80, p=12, r=3, C=6, noise=0.3, seed=5)
    kls, agreements = [], []
    for lam in [0.0, 1.0, 10.0, 100.0]:
        est = FACE(head, n_concepts=3, kl_weight=lam, bank="signed", max_iter=3000, tol=1e-9)
        U = _quiet_fit(est, A)
        R = U @ est.concept_bank_
        with torch.no_grad():
            P, Q = torch.softmax(head(A), 1), torch.softmax(head(R), 1)
        kls.append(float((P * (P.log() - Q.log())).sum(1).mean()))
        with torch.no_grad():
            same = head(R).argmax(1) == head(A).argmax(1)
        agreements.append(float(same.double().mean()))
    assert all(kls[i + 1] <= kls[i] * 1.0001 for i in range(3)), kls
    assert kls[-1] < 0.5 * kls[0], kls
    assert agreements[-1] > agreements[0] and agreements[-1] == 1.0, agreements


def test_encoder_with_a_signed_bank_matches_scipy_nnls():
    A, head = signed_planted(n=20, p=10, seed=6)
    W = torch.randn(3, 10, generator=torch.Generator().manual_seed(7), dtype=A.dtype)
    U = encode(A, W, max_iter=2000, tol=1e-14)
    assert float(U.min()) >= 0
    ref = np.stack([nnls(W.numpy().T, a)[0] for a in A.numpy()])
    np.testing.assert_allclose(U.numpy(), ref, atol=1e-7)
    # with λ > 0 the codes stay non-negative and the objective at them is not above NNLS's
    Ul = encode(A, W, head, kl_weight=5.0)
    assert float(Ul.min()) >= 0
    lam_obj = lambda X: face_objective(A, X, W, head, 5.0)  # noqa: E731
    assert lam_obj(Ul) <= lam_obj(torch.from_numpy(ref)) * (1 + 1e-9)


def test_nonnegative_bank_still_refuses_signed_activations():
    A, head = signed_planted(n=20, p=8)
    with pytest.raises(ValueError, match="non-negative") as err:
        FACE(head, 2, kl_weight=1.0).fit(A)
    # the estimators advise the bank that fits such rows; the encoder of a non-negative bank not
    assert "pass bank='signed' for a signed concept bank" in str(err.value)
    with pytest.raises(ValueError, match="bank='signed'"):
        NMF(2).fit(A)
    with pytest.raises(ValueError, match="bank='signed'"):
        FACE(head, 2, kl_weight=1.0, batch_size=8).fit(A)  # mini-batch
    with pytest.raises(ValueError, match="non-negative") as err:
        encode(A, torch.rand(2, 8, dtype=A.dtype))
    assert "bank=" not in str(err.value) and "post-ReLU" in str(err.value)
    assert FACE(head, 2, kl_weight=1.0, bank="signed", max_iter=5).fit(A).concept_bank_.shape == (2, 8)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bank": "mixed"}, r"bank must be one of \['nonnegative', 'signed'\], got 'mixed'"),
        ({"bank": "signed", "solver": "adam"}, "solver='adam' has no signed bank"),
        ({"bank": "signed", "init": "nndsvda"}, "with bank='signed' use one of"),
        ({"init": "signed-svd"}, "use it with bank='signed'"),
    ],
)
def test_bank_errors_name_the_setting(kwargs, match):
    A, head = signed_planted(n=20, p=8)
    with pytest.raises(ValueError, match=match):
        FACE(head, 2, kl_weight=1.0, **kwargs).fit(A.abs())


def test_bank_is_a_parameter_kept_by_get_params_and_clone():
    est = FACE(torch.nn.Linear(4, 2), 2, bank="signed")
    assert est.get_params()["bank"] == "signed" and clone(est).bank == "signed"
    nmf = NMF(2, bank="signed")
    assert nmf.get_params()["bank"] == "signed" and clone(nmf).bank == "signed"
    assert FACE(None, 2).get_params()["bank"] == "nonnegative"


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_minibatch_signed_fit_decreases_the_objective(lam):
    A, head = signed_planted(n=120, p=10, r=3, seed=8)
    est = FACE(head, 3, kl_weight=lam, bank="signed", batch_size=40, max_iter=6, tol=0)
    U = _quiet_fit(est, A)
    h = est.loss_history_["total"]
    assert h[-1] < h[0], h
    assert float(U.min()) >= 0 and float(est.concept_bank_.min()) < 0
    start = face_objective(A, *signed_svd(A, 3), head, lam)
    assert est.objective_ < start
    # one batch per pass is exact alternating minimisation: it matches the full-batch optimum
    one = FACE(head, 3, kl_weight=lam, bank="signed", batch_size=120, max_iter=100, tol=1e-9)
    _quiet_fit(one, A)
    full = FACE(head, 3, kl_weight=lam, bank="signed", max_iter=500, tol=1e-10)
    _quiet_fit(full, A)
    assert one.objective_ <= full.objective_ * 1.05


def test_minibatch_signed_surrogate_minimiser_is_the_exact_minimum():
    A, head = signed_planted(n=30, p=7, r=2, seed=9)
    from face_concepts.decomposition import minibatch as mb
    from face_concepts.decomposition import surrogate as sg

    est = FACE(head, 2, kl_weight=2.0, bank="signed", batch_size=30)
    state = est._online_start(A)
    mb.step(state, A)
    Q = sg.Surrogate(state.stats, state.head.V, state.K, state.lam, 0.3)
    W = sn.minimise_surrogate_signed(Q, state.K_eig, 7, A.dtype)
    # oracle: scipy's BFGS on the same (convex quadratic) surrogate, from W = 0
    res = minimize(
        lambda x: Q.value(torch.from_numpy(x.reshape(W.shape))),
        np.zeros(W.numel()),
        method="BFGS",
        options={"gtol": 1e-12, "maxiter": 10_000},
    )
    assert Q.value(W) <= res.fun + 1e-9 * abs(res.fun)
    np.testing.assert_allclose(W.numpy().ravel(), res.x, rtol=1e-4, atol=1e-5)
