"""Summary tables of reproduction.md from the published CSVs: each claim of the paper per setting.

Usage (from the repository root, after the four ``reproduce.py`` runs of ``reproduction.md``)::

    python benchmarks/reproduction_summary.py --results benchmarks/results > /tmp/summary.md

Writes one table per rank of the main table (r = 8, then the paper's r = 25), each cell giving,
for the NNLS encoder and the KL-aware one, "holds" / "does not hold" / "not shown" with the mean
paired difference, its bootstrap 95 % interval and the cell counts
(:mod:`face_concepts.apps.benchmark.claims`). A setting whose CSV is absent is left out.

``--tables`` writes the other generated parts of ``reproduction.md`` instead: the agreement of
every row under both encoders, each setting's held-out tables per rank and encoder (the
``<prefix>_tables.md`` tables with fewer columns), ``face-auto``'s cost against the λ = 1 fit
per cell with the λ it chose, and our r = 25 means next to the paper's numbers.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import Counter
from pathlib import Path

from face_concepts.apps.benchmark.claims import claims_table
from face_concepts.apps.benchmark.report import _fmt_of, summarise

SETTINGS = (
    ("1. MobileNetV2", "reproduction.csv"),
    ("2. EfficientNet-Lite0", "reproduction_efficientnet.csv"),
    ("3. Fashion-MNIST CNN", "reproduction_fashion_mnist.csv"),
    ("4. Fashion-MNIST ViT", "reproduction_fashion_mnist_vit.csv"),
)
ENCODERS = ((0.0, "NNLS"), (1.0, "KL-enc"))
RANKS = (8, 25)
ROWS = ("face", "face-auto", "face-paper", "nmf", "craft", "ice")
COLUMNS = (
    ("Agree ↑", "agreement"), ("Cert ↑", "certified"), ("D_KL ↓", "kl"), ("rel-ℓ2 ↓", "rel_l2"),
    ("C-Ins ↑", "c_insertion"), ("C-Del ↑", "c_deletion"), ("C-Gini ↑", "c_gini"),
    ("density ↓", "density"), ("C-Stab ↑", "stability"),
)  # fmt: skip
# The authors' notebook (docs/method.md §11): FACE / CRAFT / ICE.
PAPER = {
    "agreement": (1.00, 0.62, 0.99), "c_insertion": (0.970, 0.677, 0.886),
    "c_deletion": (0.899, 0.526, 0.587), "c_gini": (0.951, 0.786, 0.521),
    "kl": (0.302, 0.660, 0.357), "density": (1.00, 0.52, 0.56), "stability": (0.833, 0.889, 0.980),
}  # fmt: skip


def _read(path: Path) -> list[dict]:
    """CSV rows with the rank and encoder λ as numbers and empty cells as None."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if v == "":
                r[k] = None
        r["n_concepts"], r["encoder_kl_weight"] = int(r["n_concepts"]), float(r["encoder_kl_weight"])  # fmt: skip
    return rows


def _main_rows(rows: list[dict], label: str, rank: int, enc: float) -> list[dict]:
    return [r for r in rows if r["group"] == "main" and r["split"] == "heldout" and r["label"] == label
            and r["n_concepts"] == rank and r["encoder_kl_weight"] == enc]  # fmt: skip


def _mean(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r[key] is not None]
    return statistics.mean(values) if values else float("nan")


def held_out_table(rows: list[dict], rank: int, enc: float) -> str:
    """Markdown: one setting's rows at ``rank`` and encoder ``enc``, mean ± std over cells."""
    st = summarise(rows, group="main", model=rows[0]["model"], split="heldout", by="label",
                   where={"n_concepts": rank, "encoder_kl_weight": enc})  # fmt: skip
    lam = {r["label"]: r["kl_weight"] for r in rows if r["group"] == "main"}
    head = ["row", "n", *(c for c, _ in COLUMNS), "fit s", "iters"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in [x for x in ROWS if x in st]:
        s, n = st[label], st[label]["agreement"][2]
        shown = "auto" if lam[label] == "auto" else f"{float(lam[label]):g}"
        cells = [f"{label} (λ={shown})", str(n), *(_fmt_of(s[k], n) for _, k in COLUMNS),
                 f"{s['fit_seconds'][0]:.1f}", f"{s['n_iter'][0]:.0f}"]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def auto_cost(rows: list[dict], rank: int) -> str:
    """``face-auto``'s fit time over the ``face`` row's, per cell, and the λ it chose."""
    face = {(r["class_id"], r["seed"]): float(r["fit_seconds"]) for r in _main_rows(rows, "face", rank, 0.0)}  # fmt: skip
    auto = _main_rows(rows, "face-auto", rank, 0.0)
    ratios = [float(r["fit_seconds"]) / face[r["class_id"], r["seed"]] for r in auto]
    if not ratios:
        return "no face-auto cells"
    chosen = Counter(float(r["kl_weight_chosen"]) for r in auto)
    return (f"auto/λ=1 fit time per cell: median {statistics.median(ratios):.2f}×, max "
            f"{max(ratios):.2f}× over {len(ratios)} cells; λ chosen: "
            + ", ".join(f"{k:g} ×{v}" for k, v in sorted(chosen.items())))  # fmt: skip


def tables(settings: dict[str, list[dict]]) -> str:
    names = list(settings)
    md = ["### Agreement, NNLS → KL-aware encoder (r = 8)", "",
          "| row | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]  # fmt: skip
    for label in ROWS:
        md.append(f"| {label} | " + " | ".join(
            f"{_mean(_main_rows(rows, label, 8, 0.0), 'agreement'):.3f} → "
            f"{_mean(_main_rows(rows, label, 8, 1.0), 'agreement'):.3f}" for rows in settings.values()) + " |")  # fmt: skip
    for name, rows in settings.items():
        md += ["", f"### {name}"]
        for rank in RANKS:
            for enc, label in ENCODERS:
                md += ["", f"**r = {rank}, {label}** (held-out, mean ± std over cells):", "", held_out_table(rows, rank, enc)]  # fmt: skip
            md += ["", f"`face-auto` at r = {rank}: {auto_cost(rows, rank)}."]
    md += ["", "### Next to the paper (r = 25, KL-aware encoder; C-Stab at r = 8)", "",
           "| metric | paper FACE / CRAFT / ICE | " + " | ".join(f"{n}: FACE / CRAFT / ICE" for n in names) + " |",
           "|" + "---|" * (len(names) + 2)]  # fmt: skip
    for key, paper in PAPER.items():
        rank = 8 if key == "stability" else 25
        ours = [" / ".join(f"{_mean(_main_rows(rows, m, rank, 1.0), key):.3f}" for m in ("face", "craft", "ice")) for rows in settings.values()]  # fmt: skip
        md.append(f"| {key} | " + " / ".join(f"{v:.3g}" for v in paper) + " | " + " | ".join(ours) + " |")  # fmt: skip
    return "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results", help="folder of the published CSVs")
    ap.add_argument(
        "--tables", action="store_true", help="the per-setting tables instead (see above)"
    )
    args = ap.parse_args(argv)
    settings = {}
    for name, file in SETTINGS:
        path = Path(args.results) / file
        if path.is_file():
            settings[name] = _read(path)
    if not settings:
        print(f"no reproduction CSVs in {args.results}", file=sys.stderr)
        return 1
    if args.tables:
        print(tables(settings))
        return 0
    for rank in RANKS:
        print(f"\n### r = {rank}\n")
        print(claims_table(settings, rank=rank, encoders=ENCODERS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
