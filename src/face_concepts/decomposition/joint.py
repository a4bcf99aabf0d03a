"""A joint Newton step on ``(U, W)`` with the codes eliminated row by row (Schur complement).

Why: alternating block steps (``hals`` with λ > 0) crawl once the objective's valley runs
diagonally across the two blocks, where a change of ``W`` is only good together with the change
of the codes that follows it. Eliminating ``U`` (variable projection) takes that coupling into
the step on ``W``. In units of ``F = n·L = (1/p)‖A − UW‖² + λ Σ_i KL_i``, with the free sets of
Bertsekas' projected Newton method (``newton.free_set`` per row of ``U``; the ε-active set of
``W``), the joint Newton system

    [H_UU  H_UW] [dU]   [g_U]
    [H_WU  H_WW] [dW] = [g_W]

is solved for ``dW`` from its Schur complement
``(H_WW − H_WU H_UU⁻¹ H_UW) dW = g_W − H_WU H_UU⁻¹ g_U`` by preconditioned conjugate gradients
(``H_UU`` is block diagonal: one r × r Hessian per row, ``newton.hessians``, factored once per
step), then ``dU = H_UU⁻¹ (g_U − H_UW dW)``. With ``S`` the softmax of the logits, ``G = S − P``,
``M = W Vᵀ``, ``R = UW − A`` and ``K(E)`` the rows of ``(diag s − s sᵀ) e`` (the softmax
Jacobian):

    H_WW D = (2/p) UᵀU D + λ Uᵀ K(U D Vᵀ) V
    H_UW D = (2/p) (U D Wᵀ + R Dᵀ) + λ (K(U D Vᵀ) Mᵀ + G V Dᵀ)
    H_WU X = (2/p) (Uᵀ X W + Xᵀ R) + λ (Uᵀ K(X M) + Xᵀ G) V

(``tests/decomposition/test_joint.py`` checks each against autograd's Hessian). One product with
the Schur complement costs two passes of ``K`` (``K`` is linear, so the ``H_WW`` and ``H_WU``
parts share one) and about six (n × r)(r × C)-sized products: about three of the W block's
Hessian-vector products. The step is taken along the projection arc
``([U − t dU]₊, [W − t dW]₊)`` with Armijo's rule; when no step decreases the objective the
caller takes its plain W block instead.

Far from a solution the quadratic model is poor (the joint problem is not convex: the line
search cuts the Newton step to a small fraction), so ``hals`` takes this step only once its plain
iterations have slowed down, and hands back to its W block while the steps stay short
(:class:`JointSchedule`). Measured with ``python benchmarks/solver.py --joint-ab 1``
(``benchmarks/results/solver.md`` section 10): on six MobileNetV2 data sets at λ = 1 every fit
ends lower (by 0.006–0.54 %), and 1.21× and 1.06× faster in all (two runs; per data set
0.70×–1.56×, about the size of the load's effect).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from face_concepts.decomposition.losses import Terms
from face_concepts.decomposition.newton import (
    code_gradient,
    free_cholesky,
    free_set,
    hessians,
    precompute,
)
from face_concepts.decomposition.newton_cg import (
    ARMIJO,
    MAX_HALVINGS,
    _conjugate_gradient,
    _curvature_of_softmax,
    _objective,
    bank_derivatives,
    gram_cholesky,
)
from face_concepts.decomposition.newton_cg import free_set as bank_free_set
from face_concepts.decomposition.solvers import WINDOW, _stop_test

if TYPE_CHECKING:
    from face_concepts.decomposition.problem import Problem

CG_ITERATIONS = 8  # conjugate-gradient iterations on the Schur complement per joint step
# hals switches to joint steps once its relative decrease per iteration, averaged over the last
# WINDOW iterations, falls below JOINT_SWITCH. A joint iteration costs about JOINT_COST plain
# ones (measured on the solver benchmark's rows: a joint step's 8 CG products and line search
# against a W block), so a joint step is poor when it finds no decrease, or when it is cut short
# (a fraction of the Newton step) and gains (relative decrease of the objective) less than
# JOINT_COST times the last plain iteration did; a full step is never poor (the quadratic model
# holds there, and a plain iteration's gain seen before is no guide). After JOINT_PATIENCE poor
# joint steps in a row it goes back to its W block, and tries joint steps again once the plain
# iterations gain less per cost than the last joint one did (after at least JOINT_MIN_PLAIN of
# them), or once that windowed decrease has fallen below JOINT_BACKOFF times the last threshold.
JOINT_SWITCH = 1e-3
JOINT_COST = 2.5
JOINT_MIN_PLAIN = 2
JOINT_PATIENCE = 3
JOINT_BACKOFF = 0.1
# False: session 32's rule, the A/B baseline of solver.md section 19 (a joint step is poor when
# declined or accepted at less than JOINT_MIN_STEP of the Newton step; back only at the next
# threshold).
COMPARE_GAINS = True
JOINT_MIN_STEP = 1.0 / 8


class JointStep(NamedTuple):
    """An accepted joint step: the new point, its logits, objective and ``UᵀA``, and ``t``, the
    accepted fraction of the Newton step."""

    U: torch.Tensor
    W: torch.Tensor
    Z: torch.Tensor
    terms: Terms
    UtA: torch.Tensor
    t: float


@dataclass
class _Point:
    """What every product with the joint Hessian at ``(U, W)`` reuses."""

    U: torch.Tensor
    W: torch.Tensor
    A: torch.Tensor
    V: torch.Tensor
    S: torch.Tensor  # softmax of the logits
    G: torch.Tensor  # S − P
    M: torch.Tensor  # W Vᵀ
    UtU: torch.Tensor
    a2: float  # 2/p
    lam: float

    def code_part(self, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H_UW D, U D Vᵀ)``."""
        DVt = D @ self.V.T
        E = self.U @ DVt
        KE = _curvature_of_softmax(self.S, E)
        UW_D = self.U @ (D @ self.W.T) + self.U @ (self.W @ D.T) - self.A @ D.T
        return self.a2 * UW_D + self.lam * (KE @ self.M.T + self.G @ DVt.T), E

    def bank_part(self, D: torch.Tensor, E: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``H_WW D − H_WU X`` given ``E = U D Vᵀ`` (one pass of ``K`` for both KL parts)."""
        K = _curvature_of_softmax(self.S, torch.addmm(E, X, self.M, alpha=-1.0))
        recon = self.UtU @ D - (self.U.T @ X + X.T @ self.U) @ self.W + X.T @ self.A
        return self.a2 * recon + self.lam * ((self.U.T @ K - X.T @ self.G) @ self.V)

    def bank_from_codes(self, X: torch.Tensor) -> torch.Tensor:
        """``H_WU X``."""
        K = _curvature_of_softmax(self.S, X @ self.M)
        recon = (self.U.T @ X + X.T @ self.U) @ self.W - X.T @ self.A
        return self.a2 * recon + self.lam * ((self.U.T @ K + X.T @ self.G) @ self.V)


@dataclass
class JointSystem:
    """The joint Newton system at ``(U, W)`` on the free variables, reduced to ``W``."""

    point: _Point
    g_U: torch.Tensor  # gradients, units of n·L
    g_W: torch.Tensor
    free_U: torch.Tensor  # free codes (bool), rows whose Hessian factored
    free_W: torch.Tensor
    L_U: torch.Tensor  # per-row Cholesky factors of H_UU on the free codes
    diag_U: torch.Tensor  # the diagonal of H_UU (scales the active codes' gradient steps)
    L_W: torch.Tensor  # Cholesky factor of UᵀU: the preconditioner

    @classmethod
    def at(
        cls, prob: Problem, U: torch.Tensor, W: torch.Tensor, Z: torch.Tensor | None = None,
        UtA: torch.Tensor | None = None,
    ) -> JointSystem:  # fmt: skip
        n, r = U.shape
        pc = precompute(prob, W)
        Z = prob.kl_head.code_logits(U, W) if Z is None else Z
        S = torch.softmax(Z, dim=1)
        G = S - prob.target_P
        UtU = U.T @ U
        UtA = U.T @ prob.A if UtA is None else UtA
        pt = _Point(U, W, prob.A, prob.kl_head.V, S, G, pc.M, UtU, pc.a2, pc.lam)
        g_U = code_gradient(pc, U, G @ pc.M.T)
        g_W = n * bank_derivatives(prob, U, W, Z, UtU, UtA, S)[0]
        free_U = free_set(U, g_U)
        L_U, ok, diag_U = free_cholesky(hessians(pc, S), free_U)
        L_U[~ok] = torch.eye(r, dtype=U.dtype, device=U.device)  # held: no NaN from them
        L_W = gram_cholesky(UtU)
        return cls(pt, g_U, g_W, free_U & ok[:, None], bank_free_set(W, g_W), L_U, diag_U, L_W)

    def solve_codes(self, Y: torch.Tensor) -> torch.Tensor:
        """``H_UU⁻¹ Y`` on the free codes, 0 on the others."""
        f = self.free_U.to(Y.dtype)
        return torch.cholesky_solve((Y * f).unsqueeze(2), self.L_U).squeeze(2) * f

    def schur(self, D: torch.Tensor) -> torch.Tensor:
        """The Schur complement ``H_WW − H_WU H_UU⁻¹ H_UW`` times ``D`` (free variables)."""
        f = self.free_W.to(D.dtype)
        D = D * f
        Y, E = self.point.code_part(D)
        return self.point.bank_part(D, E, self.solve_codes(Y)) * f

    def direction(self, cg_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dU, dW)``: the Newton direction on the free variables (``dW`` by preconditioned
        CG on the Schur complement), a diagonally scaled gradient step on the active ones."""
        f = self.free_W.to(self.g_W.dtype)
        rhs = (self.g_W - self.point.bank_from_codes(self.solve_codes(self.g_U))) * f
        dW = _conjugate_gradient(
            self.schur, lambda R: torch.cholesky_solve(R, self.L_W) * f, rhs, cg_iterations
        )
        Y, _ = self.point.code_part(dW)
        dU = torch.where(self.free_U, self.solve_codes(self.g_U - Y), self.g_U / self.diag_U)
        pt = self.point
        active_W = self.g_W / (pt.a2 * pt.UtU.diagonal().clamp(min=1e-30))[:, None]
        return dU, torch.where(self.free_W, dW, active_W)


def joint_newton_step(
    prob: Problem,
    U: torch.Tensor,
    W: torch.Tensor,
    Z: torch.Tensor | None,
    f_cur: Terms,
    *,
    UtA: torch.Tensor | None = None,
    cg_iterations: int = CG_ITERATIONS,
) -> JointStep | None:
    """One joint projected Newton step from ``(U, W)`` (logits ``Z``, objective ``f_cur``;
    ``UtA = UᵀA`` if known).

    Returns the accepted step, or ``None`` when CG meets negative curvature at once or no step
    along the arc decreases the objective (the iterate is then unchanged).
    """
    system = JointSystem.at(prob, U, W, Z, UtA)
    dU, dW = system.direction(cg_iterations)
    if not bool(dW[system.free_W].any()):  # negative curvature at once: CG took no step
        return None
    g_U, g_W, n = system.g_U, system.g_W, U.shape[0]
    t = 1.0
    for _ in range(MAX_HALVINGS):
        Un = (U - t * dU).clamp(min=0)
        Wn = (W - t * dW).clamp(min=0)
        UtA_n = Un.T @ prob.A
        f_new, Zn = _objective(prob, Un, Un.T @ Un, UtA_n, Wn)
        # first-order decrease along the arc (Bertsekas), in units of L
        expected = float((g_U * (U - Un)).sum() + (g_W * (W - Wn)).sum()) / n
        if f_new.total <= f_cur.total - ARMIJO * max(expected, 0.0) and f_new.total <= f_cur.total:
            return JointStep(Un, Wn, Zn, f_new, UtA_n, t)
        t *= 0.5
    return None


class JointSchedule:
    """When ``hals`` takes joint steps instead of its W block (the constants above).

    It sees the objective's history before each iteration, so it judges the iteration it chose
    last time by what that iteration gained."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.on, self.poor, self.switch = enabled, False, 0, JOINT_SWITCH
        self.last: str | None = None  # the kind of the previous iteration: "plain" or "joint"
        self.declined = False  # whether the previous joint step found no decrease
        self.plain_gain = 0.0  # relative gain of the last plain iteration
        self.joint_gain = 0.0  # and of the last joint one (0 when its step was declined)
        self.plain_run = 0  # plain iterations since the fit last went back to them
        self.t = 1.0  # the accepted fraction of the previous joint step's Newton step

    def _judge(self, history: list[float]) -> None:
        """Book the previous iteration's gain; after a poor joint step, maybe go back."""
        if self.last is None or len(history) < 2:
            return
        gain = (history[-2] - history[-1]) / abs(history[-1]) if history[-1] else 0.0
        if self.last == "plain":
            self.plain_gain, self.plain_run = gain, self.plain_run + 1
            return
        self.joint_gain = 0.0 if self.declined else gain
        if COMPARE_GAINS:  # a full step is in the quadratic model's reach: never poor
            poor = self.declined or (self.t < 1.0 and gain < JOINT_COST * self.plain_gain)
        else:
            poor = self.declined or self.t < JOINT_MIN_STEP
        self.poor = self.poor + 1 if poor else 0
        if self.poor >= JOINT_PATIENCE:
            self.on, self.poor, self.plain_run = False, 0, 0
            self.switch *= JOINT_BACKOFF

    def _joint_pays(self, history: list[float]) -> bool:
        if not self.enabled or len(history) <= WINDOW:
            return False
        if _stop_test(history, self.switch):
            return True
        return (
            COMPARE_GAINS
            and self.plain_run >= JOINT_MIN_PLAIN
            and JOINT_COST * self.plain_gain < self.joint_gain
        )

    def step(
        self, prob: Problem, U: torch.Tensor, W: torch.Tensor, Z: torch.Tensor | None,
        f_cur: Terms, UtA: torch.Tensor | None, history: list[float],
    ) -> JointStep | None:  # fmt: skip
        """A joint step (``joint_newton_step``'s result), or ``None``: take the W block."""
        self._judge(history)
        if not self.on:
            self.on = self._joint_pays(history)
        if not self.on:
            self.last = "plain"
            return None
        out = joint_newton_step(prob, U, W, Z, f_cur, UtA=UtA)
        self.last, self.declined = "joint", out is None
        self.t = 0.0 if out is None else out.t
        return out


__all__ = [
    "CG_ITERATIONS",
    "COMPARE_GAINS",
    "JointSchedule",
    "JointStep",
    "JointSystem",
    "joint_newton_step",
]
