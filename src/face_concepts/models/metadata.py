"""What torchvision and timm publish about a model: its evaluation preprocessing and class names."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from face_concepts.data.preprocess import Preprocess


# ----------------------------------------------------------------------------- metadata
def _rgb(values: Any) -> tuple[float, float, float]:
    """The three per-channel values of a normalisation (mean or std) as floats."""
    r, g, b = (float(v) for v in values)
    return r, g, b


def _torchvision_preprocess(weights: Any) -> Preprocess:
    t = weights.transforms()
    return Preprocess(
        resize_size=int(t.resize_size[0]),
        crop_size=int(t.crop_size[0]),
        mean=_rgb(t.mean),
        std=_rgb(t.std),
        interpolation=str(t.interpolation.value),
    )


def _timm_preprocess(model: nn.Module) -> Preprocess:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    # timm's own eval transform uses floor(crop / crop_pct) for the resize
    resize = math.floor(crop / float(cfg.get("crop_pct", 0.875)))
    interp = cfg.get("interpolation", "bilinear")
    return Preprocess(
        resize_size=resize,
        crop_size=crop,
        mean=_rgb(cfg["mean"]),
        std=_rgb(cfg["std"]),
        interpolation=interp
        if interp in ("nearest", "bilinear", "bicubic", "lanczos")
        else "bilinear",
    )


def _timm_categories(model: nn.Module) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        # first WordNet lemma ("tabby, tabby cat" -> "tabby"), like torchvision's names
        return [d.split(", ")[0] for d in ImageNetInfo(subset).label_descriptions()]
    except (ImportError, AttributeError, ValueError, OSError):
        return None
