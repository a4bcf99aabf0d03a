"""The one figure renderer (report/images.figure_png): every PNG the package writes."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from face_concepts.report.figures import write_figure
from face_concepts.report.images import FIGURE_DPI, figure_png


def test_figure_png_renders_at_the_atlas_resolution(tmp_path: Path):
    fig = Figure(figsize=(2.0, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    data = figure_png(fig)
    assert FIGURE_DPI == 90
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size == (2 * FIGURE_DPI, round(1.5 * FIGURE_DPI))
    # Files next to a run are the same bytes as the atlas's embedded copies.
    assert write_figure(fig, tmp_path / "f.png").read_bytes() == data
