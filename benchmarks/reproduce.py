"""Run a benchmark config and optionally publish its CSV, tables and figures.

Usage::

    python benchmarks/reproduce.py benchmarks/configs/imagenet_mobilenet.toml \
        --publish benchmarks/results --prefix reproduction

Cells finished by an earlier (interrupted) run are reused; see face_concepts.apps.benchmark.runner. A config
whose dataset is not installed (Fashion-MNIST) is skipped with a message saying how to get it.

The settings of ``benchmarks/results/reproduction.md``, one config each:

1. ``imagenet_mobilenet.toml`` — real MobileNetV2, ImageNet photos;
2. ``imagenet_efficientnet.toml`` — real EfficientNet-Lite0, same classes;
3. ``fashion_mnist.toml`` — Fashion-MNIST CNN (``train_fashion_mnist.py`` first);
4. ``fashion_mnist_vit.toml`` — Fashion-MNIST vision transformer (``train_vit_fashion_mnist.py``
   first), same classes, images and seeds as setting 3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from face_concepts.apps.benchmark.runner import DatasetUnavailableError, run_benchmark


def build_parser() -> argparse.ArgumentParser:
    """The command line (also used by tests/test_readme.py to check the README's commands)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="TOML config (benchmarks/configs/*.toml)")
    parser.add_argument("--out", default=None, help="output folder (default: the config's out_dir)")
    parser.add_argument("--publish", default=None, help="copy results.csv/.md and figures here")
    parser.add_argument("--prefix", default="reproduction", help="file name prefix when publishing")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 is fastest on a busy machine)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        # Small solver steps on an oversubscribed machine run many times slower with 2 threads
        # than with 1 (threads wait for each other), so shared machines should pass --threads 1.
        torch.set_num_threads(args.threads)
    try:
        result = run_benchmark(args.config, out_dir=args.out, progress=not args.no_progress)
    except DatasetUnavailableError as exc:
        print(f"skipped {args.config}: {exc}", file=sys.stderr)
        return 0
    if args.publish:
        dest = Path(args.publish)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["csv"], dest / f"{args.prefix}.csv")
        shutil.copyfile(result["markdown"], dest / f"{args.prefix}_tables.md")
        for fig in result["figures"]:
            shutil.copyfile(fig, dest / f"{args.prefix}_{Path(fig).name}")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
