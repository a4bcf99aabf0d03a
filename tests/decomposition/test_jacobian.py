"""The ``jacobian`` solver (heads that are not affine): oracles, monotonicity, head calls."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from _nonaffine import Counting, mlp_data, projected_gradient_norm, run_quiet
from face_concepts.decomposition import FACE, face_objective
from face_concepts.decomposition import jacobian as jac
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.hals import solve_hals
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.jacobian import head_jacobian, solve_jacobian
from face_concepts.decomposition.linearised import solve_linearised
from face_concepts.decomposition.problem import make_problem
from face_concepts.decomposition.quasi_newton import solve_lbfgs
from face_concepts.decomposition.semi_nmf import SOLVERS as SIGNED_SOLVERS
from face_concepts.decomposition.solvers import WARM_MAX_ITER, WARM_TOL

_data, _run = mlp_data, run_quiet


def _monotone(history, tol):
    h = np.array(history)
    return bool(np.all(np.diff(h) <= tol["monotone"] * h[:-1]))


def test_head_jacobian_matches_reverse_mode_autograd():
    A, mlp = _data()
    head = Head(mlp, dtype=A.dtype, device=A.device)
    x = A[3]
    ref = torch.autograd.functional.jacobian(lambda v: mlp(v[None])[0], x)
    assert torch.allclose(head_jacobian(head, x), ref, atol=1e-12)


_FIRST_JACOBIAN = """
import warnings
import torch
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.jacobian import head_jacobian
head = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(),
                           torch.nn.Linear(6, 3)).eval()
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    J = head_jacobian(Head(head, dtype=torch.float32, device=torch.device("cpu")), torch.rand(4))
print(J.shape[0], J.shape[1], len(seen))
for w in seen:
    print(w.category.__name__, w.message)
"""


def test_the_first_forward_mode_jacobian_leaks_no_pytorch_warning():
    """In a fresh process (PyTorch warns once, when its first forward-mode pass imports its jvp
    decompositions): no ``torch.jit.script`` deprecation reaches the user."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FIRST_JACOBIAN], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[:3] == ["3", "4", "0"], out


def test_an_affine_head_it_cannot_see_is_solved_like_hals_in_few_head_calls():
    """For an affine head the model is exact: the solver must reach hals' optimum (oracle), never
    reject a model step, and get close within a handful of head calls at its default tol."""
    A, _ = _data(seed=1)
    lin = torch.nn.Linear(A.shape[1], 5).double()
    hidden = Counting(lin)  # not recognised as affine: goes through the model path
    prob = make_problem(A, Head(hidden, dtype=A.dtype, device=A.device), 1.0)
    assert not prob.factored
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    ours = _run(solve_jacobian, prob, U0, W0, max_iter=200, tol=1e-9)
    ref_prob = make_problem(A, Head(lin, dtype=A.dtype, device=A.device), 1.0)
    ref = _run(solve_hals, ref_prob, U0, W0, max_iter=3000, tol=1e-10)
    assert ours.history["total"][-1] == pytest.approx(ref.history["total"][-1], rel=1e-6)
    assert ours.n_head_calls == ours.n_iter + 1  # one forward per iteration: no rejection
    quick = _run(solve_jacobian, prob, U0, W0, max_iter=200, tol=1e-4)
    assert quick.n_head_calls <= 10
    assert quick.history["total"][-1] == pytest.approx(ref.history["total"][-1], rel=1e-4)


@pytest.mark.parametrize("lam", [1.0, 30.0])
def test_monotone_true_objective_and_fewer_head_calls_than_linearised(lam, tol):
    A, mlp = _data()
    head = Counting(mlp)
    prob = make_problem(A, Head(head, dtype=A.dtype, device=A.device), lam)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    head.calls = 0
    ours = _run(solve_jacobian, prob, U0, W0, max_iter=300, tol=1e-7)
    our_calls = head.calls
    head.calls = 0
    lin = _run(solve_linearised, prob, U0, W0, max_iter=1000, tol=1e-7)
    assert _monotone(ours.history["total"], tol)
    # every forward is counted (the Jacobian's forward-mode pass is one more)
    assert ours.n_head_calls + 1 == our_calls
    assert our_calls < head.calls
    assert ours.history["total"][-1] <= lin.history["total"][-1] * (1 + 1e-3)
    # the history is the true objective at the returned point
    assert ours.history["total"][-1] == pytest.approx(
        float(face_objective(A, ours.U, ours.W, mlp, lam)), rel=1e-9
    )


def test_first_order_stationarity_at_the_stop():
    A, mlp = _data(seed=2)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 3.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    res = _run(solve_jacobian, prob, U0, W0, max_iter=500, tol=1e-12)
    assert projected_gradient_norm(A, mlp, 3.0, res.U, res.W) < 1e-2 * projected_gradient_norm(
        A, mlp, 3.0, U0, W0
    )


def test_codes_only_keeps_the_bank_and_matches_linearised():
    """``update_W=False`` (the encoder's problem): W untouched, objective no worse than the
    linearised encoder's at a tight tolerance."""
    A, mlp = _data(seed=4)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 2.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    ours = _run(solve_jacobian, prob, U0, W0, max_iter=300, tol=1e-10, update_W=False)
    ref = _run(solve_linearised, prob, U0, W0, max_iter=3000, tol=1e-10, update_W=False)
    assert torch.equal(ours.W, W0)
    assert ours.history["total"][-1] <= ref.history["total"][-1] * (1 + 1e-4)


def test_head_jacobian_along_a_basis_is_the_full_jacobian_on_its_span():
    """Oracle: the full Jacobian times the projector onto the basis' span (r tangents, not p)."""
    A, mlp = _data(seed=2)
    head = Head(mlp, dtype=A.dtype, device=A.device)
    W = torch.rand(3, A.shape[1], generator=torch.Generator().manual_seed(0), dtype=A.dtype)
    Q = jac.row_space_basis(W)
    assert Q.shape == (A.shape[1], 3)
    torch.testing.assert_close(Q.T @ Q, torch.eye(3, dtype=A.dtype))
    J = head_jacobian(head, A[1])
    J_Q = head_jacobian(head, A[1], Q)
    torch.testing.assert_close(J_Q, J @ Q @ Q.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(J_Q @ W.T, J @ W.T, rtol=1e-10, atol=1e-12)  # exact on W's rows


@pytest.mark.parametrize("mu", [0.0, 3.0])
def test_the_model_with_the_jacobian_on_the_banks_row_space_differs_by_a_constant(mu):
    """With W fixed the model problem sees J only through J Wᵀ: built with J along W's row
    space, its objective differs from the full Jacobian's by the same constant at every U."""
    from face_concepts.decomposition.linearised import _Evaluation
    from face_concepts.decomposition.solvers import evaluate

    A, mlp = _data(seed=4)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 2.0)
    U, W = initialize(A, 3, "nndsvda", random_state=0)
    X = U @ W
    ev = _Evaluation(prob, X)
    J = head_jacobian(prob.kl_head, X.mean(dim=0))
    J_Q = head_jacobian(prob.kl_head, X.mean(dim=0), jac.row_space_basis(W))
    G = ev.grad()
    full = jac._model_problem(prob, J, X, ev.logits, G, mu)
    ours = jac._model_problem(prob, J_Q, X, ev.logits, G, mu)
    g = torch.Generator().manual_seed(1)
    gaps = [
        evaluate(ours, V, W).total - evaluate(full, V, W).total
        for V in (U, U * 1.3, torch.rand(U.shape, generator=g, dtype=U.dtype))
    ]
    np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=1e-12)


def test_codes_only_asks_for_the_banks_row_space_and_ends_where_the_full_jacobian_does(
    monkeypatch,
):
    """End to end, the codes' solve (W fixed) takes J along W's row space and stops at the
    objective the full Jacobian (oracle: the identity as the basis) reaches; a fit that
    updates W takes the whole Jacobian. (The inner solves' relative stop sees the model's
    constant, so the iterates agree to the stop, not bit for bit.)"""
    A, mlp = _data(seed=4)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 2.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    bases: list[int] = []
    real = jac.row_space_basis

    def recorded(W):
        bases.append(W.shape[0])
        return real(W)

    monkeypatch.setattr(jac, "row_space_basis", recorded)
    ours = _run(solve_jacobian, prob, U0, W0, max_iter=300, tol=1e-10, update_W=False)
    assert bases == [3]
    monkeypatch.setattr(jac, "row_space_basis", lambda W: torch.eye(W.shape[1], dtype=W.dtype))
    full = _run(solve_jacobian, prob, U0, W0, max_iter=300, tol=1e-10, update_W=False)
    assert ours.converged and full.converged
    np.testing.assert_allclose(ours.history["total"][-1], full.history["total"][-1], rtol=1e-6)
    bases.clear()
    monkeypatch.setattr(jac, "row_space_basis", recorded)
    _run(solve_jacobian, prob, U0, W0, max_iter=2, tol=1e-10)
    assert bases == []


def test_signed_bank_variant(tol):
    A, mlp = _data(seed=5)
    A = A - 0.5  # signed activations
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "signed-svd", random_state=0, signed=True)
    res = _run(SIGNED_SOLVERS["jacobian"], prob, U0, W0, max_iter=200, tol=1e-8)
    assert _monotone(res.history["total"], tol)
    assert bool((res.U >= 0).all()) and bool((res.W < 0).any())
    assert res.history["total"][-1] < 0.9 * res.history["total"][0]


def test_a_model_that_misleads_hands_the_fit_to_lbfgs(monkeypatch, tol):
    """With no model step allowed, the first iteration hands the rest of the fit to lbfgs from
    the same point: the history after the start is exactly lbfgs's (oracle: lbfgs run alone),
    monotone, every iteration counted, and the one warning is the fit's (jacobian's max_iter)."""
    monkeypatch.setattr(jac, "MAX_TRIES", 0)
    A, mlp = _data(seed=6)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve_jacobian(prob, U0.clone(), W0.clone(), max_iter=6, tol=0.0)
    assert [
        str(w.message).split(" stopped")[0] for w in caught if w.category is ConvergenceWarning
    ] == ["solver 'jacobian'"]
    assert "max_iter=6" in str(caught[-1].message)
    alone = _run(solve_lbfgs, prob, U0, W0, max_iter=jac.LBFGS_ITER_RATIO * 6, tol=0.0)
    assert res.n_iter == alone.n_iter == 30 and res.handover_iter == 0
    assert res.history["total"][1:] == alone.history["total"][1:]
    assert torch.equal(res.W, alone.W)
    assert _monotone(res.history["total"], tol)


def test_a_damping_that_keeps_growing_hands_over_after_the_accepted_step(monkeypatch, tol):
    """At ``MU_HANDOVER`` the accepted step is kept and lbfgs goes on from it."""
    monkeypatch.setattr(jac, "MU_HANDOVER", 0.0)  # hand over after the first accepted step
    A, mlp = _data(seed=6)
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    res = _run(solve_jacobian, prob, U0, W0, max_iter=4, tol=0.0)
    one = _run(solve_jacobian, prob, U0, W0, max_iter=1, tol=0.0)  # the step before it
    assert res.history["total"][:2] == one.history["total"][:2]
    assert res.n_iter == 1 + jac.LBFGS_ITER_RATIO * 3 and res.handover_iter == 1
    assert one.handover_iter is None
    assert _monotone(res.history["total"], tol)


def test_warm_start_fits_plain_nmf_first_without_a_head_call():
    A, mlp = _data(seed=3)
    head = Counting(mlp)
    prob = make_problem(A, Head(head, dtype=A.dtype, device=A.device), 1.0)
    U0, W0 = initialize(A, 3, "nndsvda", random_state=0)
    plain = _run(
        solve_hals,
        make_problem(A, None, 0.0),
        U0,
        W0,
        max_iter=WARM_MAX_ITER,
        tol=WARM_TOL,
        stationarity_tol=None,
    )
    head.calls = 0
    res = _run(solve_jacobian, prob, U0, W0, max_iter=1, tol=0.0, warm_start=True)
    assert res.warm_iter == plain.n_iter
    # its history starts at the plain NMF's factors (oracle: the objective's definition)
    assert res.history["total"][0] == pytest.approx(
        float(face_objective(A, plain.U, plain.W, mlp, 1.0)), rel=1e-9
    )
    # the Jacobian's pass, the start, one step: no head call was spent on the warm start
    assert head.calls <= 2 + jac.MAX_TRIES


def test_face_auto_picks_it_for_a_non_affine_head():
    A, mlp = _data(seed=3)
    est = FACE(Counting(mlp), n_concepts=3, kl_weight=1.0, random_state=0)
    est.fit(A)
    assert est.solver_ == "jacobian" and est.n_warm_iter_ > 0
    assert est.handover_iter_ is None  # this head's one-Jacobian model holds
    h = np.array(est.loss_history_["total"])
    assert np.all(np.diff(h) <= 1e-12 * h[:-1])


@pytest.mark.parametrize("seed", [0, 2])
def test_codes_for_a_head_that_is_not_affine_stop_at_the_jacobian_tolerance(seed):
    # Each iteration of the codes' solve calls the head (seconds for an intermediate layer's),
    # so the encoder and the fit's final polish stop at the jacobian solver's own tolerance,
    # not at the 1e-7 that suits affine heads: fewer head calls, the same codes to 1e-5.
    from face_concepts.decomposition import encode
    from face_concepts.decomposition.encoder import CODES_STOP, code_stop
    from face_concepts.decomposition.registry import DEFAULTS
    from face_concepts.decomposition.solvers import evaluate

    A, mlp = mlp_data(seed=seed)
    W = torch.rand(4, A.shape[1], generator=torch.Generator().manual_seed(seed), dtype=A.dtype)
    head = Counting(mlp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        U_default = encode(A, W, head, kl_weight=1.0)
        default_calls, head.calls = head.calls, 0
        U_tight = encode(A, W, head, kl_weight=1.0, max_iter=CODES_STOP[0], tol=CODES_STOP[1])
    assert default_calls < head.calls
    prob = make_problem(A, Head(mlp, dtype=A.dtype, device=A.device), 1.0)
    f_default, f_tight = evaluate(prob, U_default, W).total, evaluate(prob, U_tight, W).total
    assert f_tight <= f_default <= f_tight * (1 + 1e-5)
    jacobian_stop = (DEFAULTS["jacobian"]["max_iter"], DEFAULTS["jacobian"]["tol"])
    assert code_stop(prob) == jacobian_stop
    assert code_stop(prob, max_iter=7, tol=0.5) == (7, 0.5)  # given values are kept
    affine = make_problem(A, Head(torch.nn.Linear(A.shape[1], 3).double(), dtype=A.dtype,
                                  device=A.device), 1.0)  # fmt: skip
    assert code_stop(affine) == CODES_STOP == code_stop(make_problem(A, None, 0.0))


def test_verbose_progress_names_lbfgs_after_the_hand_over(monkeypatch, capsys):
    monkeypatch.setattr(jac, "MAX_TRIES", 0)  # the first model step misleads: lbfgs from 0
    A, mlp = _data(seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        FACE(mlp, 3, kl_weight=1.0, max_iter=4, tol=0.0, random_state=0, verbose=True).fit(A)
    lines = capsys.readouterr().err.splitlines()
    said = [ln for ln in lines if "hands the fit" in ln]
    assert said == [
        "jacobian hands the fit to lbfgs after iteration 0: the head's affine model misleads here"
    ]
    after = lines[lines.index(said[0]) + 1 :]
    assert after and all(ln.startswith("lbfgs iteration ") for ln in after)
