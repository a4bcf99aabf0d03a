"""Sobol total-order concept importance (docs/method.md §8.1), vectorised over images and masks.

For an image code ``u`` (one row of ``U``) and each mask ``m`` of the design, the output is
the raw class logit ``y = h((u ⊙ m) W)[class_id]``. The per-image indices come from an
estimator applied to these outputs; the global importance of a class is their mean over the
class's images.

Two evaluation paths give the same numbers:

* affine head ``h(x) = x Vᵀ + b`` (``nn.Linear``, Dropout + Linear in eval mode, …): the class
  logit is ``m · (u ⊙ w_c) + b_c`` with ``w_c = W V[class]ᵀ``, so all images × all masks are
  one ``(n, r) × (r, n_masks)`` product; ``(u ⊙ m) W`` and the head are never evaluated;
* any other head: the masked codes of (image, mask) pairs are sent through ``W`` and the head
  in chunks of ``batch_size`` rows (no per-image Python loop).

``precision`` (:func:`importance_precision`): on the second path the head may run under bfloat16
autocast, where the hardware multiplies bfloat16 natively ("auto"). An intermediate layer's head
is the rest of the network, and these outputs are most of such a fit's time; bfloat16 rounding of
the logits (about 3 significant digits) is far below the spread of the estimator itself between
designs (``benchmarks/results/sobol_designs.md``). The estimators still run in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from face_concepts._core.device import native_bfloat16
from face_concepts._core.validation import as_float_tensor, check_choice, check_int
from face_concepts.importance.designs import sobol_design
from face_concepts.importance.estimators import get_estimator
from face_concepts.models.head import AffineHead, affine_parameters
from face_concepts.models.modes import mode_dependent

# Elements of the (rows × n_features) activation block materialised per head call by default.
_DEFAULT_CHUNK_ELEMENTS = 2**22
# What ``precision`` accepts: "full" runs the head in the codes' dtype.
PRECISIONS = ("auto", "full", "bfloat16")


def head_device(head: Any, fallback: Any) -> torch.device:
    """Where ``head`` computes: the device of its parameters, else ``fallback`` (a callable
    without parameters runs where its input is)."""
    if isinstance(head, torch.nn.Module):
        for t in head.parameters():
            return t.device
    return torch.device(fallback)


def importance_precision(
    precision: str, head: Any, device: Any, dtype: torch.dtype = torch.float32
) -> str:
    """The precision a head runs in for the Sobol outputs: "full" or "bfloat16".

    "full" (the codes' own dtype) for an affine head (its outputs are one float64 product) and
    for codes that are not float32 (autocast leaves float64 as it is). Otherwise "bfloat16" when
    asked, and for "auto" when ``device`` multiplies bfloat16 in hardware
    (:func:`~face_concepts._core.device.native_bfloat16`: a CPU with AMX, a CUDA device).

    Examples
    --------
    >>> importance_precision("auto", torch.nn.Linear(4, 3), "cpu")
    'full'
    >>> importance_precision("bfloat16", torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), "cpu")
    'bfloat16'
    """
    precision = check_choice(precision, "precision", PRECISIONS)
    if precision == "full" or dtype != torch.float32 or affine_parameters(head) is not None:
        return "full"
    if precision == "bfloat16":
        return "bfloat16"
    return "bfloat16" if native_bfloat16(device) else "full"


def _check_inputs(U: Any, W: Any) -> tuple[torch.Tensor, torch.Tensor]:
    U = as_float_tensor(U, "U", ndim=2)
    W = as_float_tensor(W, "W", ndim=2, dtype=U.dtype, device=U.device)
    if U.shape[1] != W.shape[0]:
        raise ValueError(
            f"U has {U.shape[1]} concepts (columns) but W has {W.shape[0]} (rows); "
            "they must come from the same concept bank"
        )
    return U, W


def _check_class(class_id: Any, n_classes: int | None) -> int:
    class_id = check_int(class_id, "class_id", minimum=0)
    if n_classes is not None and class_id >= n_classes:
        raise ValueError(
            f"class_id must be < {n_classes} (the head's number of classes), got {class_id}"
        )
    return class_id


def _affine_outputs(
    U: torch.Tensor, w_c: torch.Tensor, b_c: float, masks: torch.Tensor
) -> torch.Tensor:
    """Class logits ``(u ⊙ m) · w_c + b_c`` of all images × masks; ``w_c = W V[class]ᵀ`` (r,)."""
    z = U.to(torch.float64) * w_c  # (n, r): each concept's contribution to the logit
    return z @ masks.to(torch.float64).T + b_c


def _generic_outputs(
    U: torch.Tensor,
    W: torch.Tensor,
    head: Callable,
    class_id: int,
    masks: torch.Tensor,
    batch_size: int,
    precision: str,
) -> torch.Tensor:
    n, n_masks = U.shape[0], masks.shape[0]
    total = n * n_masks
    out = torch.empty(total, dtype=torch.float64, device=U.device)
    masks = masks.to(device=U.device, dtype=U.dtype)
    low = precision == "bfloat16"
    where = head_device(head, U.device).type  # the autocast's device: where the head computes
    with torch.no_grad():
        for start in range(0, total, batch_size):
            rows = torch.arange(start, min(start + batch_size, total), device=U.device)
            X = (U[rows // n_masks] * masks[rows % n_masks]) @ W  # float32, outside autocast
            with torch.autocast(where, dtype=torch.bfloat16, enabled=low):
                logits = head(X)
            if logits.ndim != 2:
                raise ValueError(
                    f"head must return (n, n_classes) logits, got shape {tuple(logits.shape)}"
                )
            _check_class(class_id, logits.shape[1])
            out[rows] = logits[:, class_id].to(torch.float64)
    return out.reshape(n, n_masks)


def sobol_indices(
    U: Any,
    W: Any,
    head: Callable[[torch.Tensor], torch.Tensor],
    class_id: int,
    *,
    n_designs: int = 32,
    design: str = "halton",
    estimator: str = "jansen",
    batch_size: int | None = None,
    random_state: Any = None,
    precision: str = "auto",
) -> torch.Tensor:
    """Per-image Sobol total indices of each concept for the logit of ``class_id``.

    Parameters
    ----------
    U : Tensor of shape (n_images, n_concepts)
        Concept codes of the images (one row per image), from the single encoder.
    W : Tensor of shape (n_concepts, n_features)
        Concept bank.
    head : nn.Module or callable (m, n_features) -> (m, n_classes)
        Maps activations to logits. Affine heads are detected and take the one-product path.
    class_id : int
        Class whose raw logit is explained.
    n_designs : int, default 32
        Base design size ``N_d``; the head sees ``N_d (r + 2)`` masked codes per image.
    design : {"halton", "sobol"}, default "halton"
        Unscrambled Halton (as CRAFT and FACE) or scrambled Sobol (seeded by ``random_state``).
    estimator : {"jansen", "saltelli"}, default "jansen"
    batch_size : int, optional
        Rows (image × mask pairs) per head call on the non-affine path. Default: about
        4 M activation values per call. Ignored by affine heads.
    random_state : None, int or generator
        Only used by ``design="sobol"``.
    precision : {"auto", "full", "bfloat16"}, default "auto"
        What a non-affine head runs in for float32 codes (:func:`importance_precision`): "auto"
        uses bfloat16 autocast where the hardware multiplies bfloat16 natively, else float32.

    Returns
    -------
    Tensor of shape (n_images, n_concepts), dtype of ``U``
        Images whose class logit does not vary under the masks (zero variance) get 0, with a
        warning.

    Examples
    --------
    >>> head = torch.nn.Linear(4, 3)
    >>> U, W = torch.rand(5, 2), torch.rand(2, 4)
    >>> sobol_indices(U, W, head, class_id=1).shape
    torch.Size([5, 2])
    """
    U, W = _check_inputs(U, W)
    n_designs = check_int(n_designs, "n_designs", minimum=2)
    estimate = get_estimator(estimator)
    masks = sobol_design(W.shape[0], n_designs, design, random_state=random_state)
    precision = importance_precision(precision, head, head_device(head, U.device), U.dtype)
    outputs_of = _outputs_function(W, head, class_id, batch_size, precision)
    # Chunk the images so that the (images × masks) output block stays small (about 32 MB).
    step = max(1, _DEFAULT_CHUNK_ELEMENTS // masks.shape[0])
    local, n_constant = [], 0
    for start in range(0, U.shape[0], step):
        outputs = outputs_of(U[start : start + step], masks)
        n_constant += int((outputs[:, :n_designs].var(dim=1) == 0).sum())
        local.append(estimate(outputs, n_designs))
    if n_constant:
        warnings.warn(
            f"{n_constant} image(s) have a class logit that does not change under the masks "
            "(e.g. an all-zero code); their Sobol indices are set to 0",
            RuntimeWarning,
            stacklevel=2,
        )
    return torch.cat(local).to(U.dtype)


def _outputs_function(
    W: torch.Tensor, head: Any, class_id: Any, batch_size: int | None, precision: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return ``(U_chunk, masks) -> outputs`` for the affine or the generic path."""
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", minimum=1)
    # A plain Linear in training mode is harmless; Dropout (random) and BatchNorm (batch
    # statistics) are not. The user's head is not switched here: only told.
    if mode_dependent(head):
        warnings.warn(
            "head has Dropout or BatchNorm layers in training mode, so its logits are random or "
            "batch-dependent; call head.eval() first",
            RuntimeWarning,
            stacklevel=3,
        )
    affine = AffineHead.of(head)
    if affine is not None:
        # float64: the estimators subtract nearby logits, and the cost here is negligible.
        cid = _check_class(class_id, affine.n_classes)
        w_c, b_c = affine.code_space(W.to(torch.float64), cid)
        return lambda U, masks: _affine_outputs(U, w_c, float(b_c), masks)
    if not callable(head):
        raise TypeError(f"head must be an nn.Module or a callable, got {type(head).__name__}")
    if batch_size is None:
        batch_size = max(1, _DEFAULT_CHUNK_ELEMENTS // W.shape[1])
    class_id = _check_class(class_id, None)
    return lambda U, masks: _generic_outputs(U, W, head, class_id, masks, batch_size, precision)


def sobol_importance(
    U: Any,
    W: Any,
    head: Callable[[torch.Tensor], torch.Tensor],
    class_id: int,
    *,
    n_designs: int = 32,
    design: str = "halton",
    estimator: str = "jansen",
    batch_size: int | None = None,
    random_state: Any = None,
    precision: str = "auto",
) -> torch.Tensor:
    """Global importance: the mean over images of :func:`sobol_indices` (shape (n_concepts,)).

    Examples
    --------
    >>> head = torch.nn.Linear(4, 3)
    >>> sobol_importance(torch.rand(5, 2), torch.rand(2, 4), head, class_id=0).shape
    torch.Size([2])
    """
    local = sobol_indices(
        U,
        W,
        head,
        class_id,
        n_designs=n_designs,
        design=design,
        estimator=estimator,
        batch_size=batch_size,
        random_state=random_state,
        precision=precision,
    )
    return local.mean(dim=0)
