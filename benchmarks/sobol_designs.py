"""How many Sobol designs an intermediate layer's importance needs (evidence for issue 18, item 1).

At an intermediate layer the Sobol importance runs the rest of the network on
``N_d (r + 2)`` masked codes per image (384 for the default ``n_designs`` = 32 and r = 10): on
ResNet-18's ``layer3`` that is most of a fit's time (``intermediate_layer.md``, phase table).
Fewer designs would be cheaper; this measures what they cost in agreement, so that whoever plans
can decide. Nothing in the package changes.

One ``ConceptExplainer`` fit (defaults, 10 concepts) of MobileNetV2 (the bundled ImageNet
weights) at ``features.14`` (``signed="posneg"``; or ``--model resnet18 --layer layer3``,
random weights) on the first 12 bundled photos, class 285.
Then, on that fit's image codes and bank, with the split's image head:

- the reference: the global importance (mean over images of the per-image Jansen indices)
  averaged over ``--seeds`` scrambled Sobol designs (``design="sobol"``) of ``--reference``
  designs each;
- for each ``N_d`` in ``--designs``: the default Halton design (what a fit uses), and the
  scrambled Sobol designs of each seed (the estimator's own spread at that size);
- for each ``N_d``, the Halton design again with the head under bfloat16 autocast
  (``precision="bfloat16"``, what ``importance_precision="auto"`` runs on hardware with native
  bfloat16); every other row and the reference run in full precision (float32).

Per row: the wall time of one importance, the Spearman correlation of the global importance
with the reference, whether the top-3 concepts (as a set) are the reference's, and the largest
absolute difference of the global importance normalised to sum 1.

    python benchmarks/sobol_designs.py [--designs 8,16,32] [--reference 128] [--seeds 3] [--model resnet18 --layer layer3] --out FILE
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine_lines

N_IMAGES, CLASS_ID, TOP = 12, 285, 3


def _agreement(imp: torch.Tensor, ref: torch.Tensor) -> tuple[float, bool, float]:
    rho = float(spearmanr(imp.numpy(), ref.numpy()).statistic)
    top = set(imp.topk(TOP).indices.tolist()) == set(ref.topk(TOP).indices.tolist())
    gap = float((imp / imp.sum() - ref / ref.sum()).abs().max())
    return rho, top, gap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default="8,16,32")
    ap.add_argument("--reference", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="mobilenet_v2", choices=["mobilenet_v2", "resnet18"])
    ap.add_argument("--layer", default="features.14")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    load0 = load_average()

    import intermediate_layer
    from face_concepts import ConceptExplainer
    from face_concepts.data import bundled_photos, load_images, preprocess_images
    from face_concepts.importance.sobol import sobol_indices

    split = intermediate_layer._split(a.model, a.layer)
    paths = [p.path for p in bundled_photos()][:N_IMAGES]
    x = preprocess_images(load_images(paths), split.preprocess)
    t0 = time.perf_counter()
    ex = ConceptExplainer(split, n_concepts=10, progress=False, random_state=0).fit(x, CLASS_ID)
    fit_s = time.perf_counter() - t0
    U, W, head = ex.image_codes_, ex.concept_bank_, split.head

    def importance(
        n_designs: int, design: str, seed: int | None, precision: str = "full"
    ) -> tuple[torch.Tensor, float]:
        t = time.perf_counter()
        s = sobol_indices(U, W, head, CLASS_ID, n_designs=n_designs, design=design,
                          random_state=seed, precision=precision)  # fmt: skip
        return s.mean(dim=0).double(), time.perf_counter() - t

    refs = [importance(a.reference, "sobol", seed) for seed in range(a.seeds)]
    ref = torch.stack([r for r, _ in refs]).mean(dim=0)
    rows = []
    for n in [int(v) for v in a.designs.split(",")]:
        imp, s = importance(n, "halton", None)
        rows.append((n, "Halton (the default)", s, *_agreement(imp, ref)))
        imp, s = importance(n, "halton", None, "bfloat16")
        rows.append((n, "Halton, head in bfloat16", s, *_agreement(imp, ref)))
        for seed in range(a.seeds):
            imp, s = importance(n, "sobol", seed)
            rows.append((n, f"scrambled Sobol, seed {seed}", s, *_agreement(imp, ref)))
    ref_s = statistics.median(s for _, s in refs)
    lines = [
        "# Sobol designs at an intermediate layer: agreement against cost",
        "",
        f"- command: `python benchmarks/sobol_designs.py --designs {a.designs} --reference "
        f"{a.reference} --seeds {a.seeds} --threads {a.threads} --model {a.model} --layer "
        f"{a.layer} --out FILE`",
        *machine_lines(),
        f"- load average (1/5/15 min) at start {load0}, at end {load_average()}",
        f"- fit: `ConceptExplainer(split, n_concepts=10)` on {N_IMAGES} bundled photos, class "
        f"{CLASS_ID}, {split.name} at `{a.layer}`"
        + (" (`signed='posneg'`)" if a.model == "mobilenet_v2" else "")
        + f", {fit_s:.1f} s; its image codes and bank, the split's image head",
        f"- reference: the mean of {a.seeds} global importances with scrambled Sobol designs of "
        f"{a.reference} points ({ref_s:.1f} s each); reference top-{TOP}: "
        f"{sorted(ref.topk(TOP).indices.tolist())}",
        f"- per row: one importance (`sobol_indices`, Jansen) of the {N_IMAGES} images; Spearman "
        f"ρ of its global importance with the reference's; whether its top-{TOP} concepts are "
        "the reference's; the largest gap of the global importance normalised to sum 1",
        "",
        "| N_d | head rows per image | design | time (s) | Spearman ρ | same top-3 | largest gap |",
        "|---|---|---|---|---|---|---|",
    ]
    r = W.shape[0]
    for n, design, s, rho, top, gap in rows:
        lines.append(
            f"| {n} | {n * (r + 2)} | {design} | {s:.2f} | {rho:.3f} | {'yes' if top else 'no'} "
            f"| {gap:.3f} |"
        )
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
