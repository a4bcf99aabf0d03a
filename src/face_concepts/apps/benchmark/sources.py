"""Image sources and models of the benchmark runner (:mod:`face_concepts.apps.benchmark.runner`).

Two protocols:

- ``dataset = "bundled"``: ImageNet classes recognised in the real photos bundled with installed
  packages (one or two photos per class). Fitting and held-out images are random views (crops)
  of the same photos with different seeds.
- ``dataset = "fashion_mnist"``: the paper's class-level protocol (train a classifier, then
  explain it; the paper does this with CelebA). Fitting images are drawn per seed from the
  class's training images, held-out images from its test images: distinct images of the class.

The Fashion-MNIST classifier is :class:`FashionCNN`, trained by the committed recipe
``benchmarks/train_fashion_mnist.py``; its checkpoint (a plain state dict) is cached outside
the repository and named in a config as the model spec ``"fashion_mnist_cnn"`` (default path)
or ``"fashion_mnist_cnn:PATH"``. The second Fashion-MNIST classifier is a small vision transformer
(:func:`fashion_vit`, torchvision ``VisionTransformer``), trained by
``benchmarks/train_vit_fashion_mnist.py``, spec ``"fashion_mnist_vit[:PATH]"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from face_concepts._core.seeding import make_generator
from face_concepts._core.validation import check_int
from face_concepts.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, fashion_mnist
from face_concepts.data.preprocess import Preprocess

__all__ = [
    "FASHION_MNIST_CHECKPOINT",
    "FASHION_MNIST_SPEC",
    "FASHION_MNIST_VIT_CHECKPOINT",
    "FASHION_MNIST_VIT_SPEC",
    "ArraySource",
    "FashionCNN",
    "PhotoSource",
    "fashion_mnist_split",
    "fashion_mnist_tensor",
    "fashion_vit",
    "fashion_vit_split",
    "load_benchmark_model",
    "load_sources",
]

FASHION_MNIST_SPEC = "fashion_mnist_cnn"
FASHION_MNIST_CHECKPOINT = Path("~/.cache/face-concepts/fashion_mnist_cnn.pt").expanduser()
FASHION_MNIST_VIT_SPEC = "fashion_mnist_vit"
FASHION_MNIST_VIT_CHECKPOINT = Path("~/.cache/face-concepts/fashion_mnist_vit.pt").expanduser()
# Fashion-MNIST pixel statistics (train split, grey in [0, 1]); the grey image is repeated on
# three channels so that every tool that expects RGB input works unchanged.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.286, 0.353


class FashionCNN(nn.Module):
    """Small CNN for 28×28 images: ``features`` (last layer ReLU) → global mean pool → ``head``.

    Four conv blocks (16, 32, 64, 64 channels; the first two max-pooled), so the last map of a
    28-px image is 7×7×64 and non-negative; ``head`` is one Linear layer (affine), which is the
    split FACE needs. Input: (N, 3, H, W), any H, W ≥ 4.

    Examples
    --------
    >>> FashionCNN()(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, n_classes: int = 10, width: int = 16) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]

        w = check_int(width, "width", minimum=1)
        # Pool early: most of a CNN's CPU time is spent at full resolution, and 28-px images
        # need only one conv there. The last block ends in ReLU (non-negative activations).
        self.features = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w),
        )  # fmt: skip
        self.head = nn.Linear(4 * w, check_int(n_classes, "n_classes", minimum=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def fashion_vit(n_classes: int = 10) -> nn.Module:
    """The small vision transformer for 28×28 Fashion-MNIST (untrained; seed before calling).

    torchvision ``VisionTransformer``: 7-px patches (a 4×4 grid of patch tokens plus the class
    token), 3 blocks of width 64 with 4 heads and an MLP of 128, the classifier on the class
    token. :func:`~face_concepts.models.split_model` splits it exactly (``models/vit.py``).

    Examples
    --------
    >>> fashion_vit()(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 10])
    """
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=28, patch_size=7, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128,
        num_classes=check_int(n_classes, "n_classes", minimum=2),
    )  # fmt: skip


def fashion_mnist_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) → normalised float (N, 3, 28, 28), the input :class:`FashionCNN` expects.

    Examples
    --------
    >>> fashion_mnist_tensor(np.zeros((2, 28, 28), dtype=np.uint8)).shape
    torch.Size([2, 3, 28, 28])
    """
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).div_(255.0)
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def fashion_mnist_split(model: FashionCNN, *, name: str = FASHION_MNIST_SPEC) -> Any:
    """A verified :class:`~face_concepts.ModelSplit` of a :class:`FashionCNN` (in eval mode)."""
    from face_concepts.models.base import ModelSplit

    model.eval()
    pre = _fashion_preprocess()
    split = ModelSplit(
        model.features, model.head, model=model, preprocess=pre, name=name,
        layer="features", categories=FASHION_MNIST_CLASSES, input_size=28,
    )  # fmt: skip
    split.verify()
    return split


def _fashion_preprocess() -> Preprocess:
    return Preprocess(
        resize_size=28, crop_size=28, mean=(FASHION_MNIST_MEAN,) * 3, std=(FASHION_MNIST_STD,) * 3
    )


def fashion_vit_split(model: nn.Module, *, name: str = FASHION_MNIST_VIT_SPEC) -> Any:
    """A verified :class:`~face_concepts.ModelSplit` of a :func:`fashion_vit` (in eval mode).

    Its tokens are signed; the benchmark splits them with ``signed="posneg"`` (exact:
    ``[relu(f), relu(-f)]``, 128 features) so that CRAFT and ICE, whose scikit-learn NMF needs
    non-negative activations, compare with FACE and NMF on the same activations.
    """
    from face_concepts.models.split import split_model

    return split_model(
        model.eval(), preprocess=_fashion_preprocess(), categories=FASHION_MNIST_CLASSES,
        name=name, signed="posneg",
    )  # fmt: skip


def load_benchmark_model(spec: str) -> Any:
    """A model split from a benchmark model spec.

    ``"fashion_mnist_cnn"`` / ``"fashion_mnist_cnn:PATH"`` load the recipe's checkpoint
    (state dict, ``torch.load(weights_only=True)``); anything else goes to
    :func:`face_concepts.models.load_model` (``"bundled:mobilenet_v2"``, …).

    Examples
    --------
    >>> split = load_benchmark_model("fashion_mnist_cnn")  # doctest: +SKIP
    >>> split.n_features, split.n_classes  # doctest: +SKIP
    (64, 10)
    """
    head, _, path = str(spec).partition(":")
    if head == FASHION_MNIST_VIT_SPEC:
        ckpt = Path(path).expanduser() if path else FASHION_MNIST_VIT_CHECKPOINT
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"model {spec!r}: checkpoint {str(ckpt)!r} not found; train it with "
                "`python benchmarks/train_vit_fashion_mnist.py` (about 2 CPU minutes on 1 thread)"
            )
        from face_concepts.models.weights import load_state_dict_file

        return fashion_vit_split(load_state_dict_file(fashion_vit(), ckpt))
    if head != FASHION_MNIST_SPEC:
        from face_concepts.models import load_model

        return load_model(spec)
    ckpt = Path(path).expanduser() if path else FASHION_MNIST_CHECKPOINT
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"model {spec!r}: checkpoint {str(ckpt)!r} not found; train it with "
            "`python benchmarks/train_fashion_mnist.py` (about 5 minutes on 2 CPU cores)"
        )
    from face_concepts.models.weights import load_state_dict_file

    return fashion_mnist_split(load_state_dict_file(FashionCNN(), ckpt), name=FASHION_MNIST_SPEC)


# ---------------------------------------------------------------------- image sources
class PhotoSource:
    """Random views (50–95 % crops, resized back) of a class's few preprocessed photos."""

    def __init__(self, photos: list[torch.Tensor]) -> None:
        self.photos = photos
        self.n_available = len(photos)

    def fit(self, n: int, seed: int) -> torch.Tensor:
        from face_concepts.apps.demo import _views

        return _views(self.photos, n, seed)

    def heldout(self, n: int, seed: int) -> torch.Tensor:
        from face_concepts.apps.demo import _views

        return _views(self.photos, n, seed + 1000)  # other crops of the same photos


class ArraySource:
    """Distinct images of a class: fitting ones from ``train``, held-out ones from ``test``.

    Each seed draws its own fitting subset (without replacement); held-out images are drawn
    with ``seed + 1000`` from the test images.

    Examples
    --------
    >>> src = ArraySource(torch.zeros(10, 3, 28, 28), torch.ones(4, 3, 28, 28))
    >>> src.fit(6, seed=0).shape[0], src.heldout(50, seed=0).shape[0]
    (6, 4)
    """

    def __init__(self, train: torch.Tensor, test: torch.Tensor) -> None:
        if train.shape[0] == 0 or test.shape[0] == 0:
            raise ValueError("a class needs at least one training and one test image")
        self.train, self.test = train, test
        self.n_available = int(train.shape[0])

    @staticmethod
    def _draw(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        n = min(check_int(n, "n", minimum=1), x.shape[0])
        idx = torch.randperm(x.shape[0], generator=make_generator(seed))[:n]
        return x[idx.sort().values]

    def fit(self, n: int, seed: int) -> torch.Tensor:
        return self._draw(self.train, n, seed)

    def heldout(self, n: int, seed: int) -> torch.Tensor:
        return self._draw(self.test, n, seed + 1000)


def _fashion_sources(cfg: dict[str, Any]) -> dict[int, ArraySource]:
    root = cfg.get("dataset_root") or FASHION_MNIST_ROOT
    x_tr, y_tr = fashion_mnist(root, "train")
    x_te, y_te = fashion_mnist(root, "test")
    classes = list(range(10)) if cfg["classes"] == "auto" else list(cfg["classes"])
    bad = [c for c in classes if not 0 <= c < len(FASHION_MNIST_CLASSES)]
    if bad:
        raise ValueError(f"classes {bad} are not Fashion-MNIST classes (0..9)")
    if cfg["classes"] == "auto":
        classes = classes[: cfg["max_classes"]]
    return {
        c: ArraySource(fashion_mnist_tensor(x_tr[y_tr == c]), fashion_mnist_tensor(x_te[y_te == c]))
        for c in classes
    }


def load_sources(split: Any, cfg: dict[str, Any]) -> dict[int, PhotoSource | ArraySource]:
    """``{class id: source}`` for the config's ``dataset`` (see the module docstring)."""
    if cfg["dataset"] == "fashion_mnist":
        return dict(_fashion_sources(cfg))
    from face_concepts.apps.demo import choose_classes

    if cfg["classes"] == "auto":
        return {c: PhotoSource(p) for c, p in choose_classes(split, cfg["max_classes"])}
    found = dict(choose_classes(split, 1000))
    missing = [c for c in cfg["classes"] if c not in found]
    if missing:
        raise ValueError(
            f"classes {missing} are not recognised in the bundled photos; recognised: {sorted(found)}"
        )
    return {c: PhotoSource(found[c]) for c in cfg["classes"]}


def dataset_available(cfg: dict[str, Any]) -> str | None:
    """None when the config's dataset can be read, else a message saying how to get it."""
    if cfg["dataset"] != "fashion_mnist":
        return None
    root = cfg.get("dataset_root") or FASHION_MNIST_ROOT
    names = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    if all(any(os.path.isfile(os.path.join(root, n + e)) for e in (".gz", "")) for n in names):
        return None
    return (
        f"Fashion-MNIST IDX files not found in {root!r}; install them with "
        "`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, as root) or set dataset_root "
        "to a folder holding the four IDX files"
    )
