"""The classifier head as the engine sees it: factored when affine (the one affine path,
:class:`face_concepts.models.head.AffineHead`), autograd otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from face_concepts.models.head import AffineHead
from face_concepts.models.modes import ensure_eval


class Head:
    """Wrap a head ``h: (n, p) -> (n, C)``.

    When ``h`` is affine (``h(x) = x Vᵀ + b``) the engine never materialises ``U W``:
    logits of a reconstruction are ``U (W Vᵀ) + b``. Otherwise ``h`` is called on ``U W``.
    """

    def __init__(
        self,
        head: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if not callable(head):
            raise TypeError(
                f"head must be an nn.Module or a callable (n, p) -> (n, C), got {type(head).__name__}"
            )
        self.module = head
        self.dtype = dtype
        self.device = device
        self.affine = AffineHead.of(head, dtype=dtype, device=device)
        if self.affine is not None:
            # V (C, p) and b (C,), which the engine's block steps read for gradients and curvature.
            self.V, self.b = self.affine.V, self.affine.b
        else:
            # None: the steps that read V and b run only for affine heads (``is_affine``).
            self.V = self.b = None  # type: ignore[assignment]
            # Dropout in training mode makes the head random; FACE needs a fixed function.
            ensure_eval(head, "the head")

    @property
    def is_affine(self) -> bool:
        return self.V is not None

    def _call(self, X: torch.Tensor) -> torch.Tensor:
        param_dtype = _module_dtype(self.module)
        out = self.module(X.to(param_dtype) if param_dtype is not None else X)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"head must return a tensor, got {type(out).__name__}")
        return out.to(self.dtype)

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """``h(X)`` for features ``X`` of shape (n, p)."""
        if self.affine is not None:
            return self.affine.logits(X)
        return self._call(X)

    def code_logits(self, U: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """``h(U W)``; factored (``U (W Vᵀ) + b``) when affine."""
        if self.affine is not None:
            return self.affine.code_logits(U, W)
        return self._call(U @ W)

    def check(self, p: int) -> int:
        """Validate the head on a probe of width ``p``; return the number of classes."""
        probe = torch.zeros(2, p, dtype=self.dtype, device=self.device)
        try:
            with torch.no_grad():
                out = self.logits(probe)
        except Exception as exc:  # a head that cannot take width p is a user error
            raise ValueError(f"head cannot be applied to features of width p={p}: {exc}") from exc
        if out.ndim != 2 or out.shape[0] != 2:
            raise ValueError(
                f"head must map (n, p) to 2-D logits (n, C); got output shape {tuple(out.shape)} for input (2, {p})"
            )
        return int(out.shape[1])


def _module_dtype(module: Any) -> torch.dtype | None:
    if isinstance(module, nn.Module):
        for t in module.parameters():
            return t.dtype
    return None
