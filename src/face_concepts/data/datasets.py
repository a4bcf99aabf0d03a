"""Adapters for the paper's datasets, working on local copies (nothing is downloaded).

- ImageNet: one class folder of a local copy (folders named by wnid, class name or index).
- COCO: the images holding one category, or the category's box crops (needs ``pycocotools``).
- CelebA: the four mutually exclusive hair/hat attributes of the paper, as a 4-class problem.
- Fashion-MNIST: the IDX files of the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from face_concepts._core.validation import check_choice, check_int
from face_concepts.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    fashion_mnist,
    read_idx,
)
from face_concepts.data.images import ImageSet, PathLike, decode_image, load_images

__all__ = [
    "CELEBA_PAPER_ATTRIBUTES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "celeba_attribute_classes",
    "coco_category",
    "fashion_mnist",
    "imagenet_class_folder",
    "load_coco_records",
    "read_celeba_attributes",
    "read_idx",
    "resolve_imagenet_class_folder",
]

CELEBA_PAPER_ATTRIBUTES: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Gray_Hair", "Wearing_Hat")
_CELEBA_SPLITS = {"train": "0", "valid": "1", "test": "2", "all": None}

# --------------------------------------------------------------------------- ImageNet


def resolve_imagenet_class_folder(
    root: PathLike,
    class_id: int,
    categories: Sequence[str] | None = None,
    *,
    wnids: Mapping[int, str] | Sequence[str] | None = None,
) -> str:
    """Find the folder of ImageNet class ``class_id`` under ``root``.

    Tried in order: the wnid (when ``wnids`` maps class ids to wnids), the category name
    exactly and with spaces as underscores, and the index as a string (``"285"``, ``"0285"``).

    Examples
    --------
    >>> resolve_imagenet_class_folder("/nonexistent", 0, ["tench"])
    Traceback (most recent call last):
    FileNotFoundError: ImageNet root '/nonexistent' is not a folder
    """
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise FileNotFoundError(f"ImageNet root {root_s!r} is not a folder")
    n_classes = len(categories) if categories is not None else None
    class_id = check_int(
        class_id, "class_id", minimum=0, maximum=None if n_classes is None else n_classes - 1
    )
    names: list[str] = []
    if wnids is not None:
        try:
            names.append(str(wnids[class_id]))
        except (KeyError, IndexError) as exc:
            raise ValueError(f"wnids has no entry for class_id={class_id}") from exc
    if categories is not None:
        name = str(categories[class_id])
        names += [name, name.replace(" ", "_")]
    names += [str(class_id), f"{class_id:03d}", f"{class_id:04d}", f"{class_id:05d}"]
    for name in dict.fromkeys(names):  # ordered, without duplicates
        candidate = os.path.join(root_s, name)
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(
        f"no folder for class_id={class_id} in {root_s!r}; tried {list(dict.fromkeys(names))}"
    )


def imagenet_class_folder(
    root: PathLike,
    class_id: int,
    categories: Sequence[str] | None = None,
    *,
    wnids: Mapping[int, str] | Sequence[str] | None = None,
    strict: bool = False,
) -> ImageSet:
    """Load the images of one ImageNet class from a local copy in class-folder layout.

    Parameters
    ----------
    root : path
        Folder holding one subfolder per class (e.g. ``.../val``).
    class_id : int
        Index into ``categories`` (0..999 for ImageNet-1k).
    categories : sequence of str, optional
        Class names in index order, e.g. ``weights.meta["categories"]`` of torchvision.
    wnids : mapping or sequence, optional
        Class id → WordNet id (``"n02124075"``), for the standard layout.
    strict : bool
        Raise on unreadable files instead of skipping them.

    Examples
    --------
    >>> imagenet_class_folder("imagenet/val", 285, wnids={285: "n02124075"})  # doctest: +SKIP
    """
    folder = resolve_imagenet_class_folder(root, class_id, categories, wnids=wnids)
    return load_images(folder, strict=strict)


# --------------------------------------------------------------------------- COCO


def _import_coco() -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise ImportError(
            "coco_category needs pycocotools, which is not installed; "
            "install it with `pip install pycocotools`"
        ) from exc
    return COCO


def _coco_records(coco: Any, category: int | str) -> list[tuple[str, list[list[float]]]]:
    """``[(file_name, [bbox, ...]), ...]`` of the images holding ``category``, sorted by id."""
    if isinstance(category, str):
        cat_ids = coco.getCatIds(catNms=[category])
        if not cat_ids:
            known = sorted(c["name"] for c in coco.loadCats(coco.getCatIds()))
            raise ValueError(f"category {category!r} not in the annotations; known: {known}")
    else:
        cat_id = check_int(category, "category", minimum=0)
        if cat_id not in coco.cats:
            raise ValueError(f"category id {cat_id} not in the annotations")
        cat_ids = [cat_id]
    records = []
    for img_id in sorted(coco.getImgIds(catIds=cat_ids)):
        ann_ids = coco.getAnnIds(imgIds=[img_id], catIds=cat_ids, iscrowd=False)
        boxes = [list(a["bbox"]) for a in coco.loadAnns(ann_ids)]
        records.append((coco.imgs[img_id]["file_name"], boxes))
    return records


def _crop_box(bbox: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """COCO ``[x, y, w, h]`` (float) → PIL ``(left, top, right, bottom)`` covering it, clipped."""
    x, y, w, h = (float(v) for v in bbox)
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    return left, top, right, bottom


def load_coco_records(
    root: PathLike,
    records: Sequence[tuple[str, Sequence[Sequence[float]]]],
    *,
    crops: bool = False,
    min_side: int = 1,
    strict: bool = False,
) -> ImageSet:
    """Load COCO images (or their box crops) from ``(file_name, boxes)`` records.

    Used by :func:`coco_category`; separate so that it works without pycocotools.
    Crops narrower than ``min_side`` pixels are left out.
    """
    root_s = os.fspath(root)
    paths = [os.path.join(root_s, name) for name, _ in records]
    if not crops:
        return load_images(paths, strict=strict)
    min_side = check_int(min_side, "min_side", minimum=1)
    out_paths: list[str | None]
    images, out_paths, skipped = [], [], []
    for path, (_, boxes) in zip(paths, records):
        try:
            img = decode_image(path)
        except ValueError as exc:
            if strict:
                raise
            skipped.append((path, str(exc)))
            continue
        for bbox in boxes:
            left, top, right, bottom = _crop_box(bbox, *img.size)
            if min(right - left, bottom - top) >= min_side:
                images.append(img.crop((left, top, right, bottom)))
                out_paths.append(path)
    if not images:
        raise ValueError(f"no box crop of at least {min_side} px found in {root_s!r}")
    return ImageSet(images=images, paths=out_paths, skipped=skipped)


def coco_category(
    root: PathLike,
    ann_file: PathLike,
    category: int | str,
    *,
    crops: bool = False,
    min_side: int = 1,
    strict: bool = False,
) -> ImageSet:
    """Images of a local COCO copy that hold ``category`` (or crops of its boxes).

    Parameters
    ----------
    root : path
        Image folder (e.g. ``coco/val2017``).
    ann_file : path
        Instances annotation file (e.g. ``annotations/instances_val2017.json``).
    category : str or int
        Category name (``"dog"``) or id.
    crops : bool
        Return one crop per non-crowd box of the category instead of whole images
        (``ImageSet.paths`` then repeats the source file of each crop).
    min_side : int
        Crops: leave out boxes with a side shorter than this (pixels).

    Examples
    --------
    >>> coco_category("coco/val2017", "coco/instances_val2017.json", "dog")  # doctest: +SKIP
    """
    coco_cls = _import_coco()
    # pycocotools prints progress to stdout; keep stdout clean for --json output.
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_cls(os.fspath(ann_file))
    records = _coco_records(coco, category)
    if not records:
        raise ValueError(f"no image holds category {category!r} in {os.fspath(ann_file)!r}")
    return load_coco_records(root, records, crops=crops, min_side=min_side, strict=strict)


# --------------------------------------------------------------------------- CelebA


def _first_existing(candidates: list[Path], what: str, root: str) -> Path:
    for p in candidates:
        if p.exists():
            return p
    raise FileNotFoundError(
        f"CelebA {what} not found under {root!r}; looked for {[str(p) for p in candidates]}"
    )


def read_celeba_attributes(path: PathLike) -> tuple[list[str], dict[str, list[int]]]:
    """Parse ``list_attr_celeba.txt``: (attribute names, {file name: [+1/-1, ...]}).

    Format: a count line, a line of attribute names, then ``000001.jpg -1 1 ...`` rows.
    """
    with open(path, encoding="utf-8") as fh:
        lines = [ln.split() for ln in fh if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{os.fspath(path)!r} is not a CelebA attribute file (too short)")
    names = lines[1]
    rows: dict[str, list[int]] = {}
    for k, parts in enumerate(lines[2:], start=3):
        if len(parts) != len(names) + 1:
            raise ValueError(
                f"{os.fspath(path)!r} line {k}: expected {len(names) + 1} fields, got {len(parts)}"
            )
        rows[parts[0]] = [int(v) for v in parts[1:]]
    return names, rows


def _celeba_split(path: Path, split: str) -> set[str]:
    code = _CELEBA_SPLITS[split]
    with open(path, encoding="utf-8") as fh:
        return {p[0] for p in (ln.split() for ln in fh) if len(p) == 2 and p[1] == code}


def celeba_attribute_classes(
    root: PathLike,
    attributes: Sequence[str] = CELEBA_PAPER_ATTRIBUTES,
    split: str = "train",
    *,
    image_dir: PathLike | None = None,
) -> dict[str, list[str]]:
    """CelebA images with exactly one of ``attributes`` set: a mutually exclusive class problem.

    Reads ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` from a local copy (in
    ``root``, ``root/Anno`` / ``root/Eval`` or ``root/celeba``); images are expected in
    ``img_align_celeba`` next to them unless ``image_dir`` says otherwise. File existence is
    not checked (that would stat 200,000 files).

    Parameters
    ----------
    root : path
        The CelebA folder.
    attributes : sequence of str
        Attribute names; the paper uses Black_Hair, Blond_Hair, Gray_Hair, Wearing_Hat.
    split : {"train", "valid", "test", "all"}
        Official partition.

    Returns
    -------
    dict
        ``{attribute: sorted list of image paths}``, in the order of ``attributes``.

    Examples
    --------
    >>> celeba_attribute_classes("data/celeba", split="test")  # doctest: +SKIP
    """
    split = check_choice(split, "split", tuple(_CELEBA_SPLITS))
    attributes = list(attributes)
    if len(attributes) < 2 or len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes must be at least 2 distinct names, got {attributes!r}")
    base = Path(root)
    root_s = os.fspath(root)
    dirs = [base, base / "Anno", base / "Eval", base / "celeba"]
    attr_file = _first_existing(
        [d / "list_attr_celeba.txt" for d in dirs], "list_attr_celeba.txt", root_s
    )
    names, rows = read_celeba_attributes(attr_file)
    missing = [a for a in attributes if a not in names]
    if missing:
        raise ValueError(f"unknown CelebA attribute(s) {missing}; available: {names}")
    keep = None
    if split != "all":
        part = _first_existing(
            [d / "list_eval_partition.txt" for d in dirs], "list_eval_partition.txt", root_s
        )
        keep = _celeba_split(part, split)
    if image_dir is None:
        image_dir = _first_existing(
            [
                attr_file.parent / "img_align_celeba",
                base / "img_align_celeba",
                base / "Img" / "img_align_celeba",
            ],
            "image folder img_align_celeba",
            root_s,
        )
        nested = Path(image_dir) / "img_align_celeba"  # the Kaggle archive nests it twice
        image_dir = nested if nested.is_dir() else image_dir
    cols = [names.index(a) for a in attributes]
    classes: dict[str, list[str]] = {a: [] for a in attributes}
    for fname in sorted(rows):
        if keep is not None and fname not in keep:
            continue
        on = [a for a, c in zip(attributes, cols) if rows[fname][c] == 1]
        if len(on) == 1:
            classes[on[0]].append(os.path.join(os.fspath(image_dir), fname))
    return classes
