"""Patches (crops) of a preprocessed batch, as in docs/method.md §7.3.

The FACE code feeds a grid of 64-px crops (stride ``int(0.8 * 64) = 51``, no padding, 16 per
224-px image) to the feature extractor at native size; CRAFT first resizes each crop to the
model input size with ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`` (no antialiasing). Both are available here, plus random crops; every
result carries the settings that produced it so that they can be recorded with a run.

Boxes are ``[top, left, bottom, right]`` in pixels of the preprocessed image (bottom/right
exclusive), one row per patch, and ``image_index`` says which image each patch came from.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from face_concepts._core.seeding import make_generator
from face_concepts._core.validation import check_choice, check_float, check_int


@dataclass
class Patches:
    """Crops of a batch with their provenance.

    Attributes
    ----------
    patches : torch.Tensor
        ``(M, C, s, s)`` crops (resized when ``settings["resize_to"]`` is set).
    image_index : torch.Tensor
        ``(M,)`` int64, the image each crop came from.
    boxes : torch.Tensor
        ``(M, 4)`` int64 ``[top, left, bottom, right]`` in the source image.
    settings : dict
        How the crops were made (mode, patch_size, stride, resize_to, n_per_image,
        random_state, min_scale, max_scale); JSON-serialisable.
    """

    patches: torch.Tensor
    image_index: torch.Tensor
    boxes: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.patches.shape[0])


def default_stride(patch_size: int) -> int:
    """The FACE/CRAFT stride: ``int(0.8 * patch_size)`` (51 for 64), at least 1."""
    return max(1, int(0.8 * patch_size))


def _check_batch(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of shape (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x holds no images (N = 0)")
    return x


def _check_fits(patch_size: int, height: int, width: int) -> None:
    if patch_size > height or patch_size > width:
        raise ValueError(
            f"patch_size={patch_size} is larger than the image size {height}x{width} (H x W)"
        )


def grid_patches(
    x: torch.Tensor, patch_size: int = 64, stride: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Regular grid of square crops, without padding, in CRAFT's (``unfold``) order.

    Parameters
    ----------
    x : torch.Tensor
        Preprocessed batch ``(N, C, H, W)``; ``H != W`` is fine.
    patch_size : int
        Crop side in pixels.
    stride : int, optional
        Step between crops; default ``int(0.8 * patch_size)``.

    Returns
    -------
    patches : torch.Tensor ``(M, C, patch_size, patch_size)``
    image_index : torch.Tensor ``(M,)`` int64
    boxes : torch.Tensor ``(M, 4)`` int64 ``[top, left, bottom, right]``

    Examples
    --------
    >>> p, idx, boxes = grid_patches(torch.zeros(2, 3, 224, 224))
    >>> p.shape, boxes[1].tolist()
    (torch.Size([32, 3, 64, 64]), [0, 51, 64, 115])
    """
    x = _check_batch(x)
    patch_size = check_int(patch_size, "patch_size", minimum=1)
    stride = (
        default_stride(patch_size) if stride is None else check_int(stride, "stride", minimum=1)
    )
    n, c, h, w = x.shape
    _check_fits(patch_size, h, w)
    # (N, C, nh, nw, ps, ps): views, one copy at the reshape; row-major over positions
    # like F.unfold, so patch order matches CRAFT's.
    windows = x.unfold(2, patch_size, stride).unfold(3, patch_size, stride)
    nh, nw = windows.shape[2], windows.shape[3]
    patches = windows.permute(0, 2, 3, 1, 4, 5).reshape(n * nh * nw, c, patch_size, patch_size)
    tops = torch.arange(nh, dtype=torch.int64) * stride
    lefts = torch.arange(nw, dtype=torch.int64) * stride
    tt, ll = torch.meshgrid(tops, lefts, indexing="ij")
    one = torch.stack([tt, ll, tt + patch_size, ll + patch_size], dim=-1).reshape(-1, 4)
    boxes = one.repeat(n, 1)
    image_index = torch.arange(n, dtype=torch.int64).repeat_interleave(nh * nw)
    return patches, image_index, boxes


def _size_pair(size: Any, name: str) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {size!r}")
        return check_int(size[0], name, minimum=1), check_int(size[1], name, minimum=1)
    s = check_int(size, name, minimum=1)
    return s, s


def resize_patches(patches: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize exactly as CRAFT does it.

    ``F.interpolate(patches, size=size, mode="bilinear", align_corners=False)`` with no
    antialiasing (Craft-xai 0.0.3, ``craft_torch._batch_inference``).

    Examples
    --------
    >>> resize_patches(torch.zeros(5, 3, 64, 64), 224).shape
    torch.Size([5, 3, 224, 224])
    """
    if not isinstance(patches, torch.Tensor) or patches.ndim != 4:
        shape = (
            tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
        )
        raise ValueError(f"patches must be a tensor of shape (M, C, h, w), got {shape}")
    if not patches.is_floating_point():
        raise TypeError(f"patches must be a float tensor, got dtype {patches.dtype}")
    hw = _size_pair(size, "size")
    if tuple(patches.shape[-2:]) == hw:
        return patches
    return F.interpolate(patches, size=hw, mode="bilinear", align_corners=False, antialias=False)


def _scale_range(min_scale: float | None, max_scale: float | None) -> tuple[float, float] | None:
    if min_scale is None and max_scale is None:
        return None
    if min_scale is None or max_scale is None:
        raise ValueError(
            f"min_scale and max_scale must be given together, got {min_scale!r} and {max_scale!r}"
        )
    lo = check_float(min_scale, "min_scale", minimum=0.0, strict_minimum=True, maximum=1.0)
    hi = check_float(max_scale, "max_scale", minimum=0.0, strict_minimum=True, maximum=1.0)
    if lo > hi:
        raise ValueError(f"min_scale must be <= max_scale, got {lo} > {hi}")
    return lo, hi


def random_patches(
    x: torch.Tensor,
    n_per_image: int,
    patch_size: int = 64,
    *,
    min_scale: float | None = None,
    max_scale: float | None = None,
    random_state: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Square crops at uniformly random positions (and optionally random sizes).

    Without a scale range each crop is ``patch_size`` pixels. With ``min_scale, max_scale``
    (fractions of the shorter image side) each crop side is drawn uniformly in that range,
    then the crop is resized to ``patch_size`` with :func:`resize_patches`.

    Parameters
    ----------
    x : torch.Tensor
        Preprocessed batch ``(N, C, H, W)``.
    n_per_image : int
        Crops per image.
    patch_size : int
        Output crop side.
    min_scale, max_scale : float, optional
        Range of crop sides as fractions of ``min(H, W)``, in (0, 1].
    random_state : None, int or torch.Generator
        Seed of the local CPU generator (never the global one).

    Returns
    -------
    patches, image_index, boxes
        As in :func:`grid_patches`; boxes give the crop actually taken.

    Examples
    --------
    >>> p, idx, b = random_patches(torch.zeros(2, 3, 100, 80), 5, 32, random_state=0)
    >>> p.shape, idx.tolist()
    (torch.Size([10, 3, 32, 32]), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    """
    x = _check_batch(x)
    n_per_image = check_int(n_per_image, "n_per_image", minimum=1)
    patch_size = check_int(patch_size, "patch_size", minimum=1)
    scales = _scale_range(min_scale, max_scale)
    n, _, h, w = x.shape
    if scales is None:
        _check_fits(patch_size, h, w)
    gen = make_generator(random_state)
    # One draw of all numbers, in a fixed order, so a seed gives the same crops everywhere.
    u = torch.rand((3, n, n_per_image), generator=gen, dtype=torch.float64)
    side_full = min(h, w)
    if scales is None:
        sides = torch.full((n, n_per_image), patch_size, dtype=torch.int64)
    else:
        frac = scales[0] + u[0] * (scales[1] - scales[0])
        sides = (frac * side_full).round().clamp(1, side_full).to(torch.int64)
    tops = (u[1] * (h - sides + 1)).floor().to(torch.int64).clamp(max=h - sides)
    lefts = (u[2] * (w - sides + 1)).floor().to(torch.int64).clamp(max=w - sides)
    crops = []
    for i in range(n):
        for j in range(n_per_image):
            t, l, s = int(tops[i, j]), int(lefts[i, j]), int(sides[i, j])
            crop = x[i : i + 1, :, t : t + s, l : l + s]
            crops.append(resize_patches(crop, patch_size) if s != patch_size else crop)
    patches = torch.cat(crops, dim=0)
    boxes = torch.stack([tops, lefts, tops + sides, lefts + sides], dim=-1).reshape(-1, 4)
    image_index = torch.arange(n, dtype=torch.int64).repeat_interleave(n_per_image)
    return patches, image_index, boxes


def _seed_record(random_state: Any) -> int | str | None:
    # A torch.Generator cannot be serialised; record that one was used.
    if random_state is None:
        return None
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return f"<{type(random_state).__name__}>"


def extract_patches(
    x: torch.Tensor,
    patch_size: int = 64,
    stride: int | None = None,
    *,
    mode: str = "grid",
    resize_to: int | tuple[int, int] | str | None = None,
    n_per_image: int = 16,
    min_scale: float | None = None,
    max_scale: float | None = None,
    random_state: Any = None,
) -> Patches:
    """Crops of a preprocessed batch, with the settings recorded.

    Parameters
    ----------
    x : torch.Tensor
        Preprocessed batch ``(N, C, H, W)``.
    patch_size : int
        Crop side (64 in the paper).
    stride : int, optional
        Grid step (``mode="grid"`` only); default ``int(0.8 * patch_size)``.
    mode : {"grid", "random"}
        Regular grid (FACE/CRAFT) or random positions (:func:`random_patches`).
    resize_to : None, int, (h, w) or "image"
        ``None`` keeps crops at native size (the FACE code); an int or pair resizes them
        bilinearly; ``"image"`` resizes to the input image size ``(H, W)`` (CRAFT). Resizing
        every crop to 224 px at once takes ``M * 3 * 224**2 * 4`` bytes: for large sets keep
        ``None`` here and call :func:`resize_patches` per batch, recording the size.
    n_per_image : int
        Crops per image in random mode.
    min_scale, max_scale : float, optional
        Random mode: range of crop sides as fractions of the shorter image side.
    random_state : None, int or torch.Generator
        Seed for random mode.

    Examples
    --------
    >>> p = extract_patches(torch.zeros(1, 3, 224, 224), resize_to="image")
    >>> len(p), tuple(p.patches.shape[1:]), p.settings["stride"]
    (16, (3, 224, 224), 51)
    """
    mode = check_choice(mode, "mode", ("grid", "random"))
    x = _check_batch(x)
    if mode == "grid":
        if min_scale is not None or max_scale is not None:
            raise ValueError("min_scale/max_scale apply to mode='random' only")
        patch_size = check_int(patch_size, "patch_size", minimum=1)
        stride = default_stride(patch_size) if stride is None else stride
        patches, index, boxes = grid_patches(x, patch_size, stride)
    else:
        if stride is not None:
            raise ValueError(f"stride applies to mode='grid' only, got stride={stride!r}")
        patches, index, boxes = random_patches(
            x,
            n_per_image,
            patch_size,
            min_scale=min_scale,
            max_scale=max_scale,
            random_state=random_state,
        )
    target: tuple[int, int] | None = None
    if isinstance(resize_to, str):
        if resize_to != "image":
            raise ValueError(
                f"resize_to must be None, an int, (h, w) or 'image', got {resize_to!r}"
            )
        target = (int(x.shape[2]), int(x.shape[3]))
    elif resize_to is not None:
        target = _size_pair(resize_to, "resize_to")
    if target is not None:
        patches = resize_patches(patches, target)
    settings = {
        "mode": mode,
        "patch_size": patch_size,
        "stride": stride if mode == "grid" else None,
        "resize_to": list(target) if target is not None else None,
        "n_per_image": n_per_image if mode == "random" else None,
        "min_scale": min_scale,
        "max_scale": max_scale,
        "random_state": _seed_record(random_state) if mode == "random" else None,
        "interpolation": "bilinear, align_corners=False, antialias=False",
    }
    return Patches(patches=patches, image_index=index, boxes=boxes, settings=settings)
