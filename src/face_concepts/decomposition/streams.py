"""Where mini-batch fits read rows from, and the checks of their settings.

A source is a tensor/array (n, p) or a *re-iterable* of (m, p) batches (each ``iter()`` starts
a new pass): a list of tensors, or :class:`CachedActivations` over an activation cache entry.
``rechunk`` turns any of them into batches of exactly ``batch_size`` rows while holding only one
batch plus one source item.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from face_concepts._core.validation import as_float_tensor, check_choice, check_float, check_int
from face_concepts.activations.cache import CachedActivations
from face_concepts.activations.inputs import _rechunk
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.init import INITS
from face_concepts.decomposition.losses import HEAD_REQUIRED, SIGNED_HINT


def rechunk(
    source: Any, batch_size: int, p: int | None = None, non_negative: bool = True
) -> Iterator[torch.Tensor]:
    """Batches of exactly ``batch_size`` rows (the last may be shorter) from a tensor or an
    iterable of (m, p) tensors; only ``batch_size`` + one source item are held at a time.
    ``non_negative=False``: signed rows (the signed bank).
    """
    if isinstance(source, torch.Tensor) or not isinstance(source, Iterable):
        source = [as_float_tensor(source, "A", non_negative=non_negative, sign_hint=SIGNED_HINT)]

    def checked() -> Iterator[torch.Tensor]:
        for item in source:
            t = as_float_tensor(item, "A batch", non_negative=non_negative, sign_hint=SIGNED_HINT)
            if p is not None and t.shape[1] != p:
                raise ValueError(f"A batch has {t.shape[1]} features, expected {p}")
            yield t

    return _rechunk(checked(), batch_size)


def check_source(source: Any) -> Any:
    """A tensor/array, or a re-iterable of batches (a one-shot iterator cannot be read twice)."""
    if isinstance(source, Iterator):
        raise TypeError(
            "A must be a tensor (n, p) or a re-iterable source of batches (a list, a "
            "CachedActivations, an object whose __iter__ starts a new pass); got a one-shot "
            "iterator, which cannot be read once per epoch — use partial_fit for it"
        )
    return source


def total_rows(source: Any) -> int | None:
    """Rows per pass of a source when known without reading it (progress bars); else None."""
    if isinstance(source, torch.Tensor) or hasattr(source, "shape"):
        return int(source.shape[0])
    if isinstance(source, CachedActivations):
        return len(source) or None
    if isinstance(source, (list, tuple)) and all(hasattr(t, "shape") for t in source):
        return int(sum(t.shape[0] for t in source))
    return None


def first_batch(source: Any, batch_size: int, non_negative: bool = True) -> torch.Tensor:
    """The first batch of a pass (used to validate and initialise)."""
    for A in rechunk(source, batch_size, non_negative=non_negative):
        return A
    raise ValueError("A is empty: the source yielded no rows")


def validate(est: Any, A0: torch.Tensor) -> tuple[Head | None, int, float, str]:
    """Check an estimator's settings against the first batch; returns (head, r, λ, init)."""
    p = A0.shape[1]
    r = check_int(est.n_concepts, "n_concepts", minimum=1, maximum=p)
    lam = check_float(est.kl_weight, "kl_weight", minimum=0.0)
    if est.solver not in ("auto", "hals"):
        raise ValueError(
            f"solver={est.solver!r} cannot be used with batch_size (the mini-batch W update is "
            "MM-HALS on running statistics); use solver='auto' or batch_size=None"
        )
    init = check_choice(est.init, "init", ("auto", *INITS))
    head = None
    if lam > 0:
        if est.head is None:
            raise ValueError(HEAD_REQUIRED)
        head = Head(est.head, dtype=A0.dtype, device=A0.device)
        head.check(p)
        if not head.is_affine:
            raise ValueError(
                "batch_size needs an affine head (nn.Linear, or Dropout + Linear in eval mode) "
                "when kl_weight > 0: its running statistics use h(x) = x Vᵀ + b. Fit this head "
                "with batch_size=None (solver 'pgd')"
            )
    auto = "signed-svd" if getattr(est, "bank", None) == "signed" else "nndsvda"
    return head, r, lam, auto if init == "auto" else init


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int (ValueError/TypeError naming it otherwise)."""
    return check_int(batch_size, "batch_size", minimum=1)


def check_forget_factor(value: Any) -> float:
    """``forget_factor`` in [0, 1]."""
    return check_float(value, "forget_factor", minimum=0.0, maximum=1.0)


__all__ = [
    "CachedActivations",
    "check_batch_size",
    "check_forget_factor",
    "check_source",
    "first_batch",
    "rechunk",
    "total_rows",
    "validate",
]
