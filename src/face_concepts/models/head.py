"""Recognise affine classifier heads and expose ``h(x) = x Vᵀ + b``: the package's one fast path.

An affine head lets the engine, the metrics and the importance estimators compute logits of a
reconstruction as ``U (W Vᵀ) + b`` without materialising ``U W`` (docs/method.md §2.2).
Recognised: ``nn.Linear``; ``nn.Sequential`` of Linear layers and layers that are the identity in
eval mode (Dropout, Identity, Flatten on 2-D input); anything exposing
``affine_parameters() -> (V, b)``. Composed Linear layers are folded.

:func:`affine_parameters` detects the head and returns ``(V, b)``; :class:`AffineHead` holds them
and computes the head's logits and its factored logits (:meth:`AffineHead.code_space`,
:meth:`AffineHead.code_logits`) for the engine's ``Head``, the metrics, Sobol and
Gradient×Input. The solvers' inner loops reuse ``Head.V`` for gradients and curvature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_IDENTITY_IN_EVAL = (nn.Dropout, nn.Dropout1d, nn.AlphaDropout, nn.Identity, nn.Flatten)


def affine_parameters(head: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return ``(V, b)`` with ``V`` of shape (C, p) and ``b`` of shape (C,), or ``None``.

    Dropout layers count as identity only when the module is in eval mode, because in
    training mode they are random and the head is not a fixed function.
    """
    if hasattr(head, "affine_parameters") and callable(head.affine_parameters):
        out = head.affine_parameters()
        if out is None:
            return None
        V, b = out
        return V.detach(), b.detach()
    if isinstance(head, nn.Linear):
        V = head.weight.detach()
        b = (
            head.bias.detach()
            if head.bias is not None
            else torch.zeros(V.shape[0], dtype=V.dtype, device=V.device)
        )
        return V, b
    if isinstance(head, nn.Sequential):
        return _fold(head)
    return None


def _fold(head: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(V, b)`` of a Sequential of affine layers and eval-mode identities, composed."""
    folded: tuple[torch.Tensor, torch.Tensor] | None = None
    for layer in head:
        if isinstance(layer, _IDENTITY_IN_EVAL):
            if (
                isinstance(layer, (nn.Dropout, nn.Dropout1d, nn.AlphaDropout))
                and layer.training
                and layer.p > 0
            ):
                return None
            continue
        sub = affine_parameters(layer)
        if sub is None:
            return None
        if folded is None:
            folded = sub
        else:
            # (x Vᵀ + b) Viᵀ + bi = x (Vi V)ᵀ + (Vi b + bi)
            (V, b), (Vi, bi) = folded, sub
            folded = (Vi @ V, Vi @ b + bi)
    return folded


@dataclass(frozen=True)
class AffineHead:
    """An affine head ``h(x) = x Vᵀ + b`` as its tensors ``V`` (C, p) and ``b`` (C,).

    Examples
    --------
    >>> lin = torch.nn.Linear(4, 3)
    >>> head = AffineHead.of(lin)
    >>> U, W = torch.rand(5, 2), torch.rand(2, 4)
    >>> torch.allclose(head.code_logits(U, W), lin(U @ W), atol=1e-6)
    True
    >>> AffineHead.of(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())) is None
    True
    """

    V: torch.Tensor
    b: torch.Tensor

    @classmethod
    def of(
        cls, head: Any, *, dtype: torch.dtype | None = None, device: Any = None
    ) -> AffineHead | None:
        """The affine head of ``head`` (see :func:`affine_parameters`), its tensors moved to
        ``dtype`` / ``device`` when given; ``None`` when ``head`` is not affine. Never changes
        ``head``."""
        ab = affine_parameters(head)
        if ab is None:
            return None
        V, b = ab
        return cls(V.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))

    @property
    def n_classes(self) -> int:
        """C, the number of logits."""
        return int(self.V.shape[0])

    @property
    def n_features(self) -> int:
        """p, the width of the activations the head takes."""
        return int(self.V.shape[1])

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """``h(X) = X Vᵀ + b`` for features ``X`` of shape (n, p)."""
        return torch.addmm(self.b, X, self.V.T)

    def code_space(self, W: torch.Tensor, classes: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The head seen from concept space: ``(M, b)`` with ``h(U W) = U M + b``, ``M = W Vᵀ``.

        ``V`` and ``b`` are taken in ``W``'s dtype and device. ``classes`` (an index, a slice
        or an index tensor of classes) keeps those rows of ``V`` and ``b`` before multiplying:
        an integer ``c`` gives ``M = W V[c]`` of shape (r,) and the scalar ``b[c]``.
        """
        if W.shape[1] != self.n_features:
            raise ValueError(
                f"head expects {self.n_features} features but W has {W.shape[1]} columns"
            )
        V = self.V.to(dtype=W.dtype, device=W.device)
        b = self.b.to(dtype=W.dtype, device=W.device)
        if classes is not None:
            V, b = V[classes], b[classes]
        return W @ (V.T if V.ndim == 2 else V), b

    def code_logits(self, U: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """``h(U W) = U (W Vᵀ) + b`` without forming ``U W``; (n, C)."""
        M, b = self.code_space(W)
        return torch.addmm(b, U, M)
