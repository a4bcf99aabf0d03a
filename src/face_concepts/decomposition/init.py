"""Initialisations of ``U`` (n, r) and ``W`` (r, p) for ``A ≈ U W``.

- ``nndsvd``: Boutsidis & Gallopoulos (2008), as in scikit-learn (zeros stay zero).
- ``nndsvda``: ``nndsvd`` with zeros filled by the mean of ``A`` (scikit-learn's default).
- ``nndsvd-authors``: the FACE authors' variant (docs/method.md §3): first pair ``√s₀|u₀|, √s₀|v₀|``;
  for ``i ≥ 1`` the positive or negative parts (larger product of norms), each normalised to
  unit norm and scaled by ``√s_i`` (no product-of-norms factor).
- ``random``: ``sqrt(mean(A) / r) · |N(0, 1)|`` from a seeded CPU generator (scikit-learn's;
  ``mean |A|`` for a signed ``A``).
- ``signed-svd`` (the signed bank's, ``semi_nmf.py``): each singular triplet ``s u vᵀ`` is
  written ``s u⁺ vᵀ + s u⁻ (−v)ᵀ`` with ``u± = max(±u, 0)``: two non-negative code columns and
  two opposite directions, so the start reproduces the rank-⌊r/2⌋ SVD exactly.
All use the leading r singular triplets: a full SVD for small ``A``, a seeded randomized one for
large ``A`` (the authors' code uses a full SVD).
"""

from __future__ import annotations

import math

import torch

from face_concepts._core.seeding import make_generator

INITS = ("nndsvd", "nndsvda", "nndsvd-authors", "random", "custom", "signed-svd")
SIGNED_INITS = ("signed-svd", "random", "custom")  # those that the signed bank accepts


# From this size (n·p) on, and with r ≤ min(n, p) / 8, the leading r singular triplets come from
# a seeded randomized range finder (Halko, Martinsson & Tropp 2011; scikit-learn's nndsvd does
# the same) instead of a full float64 SVD, which took 1.2 s on a quiet machine and 14 s on a
# busy one for the 3,311 × 1,280 benchmark matrix — as long as a whole scikit-learn NMF fit.
RANDOMIZED_SVD_MIN_SIZE = 500_000
OVERSAMPLES = 10
POWER_ITERATIONS = 7


def _randomized_range(A: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal (n, k) basis of A's dominant range: a Gaussian sketch from a fixed local
    generator (the init stays deterministic) and power iterations, re-orthonormalised."""
    g = torch.Generator(device="cpu").manual_seed(0)
    omega = torch.randn(A.shape[1], k, generator=g, dtype=A.dtype).to(A.device)
    Q = torch.linalg.qr(A @ omega).Q
    for _ in range(POWER_ITERATIONS):
        Q = torch.linalg.qr(A.T @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    return Q


def _thin_svd(A: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leading ``r`` singular triplets; the (small) final SVD in float64 for a stable
    sign/ordering across dtypes and devices."""
    n, p = A.shape
    k = r + OVERSAMPLES
    if n * p >= RANDOMIZED_SVD_MIN_SIZE and 8 * r <= min(n, p):
        Q = _randomized_range(A, k)
        Ub, S, Vh = torch.linalg.svd((Q.T @ A).double(), full_matrices=False)
        return (Q.double() @ Ub)[:, :r], S[:r], Vh[:r]
    Us, S, Vh = torch.linalg.svd(A.double(), full_matrices=False)
    return Us[:, :r], S[:r], Vh[:r]


def _sign_fix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # An SVD pair is defined up to a joint sign; make the first pair mostly positive.
    if x.sum() < 0:
        return -x, -y
    return x, y


def nndsvd(
    A: torch.Tensor, r: int, *, variant: str = "nndsvd"
) -> tuple[torch.Tensor, torch.Tensor]:
    """NNDSVD initialisation; ``variant`` in {"nndsvd", "nndsvda", "nndsvd-authors"}."""
    Us, S, Vh = _thin_svd(A, r)
    n, p = A.shape
    U = torch.zeros(n, r, dtype=torch.float64, device=A.device)
    W = torch.zeros(r, p, dtype=torch.float64, device=A.device)
    x0, y0 = _sign_fix(Us[:, 0], Vh[0])
    U[:, 0] = S[0].sqrt() * x0.abs()
    W[0] = S[0].sqrt() * y0.abs()
    for j in range(1, r):
        x, y = Us[:, j], Vh[j]
        xp, xn, yp, yn = x.clamp(min=0), (-x).clamp(min=0), y.clamp(min=0), (-y).clamp(min=0)
        xpn, xnn, ypn, ynn = xp.norm(), xn.norm(), yp.norm(), yn.norm()
        mp, mn = xpn * ypn, xnn * ynn
        if mp > mn:
            u, v, xnorm, ynorm, sigma = xp, yp, xpn, ypn, mp
        else:
            u, v, xnorm, ynorm, sigma = xn, yn, xnn, ynn, mn
        if xnorm == 0 or ynorm == 0:
            continue
        scale = S[j].sqrt() if variant == "nndsvd-authors" else (S[j] * sigma).sqrt()
        U[:, j] = scale * u / xnorm
        W[j] = scale * v / ynorm
    if variant == "nndsvda":
        avg = A.double().mean()
        U[U == 0] = avg
        W[W == 0] = avg
    return U.to(A.dtype), W.to(A.dtype)


def random_init(A: torch.Tensor, r: int, random_state: object) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's random init, drawn on the CPU from a local generator."""
    g = make_generator(random_state)
    avg = math.sqrt(max(float(A.double().abs().mean()), 1e-12) / r)
    U = avg * torch.randn(A.shape[0], r, generator=g, dtype=torch.float64).abs()
    W = avg * torch.randn(r, A.shape[1], generator=g, dtype=torch.float64).abs()
    return U.to(device=A.device, dtype=A.dtype), W.to(device=A.device, dtype=A.dtype)


def signed_svd(A: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The signed bank's start (module docstring): ``U ≥ 0``, ``W`` signed, ``U W`` = the best
    rank-⌊r/2⌋ approximation of ``A`` (a part of a triplet that is zero is skipped)."""
    Us, S, Vh = _thin_svd(A, r)
    n, p = A.shape
    U = torch.zeros(n, r, dtype=torch.float64, device=A.device)
    W = torch.zeros(r, p, dtype=torch.float64, device=A.device)
    k = 0
    for j in range(S.shape[0]):
        root = S[j].sqrt()
        for sign in (1.0, -1.0):
            part = (sign * Us[:, j]).clamp(min=0)
            if k < r and float(part.norm()) > 1e-12:
                U[:, k], W[k] = root * part, sign * root * Vh[j]
                k += 1
    return U.to(A.dtype), W.to(A.dtype)


def initialize(
    A: torch.Tensor,
    r: int,
    init: str,
    *,
    random_state: object = None,
    U0: torch.Tensor | None = None,
    W0: torch.Tensor | None = None,
    signed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch on ``init``; ``custom`` takes ``U0``/``W0`` (copied, validated). ``signed``: the
    bank ``W`` may have either sign (``bank="signed"``); the codes are always ≥ 0."""
    if signed and init not in SIGNED_INITS:
        raise ValueError(
            f"init={init!r} starts a non-negative bank; with bank='signed' use one of "
            f"{list(SIGNED_INITS)} (or 'auto')"
        )
    if init == "signed-svd":
        if not signed:
            raise ValueError("init='signed-svd' gives a signed bank: use it with bank='signed'")
        return signed_svd(A, r)
    if init in ("nndsvd", "nndsvda", "nndsvd-authors"):
        return nndsvd(A, r, variant=init)
    if init == "random":
        return random_init(A, r, random_state)
    if init == "custom":
        if U0 is None or W0 is None:
            raise ValueError("init='custom' needs both U0 and W0 passed to fit")
        U0 = torch.as_tensor(U0).to(device=A.device, dtype=A.dtype).clone()
        W0 = torch.as_tensor(W0).to(device=A.device, dtype=A.dtype).clone()
        if U0.shape != (A.shape[0], r) or W0.shape != (r, A.shape[1]):
            raise ValueError(
                f"custom init shapes must be U0 {(A.shape[0], r)} and W0 {(r, A.shape[1])}, "
                f"got {tuple(U0.shape)} and {tuple(W0.shape)}"
            )
        if bool((U0 < 0).any()):
            raise ValueError("custom init U0 must be non-negative")
        if not signed and bool((W0 < 0).any()):
            raise ValueError(
                "custom init W0 must be non-negative (or fit with bank='signed' for a signed bank)"
            )
        return U0, W0
    raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
