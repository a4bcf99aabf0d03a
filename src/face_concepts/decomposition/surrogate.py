"""The running statistics and the majorising surrogate ``Q(W)`` of mini-batch FACE.

Steps 2–4 of the algorithm in ``minibatch.py``'s docstring: per-batch statistics
(:func:`batch_statistics`), Böhning's bound on a row's KL (:func:`kl_bound`), the surrogate
:class:`Surrogate` and its minimiser over ``W ≥ 0`` (:func:`minimise_surrogate`), and the
forgetting rate of the first pass (:func:`forget_rate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from face_concepts.decomposition._head import Head
from face_concepts.decomposition.losses import kl_rows
from face_concepts.decomposition.solvers import _Curvature, _hals_sweeps

__all__ = [
    "Statistics",
    "Surrogate",
    "batch_statistics",
    "forget_rate",
    "kl_bound",
    "kl_linear_terms",
    "minimise_surrogate",
]

W_STEPS = 5  # MM steps on the surrogate per batch
HALS_INNER = 10  # HALS sweeps per MM step


# ----------------------------------------------------------------------------- statistics
@dataclass
class Statistics:
    """Running sums in float64: ``S_uu`` (r×r), ``S_ua`` (r×p) and, when λ > 0, the two parts
    of ``S_ux``: ``S_ug = Σ u_iᵀ g_i`` and ``S_ud = Σ u_iᵀ (B d⁰_i)`` (r×C each).
    """

    UtU: torch.Tensor
    UtA: torch.Tensor
    UtG: torch.Tensor | None = None
    UtD: torch.Tensor | None = None
    rows: float = 0.0  # effective (decayed) number of rows behind the sums

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.UtU, self.UtA, self.UtG, self.UtD) if t is not None]

    def decay(self, rho: float) -> None:
        for t in self.tensors():
            t.mul_(rho)
        self.rows *= rho

    def add(self, other: Statistics, weight: float = 1.0) -> None:
        for t, o in zip(self.tensors(), other.tensors(), strict=True):
            t.add_(o, alpha=weight)
        self.rows += weight * other.rows

    def copy(self) -> Statistics:
        g, d = (None if t is None else t.clone() for t in (self.UtG, self.UtD))
        return Statistics(self.UtU.clone(), self.UtA.clone(), g, d, rows=self.rows)


def kl_linear_terms(
    U: torch.Tensor, Z0: torch.Tensor, b: torch.Tensor, P: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ u_iᵀ g_i, Σ u_iᵀ B d⁰_i)`` (r×C each): ``g = softmax(Z0) − P``, ``d⁰ = Z0 − b``."""
    D = Z0 - b
    return U.T @ (torch.softmax(Z0, dim=1) - P), U.T @ (0.5 * (D - D.mean(dim=1, keepdim=True)))


def batch_statistics(
    A: torch.Tensor, U: torch.Tensor, W: torch.Tensor, head: Head | None, P: torch.Tensor | None
) -> Statistics:
    """Statistics of one batch with the KL expanded at the logits of ``(U, W)``.

    ``P`` = softmax(h(A)) (None when λ = 0). Summing the statistics of batches gives those of
    their concatenation.
    """
    st = Statistics((U.T @ U).double(), (U.T @ A).double(), rows=float(A.shape[0]))
    if P is not None and head is not None:  # λ > 0
        UtG, UtD = kl_linear_terms(U, head.code_logits(U, W), head.b, P)
        st.UtG, st.UtD = UtG.double(), UtD.double()
    return st


def kl_bound(Z: torch.Tensor, Z0: torch.Tensor, logP: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """Per-row quadratic model of ``KL(P ‖ softmax Z)`` at ``Z0`` with curvature ``s·B``.

    With ``s = 1`` (Böhning's bound) it is an upper bound, equal to the KL at ``Z0``.
    """
    P = logP.exp()
    kl0 = kl_rows(logP, Z0, P)
    D = Z - Z0
    g = torch.softmax(Z0, dim=1) - P
    BD = 0.5 * (D - D.mean(dim=1, keepdim=True))
    return kl0 + (g * D).sum(dim=1) + 0.5 * s * (D * BD).sum(dim=1)


@dataclass
class Surrogate:
    """``Q_s(W) = (1/p)(⟨S_uu, WWᵀ⟩ − 2⟨S_ua, W⟩) + λ(⟨S_ug V, W⟩ + s(½⟨S_uu, WKWᵀ⟩ − ⟨S_ud V, W⟩))``.

    ``s = 1`` is the Böhning majoriser of the module docstring (up to a W-independent constant);
    ``s < 1`` trusts a flatter softmax (step 4).
    """

    st: Statistics
    V: torch.Tensor | None
    K: torch.Tensor | None
    lam: float
    s: float = 1.0

    def __post_init__(self) -> None:
        if self.lam > 0:
            assert self.V is not None and self.K is not None, "λ > 0 needs V and K"
            assert self.st.UtG is not None and self.st.UtD is not None, "λ > 0 needs S_ux"
            V64 = self.V.double()
            self.MG = self.st.UtG @ V64
            self.MD = self.st.UtD @ V64
            self.K64 = self.K.double()  # once per surrogate, not per value()

    def linear(self) -> torch.Tensor:
        """The KL part's linear coefficient ``S_ug V − s S_ud V`` (r×p, float64)."""
        return self.MG - self.s * self.MD

    def value(self, W: torch.Tensor) -> float:
        Wd = W.double()
        p = W.shape[1]
        value = (
            float((self.st.UtU * (Wd @ Wd.T)).sum()) - 2.0 * float((self.st.UtA * Wd).sum())
        ) / p
        if self.lam > 0:
            quad = float((self.st.UtU * (Wd @ self.K64 @ Wd.T)).sum())
            value += self.lam * (0.5 * self.s * quad + float((self.linear() * Wd).sum()))
        return value


def minimise_surrogate(
    W: torch.Tensor, Q: Surrogate, kappa: float, curv: _Curvature, steps: int | None = None
) -> torch.Tensor:
    """A few monotone MM-HALS steps on ``Q_s`` over ``W ≥ 0`` (module docstring, step 4);
    ``steps`` defaults to ``W_STEPS``.
    """
    steps = W_STEPS if steps is None else steps
    dt = W.dtype
    S, Sa = Q.st.UtU.to(dt), Q.st.UtA.to(dt)
    a2 = 2.0 / W.shape[1]
    if Q.lam == 0:
        return _hals_sweeps(W.clone(), a2 * S, a2 * Sa, HALS_INNER * steps)
    lam, M, K = Q.lam, Q.linear().to(dt), Q.K
    assert K is not None  # λ > 0
    f = Q.value(W)
    for _ in range(steps):
        SW = S @ W
        R0 = a2 * Sa - lam * (M + Q.s * (SW @ K))
        while True:
            c = lam * Q.s * curv.s * kappa
            Wn = _hals_sweeps(W.clone(), (a2 + c) * S, R0 + c * SW, HALS_INNER)
            fn = Q.value(Wn)
            if fn <= f or not curv.next_try():
                break
        curv.relax()
        if fn > f:
            break
        done = f - fn <= 1e-6 * abs(f)
        W, f = Wn, fn
        if done:
            break
    return W


def forget_rate(rows: int, n_seen: int, forget_factor: float) -> float:
    """First-pass decay of the statistics before adding a batch of ``rows`` rows (docstring, 3)."""
    return forget_factor ** (rows / n_seen)
