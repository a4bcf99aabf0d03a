"""``hals``'s stop for plain NMF: the windowed test, and first-order optimality (the KKT residual),
a fit that no longer moves, or a bounded wait for the residual."""

from __future__ import annotations

import warnings

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from _tiny import affine_problem
from face_concepts import NMF
from face_concepts.decomposition import hals, semi_nmf
from face_concepts.decomposition import solvers as sv
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.problem import make_problem


def _low_rank(seed: int) -> torch.Tensor:
    """A rank-5 non-negative matrix plus non-negative noise (80 × 20)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(80, 5, generator=g) @ torch.rand(5, 20, generator=g) + 0.3 * torch.rand(
        80, 20, generator=g
    )


def _fit(A: torch.Tensor, monkeypatch=None, **kwargs):
    """``solve_hals`` on plain NMF of ``A`` (r = 4, nndsvda); with ``monkeypatch``, also every
    KKT residual the stop computed, as ``(iteration, value)``."""
    prob = make_problem(A, None, 0.0)
    U, W = initialize(A, 4, "nndsvda")
    seen: list[tuple[int, float]] = []
    if monkeypatch is not None:
        real = hals.kkt_residual

        def recording(*args, **kw):
            value = real(*args, **kw)
            seen.append((len(history), value))  # the callback ran first
            return value

        monkeypatch.setattr(hals, "kkt_residual", recording)
    history: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = hals.solve_hals(
            prob, U, W, callback=lambda t, terms: history.append(terms.total), **kwargs
        )
    return prob, res, seen


def _residual_at_the_windowed_stop(A: torch.Tensor, tol: float) -> float:
    prob, res, _ = _fit(A, tol=tol, stationarity_tol=None)
    return sv.kkt_residual(prob, res.U, res.W, None, res.history["total"][-1])


@pytest.mark.parametrize(("seed", "factor"), [(0, None), (0, 2.0), (2, 0.7), (5, 0.7)])
@pytest.mark.parametrize("patience", [None, 3, 10**9])
def test_the_stop_is_the_first_windowed_stop_at_a_small_kkt_residual_a_stall_or_the_patience(
    monkeypatch, seed, factor, patience
):
    """The oracle: the rule replayed on the fit's own history and the residuals it computed.
    ``factor``: the gate as a multiple of the residual where the windowed test alone stops
    (None: the default gate). ``patience``: ``STATIONARITY_PATIENCE`` (None: the default)."""
    if patience is not None:
        monkeypatch.setattr(hals, "STATIONARITY_PATIENCE", patience)
    wait = hals.STATIONARITY_PATIENCE
    A = _low_rank(seed)
    tol = 1e-5
    gate = (
        sv.STATIONARITY_TOL if factor is None else factor * _residual_at_the_windowed_stop(A, tol)
    )
    prob, res, seen = _fit(A, monkeypatch, tol=tol, stationarity_tol=gate)
    hist = res.history["total"]
    assert res.converged
    residual = dict(seen)

    def stall(t: int) -> bool:
        return sv._stop_test(hist[: t + 1], sv.STALL_FACTOR * tol)

    # asked for exactly where the windowed test passed and the fit still moved
    asked = [
        t for t in range(1, res.n_iter + 1) if sv._stop_test(hist[: t + 1], tol) and not stall(t)
    ]
    assert sorted(residual) == asked
    waited = [t for t in asked if residual[t] > gate]
    assert len(waited) <= wait
    stop = res.n_iter
    # the last iteration met the rule: a stall, the residual, or the wait's end; none before did
    assert sv._stop_test(hist[: stop + 1], tol)
    assert stall(stop) or residual[stop] <= gate or len(waited) == wait
    assert all(residual[t] > gate for t in asked if t < stop)
    assert not any(sv._stop_test(hist[: t + 1], tol) and stall(t) for t in range(1, stop))
    if not stall(res.n_iter):  # the residual or the wait's end: computed at the final iterate
        assert residual[res.n_iter] == pytest.approx(
            sv.kkt_residual(prob, res.U, res.W, None, hist[-1]), rel=1e-6
        )


def test_every_way_of_stopping_is_reached(monkeypatch):
    """On this data the residual stays far above the default gate: the wait for it ends, and the
    fit stops STATIONARITY_PATIENCE windowed passes later than the windowed test alone, before
    it stalls; waiting without end, the stall stops it later. A gate above the residual where
    the windowed test alone stops is met right there."""
    A = _low_rank(0)
    tol = 1e-5
    prob, waited, seen = _fit(A, monkeypatch, tol=tol)
    h = waited.history["total"]
    assert sv.kkt_residual(prob, waited.U, waited.W, None, h[-1]) > sv.STATIONARITY_TOL
    assert not sv._stop_test(h, sv.STALL_FACTOR * tol)
    assert len(seen) == hals.STATIONARITY_PATIENCE
    _, windowed, _ = _fit(A, tol=tol, stationarity_tol=None)
    assert windowed.n_iter == seen[0][0] < waited.n_iter == seen[-1][0]
    monkeypatch.setattr(hals, "STATIONARITY_PATIENCE", 10**9)
    prob, stalled, _ = _fit(A, tol=tol)
    assert stalled.n_iter > waited.n_iter
    assert stalled.history["total"][: waited.n_iter + 1] == h
    assert sv._stop_test(stalled.history["total"], sv.STALL_FACTOR * tol)
    gate = 2.0 * _residual_at_the_windowed_stop(A, tol)
    _, loose, _ = _fit(A, tol=tol, stationarity_tol=gate)
    assert loose.n_iter == windowed.n_iter < waited.n_iter
    assert not sv._stop_test(loose.history["total"], sv.STALL_FACTOR * tol)


def test_the_gate_continues_the_same_trajectory_to_a_lower_objective():
    A = _low_rank(1)
    _, off, _ = _fit(A, tol=1e-5, stationarity_tol=None)
    _, on, _ = _fit(A, tol=1e-5)
    assert on.n_iter > off.n_iter
    assert on.history["total"][: off.n_iter + 1] == off.history["total"]
    assert on.history["total"][-1] < off.history["total"][-1]


def test_the_estimator_uses_the_gate_and_the_warm_start_does_not(monkeypatch):
    A = _low_rank(3)
    est = NMF(4, random_state=0).fit(A)
    _, gated, _ = _fit(A, tol=1e-5)
    assert est.n_iter_ == gated.n_iter
    # A FACE fit's warm start is a start: the windowed test alone, to WARM_TOL.
    calls: list[float | None] = []
    real = hals.solve_hals

    def spy(prob, U, W, **kw):
        if prob.kl_weight == 0:
            calls.append(kw.get("stationarity_tol", "default"))
        return real(prob, U, W, **kw)

    monkeypatch.setattr(hals, "solve_hals", spy)
    _, U, W, _, prob = affine_problem(0, lam=1.0)
    hals._plain_warm_start(prob, U, W, None, sv.MAX_INNER)
    assert calls == [None]


def test_fits_with_a_head_or_a_signed_bank_are_not_gated(monkeypatch):
    def failing(*args, **kwargs):
        raise AssertionError("the KKT residual was computed")

    monkeypatch.setattr(hals, "kkt_residual", failing)
    _, U, W, _, prob = affine_problem(0, lam=1.0)
    A = prob.A - prob.A.mean(dim=0)  # signed data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        face = hals.solve_hals(prob, U, W, max_iter=60, tol=1e-3, stationarity_tol=1e-30)
        signed = hals.solve_hals(
            make_problem(A, None, 0.0), U, W, max_iter=60, tol=1e-3, stationarity_tol=1e-30,
            signed_w_block=semi_nmf.bank_step,
        )  # fmt: skip
    assert face.converged and signed.converged
