"""IDX files (the MNIST format) and Fashion-MNIST from a local copy.

The Debian package ``dataset-fashion-mnist`` installs the four gzip-compressed IDX files under
``/usr/share/datasets/fashion-mnist``: 70,000 real 28×28 grey product photos, 10 classes.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
from PIL import Image

from face_concepts._core.validation import check_choice
from face_concepts.data.decode import PathLike, array_to_images

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (MNIST format), plain or gzip-compressed, into a native-endian array.

    Examples
    --------
    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
    """
    path_s = os.fspath(path)
    with open(path_s, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"  # gzip magic, whatever the file name says
    with gzip.open(path_s, "rb") if gz else open(path_s, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path_s!r} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path_s!r}: IDX header truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path_s!r}: IDX payload is {len(data) - header} bytes, expected {expected} for shape {shape}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _find_idx(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root!r}; on Debian/Ubuntu install it with "
        "`apt-get install -y dataset-fashion-mnist` (as root, after `apt-get update`), "
        "or pass root= to a folder holding the IDX files"
    )


def fashion_mnist(
    root: PathLike = FASHION_MNIST_ROOT, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from local IDX files: ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    Class names are :data:`FASHION_MNIST_CLASSES`. Train has 60,000 images, test 10,000.

    Examples
    --------
    >>> x, y = fashion_mnist(split="test")  # doctest: +SKIP
    >>> x.shape, y.shape  # doctest: +SKIP
    ((10000, 28, 28), (10000,))
    """
    split = check_choice(split, "split", ("train", "test"))
    prefix = "train" if split == "train" else "t10k"
    root_s = os.fspath(root)
    images = read_idx(_find_idx(root_s, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(root_s, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST files in {root_s!r} disagree: images {images.shape}, labels {labels.shape}"
        )
    return images.astype(np.uint8), labels.astype(np.int64)


def fashion_mnist_images(images: np.ndarray) -> list[Image.Image]:
    """Grey 28×28 arrays → RGB PIL images (for :func:`load_images`-style pipelines)."""
    return array_to_images(np.asarray(images, dtype=np.uint8))
