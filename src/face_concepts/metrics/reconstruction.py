"""Reconstruction metrics of docs/method.md §9.2: MSE and relative ℓ2 of ``Ā − Û W``.

Both accumulate in float64 over row blocks, so they stay exact-enough and bounded in memory on
large activation matrices (patches as well as whole images).
"""

from __future__ import annotations

import math
import warnings

import torch

from face_concepts._core.validation import as_float_tensor, check_int

# Rows of U W materialised at once.
_ROWS = 8192


def _sums(A_bar: object, U_hat: object, W: object, batch_size: int) -> tuple[float, float, int]:
    """Return ``(‖Ā − ÛW‖²_F, ‖Ā‖²_F, number of entries)``."""
    U = as_float_tensor(U_hat, "U_hat")
    Wt = as_float_tensor(W, "W", dtype=U.dtype, device=U.device)
    A = as_float_tensor(A_bar, "A_bar", dtype=U.dtype, device=U.device)
    if U.shape[1] != Wt.shape[0]:
        raise ValueError(f"U_hat has {U.shape[1]} columns but W has {Wt.shape[0]} rows")
    if A.shape != (U.shape[0], Wt.shape[1]):
        raise ValueError(
            f"A_bar must have shape {(U.shape[0], Wt.shape[1])} to match U_hat and W, "
            f"got {tuple(A.shape)}"
        )
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    resid = norm_a = 0.0
    for start in range(0, A.shape[0], batch_size):
        a = A[start : start + batch_size].double()
        rec = (U[start : start + batch_size].double()) @ Wt.double()
        resid += float(((a - rec) ** 2).sum())
        norm_a += float((a**2).sum())
    return resid, norm_a, A.numel()


def mse(
    A_bar: torch.Tensor, U_hat: torch.Tensor, W: torch.Tensor, *, batch_size: int = _ROWS
) -> float:
    """Mean over entries of ``(Ā − Û W)²`` (the scaling of the §2 objective).

    Examples
    --------
    >>> mse(torch.ones(2, 2), torch.ones(2, 1), torch.ones(1, 2))
    0.0
    """
    resid, _, count = _sums(A_bar, U_hat, W, batch_size)
    return resid / count


def relative_l2(
    A_bar: torch.Tensor, U_hat: torch.Tensor, W: torch.Tensor, *, batch_size: int = _ROWS
) -> float:
    """Scale-free error ``‖Ā − Û W‖_F / ‖Ā‖_F``.

    Defined values when ``Ā = 0``: 0 if the reconstruction is also 0, else ``inf`` with a
    ``RuntimeWarning``.

    Examples
    --------
    >>> relative_l2(torch.full((2, 2), 2.0), torch.ones(2, 1), torch.ones(1, 2))
    0.5
    """
    resid, norm_a, _ = _sums(A_bar, U_hat, W, batch_size)
    if norm_a == 0.0:
        if resid == 0.0:
            return 0.0
        warnings.warn(
            "A_bar is all zeros, so the relative l2 error of a non-zero reconstruction is inf",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.inf
    return math.sqrt(resid / norm_a)
