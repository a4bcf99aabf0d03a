"""Gradient×Input concept importance: ``u_i · ∂ logit_c(u W) / ∂u_i`` (docs/method.md §8.2).

For an affine head ``h(x) = x Vᵀ + b`` the class logit is ``Σ_i u_i (W Vᵀ)_{i,c} + b_c``, so
Gradient×Input is that sum's terms: an exact additive decomposition of the logit (minus the
bias), computed without autograd. Other differentiable heads go through autograd in batches.
Unlike Sobol total indices it is signed: a concept that lowers the logit gets a negative
value; rank by absolute value to compare with Sobol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from face_concepts._core.validation import check_int
from face_concepts.importance.sobol import _check_class, _check_inputs
from face_concepts.models.head import AffineHead

_DEFAULT_ROWS = 4096


def gradient_input(
    U: Any,
    W: Any,
    head: Callable[[torch.Tensor], torch.Tensor],
    class_id: int,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Per-image Gradient×Input of each concept for the logit of ``class_id``.

    Parameters
    ----------
    U : Tensor of shape (n_images, n_concepts)
    W : Tensor of shape (n_concepts, n_features)
    head : nn.Module or differentiable callable (m, n_features) -> (m, n_classes)
        Must treat rows independently (eval mode), since a batch's logits are summed before
        differentiating.
    class_id : int
    batch_size : int, optional
        Rows per autograd pass for non-affine heads (default 4096).

    Returns
    -------
    Tensor of shape (n_images, n_concepts), dtype of ``U``

    Examples
    --------
    >>> head = torch.nn.Linear(4, 3)
    >>> U, W = torch.rand(5, 2), torch.rand(2, 4)
    >>> gi = gradient_input(U, W, head, 2)
    >>> torch.allclose(gi.sum(1) + head.bias[2], head(U @ W)[:, 2], atol=1e-5)
    True
    """
    U, W = _check_inputs(U, W)
    affine = AffineHead.of(head)
    if affine is not None:
        class_id = _check_class(class_id, affine.n_classes)
        w_c, _ = affine.code_space(W.to(torch.float64), class_id)  # (r,): W V[class]ᵀ
        return (U.to(torch.float64) * w_c).to(U.dtype)
    if not callable(head):
        raise TypeError(f"head must be an nn.Module or a callable, got {type(head).__name__}")
    class_id = _check_class(class_id, None)
    batch_size = check_int(
        _DEFAULT_ROWS if batch_size is None else batch_size, "batch_size", minimum=1
    )
    out = []
    with torch.enable_grad():
        for start in range(0, U.shape[0], batch_size):
            u = U[start : start + batch_size].clone().requires_grad_(True)
            logits = head(u @ W)
            _check_class(class_id, logits.shape[1])
            (grad,) = torch.autograd.grad(logits[:, class_id].sum(), u)
            out.append((u * grad).detach())
    return torch.cat(out)
