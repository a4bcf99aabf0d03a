"""Figures. Every function returns a :class:`matplotlib.figure.Figure` built without pyplot:
nothing is shown or written (call ``fig.savefig(path)``), and no global figure state leaks.

- :func:`top_crops`: top-k crops per concept, rows sorted by importance
- :func:`importance_bar`: concept importance bars
- :func:`heatmap_overlay`: concept maps over an image
- :func:`curves`: deletion and insertion curves of several methods
- :func:`loss_history`: objective terms per iteration of a fit
- :func:`kl_weight_pareto`: the λ search of ``kl_weight="auto"`` (rel-ℓ2 against KL)

Class names for titles come from the caller (e.g. the weights' metadata categories).

Examples
--------
>>> import io, torch
>>> from face_concepts.viz import importance_bar
>>> fig = importance_bar(torch.tensor([0.2, 0.8]), class_name="espresso")
>>> fig.savefig(io.BytesIO(), format="png")  # or a file path
"""

from __future__ import annotations

from face_concepts.viz.charts import curves, importance_bar, kl_weight_pareto, loss_history
from face_concepts.viz.concepts import heatmap_overlay, top_crops

__all__ = [
    "curves",
    "heatmap_overlay",
    "importance_bar",
    "kl_weight_pareto",
    "loss_history",
    "top_crops",
]
