"""Real photographs that ship inside installed packages (offline; see docs/assets.md).

- foolbox: 20 ImageNet validation photos ``foolbox/data/imagenet_<i>_<label>.jpg``; the
  label in the name is the ImageNet class index (kept as ``label_hint``).
- scikit-image: the photographs in ``skimage/data`` (synthetic test patterns left out).
- scikit-learn: ``datasets/images/china.jpg`` and ``flower.jpg``.
- matplotlib: ``mpl-data/sample_data/grace_hopper.jpg``.

Packages are located with :func:`importlib.util.find_spec` and never imported (importing
foolbox pulls in heavy optional dependencies). Missing packages or files are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Photographs only: chessboard, color, horse (silhouette), logo, phantom and the animated
# cartoon GIF are synthetic and would mislead a concept demo.
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)
SOURCES: tuple[str, ...] = ("foolbox", "skimage", "sklearn", "matplotlib")

_FOOLBOX_NAME = re.compile(r"^imagenet_(\d+)_(\d+)\.jpg$")


@dataclass(frozen=True, order=True)
class BundledPhoto:
    """One bundled photo: its file, the package it comes from and, for foolbox, its label.

    Attributes
    ----------
    path : str
        Absolute file path.
    source : str
        ``"foolbox"``, ``"skimage"``, ``"sklearn"`` or ``"matplotlib"``.
    label_hint : int or None
        ImageNet class index from the foolbox file name; ``None`` elsewhere.
    """

    path: str
    source: str
    label_hint: int | None = None


def _package_dir(name: str) -> str | None:
    """Folder of an installed top-level package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return next(iter(spec.submodule_search_locations))


def _foolbox() -> list[BundledPhoto]:
    pkg = _package_dir("foolbox")
    folder = os.path.join(pkg, "data") if pkg else None
    if folder is None or not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        m = _FOOLBOX_NAME.match(name)
        if m:
            out.append(BundledPhoto(os.path.join(folder, name), "foolbox", int(m.group(2))))
    return out


def _files(source: str, folder: str | None, names: Iterable[str]) -> list[BundledPhoto]:
    if folder is None:
        return []
    paths = (os.path.join(folder, n) for n in names)
    return [BundledPhoto(p, source) for p in paths if os.path.isfile(p)]


def bundled_photos(sources: Iterable[str] | None = None) -> list[BundledPhoto]:
    """The real photos found in installed packages, by source (foolbox first), then path.

    Parameters
    ----------
    sources : iterable of str, optional
        Restrict to some of ``"foolbox"``, ``"skimage"``, ``"sklearn"``, ``"matplotlib"``.

    Examples
    --------
    >>> photos = bundled_photos(["foolbox"])
    >>> all(p.label_hint is not None for p in photos)
    True
    """
    wanted = SOURCES if sources is None else tuple(sources)
    unknown = [s for s in wanted if s not in SOURCES]
    if unknown:
        raise ValueError(f"sources must be among {list(SOURCES)}, got unknown {unknown}")
    out: list[BundledPhoto] = []
    if "foolbox" in wanted:
        out += _foolbox()
    if "skimage" in wanted:
        pkg = _package_dir("skimage")
        out += _files("skimage", pkg and os.path.join(pkg, "data"), SKIMAGE_PHOTOS)
    if "sklearn" in wanted:
        pkg = _package_dir("sklearn")
        folder = pkg and os.path.join(pkg, "datasets", "images")
        out += _files("sklearn", folder, ("china.jpg", "flower.jpg"))
    if "matplotlib" in wanted:
        pkg = _package_dir("matplotlib")
        folder = pkg and os.path.join(pkg, "mpl-data", "sample_data")
        out += _files("matplotlib", folder, ("grace_hopper.jpg",))
    return sorted(out, key=lambda p: (SOURCES.index(p.source), p.path))
