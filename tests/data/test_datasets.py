"""Dataset adapters on tiny local fixture trees, and the real photos bundled with packages."""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import sys

import numpy as np
import pytest
from PIL import Image

from face_concepts.data import (
    CELEBA_PAPER_ATTRIBUTES,
    bundled_photos,
    celeba_attribute_classes,
    coco_category,
    fashion_mnist,
    imagenet_class_folder,
    load_images,
    read_idx,
    resolve_imagenet_class_folder,
)
from face_concepts.data.datasets import FASHION_MNIST_ROOT, load_coco_records

# --------------------------------------------------------------------------- ImageNet


def _images(folder, n, size=(6, 5)):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (i, 0, 0)).save(os.path.join(folder, f"{i}.JPEG"))


def test_imagenet_folder_by_wnid_name_and_index(tmp_path):
    categories = ["tench", "Egyptian cat", "espresso"]
    _images(tmp_path / "wnid" / "n02124075", 3)
    _images(tmp_path / "names" / "Egyptian cat", 2)
    _images(tmp_path / "under" / "Egyptian_cat", 1)
    _images(tmp_path / "index" / "1", 4)
    s = imagenet_class_folder(tmp_path / "wnid", 1, categories, wnids={1: "n02124075"})
    assert len(s) == 3 and all("n02124075" in p for p in s.paths)
    assert len(imagenet_class_folder(tmp_path / "names", 1, categories)) == 2
    assert len(imagenet_class_folder(tmp_path / "under", 1, categories)) == 1
    assert len(imagenet_class_folder(tmp_path / "index", 1)) == 4
    with pytest.raises(FileNotFoundError, match="espresso"):
        resolve_imagenet_class_folder(tmp_path / "names", 2, categories)
    with pytest.raises(ValueError, match="class_id"):
        resolve_imagenet_class_folder(tmp_path / "names", 3, categories)
    with pytest.raises(ValueError, match="wnids"):
        resolve_imagenet_class_folder(tmp_path / "wnid", 0, categories, wnids={1: "n02124075"})


# --------------------------------------------------------------------------- COCO


def test_coco_without_pycocotools_says_how_to_install(monkeypatch, tmp_path):
    # Simulate a missing package whether or not it is installed here.
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match="pip install pycocotools"):
        coco_category(tmp_path, tmp_path / "ann.json", "dog")


def test_coco_records_crops(tmp_path):
    arr = np.arange(40 * 30 * 3, dtype=np.uint32).reshape(30, 40, 3).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "b.png")
    records = [
        ("a.png", [[2.5, 3.2, 10.0, 7.9], [30.0, 20.0, 50.0, 50.0], [1, 1, 0.5, 4]]),
        ("b.png", [[0, 0, 10, 10]]),
    ]
    whole = load_coco_records(tmp_path, records)
    assert len(whole) == 2
    crops = load_coco_records(tmp_path, records, crops=True, min_side=2)
    # Box 1 covers x 2.5..12.5 → columns 2..12, y 3.2..11.1 → rows 3..11; box 2 is clipped.
    np.testing.assert_array_equal(np.asarray(crops.images[0]), arr[3:12, 2:13])
    np.testing.assert_array_equal(np.asarray(crops.images[1]), arr[20:30, 30:40])
    assert len(crops) == 3  # the 0.5-px-wide box is left out
    assert [os.path.basename(p) for p in crops.paths] == ["a.png", "a.png", "b.png"]


def test_coco_category_with_pycocotools(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools not installed: make setup installs it")
    import json

    for name in ("1.png", "2.png", "3.png"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    ann = {
        "images": [
            {"id": k, "file_name": f"{k}.png", "width": 20, "height": 20} for k in (1, 2, 3)
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 2,
                "category_id": 18,
                "bbox": [1, 1, 5, 5],
                "area": 25,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 17,
                "bbox": [1, 1, 5, 5],
                "area": 25,
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": 3,
                "category_id": 18,
                "bbox": [2, 2, 8, 4],
                "area": 32,
                "iscrowd": 0,
            },
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    s = coco_category(tmp_path, tmp_path / "ann.json", "dog")
    assert [os.path.basename(p) for p in s.paths] == ["2.png", "3.png"]
    c = coco_category(tmp_path, tmp_path / "ann.json", 18, crops=True)
    assert [im.size for im in c.images] == [(5, 5), (8, 4)]
    with pytest.raises(ValueError, match="horse"):
        coco_category(tmp_path, tmp_path / "ann.json", "horse")


# --------------------------------------------------------------------------- CelebA

ATTRS = ["Bald", "Black_Hair", "Blond_Hair", "Gray_Hair", "Smiling", "Wearing_Hat"]
ROWS = {  # file: flags in ATTRS order, split
    "000001.jpg": ([-1, 1, -1, -1, 1, -1], 0),  # black
    "000002.jpg": ([-1, -1, 1, -1, -1, -1], 0),  # blond
    "000003.jpg": ([-1, 1, 1, -1, -1, -1], 0),  # two: dropped
    "000004.jpg": ([-1, -1, -1, -1, 1, -1], 0),  # none: dropped
    "000005.jpg": ([1, -1, -1, -1, -1, 1], 0),  # hat
    "000006.jpg": ([-1, -1, -1, 1, -1, -1], 1),  # grey, valid split
    "000007.jpg": ([-1, -1, -1, 1, -1, -1], 2),  # grey, test split
    "000008.jpg": ([-1, 1, -1, -1, -1, -1], 2),  # black, test split
}


def _fake_celeba(root, anno_dir="", with_images=True):
    d = root / anno_dir
    d.mkdir(parents=True, exist_ok=True)
    lines = [str(len(ROWS)), " ".join(ATTRS)]
    lines += [f"{f}  " + " ".join(f"{v:2d}" for v in flags) for f, (flags, _) in ROWS.items()]
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (d / "list_eval_partition.txt").write_text("".join(f"{f} {s}\n" for f, (_, s) in ROWS.items()))
    if with_images:
        _images_named(root / "img_align_celeba", list(ROWS))


def _images_named(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", (8, 10), (k * 20, 50, 90)).save(folder / name, format="JPEG")


def _oracle(attributes, split_code):
    out = {a: [] for a in attributes}
    for f, (flags, s) in sorted(ROWS.items()):
        if split_code is not None and s != split_code:
            continue
        on = [a for a in attributes if flags[ATTRS.index(a)] > 0]
        if sum(flags[ATTRS.index(a)] > 0 for a in attributes) == 1:
            out[on[0]].append(f)
    return out


@pytest.mark.parametrize(
    ("split", "code"), [("train", 0), ("valid", 1), ("test", 2), ("all", None)]
)
def test_celeba_exclusive_classes(tmp_path, split, code):
    _fake_celeba(tmp_path)
    got = celeba_attribute_classes(tmp_path, split=split)
    assert list(got) == list(CELEBA_PAPER_ATTRIBUTES)
    assert {a: [os.path.basename(p) for p in v] for a, v in got.items()} == _oracle(
        CELEBA_PAPER_ATTRIBUTES, code
    )
    paths = [p for v in got.values() for p in v]
    if paths:
        assert len(load_images(paths, strict=True)) == len(paths)


def test_celeba_official_layout_and_errors(tmp_path):
    _fake_celeba(tmp_path, anno_dir="Anno", with_images=False)
    (tmp_path / "Anno" / "list_eval_partition.txt").rename(tmp_path / "list_eval_partition.txt")
    _images_named(tmp_path / "Img" / "img_align_celeba", list(ROWS))
    got = celeba_attribute_classes(tmp_path, attributes=("Black_Hair", "Smiling"), split="train")
    assert {a: [os.path.basename(p) for p in v] for a, v in got.items()} == _oracle(
        ("Black_Hair", "Smiling"), 0
    )
    assert all(os.path.isfile(p) for v in got.values() for p in v)
    with pytest.raises(ValueError, match="Red_Hair"):
        celeba_attribute_classes(tmp_path, attributes=("Black_Hair", "Red_Hair"))
    with pytest.raises(ValueError, match="split"):
        celeba_attribute_classes(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="list_attr_celeba"):
        celeba_attribute_classes(tmp_path / "nowhere")


# --------------------------------------------------------------------------- IDX / Fashion-MNIST


def _write_idx(path, arr: np.ndarray, code: int, compress: bool):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as fh:
        fh.write(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    ints = rng.integers(-1000, 1000, size=(7,), dtype=np.int32)
    floats = rng.normal(size=(2, 3)).astype(np.float32)
    for name, arr, code in [("u8", images, 0x08), ("i32", ints, 0x0C), ("f32", floats, 0x0D)]:
        path = tmp_path / name
        _write_idx(path, arr, code, compress)
        out = read_idx(path)
        assert out.dtype == arr.dtype and out.dtype.isnative
        np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((3, 4), dtype=np.uint8), 0x08, False)
    data = (tmp_path / "short").read_bytes()
    (tmp_path / "short").write_bytes(data[:-2])
    with pytest.raises(ValueError, match="expected 12"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_from_fixture_and_missing(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=(6,), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x, 0x08, True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", y, 0x08, False)  # plain works too
    xi, yi = fashion_mnist(tmp_path, split="test")
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yi, y)
    assert xi.dtype == np.uint8 and yi.dtype == np.int64
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist(tmp_path, split="train")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_ROOT),
    reason="dataset-fashion-mnist not installed: apt-get install -y dataset-fashion-mnist (as root; .ci/run does it)",
)
def test_real_fashion_mnist_test_split():
    x, y = fashion_mnist(split="test")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.bincount(y).tolist() == [1000] * 10


# --------------------------------------------------------------------------- bundled photos


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None, reason="foolbox not installed")
def test_bundled_foolbox_photos_without_importing_foolbox():
    was_imported = "foolbox" in sys.modules
    photos = bundled_photos(["foolbox"])
    assert len(photos) >= 20
    assert was_imported or "foolbox" not in sys.modules
    for p in photos:
        assert os.path.isfile(p.path) and p.source == "foolbox"
        # Oracle: the label is the last number of imagenet_<i>_<label>.jpg.
        assert p.label_hint == int(os.path.basename(p.path)[:-4].split("_")[-1])
    assert [p.path for p in photos] == sorted(p.path for p in photos)


def test_bundled_photos_all_sources_exist_and_decode():
    photos = bundled_photos()
    assert all(os.path.isfile(p.path) for p in photos)
    assert len({p.path for p in photos}) == len(photos)
    sources = [p.source for p in photos]
    assert sources == sorted(sources, key=["foolbox", "skimage", "sklearn", "matplotlib"].index)
    if importlib.util.find_spec("skimage") is not None:
        assert any(p.path.endswith("chelsea.png") for p in photos)
    if importlib.util.find_spec("sklearn") is not None:
        assert {os.path.basename(p.path) for p in photos if p.source == "sklearn"} == {
            "china.jpg",
            "flower.jpg",
        }
    sample = [p.path for p in photos if p.source != "foolbox"][:3]
    if sample:
        assert all(im.mode == "RGB" for im in load_images(sample, strict=True).images)
    with pytest.raises(ValueError, match="sources"):
        bundled_photos(["flickr"])
