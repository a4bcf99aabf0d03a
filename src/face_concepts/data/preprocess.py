"""Preprocessing described by data, taken from the model's own metadata (never hard-wired).

A :class:`Preprocess` is what torchvision's ``weights.transforms()`` or timm's
``pretrained_cfg`` say: resize the shorter side, centre-crop, scale to [0, 1], normalise with
the model's mean/std. It is serialisable (``to_dict``/``from_dict``) so saved runs record it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) → centre crop → [0, 1] tensor → normalise.

    Parameters
    ----------
    resize_size : int or None
        Target length of the shorter image side (aspect kept). ``None`` skips resizing.
    crop_size : int or None
        Side of the square centre crop, i.e. the model input size. ``None`` keeps the image.
    mean, std : tuple of 3 floats
        Per-channel normalisation of the [0, 1] image.
    interpolation : str
        One of "nearest", "bilinear", "bicubic", "lanczos".

    Examples
    --------
    >>> p = Preprocess(resize_size=256, crop_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    >>> p(Image.new("RGB", (300, 400))).shape
    torch.Size([3, 224, 224])
    """

    resize_size: int | None = 256
    crop_size: int | None = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERP:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERP)}, got {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must have 3 entries (RGB)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def input_size(self) -> int | None:
        """The model's input side (the crop size)."""
        return self.crop_size

    def resize_and_crop(self, img: Image.Image) -> Image.Image:
        """Geometric part only (returns a PIL image)."""
        img = img.convert("RGB")
        if self.resize_size is not None:
            w, h = img.size
            s = self.resize_size / min(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            img = img.resize((nw, nh), _INTERP[self.interpolation])
        if self.crop_size is not None:
            w, h = img.size
            c = self.crop_size
            if w < c or h < c:
                img = img.resize((max(w, c), max(h, c)), _INTERP[self.interpolation])
                w, h = img.size
            left, top = (w - c) // 2, (h - c) // 2
            img = img.crop((left, top, left + c, top + c))
        return img

    def to_unit_tensor(self, img: Image.Image) -> torch.Tensor:
        """Geometric part, then a float32 (3, H, W) tensor in [0, 1] (not normalised)."""
        arr = np.asarray(self.resize_and_crop(img), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] tensor of shape (3, H, W) or (N, 3, H, W)."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` (for display), clipped to [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Full preprocessing of one PIL image → normalised float32 (3, crop, crop)."""
        return self.normalize(self.to_unit_tensor(img))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)
