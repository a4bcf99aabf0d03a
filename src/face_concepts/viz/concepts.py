"""Image figures: top-k crops per concept and concept heatmaps over an image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from face_concepts._core.validation import as_float_tensor, check_float, check_int
from face_concepts.viz._common import (
    as_unit_images,
    as_vector,
    concept_label,
    concept_order,
    to_hwc,
    with_class,
)

_PANEL_INCHES = 1.7


def top_crops(
    crops: Any,
    codes: Any,
    importance: Any,
    *,
    k: int = 6,
    n_concepts: int | None = None,
    class_name: str | None = None,
    preprocess: Any = None,
    labels: Sequence[str] | None = None,
) -> Figure:
    """Grid of the crops with the largest codes, one row per concept, by decreasing importance.

    Parameters
    ----------
    crops : Tensor of shape (M, 3, h, w)
        The crops (patches) whose codes are ``codes``; in [0, 1], or normalised with
        ``preprocess`` given.
    codes : Tensor of shape (M, r)
        Concept codes of the crops.
    importance : Tensor of shape (r,)
        Global importance; rows are sorted by it and labelled with it.
    k : int, default 6
        Crops per concept (columns).
    n_concepts : int, optional
        Show only the most important ones (default: all).
    class_name : str, optional
        Shown in the title (e.g. from the weights' metadata categories).
    preprocess : Preprocess, optional
        Used to denormalise normalised crops for display.
    labels : sequence of str, optional
        Concept names, indexed by concept id (default "concept i").

    Returns
    -------
    matplotlib.figure.Figure
        One axis per shown crop; the first axis of each row carries the concept label.

    Examples
    --------
    >>> import torch
    >>> fig = top_crops(torch.rand(10, 3, 8, 8), torch.rand(10, 3), torch.tensor([0.1, 0.7, 0.2]), k=2)
    >>> len(fig.axes)
    6
    """
    x = as_unit_images(crops, "crops", preprocess)
    U = as_float_tensor(codes, "codes", ndim=2).cpu()
    imp = as_vector(importance, "importance")
    if x.ndim != 4 or U.shape[0] != x.shape[0]:
        raise ValueError(
            f"crops (shape {tuple(x.shape)}) and codes (shape {tuple(U.shape)}) must have one row per crop"
        )
    if imp.shape[0] != U.shape[1]:
        raise ValueError(
            f"importance has {imp.shape[0]} entries but codes has {U.shape[1]} concepts"
        )
    k = min(check_int(k, "k", minimum=1), x.shape[0])
    if n_concepts is not None:
        n_concepts = check_int(n_concepts, "n_concepts", minimum=1)
    order = concept_order(imp, n_concepts)
    fig = Figure(
        figsize=(_PANEL_INCHES * k + 1.2, _PANEL_INCHES * len(order) + 0.6), layout="constrained"
    )
    axes = fig.subplots(len(order), k, squeeze=False)
    for row, concept in enumerate(order):
        best = torch.argsort(U[:, concept], descending=True, stable=True)[:k]
        for col, idx in enumerate(best.tolist()):
            ax = axes[row, col]
            ax.imshow(to_hwc(x[idx]), cmap="gray" if x.shape[1] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"u = {float(U[idx, concept]):.3g}", fontsize=8)
        axes[row, 0].set_ylabel(
            f"{concept_label(int(concept), labels)}\n(importance {imp[concept]:.3f})", fontsize=9
        )
    fig.suptitle(with_class(f"Top {k} crops per concept, by importance", class_name))
    return fig


def _resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]


def heatmap_overlay(
    image: Any,
    maps: Any,
    concepts: Sequence[int] | None = None,
    *,
    importance: Any = None,
    class_name: str | None = None,
    preprocess: Any = None,
    labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    n_cols: int = 4,
) -> Figure:
    """The image, then one panel per concept with its map overlaid.

    Non-negative maps (spatial concept maps, saliency) use ``cmap`` from 0 to the map's
    maximum; signed maps (Gradient×Input) use a diverging map symmetric around 0. Each panel
    is scaled on its own, so compare the location of concepts, not their strength.

    Parameters
    ----------
    image : Tensor of shape (3, H, W)
        In [0, 1], or normalised with ``preprocess`` given.
    maps : Tensor of shape (r, h, w)
        Concept maps of this image (e.g. one row of :func:`~face_concepts.importance.concept_maps.spatial_concept_maps`);
        resized bilinearly to (H, W) if needed.
    concepts : sequence of int, optional
        Concepts to show, in order. Default: all, by decreasing ``importance`` when given.
    importance : Tensor of shape (r,), optional
        Shown in the panel titles.
    class_name, preprocess, labels
        As in :func:`top_crops`.
    alpha : float, default 0.5
        Opacity of the heatmap.
    cmap : str, default "jet"
    n_cols : int, default 4
        Panels per row.

    Returns
    -------
    matplotlib.figure.Figure
        ``1 + len(concepts)`` axes; concept axes hold two images (the photo and the map).

    Examples
    --------
    >>> import torch
    >>> fig = heatmap_overlay(torch.rand(3, 16, 16), torch.rand(3, 4, 4), [2, 0])
    >>> [ax.get_title() for ax in fig.axes]
    ['image', 'concept 2', 'concept 0']
    """
    img = as_unit_images(image, "image", preprocess)
    if img.ndim != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(img.shape)}")
    size = (int(img.shape[-2]), int(img.shape[-1]))
    m = _resize_maps(as_float_tensor(maps, "maps", ndim=3).cpu(), size)
    imp = None if importance is None else as_vector(importance, "importance")
    if imp is not None and imp.shape[0] != m.shape[0]:
        raise ValueError(
            f"importance has {imp.shape[0]} entries but maps has {m.shape[0]} concepts"
        )
    if concepts is None:
        concepts = concept_order(imp, None).tolist() if imp is not None else list(range(m.shape[0]))
    concepts = [check_int(c, "concepts[i]", minimum=0, maximum=m.shape[0] - 1) for c in concepts]
    alpha = check_float(alpha, "alpha", minimum=0.0, maximum=1.0)
    n_panels = 1 + len(concepts)
    n_cols = min(check_int(n_cols, "n_cols", minimum=1), n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    fig = Figure(figsize=(2.6 * n_cols, 2.6 * n_rows + 0.5), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    photo = to_hwc(img)
    axes[0].imshow(photo)
    axes[0].set_title("image")
    for ax, c in zip(axes[1:n_panels], concepts):
        ax.imshow(photo)
        _overlay(ax, m[c].numpy(), alpha, cmap)
        title = concept_label(c, labels)
        ax.set_title(title if imp is None else f"{title} ({imp[c]:.3f})")
    for ax in axes[:n_panels]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(with_class("Where each concept is", class_name))
    return fig


def _overlay(ax: Any, heat: np.ndarray, alpha: float, cmap: str) -> None:
    lo, hi = float(heat.min()), float(heat.max())
    if lo < 0:
        bound = max(-lo, hi) or 1.0
        ax.imshow(heat, cmap="RdBu_r", vmin=-bound, vmax=bound, alpha=alpha)
    else:
        ax.imshow(heat, cmap=cmap, vmin=0.0, vmax=hi or 1.0, alpha=alpha)
