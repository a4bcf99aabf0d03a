"""Recognise affine classifier heads and expose ``h(x) = x Vᵀ + b``.

An affine head lets the engine compute logits of a reconstruction as ``U (W Vᵀ) + b`` without
materialising ``U W`` (docs/method.md §2.2). Recognised: ``nn.Linear``; ``nn.Sequential`` of Linear
layers and layers that are the identity in eval mode (Dropout, Identity, Flatten on 2-D input);
anything exposing ``affine_parameters() -> (V, b)``. Composed Linear layers are folded.
"""

from __future__ import annotations

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
        V: torch.Tensor | None = None
        b: torch.Tensor | None = None
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
            Vi, bi = sub
            if V is None:
                V, b = Vi, bi
            else:
                # (x Vᵀ + b) Viᵀ + bi = x (Vi V)ᵀ + (Vi b + bi)
                b = Vi @ b + bi
                V = Vi @ V
        if V is None:
            return None
        return V, b
    return None
