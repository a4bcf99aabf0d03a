"""``hals``'s λ continuation: a fit at a large λ starts from fits at smaller ones."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from _tiny import affine_problem
from face_concepts import FACE
from face_concepts.decomposition import hals, semi_nmf
from face_concepts.decomposition import solvers as sv


def _problem(seed: int, lam: float):
    return affine_problem(seed, lam=lam)


@pytest.mark.parametrize(
    ("lam", "stages"),
    [(1e-5, []), (1.0, []), (10.0, []), (99.0, []), (100.0, [1.0, 10.0]), (300.0, [3.0, 30.0]),
     (1000.0, [1.0, 10.0, 100.0])],
)  # fmt: skip
def test_the_stages_are_the_tenfold_ladder_below_a_large_lambda(lam, stages):
    assert hals.continuation_stages(lam) == pytest.approx(stages, rel=1e-12)


def test_a_fit_at_a_large_lambda_is_its_stages_then_the_fit():
    """The oracle: the plain warm start, then each stage to WARM_TOL, then the fit itself from
    there, written out by hand; the same bits, and the stages counted as the start."""
    lam = 100.0
    _, U, W, _, prob = _problem(0, lam)
    res = hals.solve_hals(prob, U, W, max_iter=400, tol=1e-7, warm_start=True)

    Uh, Wh, warm = hals._plain_warm_start(prob, U, W, None, sv.MAX_INNER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for stage_lam in (1.0, 10.0):
            stage = hals.solve_hals(
                replace(prob, kl_weight=stage_lam), Uh, Wh, max_iter=sv.WARM_MAX_ITER,
                tol=sv.WARM_TOL,
            )  # fmt: skip
            Uh, Wh, warm = stage.U, stage.W, warm + stage.n_iter
    by_hand = hals.solve_hals(prob, Uh, Wh, max_iter=400, tol=1e-7)
    assert res.warm_iter == warm > 0
    assert res.n_iter == by_hand.n_iter
    assert torch.equal(res.U, by_hand.U) and torch.equal(res.W, by_hand.W)
    # the stages were fitted at their own λ: the fit's first objective is the final λ's
    assert res.history["total"][0] == pytest.approx(by_hand.history["total"][0], rel=1e-12)


def test_a_custom_start_is_respected_and_takes_no_stages(monkeypatch):
    calls = []
    real = hals.continuation_stages
    monkeypatch.setattr(hals, "continuation_stages", lambda lam: calls.append(lam) or real(lam))
    _, U, W, _, prob = _problem(1, 100.0)
    with pytest.warns(ConvergenceWarning):
        res = hals.solve_hals(prob, U, W, max_iter=5, tol=0.0, warm_start=False)
    assert calls == [] and res.warm_iter == 0
    with pytest.warns(ConvergenceWarning):
        hals.solve_hals(prob, U, W, max_iter=5, tol=0.0, warm_start=True)
    assert calls == [100.0]


def test_verbose_progress_says_which_lambda_its_lines_are_at(capsys):
    A, _, _, lin, _ = _problem(2, 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        FACE(lin, 3, kl_weight=100.0, max_iter=20, random_state=0, verbose=True).fit(A.float())
    err = capsys.readouterr().err
    first, second, own = (
        err.index("a start at kl_weight 1 "),
        err.index("a start at kl_weight 10 "),
        err.index("the fit itself"),
    )
    assert first < second < own
    assert "hals iteration 1:" in err[own:]


def test_the_signed_bank_takes_no_stages(monkeypatch):
    """Measured on the non-negative bank only: the signed bank keeps its plain start."""
    calls = []
    monkeypatch.setattr(hals, "continuation_stages", lambda lam: calls.append(lam) or [1.0])
    _, U, W, _, prob = _problem(3, 100.0)
    with pytest.warns(ConvergenceWarning):
        semi_nmf.solve_semi_nmf(prob, U, W, max_iter=3, tol=0.0, warm_start=True)
    assert calls == []
    _, U, W, _, prob = _problem(3, 100.0)  # and the non-negative bank asks for them
    with pytest.warns(ConvergenceWarning):
        hals.solve_hals(prob, U, W, max_iter=3, tol=0.0, warm_start=True)
    assert calls == [100.0]


def test_a_plain_callback_sees_the_fit_at_lambda_only():
    """The stages' objectives (at a smaller λ, so lower) never reach a callback that is not
    told the stage: a recorder of the lowest objective would otherwise keep a stage's."""
    _, U, W, _, prob = _problem(4, 100.0)
    seen = []
    res = hals.solve_hals(
        prob, U, W, max_iter=400, tol=1e-7, warm_start=True,
        callback=lambda t, terms: seen.append((t, terms.total)),
    )  # fmt: skip
    assert res.warm_iter > 0
    assert [t for t, _ in seen] == list(range(1, res.n_iter + 1))
    assert [f for _, f in seen] == res.history["total"][1:]
