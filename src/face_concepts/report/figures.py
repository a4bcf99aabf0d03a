"""Figures written next to a run as PNG files (the atlas embeds its own copies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from face_concepts._core.io import atomic_write_bytes
from face_concepts.report.images import figure_png


def write_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib Figure as PNG atomically (a crash never leaves half a file).

    Examples
    --------
    >>> import tempfile
    >>> from matplotlib.figure import Figure
    >>> write_figure(Figure(figsize=(1, 1)), Path(tempfile.mkdtemp()) / "f.png").suffix
    '.png'
    """
    return atomic_write_bytes(path, figure_png(fig))


def write_fit_figures(explainer: Any, out: str | Path) -> list[Path]:
    """``importance.png`` and, for crop-based methods, ``top_crops.png`` of a fitted explainer."""
    from face_concepts import viz

    out = Path(out)
    name = explainer.class_name()
    imp = explainer.importance()
    files = [write_figure(viz.importance_bar(imp, class_name=name), out / "importance.png")]
    if getattr(explainer, "crops_", None) is not None:
        idx, crops = explainer.top_crops()
        codes = explainer.row_codes_[idx.reshape(-1)]
        fig = viz.top_crops(crops, codes, imp, k=idx.shape[1], class_name=name)
        files.append(write_figure(fig, out / "top_crops.png"))
    return files
