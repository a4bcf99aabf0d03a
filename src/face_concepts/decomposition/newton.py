"""Projected Newton for the codes: ``min_{U ≥ 0} L(U, W)`` with ``W`` fixed and an affine head.

With ``W`` fixed the objective separates over rows. Row ``i`` minimises the convex function::

    f_i(u) = (1/p)‖a_i − u W‖² + λ KL(P_i ‖ softmax(u M + b)),      M = W Vᵀ  (r×C)

whose gradient and Hessian are, with ``s = softmax(u M + b)``::

    g_i = (2/p)(u WWᵀ − a_i Wᵀ) + λ (s − P_i) Mᵀ
    H_i = (2/p) WWᵀ + λ (M diag(s) Mᵀ − (M s)(M s)ᵀ)

The ``M diag(s) Mᵀ`` parts of all rows come from one GEMM, ``S T`` with ``T`` the C × r(r+1)/2
matrix of products of pairs of rows of ``M`` (built once per ``W``). Each iteration is
Bertsekas' projected Newton step (1982) on the bound constraints, all rows at once:

1. the ε-active set ``{k : u_k ≤ ε, g_k > 0}`` (``ε`` = the row's projected-gradient norm,
   capped at ``EPS_ACTIVE``) takes a diagonally scaled gradient step, the free set a Newton
   step (batched Cholesky of ``H`` restricted to the free set);
2. a per-row Armijo search along the projection arc ``u(t) = [u − t d]₊``, ``t = 1, ½, ¼, …``.
   The decrease ``f_i(u(t)) − f_i(u)`` is computed as a *difference* — the reconstruction part
   as ``δ·((u + u′) WWᵀ − 2 a Wᵀ)/p``, the KL part as
   ``log Σ_c s_c e^{e_c} − P·e`` with ``e = δ M``, evaluated as ``m + log1p(Σ s·expm1(e − m))``
   (``m = s·e``) — so it stays accurate in float32 even when it is far below the objective's
   own rounding. A row whose search fails keeps its codes.

Rows are independent (``W`` is fixed): a row whose full step promises (almost) nothing keeps its
codes and would promise the same at the next iteration, so it is left out of the later ones
(``DROP_SETTLED_ROWS``); late iterations then cost what their few moving rows cost.

The Newton step of a row whose free variables it would push below 0 is re-solved with those
sent exactly to 0 (``RESOLVES`` times at most, :func:`_resolve_clipped`): the projection alone
finds the active set one layer per iteration. The encoder's solves use it; ``hals``'s
one-iteration U block does not (measured: ``benchmarks/results/solver.md`` section 14).

Stopping rule (the encoder's): stop after the iteration whose decrease of the mean objective,
relative to the mean objective, is below ``tol``. Each iteration costs one logits product, a
softmax, the Hessian GEMM (``n·C·r(r+1)/2``), a batched r×r Cholesky and one logits product per
line-search try; it converges in a handful of iterations where the majorise–minimise sweeps of
``solvers.u_step`` need hundreds (their Böhning curvature is far steeper than the softmax's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # solvers imports this module (its U-step); the type only is needed here
    from face_concepts.decomposition.problem import Problem

EPS_ACTIVE = 1e-3  # cap of the ε of the ε-active set
ARMIJO = 1e-4  # sufficient-decrease constant
MAX_HALVINGS = 20  # line-search tries per iteration (t down to 2⁻¹⁹)
RESOLVES = 1  # re-solves of a Newton step with the free variables it clips sent to 0
# Rows whose full step promises (almost) nothing are left out of the later iterations (False:
# every row is recomputed every iteration, the baseline of solver.md section 14).
DROP_SETTLED_ROWS = True


@dataclass
class Precomputed:
    """What every Newton iteration reuses for one ``(A, W)``."""

    WWt: torch.Tensor  # (r, r)
    AWt: torch.Tensor  # (n, r)
    M: torch.Tensor  # (r, C) = W Vᵀ
    T: torch.Tensor  # (r(r+1)/2, C): products of pairs of rows of M
    col_norm: float  # max_c ‖M[:, c]‖
    upper: torch.Tensor  # flat (row-major) positions of the pairs (k ≤ l) in an r×r matrix
    lower: torch.Tensor  # and of their transposes (l, k)
    a2: float  # 2/p
    lam: float


def precompute(prob: Problem, W: torch.Tensor) -> Precomputed:
    r = W.shape[0]
    M = W @ prob.kl_head.V.T
    iu = torch.triu_indices(r, r, device=W.device)
    return Precomputed(
        WWt=W @ W.T,
        AWt=prob.A @ W.T,
        M=M,
        T=M[iu[0]] * M[iu[1]],
        col_norm=float(M.norm(dim=0).max()),
        upper=iu[0] * r + iu[1],
        lower=iu[1] * r + iu[0],
        a2=2.0 / prob.p,
        lam=prob.kl_weight,
    )


@dataclass
class Rows:
    """The iterate's per-row quantities that every line-search try reuses (a subset of rows
    is taken with :meth:`take`)."""

    U: torch.Tensor  # (n, r) codes
    AWt: torch.Tensor  # (n, r) a Wᵀ
    P: torch.Tensor  # (n, C) target probabilities
    logS: torch.Tensor  # (n, C) log-softmax of the codes' logits
    S: torch.Tensor  # (n, C) its exp
    sM: torch.Tensor  # (n, r) S Mᵀ
    pM: torch.Tensor  # (n, r) P Mᵀ

    def take(self, sel: slice | torch.Tensor) -> Rows:
        return Rows(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


def _lse_shift(rows: Rows, E: torch.Tensor, m: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """Per row ``log Σ_c s_c exp(E_c) − m`` with ``m = s·E``: accurate when tiny, and safe when
    ``E`` is large where ``s`` underflowed. ``safe``: rows known to have ``E_c − m ≤ 30``.
    """
    D = E - m[:, None]
    # With D ≤ 30 the float32-underflowed s_c (< 1e-38) contribute < 1e-25: the accurate form.
    top = None if bool(safe.all()) else D.amax(dim=1)
    if top is None or bool((top <= 30.0).all()):
        return torch.log1p((rows.S * torch.expm1(D)).sum(dim=1).clamp_(min=-1 + 1e-7))
    near = torch.log1p((rows.S * torch.expm1(D.clamp(max=30.0))).sum(dim=1).clamp_(min=-1 + 1e-7))
    far = torch.logsumexp(rows.logS + D, dim=1)  # log space: never underflows
    return torch.where(top <= 30.0, near, far)


def row_decrease(pc: Precomputed, rows: Rows, Un: torch.Tensor) -> torch.Tensor:
    """``f_i(Un) − f_i(U)`` per row, as an accurate difference (module docstring)."""
    D = Un - rows.U
    recon = (D * ((rows.U + Un) @ pc.WWt - 2.0 * rows.AWt)).sum(dim=1) * (0.5 * pc.a2)
    E = D @ pc.M
    m = (D * rows.sM).sum(dim=1)  # s·E without a pass over the C columns
    bound = D.norm(dim=1) * pc.col_norm  # |E_c| ≤ ‖δ‖ max_c ‖M_c‖, so E_c − m ≤ 2·bound
    kl = m + _lse_shift(rows, E, m, 2.0 * bound <= 30.0) - (D * rows.pM).sum(dim=1)
    return recon + pc.lam * kl


def hessians(pc: Precomputed, S: torch.Tensor, sM: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row Hessians ``(n, r, r)`` (module docstring) at softmax rows ``S`` (``sM = S Mᵀ``)."""
    n, r = S.shape[0], pc.WWt.shape[0]
    flat = S @ pc.T.T  # (n, r(r+1)/2): Σ_c s_c M_kc M_lc
    H = S.new_empty(n, r * r)
    H.index_copy_(1, pc.upper, flat)
    H.index_copy_(1, pc.lower, flat)
    H = H.view(n, r, r)
    sM = S @ pc.M.T if sM is None else sM
    H -= sM[:, :, None] * sM[:, None, :]
    H *= pc.lam
    H += pc.a2 * pc.WWt
    return H


def code_gradient(
    pc: Precomputed, U: torch.Tensor, gM: torch.Tensor, AWt: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row gradients ``g_i`` (module docstring) at codes ``U``; ``gM = (S − P) Mᵀ``
    (``AWt``: ``A Wᵀ`` of these rows, when they are not all of ``pc``'s)."""
    return pc.a2 * (U @ pc.WWt - (pc.AWt if AWt is None else AWt)) + pc.lam * gM


def free_set(U: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Bertsekas' free variables per row: not in the ε-active set ``{u_k ≤ ε, g_k > 0}`` (``ε`` =
    the row's projected-gradient norm, capped at ``EPS_ACTIVE``)."""
    eps = (U - (U - g).clamp(min=0)).norm(dim=1, keepdim=True).clamp(max=EPS_ACTIVE)
    return ~((U <= eps) & (g > 0))


def free_cholesky(
    H: torch.Tensor, free: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the Cholesky factor of ``H`` restricted to the free set, with the active
    variables decoupled on their diagonal. Returns ``(factor, ok rows, clamped diagonal of H)``;
    a row that is not positive definite in float rounding has ``ok`` False."""
    H_diag = H.diagonal(dim1=1, dim2=2)
    diag = H_diag.clamp(min=1e-30)
    f = free.to(H.dtype)
    # the active variables' rows and columns zeroed by one product with the 0/1 outer product and
    # their diagonal set in place: fewer passes over (n, r, r) than a where and a diag_embed
    Hm = H * (f[:, :, None] * f[:, None, :])
    Hm.diagonal(dim1=1, dim2=2).copy_(torch.where(free, H_diag, diag))
    L, info = torch.linalg.cholesky_ex(Hm)
    return L, info == 0, diag


def newton_direction(
    H: torch.Tensor,
    g: torch.Tensor,
    free: torch.Tensor,
    U: torch.Tensor | None = None,
    resolves: int = 0,
) -> torch.Tensor:
    """Newton step on the free set, diagonally scaled gradient step on the active set; with the
    codes ``U``, rows whose step would push free variables below 0 are re-solved with those
    variables sent to 0 (:func:`_resolve_clipped`)."""
    L, ok, diag = free_cholesky(H, free)
    d = torch.cholesky_solve(g.unsqueeze(2), L).squeeze(2)
    bad = ~ok
    if bool(bad.any()):  # not positive definite in float rounding: scaled gradient for that row
        d[bad] = g[bad] / diag[bad]
    if U is not None and resolves > 0:
        d = _resolve_clipped(H, g, free, U, d, resolves)
    return d


def _model_value(
    H: torch.Tensor, g: torch.Tensor, U: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """Per row, the quadratic model ``gᵀΔ + ½ ΔᵀHΔ`` of the full projected step ``Δ = [U − d]₊ − U``."""
    step = (U - d).clamp(min=0) - U
    return (g * step).sum(dim=1) + 0.5 * (step * (H @ step.unsqueeze(2)).squeeze(2)).sum(dim=1)


def _resolve_clipped(
    H: torch.Tensor,
    g: torch.Tensor,
    free: torch.Tensor,
    U: torch.Tensor,
    d: torch.Tensor,
    resolves: int,
) -> torch.Tensor:
    """The Newton step with the free variables it would push below 0 sent exactly to 0.

    The projection of a Newton step clips such variables, and the other variables' step then
    ignores that they moved: the active set is found one layer per iteration. Here, per row,
    the clipped set ``Z`` is fixed at ``d_Z = u_Z`` and the rest of the free set re-solved,
    ``H_FF d_F = g_F − H_FZ u_Z`` (up to ``resolves`` times, ``Z`` growing with new
    violations). Once no violation remains, ``u − t d`` stays ≥ 0 for ``t ≤ 1`` (a straight
    segment). The result is kept for a row only when the quadratic model of its full projected
    step is negative and below that of the projected Newton step, and its first-order decrease
    on the free set is positive: a descent direction for the line search, which still accepts
    only true decreases.
    """
    Z = free & (U - d < 0)
    rows = Z.any(dim=1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return d
    Hs, gs, fs, Us, ds, Zs = H[rows], g[rows], free[rows], U[rows], d[rows], Z[rows]
    zero = torch.zeros((), dtype=U.dtype, device=U.device)
    cand, usable = ds, torch.zeros(len(rows), dtype=torch.bool, device=U.device)
    for _ in range(resolves):
        F = fs & ~Zs
        dZ = torch.where(Zs, Us, zero)
        rhs = gs - (Hs @ dZ.unsqueeze(2)).squeeze(2)
        L, ok, _ = free_cholesky(Hs, F)
        x = torch.cholesky_solve(rhs.unsqueeze(2), L).squeeze(2)
        cand = torch.where(F, x, torch.where(Zs, Us, ds))
        usable = ok
        more = F & (Us - cand < 0) & ok[:, None]
        if not bool(more.any()):
            break
        Zs = Zs | more
    m_new = _model_value(Hs, gs, Us, cand)
    descent = torch.where(fs, gs * cand, zero).sum(dim=1) > 0
    better = usable & descent & (m_new < 0) & (m_new < _model_value(Hs, gs, Us, ds))
    d = d.clone()
    d[rows] = torch.where(better[:, None], cand, ds)
    return d


def solve_codes_newton(
    prob: Problem, W: torch.Tensor, U: torch.Tensor, **options: Any
) -> tuple[torch.Tensor, int]:
    """Projected Newton on all rows from ``U`` (:func:`newton_codes`, whose keyword arguments it
    takes). Returns ``(U, iterations)``."""
    U, it, _ = newton_codes(prob, W, U, **options)
    return U, it


def newton_codes(
    prob: Problem,
    W: torch.Tensor,
    U: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    f0: float,
    resolves: int | None = None,
    logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Projected Newton on all rows from ``U``; ``f0`` = the objective at ``U`` (for ``tol``).

    ``resolves``: re-solves of each Newton step with the variables it clips sent to 0
    (:func:`_resolve_clipped`; default ``RESOLVES``, 0 for Bertsekas' plain step).
    ``logits``: ``h(U W)`` of all rows, when the caller has them (the first iteration's logits
    product is then skipped). Returns ``(U, iterations, objective at U)``: the objective is
    ``f0`` minus the rows' decreases, each computed as an accurate difference
    (:func:`row_decrease`), so no evaluation of the objective is needed after the step."""
    resolves = RESOLVES if resolves is None else resolves
    pc = precompute(prob, W)
    P, b = prob.target_P, prob.kl_head.b
    n = U.shape[0]
    U = U.clone()
    f = f0
    it = 0
    step = torch.full((n, 1), 0.5, dtype=U.dtype, device=U.device)
    pM = P @ pc.M.T
    # The rows still moving. Rows are independent (W is fixed), so a row whose full step promised
    # (almost) nothing keeps its codes, would promise the same again, and is left out from then on.
    active: torch.Tensor | None = None  # None: all rows
    for it in range(1, max_iter + 1):  # noqa: B007 (returned after the loop)
        if active is None:
            Ua, AWa, Pa, pMa, sta, ba = U, pc.AWt, P, pM, step, b
        else:
            Ua, AWa, Pa, pMa, sta = U[active], pc.AWt[active], P[active], pM[active], step[active]
            ba = b[active] if b.dim() == 2 and b.shape[0] == n else b  # a per-row bias
        m = Ua.shape[0]
        Z = logits if active is None and logits is not None else torch.addmm(ba, Ua, pc.M)
        logS = torch.log_softmax(Z, dim=1)
        S = logS.exp()
        sM = S @ pc.M.T
        rows = Rows(Ua, AWa, Pa, logS, S, sM, pMa)
        g = code_gradient(pc, Ua, sM - pMa, AWa)
        free = free_set(Ua, g)
        d = newton_direction(hessians(pc, S, sM), g, free, Ua if resolves else None, resolves)
        zero = torch.zeros((), dtype=U.dtype, device=U.device)
        gd_free = torch.where(free, g * d, zero).sum(dim=1)
        sta = (2.0 * sta).clamp_(max=1.0)  # each row starts from twice its last step
        # Rows whose full step promises (almost) nothing are done: trying them only meets rounding.
        full = (Ua - d).clamp(min=0)
        promise = gd_free + torch.where(free, zero, g * (Ua - full)).sum(dim=1)
        todo = promise > 0.01 * tol * max(f, 0.0)
        moving = todo.clone()
        Un = Ua.clone()
        gain = U.new_zeros(m)
        for _ in range(MAX_HALVINGS):
            if not bool(todo.any()):
                break
            idx = todo.nonzero().squeeze(1)
            sel = slice(None) if len(idx) == m else idx  # a view, not a copy, for all rows
            sub = rows if isinstance(sel, slice) else rows.take(sel)
            Ui, ti, fi, gi = sub.U, sta[sel], free[sel], g[sel]
            cand = (Ui - ti * d[sel]).clamp(min=0)
            delta = row_decrease(pc, sub, cand)
            # Bertsekas' Armijo rule along the projection arc: t·g_F·d_F + g_A·(u − u(t))_A.
            expected = ti.squeeze(1) * gd_free[sel] + torch.where(fi, zero, gi * (Ui - cand)).sum(
                dim=1
            )
            ok = (delta <= -ARMIJO * expected) & (delta <= 0)
            acc = idx[ok]
            Un[acc] = cand[ok]
            gain[acc] = -delta[ok]
            todo[acc] = False
            sta[idx[~ok]] *= 0.5
        if active is None:
            U, step = Un, sta
            if DROP_SETTLED_ROWS:
                active = moving.nonzero().squeeze(1)
        else:
            U[active], step[active] = Un, sta
            active = active[moving]
        decrease = float(gain.double().sum()) / n
        done = f <= 0 or decrease <= tol * f or (active is not None and active.numel() == 0)
        f -= decrease
        if done:
            break
    return U, it, f


__all__ = [
    "Rows",
    "code_gradient",
    "free_cholesky",
    "free_set",
    "hessians",
    "newton_codes",
    "precompute",
    "row_decrease",
    "solve_codes_newton",
]
