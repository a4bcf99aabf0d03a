"""Shared helpers for the figures: input checks, image conversion, concept ordering."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from face_concepts._core.validation import as_float_tensor

# Images in [0, 1] may overshoot by interpolation rounding; beyond this they are not [0, 1].
_RANGE_SLACK = 1e-3


def as_unit_images(images: Any, name: str, preprocess: Any = None) -> torch.Tensor:
    """Return (N, 3, H, W) or (3, H, W) images in [0, 1], denormalising with ``preprocess``."""
    x = as_float_tensor(images, name, ndim=None).cpu()
    if x.ndim not in (3, 4) or x.shape[-3] not in (1, 3):
        raise ValueError(f"{name} must have shape (3, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
    if preprocess is not None:
        return preprocess.denormalize(x)
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(
            f"{name} must be in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); pass the "
            "model's Preprocess as preprocess= to denormalise normalised images"
        )
    return x.clamp(0, 1)


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, H, W) tensor → array for ``imshow``."""
    arr = image.detach().cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def as_vector(values: Any, name: str) -> np.ndarray:
    return as_float_tensor(values, name, ndim=1, dtype=torch.float64).cpu().numpy()


def concept_order(importance: np.ndarray, n_concepts: int | None) -> np.ndarray:
    """Concept indices sorted by decreasing importance (stable for ties), truncated."""
    order = np.argsort(-importance, kind="stable")
    return order if n_concepts is None else order[:n_concepts]


def concept_label(index: int, labels: Any = None) -> str:
    return str(labels[index]) if labels is not None else f"concept {index}"


def with_class(title: str, class_name: str | None) -> str:
    return title if class_name is None else f"{title} — {class_name}"
