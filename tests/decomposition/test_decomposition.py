"""The FACE engine against oracles: autograd, scikit-learn, scipy, a re-implemented Adam loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from sklearn.base import clone
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition._nmf import _initialize_nmf
from sklearn.exceptions import ConvergenceWarning

from _monotone import assert_monotone
from face_concepts.decomposition import FACE, NMF, encode, face_objective, objective_and_grads
from face_concepts.decomposition.init import nndsvd


def planted(n=60, p=12, r=3, C=5, seed=0, dtype=torch.float64, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, r, generator=g, dtype=dtype)
    W = torch.rand(r, p, generator=g, dtype=dtype)
    A = U @ W + noise * torch.rand(n, p, generator=g, dtype=dtype)
    head = torch.nn.Linear(p, C).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(C, p, generator=g, dtype=dtype))
        head.bias.copy_(torch.randn(C, generator=g, dtype=dtype))
    return A, head


def test_factored_gradient_equals_autograd(tol):
    A, head = planted()
    g = torch.Generator().manual_seed(1)
    U = torch.rand(A.shape[0], 4, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.rand(4, A.shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    lam = 3.0
    R = U @ W
    loss = F.mse_loss(R, A) + lam * F.kl_div(
        torch.log_softmax(head(R), 1), torch.softmax(head(A), 1), reduction="batchmean"
    )
    gU, gW = torch.autograd.grad(loss, (U, W))
    V, b = head.weight.detach(), head.bias.detach()
    f, fU, fW = objective_and_grads(A, U.detach(), W.detach(), V, b, lam)
    assert abs(f - float(loss)) <= tol["objective_f64"] * abs(float(loss))
    torch.testing.assert_close(fU, gU, rtol=0, atol=tol["grad_f64"])
    torch.testing.assert_close(fW, gW, rtol=0, atol=tol["grad_f64"])


def test_face_objective_matches_definition():
    A, head = planted()
    U, W = torch.rand(A.shape[0], 3, dtype=A.dtype), torch.rand(3, A.shape[1], dtype=A.dtype)
    lam = 0.7
    P = torch.softmax(head(A), 1)
    Q = torch.softmax(head(U @ W), 1)
    kl = float((P * (P.log() - Q.log())).sum(1).mean())
    expected = float(((A - U @ W) ** 2).mean()) + lam * kl
    assert face_objective(A, U, W, head, lam) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("lam", [0.0, 1.0, 100.0])
def test_default_solver_is_monotone_and_nonnegative(lam, tol):
    A, head = planted()
    f = FACE(head, n_concepts=3, kl_weight=lam, max_iter=150, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        U = f.fit_transform(A)
    h = np.array(f.loss_history_["total"])
    assert len(h) == f.n_iter_ + 1
    assert_monotone(h, tol["monotone"], scale=float((A**2).mean()))
    assert float(f.concept_bank_.min()) >= 0 and float(U.min()) >= 0
    assert f.solver_ == "hals"
    assert f.objective_ == pytest.approx(face_objective(A, U, f.concept_bank_, head, lam), rel=1e-3)


def test_nmf_objective_within_5_percent_of_sklearn(tol):
    A, _ = planted(n=80, p=15, r=4, noise=0.2)
    An = A.numpy()
    sk = SkNMF(4, init="nndsvda", max_iter=2000, tol=1e-8, random_state=0)
    Usk = sk.fit_transform(An)
    sk_obj = float(((An - Usk @ sk.components_) ** 2).mean())
    ours = NMF(4, max_iter=2000, tol=1e-9).fit(A)
    assert ours.objective_ <= tol["sklearn_ratio"] * sk_obj


def test_kl_decreases_with_lambda_and_agreement_reaches_one():
    A, head = planted(n=80, p=12, r=3, C=6, noise=0.3)
    kls, agreements = [], []
    for lam in [0.0, 1.0, 10.0, 100.0]:
        f = FACE(head, n_concepts=3, kl_weight=lam, max_iter=3000, tol=1e-9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            U = f.fit_transform(A)
        R = U @ f.concept_bank_
        P, Q = torch.softmax(head(A), 1), torch.softmax(head(R), 1)
        kls.append(float((P * (P.log() - Q.log())).sum(1).mean()))
        agreements.append(float((head(R).argmax(1) == head(A).argmax(1)).double().mean()))
    assert all(kls[i + 1] <= kls[i] * 1.0001 for i in range(3)), kls
    assert kls[-1] < 0.5 * kls[0]
    assert agreements[-1] == 1.0, agreements


def _authors_loop(A, U, W, head, lam, steps, lr=5e-4, tol=1e-3):
    """A straightforward re-implementation of the authors' training loop (docs/method.md §4.4)."""
    U = U.clone().requires_grad_(True)
    W = W.clone().requires_grad_(True)
    opt = torch.optim.Adam([U, W], lr=lr)
    target = torch.softmax(head(A), dim=1).detach()
    losses, prev = [], None
    for _ in range(steps):
        opt.zero_grad()
        R = U @ W
        loss = F.mse_loss(R, A) + lam * F.kl_div(
            F.log_softmax(head(R), dim=1), target, reduction="batchmean"
        )
        loss.backward()
        opt.step()
        with torch.no_grad():
            U.clamp_(min=0)
            W.clamp_(min=0)
        losses.append(loss.item())
        if prev is not None and abs(prev - loss.item()) < tol:
            break
        prev = loss.item()
    return U.detach(), W.detach(), losses


def test_adam_matches_authors_loop_step_for_step(tol):
    A, head = planted()
    U0, W0 = nndsvd(A, 3, variant="nndsvd-authors")
    f = FACE(head, n_concepts=3, kl_weight=1e-2, solver="adam", max_iter=40, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        f.fit(A)
    _, W, losses = _authors_loop(A, U0, W0, head, 1e-2, 40, tol=0.0)
    assert f.init_ == "nndsvd-authors" and f.n_iter_ == 40
    np.testing.assert_allclose(f.loss_history_["total"], losses, rtol=tol["adam_parity"])
    torch.testing.assert_close(f.concept_bank_, W, rtol=tol["adam_parity"], atol=tol["adam_parity"])


def test_adam_stops_on_absolute_change():
    A, head = planted()
    f = FACE(head, n_concepts=3, kl_weight=1e-5, solver="adam").fit(A)
    _, _, losses = _authors_loop(A, *nndsvd(A, 3, variant="nndsvd-authors"), head, 1e-5, 22000)
    assert f.n_iter_ == len(losses) < 22000
    assert f.converged_


def test_authors_nndsvd_variant_scaling():
    A, _ = planted()
    U, W = nndsvd(A, 3, variant="nndsvd-authors")
    S = torch.linalg.svdvals(A)
    for j in range(1, 3):
        # Each factor is a unit vector scaled by sqrt(s_j) (no product-of-norms factor).
        assert float(U[:, j].norm()) == pytest.approx(float(S[j].sqrt()), rel=1e-10)
        assert float(W[j].norm()) == pytest.approx(float(S[j].sqrt()), rel=1e-10)


@pytest.mark.parametrize("variant", ["nndsvd", "nndsvda"])
def test_nndsvd_matches_sklearn(variant):
    A, _ = planted(n=40, p=10, noise=0.0)
    Usk, Wsk = _initialize_nmf(A.numpy(), 3, init=variant, random_state=0)
    U, W = nndsvd(A, 3, variant=variant)
    np.testing.assert_allclose((U @ W).numpy(), Usk @ Wsk, rtol=1e-6, atol=1e-8)


def test_transform_consistency(tol):
    A, head = planted()
    f = FACE(head, n_concepts=3, kl_weight=1.0, tol=1e-8, max_iter=3000)
    U1 = f.fit_transform(A)
    U2 = f.transform(A)
    assert float((U1 - U2).norm() / U1.norm()) < tol["transform_consistency"]


def test_encode_is_nnls_without_kl():
    A, _ = planted(n=10, p=12)
    W = torch.rand(4, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    U = encode(A, W, max_iter=5000, tol=1e-14)
    for i in range(A.shape[0]):
        x, _ = nnls(W.numpy().T, A[i].numpy())
        np.testing.assert_allclose(U[i].numpy(), x, atol=1e-6)


def test_encode_with_kl_is_never_worse_than_nnls():
    A, head = planted()
    W = torch.rand(3, A.shape[1], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    U0 = encode(A, W)
    U1 = encode(A, W, head, kl_weight=10.0)
    assert float(U1.min()) >= 0
    assert face_objective(A, U1, W, head, 10.0) <= face_objective(A, U0, W, head, 10.0) + 1e-12


def test_non_affine_head_uses_autograd_path():
    A, head = planted()
    net = torch.nn.Sequential(head, torch.nn.Tanh(), torch.nn.Linear(5, 4).double())
    f = FACE(net, n_concepts=3, kl_weight=1.0, max_iter=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        U = f.fit_transform(A)
    assert f.solver_ == "jacobian"
    h = np.array(f.loss_history_["total"])
    assert np.all(np.diff(h) <= 1e-12 * h[:-1])
    assert float(U.min()) >= 0
    assert f.objective_ == pytest.approx(face_objective(A, U, f.concept_bank_, net, 1.0), rel=1e-2)


def test_affine_detection_through_a_lambda_gives_same_objective():
    A, head = planted()
    lam = 2.0
    U, W = torch.rand(A.shape[0], 3, dtype=A.dtype), torch.rand(3, A.shape[1], dtype=A.dtype)
    from face_concepts.decomposition._head import Head
    from face_concepts.decomposition.problem import make_problem
    from face_concepts.decomposition.solvers import evaluate

    fast = evaluate(make_problem(A, Head(head, dtype=A.dtype, device=A.device), lam), U, W).total
    slow = evaluate(
        make_problem(A, Head(lambda x: head(x), dtype=A.dtype, device=A.device), lam), U, W
    ).total
    assert fast == pytest.approx(slow, rel=1e-10)


def test_float32_and_random_init_are_seeded():
    A, head = planted(dtype=torch.float32)
    head = head.float()
    a = FACE(head, n_concepts=3, kl_weight=1.0, init="random", random_state=7, max_iter=30, tol=0)
    b = clone(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(A)
        b.fit(A)
    assert a.concept_bank_.dtype == torch.float32
    assert torch.equal(a.concept_bank_, b.concept_bank_)


def test_max_iter_warns():
    A, head = planted()
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        FACE(head, n_concepts=3, kl_weight=1.0, max_iter=2, tol=0).fit(A)


def test_sklearn_contract():
    A, head = planted()
    f = FACE(head, n_concepts=3, kl_weight=0.5)
    assert f.get_params()["kl_weight"] == 0.5
    f.set_params(n_concepts=2)
    assert f.fit(A) is f and f.concept_bank_.shape == (2, A.shape[1])
    assert f.inverse_transform(f.transform(A)).shape == A.shape
    assert "head" not in NMF(2).get_params()


@pytest.mark.parametrize(
    ("kwargs", "A", "exc", "match"),
    [
        ({"n_concepts": 0}, None, ValueError, "n_concepts"),
        ({"n_concepts": 50}, None, ValueError, "n_concepts=50"),
        ({"n_concepts": 2.5}, None, TypeError, "n_concepts"),
        ({"kl_weight": -1.0}, None, ValueError, "kl_weight"),
        ({"kl_weight": float("nan")}, None, ValueError, "kl_weight"),
        ({"solver": "newton"}, None, ValueError, "solver"),
        ({"init": "svd"}, None, ValueError, "init"),
        ({}, -torch.ones(5, 12, dtype=torch.float64), ValueError, "non-negative"),
        ({}, torch.full((5, 12), float("nan"), dtype=torch.float64), ValueError, "NaN"),
        ({}, torch.ones(5, 12, 1, dtype=torch.float64), ValueError, "2-D"),
        ({}, torch.ones(5, 7, dtype=torch.float64), ValueError, "width p=7"),
    ],
)
def test_validation_errors(kwargs, A, exc, match):
    A0, head = planted()
    params = {"n_concepts": 3, "kl_weight": 1.0, **kwargs}
    with pytest.raises(exc, match=match):
        FACE(head, **params).fit(A0 if A is None else A)


def test_head_output_must_be_2d():
    A, _ = planted()
    with pytest.raises(ValueError, match="2-D logits"):
        FACE(lambda x: x.sum(1), n_concepts=3, kl_weight=1.0).fit(A)


def test_transform_before_fit_and_wrong_width():
    A, head = planted()
    with pytest.raises(RuntimeError, match="not fitted"):
        FACE(head, n_concepts=3).transform(A)
    f = FACE(head, n_concepts=3, kl_weight=1.0).fit(A)
    with pytest.raises(ValueError, match="features"):
        f.transform(A[:, :5])


def test_hals_refuses_non_affine_head():
    A, head = planted()
    with pytest.raises(ValueError, match="affine"):
        FACE(
            torch.nn.Sequential(head, torch.nn.ReLU()), n_concepts=3, kl_weight=1.0, solver="hals"
        ).fit(A)


def test_encode_survives_a_bank_whose_gram_matrix_is_singular_in_float32():
    """Two equal, tiny concepts: the ridge of the warm start vanishes in float32 rounding and
    the solve is singular; the encoder falls back to the pseudo-inverse and still reconstructs
    (found with a random-weights MobileNetV3 whose activations are ~1e-4)."""
    W = torch.tensor([[1e-4, 2e-4, 0.0], [1e-4, 2e-4, 0.0]])
    A = torch.tensor([[1e-4, 2e-4, 0.0], [3e-4, 6e-4, 0.0]])
    G = W @ W.T
    with pytest.raises(torch.linalg.LinAlgError):  # the case the fallback exists for
        torch.linalg.solve(G + 1e-10 * float(G.trace()) * torch.eye(2), W @ A.T)
    U = encode(A, W)
    assert float(U.min()) >= 0
    assert torch.allclose(U @ W, A, atol=1e-9)
