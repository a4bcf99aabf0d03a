"""What torchvision and timm publish about a model: its evaluation preprocessing and class names."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
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


# ----------------------------------------------------------------------------- class names
def normal_class_name(name: str) -> str:
    """A class name as names are compared: lower case, ``_`` and ``-`` read as spaces.

    Examples
    --------
    >>> normal_class_name("Egyptian_cat"), normal_class_name(" tiger-cat ")
    ('egyptian cat', 'tiger cat')
    """
    return " ".join(re.sub(r"[_\-]+", " ", str(name)).lower().split())


def match_class(categories: Sequence[str], name: str) -> tuple[list[int], list[int]]:
    """``(hits, near)``: the indices of the classes called ``name`` (one when it names a class;
    several when it is ambiguous), and, when none is, those of up to six close names.

    Examples
    --------
    >>> cats = ["tabby", "tiger cat", "Persian cat", "Egyptian cat"]
    >>> match_class(cats, "Tiger_Cat"), match_class(cats, "tabbby")[1], match_class(cats, "cat")[1]
    (([1], []), [0], [1, 2, 3])
    """
    normals = [normal_class_name(c) for c in categories]
    want = normal_class_name(name)
    hits = [i for i, n in enumerate(normals) if n == want]
    if hits:
        return hits, []
    close = difflib.get_close_matches(want, normals, n=5, cutoff=0.6)
    contains = [n for n in normals if want and want in n]
    near = list(dict.fromkeys(close + contains))[:6]
    return [], [normals.index(n) for n in near]


def class_index(
    split: Any, value: int | str, *, argument: str = "class_id", model: str | None = None
) -> int:
    """The class ``value`` names in ``split``'s model (called ``model`` in messages): an index
    as given, or a class name looked up in its categories (:func:`match_class`); a name that
    names none (or several) is a ``ValueError`` listing the near matches."""
    if not isinstance(value, str):
        return value
    model = model or getattr(split, "name", None) or type(split).__name__
    cats = list(getattr(split, "categories", None) or [])
    n = getattr(split, "n_classes", None) or len(cats)
    span = f" (0 to {n - 1})" if n else ""
    if not cats:
        raise ValueError(
            f"{argument}={value!r} is a name, but {model} has no class names; give the class "
            f"index{span}"
        )
    hits, near = match_class(cats, value)
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ValueError(f"{argument}={value!r} names classes {hits} of {model}; give the index")
    listed = ", ".join(f"{cats[i]!r} ({i})" for i in near)
    raise ValueError(
        f"{argument}={value!r} is not a class name of {model}; "
        + (f"near matches: {listed}" if near else "no class name is close")
        + f"; or give the class index{span}"
    )
