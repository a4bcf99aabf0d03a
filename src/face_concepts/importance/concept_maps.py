"""Where in an image each concept is: spatial concept maps and input-faithful maps.

Two kinds of map, both of shape (n_images, n_concepts, H, W):

* :func:`spatial_concept_maps` (what CRAFT and Xplique call concept attribution maps, and the
  heatmaps of docs/method.md §7.7): every spatial position of an image's feature map is treated as
  an activation vector, encoded with the single encoder against the concept bank, and each
  concept's channel is upsampled bilinearly to the image. Cheap, but it says where the
  *features* look like a concept, not what in the *input* produces the code.
* :func:`input_faithful_maps`: the gradient of each concept's code of the whole image with
  respect to the input pixels, taken through the network and through the encoder. The
  encoder is non-negative least squares ``u = argmin_{u ≥ 0} ‖a − u W‖²``, made
  differentiable by :func:`differentiable_nnls`: at the solution, the active concepts
  ``S = {k : u_k > 0}`` satisfy the unconstrained normal equations
  ``u_S (W_S W_Sᵀ) = a W_Sᵀ`` and the others are 0, so ``u`` is, locally (while the active
  set does not change), the linear map ``a ↦ a W_Sᵀ (W_S W_Sᵀ)^{-1}``; its derivative is
  exact, not an unrolled approximation. Absent concepts (``u_k = 0``) get an all-zero map.
  The KL term of the encoder (``kl_weight > 0``) is not included in these maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from face_concepts._core.validation import as_float_tensor, check_choice, check_float, check_int

MAP_MODES = ("gradient_x_input", "gradient")


def _image_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return (
            check_int(image_size[0], "image_size[0]", minimum=1),
            check_int(image_size[1], "image_size[1]", minimum=1),
        )
    size = check_int(image_size, "image_size", minimum=1)
    return (size, size)


def spatial_concept_maps(
    feature_maps: Any,
    W: Any,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    kl_weight: float = 0.0,
    image_size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Encode every spatial position of feature maps and upsample each concept to the image.

    Parameters
    ----------
    feature_maps : Tensor of shape (n_images, n_features, h, w), non-negative
        Feature maps ``g(x)`` at the layer the concept bank was fitted on.
    W : Tensor of shape (n_concepts, n_features)
        Concept bank.
    head : callable, optional
        Classifier head, forwarded to the default encoder (used only when ``kl_weight > 0``).
    encoder : callable ``(A (m, p), W) -> U (m, r)``, optional
        Encoder for the positions. Default: the project's single encoder
        ``face_concepts.decomposition.encode(A, W, head, kl_weight=kl_weight)``. A custom
        encoder must close over any head it needs (passing ``head`` or ``kl_weight`` with it
        is an error, so that neither is silently ignored).
    kl_weight : float, default 0.0
        λ of the default encoder.
    image_size : int or (H, W), optional
        Bilinear upsampling target (``align_corners=False``). ``None`` keeps (h, w).

    Returns
    -------
    Tensor of shape (n_images, n_concepts, H, W)

    Examples
    --------
    >>> W = torch.eye(2, 3)
    >>> fm = torch.rand(1, 3, 2, 2)
    >>> spatial_concept_maps(fm, W, encoder=lambda A, W: A[:, :2], image_size=8).shape
    torch.Size([1, 2, 8, 8])
    """
    W = as_float_tensor(W, "W", ndim=2)
    # a signed bank (Semi-NMF, bank="signed") encodes a signed layer's maps
    fm = as_float_tensor(feature_maps, "feature_maps", ndim=4, non_negative=bool((W >= 0).all()))
    W = W.to(dtype=fm.dtype, device=fm.device)
    if W.shape[1] != fm.shape[1]:
        raise ValueError(f"feature_maps has {fm.shape[1]} channels but W has {W.shape[1]} columns")
    size = _image_size(image_size)
    kl_weight = check_float(kl_weight, "kl_weight", minimum=0.0)
    if encoder is None:
        from face_concepts.decomposition import encode

        def encoder(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
            return encode(A, W, head, kl_weight=kl_weight)

    elif head is not None or kl_weight != 0.0:
        raise ValueError(
            "head and kl_weight configure the default encoder; with a custom encoder, close over them"
        )
    n, p, h, w = fm.shape
    A = fm.permute(0, 2, 3, 1).reshape(n * h * w, p)
    U = torch.as_tensor(encoder(A, W)).to(device=fm.device, dtype=fm.dtype)
    if U.shape != (n * h * w, W.shape[0]):
        raise ValueError(
            f"encoder returned shape {tuple(U.shape)}, expected {(n * h * w, W.shape[0])}"
        )
    maps = U.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous()
    if size is not None and size != (h, w):
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps


def _lawson_hanson(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    # scipy's exact active-set NNLS, row by row: it gives the exact active set that the
    # closed form needs (an iterative solver leaves tiny positive values on inactive codes).
    Wt = W.detach().to("cpu", torch.float64).numpy().T
    rows = A.detach().to("cpu", torch.float64).numpy()
    return torch.from_numpy(np.stack([nnls(Wt, a)[0] for a in rows])).to(A.device, A.dtype)


def _solve_on_active(A: torch.Tensor, W: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    r = W.shape[0]
    G = W @ W.T
    ridge = 1e-12 * float(G.diagonal().sum().detach()) + 1e-30  # guards exactly collinear concepts
    m = active.to(A.dtype)
    eye = torch.eye(r, dtype=A.dtype, device=A.device)
    # Rows: restrict G to S × S and put the identity on the inactive block, so the inactive
    # codes solve 1 · u_k = 0 and the active ones the normal equations, in one batched solve.
    Gb = G * (m[:, :, None] * m[:, None, :]) + eye * (1 - m)[:, None, :] + ridge * eye
    rhs = (A @ W.T) * m
    return torch.linalg.solve(Gb, rhs.unsqueeze(-1)).squeeze(-1)


def _repair_active_set(
    A: torch.Tensor, W: torch.Tensor, active: torch.Tensor, max_drops: int
) -> torch.Tensor:
    """Make a proposed active set the exact NNLS one (no autograd)."""
    active = active.clone()
    for _ in range(max_drops):
        negative = (_solve_on_active(A, W, active) < 0) & active
        if not bool(negative.any()):
            break
        active &= ~negative
    # KKT for the inactive codes: the objective must not decrease when one of them grows,
    # i.e. (u W Wᵀ − a Wᵀ)_k ≥ 0. Rows that fail (or still hold negative codes) are solved
    # exactly by Lawson–Hanson.
    U = _solve_on_active(A, W, active) * active.to(A.dtype)
    AWt = A @ W.T
    slack = torch.finfo(A.dtype).eps ** 0.5 * (AWt.abs().amax(dim=1, keepdim=True) + 1e-30)
    bad = (((U @ (W @ W.T) - AWt) < -slack) & ~active).any(dim=1) | (U < 0).any(dim=1)
    if bool(bad.any()):
        active[bad] = _lawson_hanson(A[bad], W) > 0
    return active


def differentiable_nnls(
    A: torch.Tensor,
    W: torch.Tensor,
    *,
    active: torch.Tensor | None = None,
    max_drops: int | None = None,
) -> torch.Tensor:
    """Non-negative least-squares codes that autograd can differentiate (w.r.t. ``A`` and ``W``).

    The active set (concepts with a positive code) comes from ``active`` (bool (n, r)) or, by
    default, scipy's exact Lawson–Hanson NNLS; the codes are then the closed-form least-squares
    solution on it. A proposed active set is checked: concepts whose closed-form code is
    negative are dropped and the system re-solved (at most ``max_drops`` times, default ``r``),
    and rows that then violate the optimality (KKT) conditions are solved by Lawson–Hanson, so
    the result is always the NNLS solution.

    Parameters
    ----------
    A : Tensor of shape (n, p)
    W : Tensor of shape (r, p)
    active : bool Tensor of shape (n, r), optional
    max_drops : int, optional

    Returns
    -------
    Tensor of shape (n, r), non-negative; equals scipy's NNLS solution.

    Examples
    --------
    >>> W = torch.eye(2, 3, dtype=torch.float64)
    >>> a = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    >>> u = differentiable_nnls(a, W)
    >>> torch.allclose(u, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    True
    """
    with torch.no_grad():
        if active is None:
            active = _lawson_hanson(A, W) > 0
        else:
            active = torch.as_tensor(active, dtype=torch.bool, device=A.device)
            if active.shape != (A.shape[0], W.shape[0]):
                raise ValueError(
                    f"active must have shape {(A.shape[0], W.shape[0])}, got {tuple(active.shape)}"
                )
            drops = (
                W.shape[0] if max_drops is None else check_int(max_drops, "max_drops", minimum=0)
            )
            active = _repair_active_set(A.detach(), W.detach(), active, drops)
    return _solve_on_active(A, W, active) * active.to(A.dtype)


def _pooled(
    split_features: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    feats = split_features(x)
    if feats.ndim == 4:
        return feats.mean(dim=(2, 3))
    if feats.ndim != 2:
        raise ValueError(
            f"split_features must return (n, p) or (n, p, h, w), got shape {tuple(feats.shape)}"
        )
    return feats


def input_faithful_maps(
    split_features: Callable[[torch.Tensor], torch.Tensor],
    images: Any,
    W: Any,
    *,
    mode: str = "gradient_x_input",
    batch_size: int = 8,
    encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Gradient of each concept's code of the whole image with respect to the input.

    The code of an image is ``u = NNLS(mean_pool(g(x)), W)`` (see the module docstring and
    :func:`differentiable_nnls`); for each concept ``k``, ``∂u_k/∂x`` is backpropagated through
    the encoder and the network (one backward pass per concept and batch).

    Parameters
    ----------
    split_features : callable ``images -> (n, p, h, w)`` or ``(n, p)``
        The differentiable feature extractor ``g`` (a module in eval mode).
    images : Tensor of shape (n_images, channels, H, W)
        Preprocessed (normalised) images, as the model sees them.
    W : Tensor of shape (n_concepts, n_features)
    mode : {"gradient_x_input", "gradient"}
        ``"gradient_x_input"``: ``Σ_channels x ⊙ ∂u_k/∂x``, signed (positive: pixels that
        raise the code). For a bias-free ReLU network it sums over pixels to ``u_k`` exactly
        (the code is positively homogeneous in ``x``). ``"gradient"``: ``max_channels
        |∂u_k/∂x|`` (saliency magnitude, non-negative).
    batch_size : int, default 8
        Images per forward/backward pass.
    encoder : callable ``(A, W) -> U``, optional
        Used only to choose the active set (e.g. the project's ``encode``); the default is
        scipy's exact NNLS. The codes themselves always come from the closed form.

    Returns
    -------
    Tensor of shape (n_images, n_concepts, H, W), dtype of ``images``

    Examples
    --------
    >>> g = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.ReLU())
    >>> input_faithful_maps(g, torch.rand(2, 3, 8, 8), torch.rand(2, 4)).shape
    torch.Size([2, 2, 8, 8])
    """
    images = as_float_tensor(images, "images", ndim=4)
    W = as_float_tensor(W, "W", ndim=2, dtype=images.dtype, device=images.device)
    check_choice(mode, "mode", MAP_MODES)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].clone().requires_grad_(True)
        with torch.enable_grad():
            A = _pooled(split_features, x)
            if A.shape[1] != W.shape[1]:
                raise ValueError(
                    f"split_features gives {A.shape[1]} features but W has {W.shape[1]} columns"
                )
            active = None if encoder is None else torch.as_tensor(encoder(A.detach(), W)) > 0
            U = differentiable_nnls(A, W, active=active)
            maps = []
            for k in range(W.shape[0]):
                # Images are independent in eval mode, so one backward of the batch sum gives
                # every image's own gradient.
                (grad,) = torch.autograd.grad(
                    U[:, k].sum(), x, retain_graph=k + 1 < W.shape[0], allow_unused=True
                )
                grad = torch.zeros_like(x) if grad is None else grad
                maps.append((x * grad).sum(1) if mode == "gradient_x_input" else grad.abs().amax(1))
        out.append(torch.stack(maps, dim=1).detach())
    return torch.cat(out)
