"""The scikit-learn-style contract of ``FACE`` and ``NMF``, for every solver and the mini-batch fit.

Two levels, each parametrised so that a solver added to the registry without a case here fails:

- the solver functions of ``decomposition.registry.SOLVERS`` (and the ``hals`` variants the
  estimators do not expose: ``w_solver="mm"``, with and without extrapolation, the plain-NMF
  warm start): non-negative factors, monotone objective history where the solver promises it,
  ``ConvergenceWarning`` at ``max_iter=2``, identical bits on a repeated call;
- the estimators ``FACE`` and ``NMF`` with ``solver`` in the registry and with ``batch_size``
  (the mini-batch fit): non-negativity, history, ``fit_transform(A) ≈ fit(A).transform(A)``,
  ``ConvergenceWarning``, ``get_params`` / ``set_params`` / ``sklearn.base.clone``,
  ``n_features_in_`` and shapes, refit determinism with a fixed ``random_state``.

Tiny seeded data: 40 × 12, r = 3, an affine head 12 → 5, float64.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from _monotone import assert_monotone
from face_concepts.decomposition import FACE, NMF, SOLVERS, face_objective, initialize
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.problem import make_problem

N, P, R, C = 40, 12, 3, 5
LAM = 1.0

# Solvers whose objective history never rises (up to float64 rounding, TOL["monotone"]):
# hals, pgd, linearised, jacobian and lbfgs accept only steps that do not raise the objective. adam does not
# promise it: it takes fixed-rate Adam steps and clamps, and its history is the loss *before*
# each step.
MONOTONE = {
    "hals": True, "pgd": True, "linearised": True, "jacobian": True, "lbfgs": True, "adam": False,
}  # fmt: skip

# (registry name, extra keyword arguments of the solver function): every registry entry at least
# once, plus the hals variants that only the solver function exposes.
SOLVER_CASES = [
    ("hals", {}),  # λ > 0: projected Newton on U, Newton-CG on W
    ("hals", {"w_solver": "mm"}),  # majorise-minimise HALS on W, with extrapolation
    ("hals", {"w_solver": "mm", "extrapolate": False}),
    ("hals", {"warm_start": True}),  # plain-NMF warm start first (what FACE uses)
    ("hals", {"warm_start": True, "joint": False}),  # ... with no joint steps (joint.py)
    ("pgd", {}),
    ("linearised", {}),  # prox-linear MM, for heads that are not affine (here: the affine one)
    ("jacobian", {}),  # the head's affine model between head calls (here: exact)
    ("lbfgs", {}),  # L-BFGS-B on the true objective (jacobian's hand-over)
    ("adam", {"lr": 1e-2}),
]
# Estimator fits: the registry's solvers and the mini-batch fit (batch_size; 16 rows, 3 batches).
FITS = [*({"solver": name} for name in SOLVERS), {"batch_size": 16}]
# The signed bank (Semi-NMF, docs/method.md §4.7): the same contract, except that W may be
# negative; its solvers are the signed variants of hals / linearised / jacobian / lbfgs and the
# mini-batch fit.
FITS += [
    {"solver": "hals", "bank": "signed"},
    {"solver": "linearised", "bank": "signed"},
    {"solver": "jacobian", "bank": "signed"},
    {"solver": "lbfgs", "bank": "signed"},
    {"batch_size": 16, "bank": "signed"},
]


def _case_id(case: tuple[str, dict]) -> str:
    name, options = case
    return ",".join([name, *(f"{k}={v}" for k, v in options.items())])


CASES = [
    pytest.param(name, options, id=_case_id((name, options)))
    for name, options in SOLVER_CASES
    if name in SOLVERS  # (a case for a solver not registered yet waits for it)
]


def _fit_id(kw: dict) -> str:
    name = f"batch_size={kw['batch_size']}" if "batch_size" in kw else kw["solver"]
    return f"{name},signed" if kw.get("bank") == "signed" else name


def data(seed: int = 0) -> tuple[torch.Tensor, torch.nn.Linear]:
    """A ≈ U W planted with r = 3 plus noise (40 × 12) and a seeded affine head 12 → 5."""
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(N, R, generator=g, dtype=torch.float64)
    W = torch.rand(R, P, generator=g, dtype=torch.float64)
    A = U @ W + 0.05 * torch.rand(N, P, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(P, C).to(torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.randn(C, P, generator=g, dtype=torch.float64))
        head.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
    return A, head


def make(kind: str, head: torch.nn.Module, **kw) -> FACE:
    """FACE (λ = 1, the given head) or NMF, 3 concepts, seeded."""
    if kind == "FACE":
        return FACE(head, n_concepts=R, kl_weight=LAM, random_state=0, **kw)
    return NMF(n_concepts=R, random_state=0, **kw)


def quiet_fit(est: FACE, A: torch.Tensor, *, codes: bool = False):
    """Fit (or fit_transform) without the ConvergenceWarning of a capped iteration count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit_transform(A) if codes else est.fit(A)


# ----------------------------------------------------------------------------- coverage
def test_every_registered_solver_has_cases():
    assert set(SOLVERS) <= {name for name, _ in SOLVER_CASES}
    assert set(SOLVERS) <= set(MONOTONE)
    assert {kw["solver"] for kw in FITS if "solver" in kw} == set(SOLVERS)


def test_the_hals_cap_is_one_setting():
    """``hals.MAX_ITER`` is the default cap of the solver function, of the signed bank's and of
    ``FACE``'s default fit with either bank (docs/method.md §5)."""
    from face_concepts.decomposition import hals, registry, semi_nmf

    cap = hals.MAX_ITER
    assert cap == 2000 and registry.DEFAULTS["hals"]["max_iter"] == cap
    for solve in (hals.solve_hals, semi_nmf.solve_semi_nmf):
        assert inspect.signature(solve).parameters["max_iter"].default == cap
    A, head = data()
    for bank in ("nonnegative", "signed"):
        est = FACE(head, R, kl_weight=LAM, bank=bank, tol=1e-2, random_state=0)
        quiet_fit(est, A - A.mean(0) if bank == "signed" else A)
        assert est._settings["max_iter"] == cap and est.solver_ == "hals"


# ----------------------------------------------------------------------------- solver functions
def _solve(name: str, options: dict, lam: float, max_iter: int, tol: float):
    A, head = data()
    h = Head(head, dtype=A.dtype, device=A.device) if lam > 0 else None
    prob = make_problem(A, h, lam)
    init = "nndsvd-authors" if name == "adam" else "nndsvda"
    U0, W0 = initialize(A, R, init, random_state=0)
    res = SOLVERS[name](prob, U0, W0, max_iter=max_iter, tol=tol, **options)
    return A, head, res


@pytest.mark.parametrize("lam", [0.0, LAM])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_solver_nonnegative_monotone_and_warns(name, options, lam, tol):
    # (4 iterations: with joint steps, hals reaches a stationary point of this small problem to
    # rounding in about 25 iterations, and jacobian, whose inner solves use them, in 5)
    with pytest.warns(ConvergenceWarning, match="max_iter=4"):
        A, head, res = _solve(name, options, lam, max_iter=4, tol=0.0)
    assert res.n_iter == 4 and not res.converged
    assert float(res.U.min()) >= 0 and float(res.W.min()) >= 0
    assert res.U.shape == (N, R) and res.W.shape == (R, P)
    hist = res.history["total"]
    assert len(hist) == res.n_iter + (0 if name == "adam" else 1)
    for key in ("recon", "kl"):
        assert len(res.history[key]) == len(hist)
    if MONOTONE[name]:
        assert_monotone(hist, tol["monotone"], scale=float((A.double() ** 2).mean()))
        # the last entry is the objective at the returned factors (oracle: the definition)
        last = face_objective(A, res.U, res.W, head, lam)
        assert hist[-1] == pytest.approx(last, rel=tol["objective_f64"] * 10)
    else:
        # adam: the history holds losses before each step; what it does promise is progress
        assert hist[-1] < hist[0]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_solver_is_deterministic(name, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, _, a = _solve(name, options, LAM, max_iter=5, tol=0.0)
        _, _, b = _solve(name, options, LAM, max_iter=5, tol=0.0)
    assert torch.equal(a.U, b.U) and torch.equal(a.W, b.W)
    assert a.history == b.history


@pytest.mark.parametrize(("name", "options"), CASES)
def test_solver_stops_before_max_iter_with_a_loose_tol(name, options):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        _, _, res = _solve(name, options, LAM, max_iter=200, tol=1e-1)
    assert res.converged and res.n_iter < 200


# ----------------------------------------------------------------------------- estimators
# Iteration caps that keep every fit well under a second on this data (adam's default is 22,000).
CAPS = {
    "hals": 40,
    "pgd": 40,
    "linearised": 40,
    "jacobian": 10,
    "lbfgs": 40,
    "adam": 300,
    "minibatch": 6,
}


def _cap(kw: dict) -> int:
    return CAPS["minibatch" if "batch_size" in kw else kw["solver"]]


@pytest.mark.parametrize("kind", ["FACE", "NMF"])
@pytest.mark.parametrize("kw", FITS, ids=_fit_id)
def test_fit_shapes_nonnegativity_and_history(kind, kw, tol):
    A, head = data()
    est = make(kind, head, max_iter=_cap(kw), tol=0.0, **kw)
    assert quiet_fit(est, A) is est
    U = quiet_fit(est, A, codes=True)
    W = est.concept_bank_
    assert est.n_features_in_ == P
    assert W.shape == (R, P) and U.shape == (N, R)
    assert U.dtype == W.dtype == A.dtype
    assert float(U.min()) >= 0
    if kw.get("bank") != "signed":
        assert float(W.min()) >= 0
    assert est.inverse_transform(U).shape == A.shape
    minibatch = "batch_size" in kw
    assert est.solver_ == ("minibatch" if minibatch else kw["solver"])
    hist = est.loss_history_["total"]
    assert np.all(np.isfinite(hist)) and len(hist) >= 1
    if not minibatch and MONOTONE[est.solver_]:
        assert_monotone(hist, tol["monotone"], scale=float((A.double() ** 2).mean()))
    # The mini-batch history is an online estimate (each batch at its codes before its W update,
    # with the statistics of past batches): it promises no monotonicity, only progress.
    elif minibatch:
        assert hist[-1] < hist[0]
    # objective_: the exact objective at the returned codes and bank (oracle: the definition).
    lam = LAM if kind == "FACE" else 0.0
    expected = face_objective(A, U, W, head, lam)
    assert est.objective_ == pytest.approx(expected, rel=tol["objective_f64"] * 10)


@pytest.mark.parametrize("kind", ["FACE", "NMF"])
@pytest.mark.parametrize("kw", FITS, ids=_fit_id)
def test_fit_transform_matches_fit_then_transform(kind, kw, tol):
    A, head = data()
    U1 = quiet_fit(make(kind, head, max_iter=_cap(kw), **kw), A, codes=True)
    est = quiet_fit(make(kind, head, max_iter=_cap(kw), **kw), A)
    U2 = est.transform(A)
    rel = float(torch.linalg.norm(U1 - U2) / torch.linalg.norm(U2))
    assert rel <= tol["transform_consistency"], rel


@pytest.mark.parametrize("kind", ["FACE", "NMF"])
@pytest.mark.parametrize("kw", FITS, ids=_fit_id)
def test_max_iter_2_with_tiny_tol_warns(kind, kw):
    A, head = data()
    if kind == "FACE" and kw.get("solver") == "jacobian":
        # From its plain-NMF warm start, jacobian's exact model of this affine head makes the
        # fit stationary after one step: start it from the init itself (no warm start).
        U0, W0 = initialize(A, R, "signed-svd" if kw.get("bank") else "nndsvda", random_state=0,
                            signed=bool(kw.get("bank")))  # fmt: skip
        est = make(kind, head, max_iter=2, tol=1e-12, init="custom", **kw)
        with pytest.warns(ConvergenceWarning, match="max_iter=2"):
            est.fit(A, U0=U0, W0=W0)
        assert est.n_iter_ == 2 and est.converged_ is False
        return
    est = make(kind, head, max_iter=2, tol=1e-12, **kw)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        est.fit(A)
    assert est.n_iter_ == 2 and est.converged_ is False


@pytest.mark.parametrize("kind", ["FACE", "NMF"])
@pytest.mark.parametrize("kw", FITS, ids=_fit_id)
def test_refit_is_deterministic_with_a_fixed_random_state(kind, kw):
    A, head = data()
    # init="random" makes random_state matter; the clone must give the same bits as the refit
    est = make(kind, head, max_iter=min(_cap(kw), 10), init="random", **kw)
    W1 = quiet_fit(est, A).concept_bank_.clone()
    h1 = list(est.loss_history_["total"])
    W2 = quiet_fit(est, A).concept_bank_
    W3 = quiet_fit(clone(est), A).concept_bank_
    assert torch.equal(W1, W2) and torch.equal(W1, W3)
    assert est.loss_history_["total"] == h1
    other = quiet_fit(clone(est).set_params(random_state=1), A).concept_bank_
    assert not torch.equal(W1, other)


@pytest.mark.parametrize("kind", ["FACE", "NMF"])
@pytest.mark.parametrize("kw", FITS, ids=_fit_id)
def test_get_params_set_params_clone_round_trip(kind, kw):
    _, head = data()
    est = make(kind, head, max_iter=7, tol=1e-3, **kw)
    params = est.get_params()
    # every constructor argument, at its default unless given (oracle: the signature itself)
    signature = inspect.signature(type(est).__init__).parameters
    expected = {k: v.default for k, v in signature.items() if k != "self"}
    given = {"n_concepts": R, "max_iter": 7, "tol": 1e-3, "random_state": 0, **kw}
    if kind == "FACE":
        given |= {"head": head, "kl_weight": LAM}
    expected |= given
    assert set(signature) - {"self"} == set(params)
    assert params == expected
    # the constructor takes back exactly what get_params gives
    twin = type(est)(**params)
    assert twin.get_params() == params
    # set_params returns self and changes only what it is given
    assert est.set_params(n_concepts=2, tol=1e-4) is est
    assert est.get_params() == {**params, "n_concepts": 2, "tol": 1e-4}
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(not_a_parameter=1)
    if kind == "NMF":  # NMF has no head and no λ to set
        with pytest.raises(ValueError, match="Invalid parameter"):
            est.set_params(kl_weight=1.0)
    # clone: same parameters, a new unfitted object (the head a copy with the same weights)
    fitted = quiet_fit(est, data()[0])
    c = clone(fitted)
    assert c is not fitted and type(c) is type(fitted)
    assert not hasattr(c, "concept_bank_") and not hasattr(c, "n_features_in_")
    cp = c.get_params()
    if kind == "FACE":
        assert cp.pop("head") is not head
        assert torch.equal(c.head.weight, head.weight) and torch.equal(c.head.bias, head.bias)
        cp["head"] = head
    assert cp == fitted.get_params()


@pytest.mark.parametrize("kind", ["FACE", "NMF"])
@pytest.mark.parametrize("kw", FITS, ids=_fit_id)
def test_shape_checks(kind, kw):
    A, head = data()
    est = make(kind, head, max_iter=_cap(kw), **kw)
    with pytest.raises(RuntimeError, match="not fitted"):
        est.transform(A)
    quiet_fit(est, A)
    with pytest.raises(ValueError, match="fitted on 12"):
        est.transform(A[:, :7])
    with pytest.raises(ValueError, match="3 concepts"):
        est.inverse_transform(torch.ones(4, 2, dtype=A.dtype))
    with pytest.raises(ValueError, match="n_concepts"):
        make(kind, head, **kw).set_params(n_concepts=13).fit(A)


# ----------------------------------------------------------------------------- non-affine head
@pytest.mark.parametrize(
    "solver", ["auto", *(s for s in ("jacobian", "linearised", "pgd") if s in SOLVERS)]
)
def test_non_affine_head_fits_keep_the_contract(solver, tol):
    """The solvers for heads that are not affine, on one (the affine head then tanh)."""
    A, affine = data()
    head = torch.nn.Sequential(affine, torch.nn.Tanh())
    est = FACE(head, n_concepts=R, kl_weight=LAM, solver=solver, max_iter=15, tol=0.0)
    with pytest.warns(ConvergenceWarning, match="max_iter=15"):
        U = est.fit_transform(A)
    # "auto" picks a solver for any differentiable head (hals needs an affine one)
    assert (
        est.solver_ == solver
        if solver != "auto"
        else est.solver_ in {"jacobian", "linearised", "pgd"}
    )
    assert float(U.min()) >= 0 and float(est.concept_bank_.min()) >= 0
    assert_monotone(est.loss_history_["total"], tol["monotone"])
    expected = face_objective(A, U, est.concept_bank_, head, LAM)
    assert est.objective_ == pytest.approx(expected, rel=tol["objective_f64"] * 10)
    U2 = est.transform(A)
    rel = float(torch.linalg.norm(U - U2) / torch.linalg.norm(U2))
    assert rel <= tol["transform_consistency"], rel
