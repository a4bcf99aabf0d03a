"""The joint Newton step on (U, W) with the codes eliminated (decomposition/joint.py) against
oracles: autograd's Hessian of the materialised objective (its blocks, the dense Schur
complement, the full joint Newton system) and the exact objective (descent), on tiny float64
problems.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from face_concepts.decomposition import hals, joint
from face_concepts.decomposition import solvers as sv
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.joint import JointSystem, joint_newton_step
from face_concepts.decomposition.problem import make_problem


def _problem(seed: int, n=12, p=5, r=3, C=4, lam=0.7, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, p, generator=g, dtype=torch.float64)
    U = torch.rand(n, r, generator=g, dtype=torch.float64) + offset
    W = torch.rand(r, p, generator=g, dtype=torch.float64) + offset
    lin = torch.nn.Linear(p, C).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(C, p, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
    return A, U, W, lin, make_problem(A, Head(lin, dtype=A.dtype, device=A.device), lam)


def _hessian_blocks(A, U, W, lin, lam):
    """Autograd's Hessian blocks of ``F = n·L = (1/p)‖A − UW‖² + λ Σ KL`` as matrices."""
    p = A.shape[1]
    logP = torch.log_softmax(lin(A), dim=1).detach()

    def F(U, W):
        logQ = torch.log_softmax(lin(U @ W), dim=1)
        return ((A - U @ W) ** 2).sum() / p + lam * (logP.exp() * (logP - logQ)).sum()

    (huu, huw), (hwu, hww) = torch.autograd.functional.hessian(F, (U, W))
    nu, nw = U.numel(), W.numel()
    return (
        huu.reshape(nu, nu),
        huw.reshape(nu, nw),
        hwu.reshape(nw, nu),
        hww.reshape(nw, nw),
        torch.autograd.functional.jacobian(lambda U, W: F(U, W), (U, W)),
    )


def test_hessian_blocks_match_autograd():
    A, U, W, lin, prob = _problem(0)
    sys_ = JointSystem.at(prob, U, W)
    huu, huw, hwu, hww, (gu, gw) = _hessian_blocks(A, U, W, lin, 0.7)
    torch.testing.assert_close(sys_.g_U, gu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sys_.g_W, gw, rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(5)
    D = torch.randn(W.shape, generator=g, dtype=W.dtype)
    X = torch.randn(U.shape, generator=g, dtype=U.dtype)
    pt = sys_.point
    Y, E = pt.code_part(D)
    torch.testing.assert_close(Y.flatten(), huw @ D.flatten(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        pt.bank_from_codes(X).flatten(), hwu @ X.flatten(), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        pt.bank_part(D, E, X).flatten(),
        hww @ D.flatten() - hwu @ X.flatten(),
        rtol=1e-10,
        atol=1e-12,
    )
    # the per-row code Hessians: solve_codes inverts the (block-diagonal) H_UU
    assert bool(sys_.free_U.all())  # codes well inside the orthant: all free
    torch.testing.assert_close(
        sys_.solve_codes(X).flatten(), torch.linalg.solve(huu, X.flatten()), rtol=1e-8, atol=1e-10
    )


def test_schur_product_and_direction_against_the_dense_joint_system_on_the_free_set():
    # a point some way into a fit: some codes and bank entries are at their bound (active)
    A, U, W, lin, prob = _problem(0, lam=0.7, offset=0.5)
    with pytest.warns(ConvergenceWarning):
        res = hals.solve_hals(prob, U, W, max_iter=20, tol=0.0, warm_start=True, joint=False)
    U, W = res.U, res.W
    sys_ = JointSystem.at(prob, U, W)
    fu, fw = sys_.free_U.flatten(), sys_.free_W.flatten()
    assert 0 < int(fu.sum()) < fu.numel() and 0 < int(fw.sum()) < fw.numel()
    huu, huw, hwu, hww, (gu, gw) = _hessian_blocks(A, U, W, lin, 0.7)
    huu, huw, hwu, hww = huu[fu][:, fu], huw[fu][:, fw], hwu[fw][:, fu], hww[fw][:, fw]
    schur = hww - hwu @ torch.linalg.solve(huu, huw)
    D = torch.randn(W.shape, generator=torch.Generator().manual_seed(2), dtype=W.dtype)
    torch.testing.assert_close(
        sys_.schur(D).flatten()[fw], schur @ D.flatten()[fw], rtol=1e-8, atol=1e-10
    )
    assert bool((sys_.schur(D).flatten()[~fw] == 0).all())
    # (dU, dW) solves the code rows of the joint Newton system on the free set exactly (dU is
    # eliminated); dW is CG's approximate solution of the Schur system (which near a fit is only
    # semi-definite: the rescalings (U D, D⁻¹ W) leave U W unchanged).
    dU, dW = sys_.direction(cg_iterations=4 * int(fw.sum()))
    du, dw = dU.flatten()[fu], dW.flatten()[fw]
    g_u, g_w = gu.flatten()[fu], gw.flatten()[fw]
    torch.testing.assert_close(huu @ du + huw @ dw, g_u, rtol=1e-8, atol=1e-10)
    # dW is a CG iterate on the Schur system: it lowers that system's quadratic model
    rhs = g_w - hwu @ torch.linalg.solve(huu, g_u)
    assert float(0.5 * dw @ schur @ dw - rhs @ dw) < 0.0
    # the active variables take the diagonally scaled gradient step
    assert bool((dU.flatten()[~fu] * gu.flatten()[~fu] >= 0).all())
    assert bool((dW.flatten()[~fw] * gw.flatten()[~fw] >= 0).all())


@pytest.mark.parametrize(("seed", "lam"), [(0, 0.7), (3, 5.0), (4, 5.0)])
def test_a_joint_step_decreases_the_exact_objective(seed, lam):
    # some way into a fit (at a random start the joint model is indefinite: see the next test)
    A, U, W, _, prob = _problem(seed, n=20, lam=lam)
    with pytest.warns(ConvergenceWarning):
        res = hals.solve_hals(prob, U, W, max_iter=20, tol=0.0, warm_start=True, joint=False)
    U, W = res.U, res.W
    f0 = sv.evaluate(prob, U, W)
    out = joint_newton_step(prob, U, W, None, f0)
    assert out is not None
    Un, Wn, Zn, terms, UtA, t = out
    assert 0 < t <= 1
    assert bool((Un >= 0).all()) and bool((Wn >= 0).all())
    exact = sv.evaluate(prob, Un, Wn)
    assert terms.total == pytest.approx(exact.total, rel=1e-12)
    assert exact.total < f0.total
    torch.testing.assert_close(Zn, prob.kl_head.code_logits(Un, Wn))
    torch.testing.assert_close(UtA, Un.T @ A)


def test_negative_curvature_at_once_gives_no_step():
    # at a random start the Schur complement is indefinite and CG stops before its first step:
    # the step declines (the caller takes its W block) instead of a pure code step
    _, U, W, _, prob = _problem(0, n=20, lam=5.0)
    system = JointSystem.at(prob, U, W)
    _, dW = system.direction(8)
    assert not bool(dW[system.free_W].any())
    assert joint_newton_step(prob, U, W, None, sv.evaluate(prob, U, W)) is None


def test_hals_switches_to_joint_steps_and_stays_monotone(monkeypatch):
    _, U, W, _, prob = _problem(6, n=40, p=8, r=3, C=5, lam=2.0)
    taken = []
    real = joint.joint_newton_step

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(joint, "joint_newton_step", counting)
    res = hals.solve_hals(prob, U, W, max_iter=300, tol=1e-9, warm_start=True)
    hist = res.history["total"]
    assert any(taken), "the switch never happened"
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(hist))
    # without the joint step the same loop takes only plain W blocks
    taken.clear()
    with pytest.warns(ConvergenceWarning):
        hals.solve_hals(prob, U, W, max_iter=50, tol=1e-9, warm_start=True, joint=False)
    assert taken == []


def test_poor_joint_steps_hand_back_to_the_w_block_until_the_next_threshold(monkeypatch):
    _, U, W, _, prob = _problem(6, n=40, p=8, r=3, C=5, lam=2.0)
    done, calls = [0], []

    def never(*args, **kwargs):
        calls.append(done[0])  # iterations completed before this try
        return None  # no decrease found: the W block is taken instead

    def callback(t, terms):
        done[0] = t

    monkeypatch.setattr(joint, "joint_newton_step", never)
    res = hals.solve_hals(
        prob, U, W, max_iter=300, tol=1e-9, warm_start=True, callback=callback
    )  # fmt: skip
    plain = hals.solve_hals(prob, U, W, max_iter=300, tol=1e-9, warm_start=True, joint=False)
    # declined steps leave the fit the plain one, bit for bit
    assert res.history["total"] == plain.history["total"]
    assert torch.equal(res.W, plain.W)
    # tried in bursts of JOINT_PATIENCE, each starting once the windowed decrease fell below the
    # next threshold (JOINT_SWITCH, then JOINT_BACKOFF times the last)
    k, hist = joint.JOINT_PATIENCE, plain.history["total"]
    assert len(calls) >= 2 * k and len(calls) % k == 0
    for i, first in enumerate(calls[::k]):
        threshold = joint.JOINT_SWITCH * joint.JOINT_BACKOFF**i
        assert calls[i * k : (i + 1) * k] == list(range(first, first + k))
        assert sv._stop_test(hist[: first + 1], threshold)
        assert i > 0 or first == sv.WINDOW or not sv._stop_test(hist[:first], threshold)


def test_newton_stationary_needs_a_full_step_with_a_decrease_below_tol():
    from face_concepts.decomposition.losses import Terms

    def step(t):
        return joint.JointStep(None, None, None, None, None, t)

    before, tiny, big = Terms(1.0, 1.0, 0.0), Terms(1.0 - 1e-7, 0, 0), Terms(0.9, 0, 0)
    settled = [1.0 + 2e-5 * k for k in range(12, 0, -1)] + [1.0]  # windowed 2e-5 < 10 tol
    moving = [1.0 + 1e-3 * k for k in range(12, 0, -1)] + [1.0]  # windowed 1e-3
    assert hals._newton_stationary(step(1.0), before, tiny, 1e-5, settled)
    assert not hals._newton_stationary(step(1.0), before, big, 1e-5, settled)  # still moving
    assert not hals._newton_stationary(step(0.5), before, tiny, 1e-5, settled)  # damped step
    assert not hals._newton_stationary(None, before, tiny, 1e-5, settled)  # a W block
    # the guard: a small full step while the window still falls fast (truncated CG) goes on
    assert not hals._newton_stationary(step(1.0), before, tiny, 1e-5, moving)


def test_a_fit_stops_at_the_full_newton_step_that_gains_less_than_tol(monkeypatch):
    _, U, W, _, prob = _problem(14, n=40, p=8, r=3, C=5, lam=2.0)
    seen = []
    real = hals._newton_stationary

    def recording(step, before, after, tol, history):
        out = real(step, before, after, tol, history)
        seen.append(out)
        return out

    monkeypatch.setattr(hals, "_newton_stationary", recording)
    # seed 14: the full step that stops it gains ~7e-9 relative, far above float64 rounding (on
    # most seeds of this tiny problem the windowed guard is met only once the gains are at
    # rounding level, ~1e-16, where which test fires first is rounding)
    res = hals.solve_hals(prob, U, W, max_iter=300, tol=1e-5, warm_start=True)
    assert res.converged and seen[-1] and not any(seen[:-1])  # it is what stopped the fit
    h = res.history["total"]
    assert (h[-2] - h[-1]) / h[-1] > 1e-12  # a real gain, not rounding
    # the windowed rule alone goes on longer, and not to a better point than tol allows
    monkeypatch.setattr(hals, "_newton_stationary", lambda *a: False)
    windowed = hals.solve_hals(prob, U, W, max_iter=300, tol=1e-5, warm_start=True)
    assert windowed.n_iter > res.n_iter
    best = min(windowed.history["total"])
    assert res.history["total"][-1] <= best * (1 + 10 * 1e-5)


def _drive_schedule(monkeypatch, plain_gains, joint_steps):
    """Feeds a ``JointSchedule`` a history whose iterations gain what they are told: plain ones
    the next of ``plain_gains``, joint ones the gain of the next ``(t, gain)`` of
    ``joint_steps`` (``t`` None: a declined step, whose W block gains the plain gain). Returns
    the kinds of the iterations, "p" or "j", until either list runs out, and the history."""
    plain, steps = iter(plain_gains), iter(joint_steps)
    pending = []

    def fake(*args, **kwargs):
        t, gain = next(steps)
        pending.append(gain)
        return None if t is None else joint.JointStep(None, None, None, None, None, t)

    monkeypatch.setattr(joint, "joint_newton_step", fake)
    schedule, history, kinds = joint.JointSchedule(True), [1.0], []
    try:
        while True:
            out = schedule.step(None, None, None, None, None, None, history)
            kind = "p" if schedule.last == "plain" else "j"
            gain = next(plain) if kind == "p" or out is None else pending[-1]
            history.append(history[-1] / (1.0 + gain))  # (h[-2] − h[-1]) / h[-1] = gain
            kinds.append(kind)
    except StopIteration:
        return "".join(kinds), history


def test_the_schedule_weighs_a_joint_step_gain_against_the_plain_iterations(monkeypatch):
    cost = joint.JOINT_COST
    assert sv.WINDOW == 10 and joint.JOINT_MIN_PLAIN == 2
    g = 5e-4  # windowed decrease below JOINT_SWITCH = 1e-3: joint steps once the window is full
    plain = [g] * 10 + [4e-4, 3e-4] + [1e-9] * 40
    short_but_paying = [(1 / 16, 1.01 * cost * g)] * 4  # cut to 1/16 of the Newton step, yet
    poor = [(1 / 16, 0.99 * cost * g)] * 3  # each gains more (less) than cost × a plain one
    full = [(1.0, 1e-9)] * 5  # full steps: never poor, whatever they gain
    declined = [(None, 0.0)] * 3
    kinds, _ = _drive_schedule(
        monkeypatch, plain, short_but_paying + poor + [(1 / 16, 1e-3)] + full + declined
    )
    # 10 plain, 4 paying and 3 poor joint steps, back to plain; after two plain iterations the
    # last one (3e-4, times cost 7.5e-4) gains less per cost than the last joint step (1.24e-3):
    # joint again; full steps stay; three declined steps go back to plain, for good here (a
    # declined step gains nothing, and the windowed decrease stays above the backed-off 1e-4)
    assert kinds.startswith("p" * 10 + "j" * 7 + "pp" + "j" * 6 + "jjj" + "p")
    assert "j" not in kinds[10 + 7 + 2 + 6 + 3 :]


def test_the_old_schedule_hands_back_on_short_steps(monkeypatch):
    monkeypatch.setattr(joint, "COMPARE_GAINS", False)
    g = 5e-4
    plain = [g] * 10 + [4e-4, 3e-4] + [1e-9] * 40
    kinds, history = _drive_schedule(monkeypatch, plain, [(1 / 16, 10 * g)] * 10)
    # short steps are poor whatever they gain: three, then plain until the windowed decrease is
    # below the backed-off threshold, JOINT_BACKOFF × JOINT_SWITCH
    assert kinds[:13] == "p" * 10 + "jjj"
    again = kinds.index("j", 13)
    threshold = joint.JOINT_SWITCH * joint.JOINT_BACKOFF
    assert set(kinds[13:again]) == {"p"} and again > 13 + joint.JOINT_MIN_PLAIN
    assert sv._stop_test(history[: again + 1], threshold)
    assert not sv._stop_test(history[:again], threshold)
