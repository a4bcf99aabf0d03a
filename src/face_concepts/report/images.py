"""Pictures for the atlas as bytes: figures to PNG, crops and heatmap overlays to JPEG.

Everything is embedded in the HTML as ``data:`` URIs, so the atlas is one file with no
external resources.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

# Heatmap opacity at the strongest point of a concept; weaker points let the photo show through.
_MAX_ALPHA = 0.65
_JPEG_QUALITY = 88
# Every figure the package renders (atlas, run folders, demo, benchmark) uses this resolution.
FIGURE_DPI = 90


def figure_png(fig: Any) -> bytes:
    """Render a matplotlib Figure to PNG bytes at :data:`FIGURE_DPI` (the one figure renderer).

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> figure_png(Figure(figsize=(1, 1)))[:4]
    b'\\x89PNG'
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:`` URI of some bytes (base64).

    Examples
    --------
    >>> data_uri(b"ab", "image/png")
    'data:image/png;base64,YWI='
    """
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    x = image.detach().cpu()
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.permute(1, 2, 0).contiguous().numpy()


def image_jpeg(image: torch.Tensor, *, size: int | None = None) -> bytes:
    """JPEG bytes of one (3, H, W) image (uint8, or float in [0, 1]); ``size``: longer side.

    Examples
    --------
    >>> image_jpeg(torch.zeros(3, 4, 4))[:2]
    b'\\xff\\xd8'
    """
    pil = Image.fromarray(_to_uint8_hwc(image))
    if size is not None and max(pil.size) != size:
        scale = size / max(pil.size)
        new = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(new, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def overlay(
    image: torch.Tensor, heat: torch.Tensor, *, vmax: float, cmap: str = "jet"
) -> torch.Tensor:
    """Blend a concept map over an image: opacity and colour grow with the map's value.

    Parameters
    ----------
    image : Tensor (3, H, W) in [0, 1]
    heat : Tensor (H, W), non-negative
    vmax : float
        Value shown at full strength (shared by the images of one concept, so that their
        strengths compare).

    Returns
    -------
    Tensor (3, H, W) in [0, 1]

    Examples
    --------
    >>> out = overlay(torch.zeros(3, 2, 2), torch.tensor([[0.0, 1.0], [0.0, 0.0]]), vmax=1.0)
    >>> bool(out[:, 0, 0].eq(0).all()), bool(out[:, 0, 1].gt(0).any())
    (True, True)
    """
    from matplotlib import colormaps

    h = (heat.detach().cpu().float().clamp(min=0) / (vmax if vmax > 0 else 1.0)).clamp(0, 1)
    colour = torch.from_numpy(colormaps[cmap](h.numpy())[..., :3]).permute(2, 0, 1).float()
    alpha = _MAX_ALPHA * h
    return (image.cpu().float() * (1 - alpha) + colour * alpha).clamp(0, 1)
