"""Images in: files, folders, class folders, ``.npz`` arrays, PIL images or a preprocessed tensor.

Every source ends as an :class:`ImageSet`: decoded RGB PIL images (EXIF orientation applied,
every Pillow mode mapped to 8-bit RGB) with their paths, plus the files that could not be read
and why. Unreadable files are skipped with one warning naming them all, or raise with
``strict=True``. A float tensor ``(N, 3, H, W)`` is taken as already preprocessed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from face_concepts.data.decode import PathLike, array_to_images, decode_image, load_npz, try_decode
from face_concepts.data.preprocess import Preprocess

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)

ImageSource = PathLike | Image.Image | np.ndarray | torch.Tensor | Sequence[Any]


@dataclass
class ImageSet:
    """Decoded images with their provenance.

    Attributes
    ----------
    images : list of PIL.Image.Image or None
        RGB images; ``None`` when the set was given as a preprocessed tensor.
    tensor : torch.Tensor or None
        The preprocessed ``(N, 3, H, W)`` batch when the source was a tensor.
    paths : list of str or None
        File of each image (``None`` for in-memory images and array entries).
    skipped : list of (str, str)
        ``(path, reason)`` of each file that could not be decoded.

    Examples
    --------
    >>> s = ImageSet(images=[Image.new("RGB", (4, 4))], paths=[None])
    >>> len(s), s.preprocessed
    (1, False)
    """

    images: list[Image.Image] | None
    tensor: torch.Tensor | None = None
    paths: list[str | None] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def preprocessed(self) -> bool:
        """True when the set holds an already preprocessed tensor instead of images."""
        return self.tensor is not None

    def __len__(self) -> int:
        if self.tensor is not None:
            return int(self.tensor.shape[0])
        return len(self.images or [])


# --------------------------------------------------------------------------- listing


def _normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = []
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip("."):
            raise ValueError(f"extensions must be non-empty strings like '.jpg', got {ext!r}")
        out.append("." + ext.lower().lstrip("."))
    return tuple(out)


def list_image_files(
    folder: PathLike, *, recursive: bool = True, extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> list[str]:
    """Image files in ``folder`` by extension (case-insensitive), sorted for determinism.

    Examples
    --------
    >>> list_image_files(".", recursive=False, extensions=(".nothing",))
    []
    """
    exts = _normalise_extensions(extensions)
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {os.fspath(folder)!r} does not exist")
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = [p for p in candidates if p.suffix.lower() in exts and p.is_file()]
    # Sort on the relative path parts so that the order does not depend on the file system.
    return [str(p) for p in sorted(files, key=lambda p: p.relative_to(root).parts)]


# --------------------------------------------------------------------------- loading


def _expand(source: Any, exts: tuple[str, ...], recursive: bool) -> list[Any]:
    """Flatten a source into a list of file paths (str) and PIL images."""
    if isinstance(source, Image.Image):
        return [source]
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            files = list_image_files(path, recursive=recursive, extensions=exts)
            if not files:
                raise ValueError(
                    f"no image files ({', '.join(exts)}) found in folder {path!r}"
                    + (" or its subfolders" if recursive else "")
                )
            return files
        if not os.path.exists(path):
            raise FileNotFoundError(f"image source {path!r} does not exist")
        return [path]
    if isinstance(source, (list, tuple)):
        out: list[Any] = []
        for item in source:
            if isinstance(item, (list, tuple, np.ndarray, torch.Tensor)):
                raise TypeError(
                    f"a list of images must hold paths or PIL images, got {type(item).__name__}"
                )
            out.extend(_expand(item, exts, recursive))
        return out
    raise TypeError(
        "source must be a path, a folder, a list of paths or PIL images, an .npz file, "
        f"a numpy array or a torch tensor; got {type(source).__name__}"
    )


def _from_tensor(x: torch.Tensor) -> ImageSet:
    if not x.is_floating_point():
        raise TypeError(
            f"a tensor source must be a float (already preprocessed) batch, got dtype {x.dtype}"
        )
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"a tensor source must have shape (N, 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("the tensor source holds no images (N = 0)")
    return ImageSet(images=None, tensor=x, paths=[None] * int(x.shape[0]))


def load_images(
    source: ImageSource,
    *,
    strict: bool = False,
    recursive: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> ImageSet:
    """Load images from files, folders, PIL images, an ``.npz`` file, an array or a tensor.

    Parameters
    ----------
    source : path, list, PIL image, numpy array or torch tensor
        A file or folder (folders are searched by extension), a list of paths and/or PIL
        images, an ``.npz`` file (key ``"images"`` or its first array; ``(N,H,W,3)`` or
        ``(N,3,H,W)``, uint8 or float in [0, 1]), or a float tensor ``(N, 3, H, W)`` taken
        as already preprocessed (returned as ``ImageSet.tensor``).
    strict : bool
        Raise ``ValueError`` on the first unreadable file instead of skipping it.
    recursive : bool
        Search subfolders of folders.
    extensions : iterable of str
        File extensions (case-insensitive) picked up in folders.

    Returns
    -------
    ImageSet

    Examples
    --------
    >>> s = load_images([Image.new("L", (5, 4)), Image.new("RGBA", (2, 2))])
    >>> [im.mode for im in s.images], s.paths
    (['RGB', 'RGB'], [None, None])
    """
    exts = _normalise_extensions(extensions)
    if isinstance(source, torch.Tensor):
        return _from_tensor(source)
    if isinstance(source, np.ndarray):
        images = array_to_images(source, "source")
        return ImageSet(images=images, paths=[None] * len(images))
    items = _expand(source, exts, recursive)
    if not items:
        raise ValueError("no images given: the source is empty")
    images, paths, skipped = _decode_items(items, strict)
    if skipped:
        listing = "; ".join(f"{p} ({r})" for p, r in skipped)
        warnings.warn(f"skipped {len(skipped)} unreadable file(s): {listing}", stacklevel=2)
    if not images:
        where = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the given files"
        raise ValueError(
            f"no usable image in {where!r}: all {len(skipped)} file(s) were unreadable"
        )
    return ImageSet(images=images, paths=paths, skipped=skipped)


def _decode_items(
    items: list[Any], strict: bool
) -> tuple[list[Image.Image], list[str | None], list[tuple[str, str]]]:
    images: list[Image.Image] = []
    paths: list[str | None] = []
    skipped: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, Image.Image):
            images.append(decode_image(item))
            paths.append(None)
            continue
        if item.lower().endswith(".npz"):
            arr_images = load_npz(item)
            images.extend(arr_images)
            paths.extend([None] * len(arr_images))
            continue
        result = try_decode(item)
        if isinstance(result, Image.Image):
            images.append(result)
            paths.append(item)
        elif strict:
            raise ValueError(f"cannot read image {item!r}: {result}")
        else:
            skipped.append((item, result))
    return images, paths, skipped


def load_class_folders(
    root: PathLike,
    *,
    strict: bool = False,
    recursive: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    allow_empty: bool = False,
) -> dict[str, ImageSet]:
    """Load an ImageFolder layout: ``root/<class name>/<images>`` → ``{class name: ImageSet}``.

    Classes are sorted by folder name. A class folder without any usable image raises
    ``ValueError`` unless ``allow_empty=True`` (then it is left out).

    Examples
    --------
    >>> load_class_folders("/nonexistent")
    Traceback (most recent call last):
    FileNotFoundError: root '/nonexistent' is not a folder
    """
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise FileNotFoundError(f"root {root_s!r} is not a folder")
    classes = sorted(e.name for e in os.scandir(root_s) if e.is_dir())
    if not classes:
        raise ValueError(f"no class subfolders found in {root_s!r}")
    out: dict[str, ImageSet] = {}
    for name in classes:
        try:
            out[name] = load_images(
                os.path.join(root_s, name),
                strict=strict,
                recursive=recursive,
                extensions=extensions,
            )
        except ValueError:
            if not allow_empty or strict:
                raise
    if not out:
        raise ValueError(f"no class folder in {root_s!r} holds a usable image")
    return out


def preprocess_images(
    images: ImageSet | ImageSource, preprocess: Preprocess, *, strict: bool = False
) -> torch.Tensor:
    """Preprocess a set of images into a normalised float32 batch ``(N, 3, crop, crop)``.

    An :class:`ImageSet` that already holds a tensor is returned as is; any other source is
    first loaded with :func:`load_images`.

    Examples
    --------
    >>> p = Preprocess(resize_size=8, crop_size=8)
    >>> preprocess_images(load_images(Image.new("RGB", (10, 12))), p).shape
    torch.Size([1, 3, 8, 8])
    """
    if not isinstance(preprocess, Preprocess):
        raise TypeError(f"preprocess must be a Preprocess, got {type(preprocess).__name__}")
    imageset = images if isinstance(images, ImageSet) else load_images(images, strict=strict)
    if imageset.tensor is not None:
        return imageset.tensor
    tensors = [preprocess(img) for img in imageset.images or []]
    if not tensors:
        raise ValueError("the image set is empty")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"preprocessed images differ in size {sorted(shapes)}; set Preprocess.crop_size "
            "so that every image gets the same model input size"
        )
    return torch.stack(tensors)
