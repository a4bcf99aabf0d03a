"""Summary tables of reproduction.md from the published CSVs: each claim of the paper per setting.

Usage (from the repository root, after the four ``reproduce.py`` runs of ``reproduction.md``)::

    python benchmarks/reproduction_summary.py --results benchmarks/results > /tmp/summary.md

Writes one table per rank of the main table (r = 8, then the paper's r = 25), each cell giving,
for the NNLS encoder and the KL-aware one, "holds" / "does not hold" / "not shown" with the mean
paired difference, its bootstrap 95 % interval and the cell counts
(:mod:`face_concepts.apps.benchmark.claims`). A setting whose CSV is absent is left out.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from face_concepts.apps.benchmark.claims import claims_table

SETTINGS = (
    ("1. MobileNetV2", "reproduction.csv"),
    ("2. EfficientNet-Lite0", "reproduction_efficientnet.csv"),
    ("3. Fashion-MNIST CNN", "reproduction_fashion_mnist.csv"),
    ("4. Fashion-MNIST ViT", "reproduction_fashion_mnist_vit.csv"),
)
ENCODERS = ((0.0, "NNLS"), (1.0, "KL-enc"))
RANKS = (8, 25)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results", help="folder of the published CSVs")
    args = ap.parse_args(argv)
    settings = {}
    for name, file in SETTINGS:
        path = Path(args.results) / file
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as fh:
                settings[name] = list(csv.DictReader(fh))
    if not settings:
        print(f"no reproduction CSVs in {args.results}", file=sys.stderr)
        return 1
    for rank in RANKS:
        print(f"\n### r = {rank}\n")
        print(claims_table(settings, rank=rank, encoders=ENCODERS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
