"""Input checks that name the offending parameter and value.

Never ``assert`` user input (it disappears under ``python -O``); raise ``ValueError`` /
``TypeError`` with a message a user can act on.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` as an int, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    strict_minimum: bool = False,
    maximum: float | None = None,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not strict_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def as_float_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | None = 2,
    non_negative: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    sign_hint: str = "use a post-ReLU layer",
) -> torch.Tensor:
    """Convert array-likes to a floating tensor and check shape, finiteness and sign
    (``sign_hint``: what the error for negative entries advises).

    Integer and boolean inputs become float32; float64 stays float64 unless ``dtype`` says
    otherwise.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from exc
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.float32)
    elif t.dtype in (torch.float16, torch.bfloat16):
        # Half precision overflows in the Gram products; compute in float32.
        t = t.to(torch.float32)
    if device is not None:
        t = t.to(device)
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s); check the model/precision "
            "that produced it (half precision overflows are a common cause)"
        )
    if non_negative:
        mn = float(t.min())
        if mn < 0:
            raise ValueError(
                f"{name} must be non-negative (NMF factorises non-negative activations), "
                f"but its minimum is {mn:.4g}; {sign_hint}"
            )
    return t


def dead_concepts(U: torch.Tensor, W: torch.Tensor, *, rtol: float = 1e-9) -> list[int]:
    """Indices of concepts that contribute nothing to the reconstruction ``U W``.

    Concept ``k`` is dead when ``max_i U[i, k] · ‖W[k]‖`` is at most ``rtol`` times the largest
    such value over all concepts: its code is zero on every sample or its direction is zero, so
    it explains nothing and its importance is zero. This happens when ``n_concepts`` exceeds
    the number of patterns the data holds.

    Examples
    --------
    >>> U = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    >>> dead_concepts(U, torch.ones(2, 3))
    [1]
    """
    U, W = U.detach().double(), W.detach().double()
    if U.ndim != 2 or W.ndim != 2 or U.shape[1] != W.shape[0]:
        raise ValueError(
            f"U (n, r) and W (r, p) must agree in r, got {tuple(U.shape)} and {tuple(W.shape)}"
        )
    size = U.amax(dim=0).clamp(min=0) * torch.linalg.vector_norm(W, dim=1)
    top = float(size.max()) if size.numel() else 0.0
    return [int(k) for k in torch.nonzero(size <= rtol * top).reshape(-1)]


def with_cli_message(exc: BaseException, cli_message: str) -> BaseException:
    """Attach the command line's wording of an error whose message speaks Python.

    Library errors name arguments (``signed='posneg'``); the command line shows
    ``exc.cli_message`` instead, which names flags (``--signed posneg``), so that every hint
    can be followed from the interface the user is in.

    Examples
    --------
    >>> err = with_cli_message(ValueError("pass signed='posneg'"), "pass --signed posneg")
    >>> str(err), err.cli_message
    ("pass signed='posneg'", 'pass --signed posneg')
    """
    exc.cli_message = cli_message  # type: ignore[attr-defined]
    return exc
