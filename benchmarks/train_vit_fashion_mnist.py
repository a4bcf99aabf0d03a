"""Train the small vision transformer on Fashion-MNIST that the fourth reproduction setting explains.

Architecture: :func:`face_concepts.apps.benchmark.sources.fashion_vit` (torchvision
``VisionTransformer``: 28-px input, 7-px patches so a 4×4 grid of patch tokens plus the class
token, 3 blocks of width 64, the classifier on the class token). ``split_model`` splits it exactly
(``face_concepts.models.vit``: the map's spatial mean is the class token). Data: the Debian
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or ``--root``. No ViT
weights are available offline, hence this recipe; it follows ``train_fashion_mnist.py`` (same
training loop, input tensors, record and checkpoint conventions), with its own defaults: 4 epochs
over the 60,000 training images, one thread, a few minutes.

Usage::

    nice -n 5 python benchmarks/train_vit_fashion_mnist.py \
        --record benchmarks/results/fashion_mnist_vit.json

The checkpoint (a plain state dict, ``torch.load(weights_only=True)``) goes to
``~/.cache/face-concepts/fashion_mnist_vit.pt`` with a JSON record next to it (sha256, test
accuracy, training time, settings). An existing checkpoint is kept unless ``--force``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the CNN recipe next to this file

from face_concepts.apps.benchmark.sources import (
    FASHION_MNIST_VIT_CHECKPOINT,
    fashion_vit,
)
from train_fashion_mnist import build_parser as cnn_parser
from train_fashion_mnist import evaluate, prepare, save_and_record, train

# The recipe's promise; the script exits 1 below it. Measured with the defaults and --threads 1
# (benchmarks/results/fashion_mnist_vit.json, 2026-12-06, Intel Xeon): test accuracy 0.872,
# 77 s of CPU; on 2026-12-04 (AMD EPYC) the same recipe gave other bits and 0.8714.
MIN_TEST_ACCURACY = 0.85


def build_parser():
    """The CNN recipe's command line with this recipe's checkpoint and defaults."""
    parser = cnn_parser()
    parser.description = __doc__.splitlines()[0]
    parser.set_defaults(out=str(FASHION_MNIST_VIT_CHECKPOINT), epochs=4, lr=2e-3)
    parser.add_argument(
        "--n-train", type=int, default=None, help="first N training images only (default: all)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data = prepare(args, n_train=args.n_train)
    if isinstance(data, int):
        return data
    out, xtr, ytr, xte, yte = data
    t0, c0 = time.perf_counter(), time.process_time()
    model = train(
        xtr,
        ytr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        build=fashion_vit,
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    acc = evaluate(model, xte, yte)
    return save_and_record(
        model, out, args, acc, seconds, MIN_TEST_ACCURACY,
        architecture="face_concepts.apps.benchmark.sources.fashion_vit (torchvision VisionTransformer)",
        cpu_seconds=cpu,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
