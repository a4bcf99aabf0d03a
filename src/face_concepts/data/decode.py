"""Decoding: files and in-memory images to upright 8-bit RGB, arrays to images.

EXIF orientation is applied; every Pillow mode is mapped to RGB (transparency composited on
white, 16-bit and float images scaled rather than clipped); animated files give their first
frame. Decompression bombs (Pillow's ``MAX_IMAGE_PIXELS``) are refused.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

BOMB_REASON = "decompression bomb (exceeds Pillow's MAX_IMAGE_PIXELS)"

# Errors Pillow raises on files that are not images, truncated or corrupt. Plugins differ:
# PNG raises SyntaxError on bad chunks, some raise struct.error / EOFError / ValueError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

PathLike = str | os.PathLike


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel high-bit-depth array to uint8 by scaling, never clipping."""
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        # Full 16-bit range maps onto the 8-bit range: 65535 -> 255.
        return np.round(a / 257.0).astype(np.uint8)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode == "I" and lo >= 0 and hi <= 65535:
        # 32-bit "I" images on disk almost always hold 16-bit samples (PNG/TIFF).
        return np.round(a / 257.0).astype(np.uint8)
    if mode == "F" and lo >= 0 and hi <= 1:
        return np.round(a * 255.0).astype(np.uint8)
    # Anything else: stretch the observed range (documented; keeps the image visible).
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) / (hi - lo) * 255.0).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent images (RGBA, LA, PA, palette with transparency) are composited on white;
    16-bit and 32-bit integer and float images are scaled (not clipped) to 8 bits.

    Examples
    --------
    >>> to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = _scale_to_uint8(np.asarray(img), mode)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's own converters are correct for these.
    return img.convert("RGB")


def _decode_file(path: str) -> Image.Image:
    """Open one file: first frame, EXIF orientation, RGB. Raises on bad files."""
    with warnings.catch_warnings():
        # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; treat it as an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            im.seek(0)  # animated GIF/WebP/TIFF: the first frame
            im.load()
            oriented = ImageOps.exif_transpose(im)
            return to_rgb(oriented)


def decode_image(source: PathLike | Image.Image) -> Image.Image:
    """Decode a file (or normalise an in-memory image) to an upright RGB PIL image.

    Raises
    ------
    ValueError
        If the file cannot be decoded, naming it and the reason.

    Examples
    --------
    >>> decode_image(Image.new("L", (3, 2))).mode
    'RGB'
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    path = os.fspath(source)
    result = try_decode(path)
    if isinstance(result, Image.Image):
        return result
    raise ValueError(f"cannot read image {path!r}: {result}")


def try_decode(path: str) -> Image.Image | str:
    """Return the decoded image, or the reason it could not be decoded (a string)."""
    try:
        return _decode_file(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return BOMB_REASON
    except _DECODE_ERRORS as exc:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- arrays


def array_to_images(arr: np.ndarray, name: str = "images") -> list[Image.Image]:
    """Array → RGB PIL images.

    Accepted layouts: ``(N,H,W,C)``, ``(N,C,H,W)`` with C in {1, 3, 4}, ``(N,H,W)`` grey,
    and a single image ``(H,W)`` or ``(H,W,3|4)``. A 3-D array is a grey batch unless its
    last axis has 3 or 4 entries; when both axis 1 and the last axis could be channels, the
    last one is (channels-last wins). uint8 is taken as is, uint16 scaled by 1/257, float must
    lie in [0, 1]. ``name`` is used in error messages.

    Examples
    --------
    >>> [im.size for im in array_to_images(np.zeros((2, 3, 5, 6), dtype=np.float32))]
    [(6, 5), (6, 5)]
    """
    a = np.asarray(arr)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
        a = a[None]  # one image
    if a.ndim == 3:
        a = a[..., None]  # (N, H, W) grey
    if a.ndim != 4:
        raise ValueError(f"{name} must be (N,H,W,3) or (N,3,H,W), got shape {a.shape}")
    if a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
        a = np.moveaxis(a, 1, -1)  # channels-first → channels-last
    if a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} must have 1, 3 or 4 channels, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} holds no images (shape {a.shape})")
    a = _array_to_uint8(a, name)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    mode = "RGBA" if a.shape[-1] == 4 else "RGB"
    return [to_rgb(Image.fromarray(np.ascontiguousarray(x), mode=mode)) for x in a]


def _array_to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return np.round(a.astype(np.float64) / 257.0).astype(np.uint8)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{name}: float images must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}] "
                "(pass uint8 for 0-255 data, or a torch tensor for already normalised data)"
            )
        return np.round(a * 255.0).astype(np.uint8)
    raise TypeError(f"{name} must be uint8, uint16 or float in [0, 1], got dtype {a.dtype}")


def load_npz(path: str) -> list[Image.Image]:
    """Images of an ``.npz`` file: key ``"images"``, else its first array."""
    with np.load(path, allow_pickle=False) as data:
        if not data.files:
            raise ValueError(f"npz file {path!r} holds no arrays")
        key = "images" if "images" in data.files else data.files[0]
        return array_to_images(data[key], f"array {key!r} in {path!r}")
