"""Cost of ``kl_weight="auto"`` against one default fit, on real MobileNetV2 features.

Target (issue 17): the λ search plus its refit costs at most 3× one default fit.

- default fit: ``FACE(head, r, kl_weight=1.0, random_state=0).fit(A)`` — what
  ``ConceptExplainer.fit`` factorises with its default λ = 1;
- auto: :func:`face_concepts.pipeline.auto_lambda.fit_auto_kl_weight` on the same rows: a seeded
  20 % of them held out, FACE fitted on the rest at λ = 0, 1e-2, 1e-1, 1, 10, 100 (each
  warm-started from the previous λ) until the held-out agreement reaches the target, then a
  warm-started refit on every row at the chosen λ.

Data, shaped as ``ConceptExplainer.fit`` sees it (:func:`views_and_crops`): ``--views`` random
views of one real bundled photo are the images, their native 64-px grid crops the rows;
agreement is measured on the views' pooled features; the head is MobileNetV2's real classifier
(C = 1,000).

    python benchmarks/auto_lambda.py [--photo china.jpg] [--views 20] [--r 10] [--threads 1] \
        [--out benchmarks/results/auto_lambda.md]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

import torch

from _common import load_average, log, machine_lines, mobilenet_v2
from face_concepts import FACE
from face_concepts.data import Preprocess, bundled_photos, extract_patches, random_patches
from face_concepts.data.images import preprocess_images
from face_concepts.pipeline.auto_lambda import DEFAULT_TARGET_AGREEMENT, fit_auto_kl_weight

COST_TARGET = 3.0


def views_and_crops(photo: str, n_views: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, str]:  # fmt: skip
    """Rows (grid crops' pooled features), each row's view, the views' pooled features, the head.

    The images are ``n_views`` random views of one real photo, as in the reproduction's ImageNet
    settings; the rows are what ``ConceptExplainer`` factorises: the native 64-px grid crops of
    each view (stride 51, 16 per view).
    """
    model = mobilenet_v2()
    pre = Preprocess(resize_size=256, crop_size=224, interpolation="bilinear")
    paths = [p.path for p in bundled_photos() if p.path.endswith(photo)]
    if not paths:
        raise SystemExit(f"--photo {photo!r} is not among the bundled photos")
    x = preprocess_images(paths[:1], pre)
    views, _, _ = random_patches(x, n_views, 224, min_scale=0.6, max_scale=0.95, random_state=0)
    patches = extract_patches(views, 64, None)
    with torch.inference_mode():
        A_img = torch.cat([model.features(b).mean(dim=(2, 3)) for b in views.split(16)])
        A = torch.cat([model.features(b).mean(dim=(2, 3)) for b in patches.patches.split(128)])
    description = (
        f"{n_views} random views (60–95 % of the photo, resized to 224 px, seed 0) of the real "
        f"photo {photo} (bundled; resize 256, centre crop 224, ImageNet mean/std) are the images; "
        "the rows are the native 64-px grid crops of each view (stride 51); MobileNetV2 "
        "`features` (real ImageNet weights), spatially mean-pooled"
    )
    return A.contiguous(), patches.image_index, A_img.contiguous(), model.classifier, description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="china.jpg", help="a bundled real photo")
    parser.add_argument("--views", type=int, default=20, help="random views of it (the images)")
    parser.add_argument("--r", type=int, default=10, help="concepts (ConceptExplainer's default)")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET_AGREEMENT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="markdown file (default: stdout)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(["benchmarks/auto_lambda.py", *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    load_start = load_average()
    A, image_index, A_img, head, description = views_and_crops(args.photo, args.views)
    log(f"A {tuple(A.shape)}; default fit (λ = 1, r = {args.r}) ...")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught_default:
        warnings.simplefilter("always")
        est = FACE(head, args.r, kl_weight=1.0, random_state=0).fit(A)
    t_default = time.perf_counter() - t0
    log(f"default fit {t_default:.1f} s ({est.n_warm_iter_} + {est.n_iter_} iterations); auto ...")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught_auto:
        warnings.simplefilter("always")
        _, _, info = fit_auto_kl_weight(
            A, image_index, A_img, head, n_concepts=args.r,
            target_agreement=args.target, random_state=0,
        )  # fmt: skip
    t_auto = time.perf_counter() - t0
    rec = info["auto_kl_weight"]
    ratio = t_auto / t_default
    log(f"auto {t_auto:.1f} s, chosen λ = {rec['chosen']:g}, ratio {ratio:.2f}")
    verdict = "met" if ratio <= COST_TARGET else "missed"
    lines = [
        '# `kl_weight="auto"`: cost against one default fit',
        "",
        f"- command: `{command}`",
        *machine_lines(),
        f"- load average (1/5/15 min) at the start: {load_start}; at the end: {load_average()}",
        f"- data: {description}; rows n × p = {A.shape[0]} × {A.shape[1]}, C = 1000, r = {args.r}",
        "",
        "| | wall s | iterations | result |",
        "|---|---|---|---|",
        f"| default fit (λ = 1) | {t_default:.1f} | {est.n_warm_iter_} NMF warm start + "
        f"{est.n_iter_} FACE | converged: {est.converged_} |",
        f'| kl_weight="auto" (search + refit) | {t_auto:.1f} | '
        f"{sum(p['n_iter'] for p in rec['points'])} search + {rec['refit_n_iter']} refit | "
        f"λ = {rec['chosen']:g} ({'target reached' if rec['reached'] else 'target NOT reached'}) |",
        "",
        f"**Cost ratio auto / default = {ratio:.2f}× (target ≤ {COST_TARGET:g}×): {verdict}.**",
        "",
        f"The search ({rec['n_fit_images']} fitting images, {rec['n_heldout_images']} held "
        f"out, target agreement {rec['target_agreement']:g}, screening tol "
        f"{rec['search_tol']:g}):",
        "",
        "| λ | init | iterations | converged | s | held-out agreement | certified | KL | rel-ℓ2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in rec["points"]:
        lines.append(
            f"| {p['kl_weight']:g} | {p['init']} | {p['n_iter']} | {p['converged']} | "
            f"{p['seconds']:.1f} | {p['agreement']:.3f} | {p['certified']:.3f} | "
            f"{p['kl']:.4f} | {p['rel_l2']:.4f} |"
        )
    lines += ["", f"Refit on all {A.shape[0]} rows at λ = {rec['chosen']:g}: "
              f"{rec['refit_n_iter']} iterations, {rec['refit_seconds']:.1f} s."]  # fmt: skip
    shown = {str(w.message).splitlines()[0] for w in [*caught_default, *caught_auto]}
    if shown:
        lines += ["", "Warnings:", "", *(f"- {m}" for m in sorted(shown))]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
