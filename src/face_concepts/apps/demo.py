"""The embedded demo: real MobileNetV2 (ImageNet weights) on real photos, fully offline.

For a few ImageNet classes that the model recognises in the photos shipped with installed
packages (foolbox's ImageNet validation images, scikit-image and scikit-learn photos), it
extracts FACE concepts, compares them with plain NMF (λ = 0, same pipeline and encoder), and
writes one run per class (concept bank, metrics, figures).

Honest scope: there are only one or two source photos per class, so the "images" of a class
are random views (crops of 50–95 % of the photo, resized to the model input); held-out images
are other random views of the same photos. This measures concept quality and faithfulness,
not class-level generalisation.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from face_concepts._core.io import atomic_write_bytes, atomic_write_json
from face_concepts._core.names import slug
from face_concepts.data import bundled_photos, load_images, random_patches
from face_concepts.models import load_model
from face_concepts.pipeline.config import ExplainerConfig
from face_concepts.pipeline.explainer import ConceptExplainer
from face_concepts.pipeline.jobs import fit_evaluate_save
from face_concepts.report.images import figure_png


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def choose_classes(split: Any, max_classes: int) -> list[tuple[int, list[torch.Tensor]]]:
    """Classes recognised in the bundled photos: (class id, preprocessed photos), best first.

    A photo counts for a class when the model's top-1 prediction is that class and agrees with
    the photo's label where one is known (foolbox file names carry the ImageNet label).
    """
    photos = bundled_photos()
    xs = torch.stack([split.preprocess(load_images([ph.path]).images[0]) for ph in photos])  # type: ignore[index]  # files: images is a list
    # One batched forward instead of 43 single-image ones (the scan runs on every demo start).
    with torch.inference_mode():
        probs = torch.cat([torch.softmax(split.logits(c), dim=1) for c in xs.split(16)])
    groups: dict[int, list[tuple[float, torch.Tensor]]] = defaultdict(list)
    for photo, x, prob in zip(photos, xs, probs):
        conf, pred = float(prob.max()), int(prob.argmax())
        if photo.label_hint is not None and pred != photo.label_hint:
            continue
        if conf >= 0.5:
            groups[pred].append((conf, x))
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), -max(c for c, _ in kv[1])))
    return [(cid, [x for _, x in items]) for cid, items in ranked[:max_classes]]


def _views(photos: list[torch.Tensor], n: int, seed: int) -> torch.Tensor:
    x = torch.stack(photos)
    per = max(1, n // len(photos))
    views, _, _ = random_patches(
        x, per, x.shape[-1], min_scale=0.5, max_scale=0.95, random_state=seed
    )
    return views


def _write_figures(ex: ConceptExplainer, run_dir: Path) -> list[str]:
    from face_concepts.viz import importance_bar, top_crops

    idx, crops = ex.top_crops()
    codes = ex.row_codes_[idx.reshape(-1)]
    name = ex.class_name()
    written = []
    fig = top_crops(crops, codes, ex.importance(), k=idx.shape[1], class_name=name)
    atomic_write_bytes(run_dir / "top_crops.png", figure_png(fig))
    fig2 = importance_bar(ex.importance(), class_name=name)
    atomic_write_bytes(run_dir / "importance.png", figure_png(fig2))
    written += [str(run_dir / "top_crops.png"), str(run_dir / "importance.png")]
    return written


KEYS = ("acc", "agreement", "kl", "rel_l2", "c_insertion", "c_deletion", "c_gini", "density")


def _fit_method(
    split: Any,
    method: str,
    cid: int,
    name: str,
    fit_x: Any,
    held_x: Any,
    out: Path,
    *,
    n_concepts: int,
    kl_weight: float,
    seed: int,
    max_iter: int | None,
    progress: bool,
) -> dict[str, Any]:
    """Fit, evaluate and save one method on one class of the demo; its summary entry."""
    config = ExplainerConfig(
        method=method,
        n_concepts=n_concepts,
        kl_weight=kl_weight,
        random_state=seed,
        max_iter=max_iter,  # None: converged fits (the solver's own stop)
        progress=False,
    )
    ex = ConceptExplainer.from_config(split, config)
    run_dir = out / f"{cid}_{slug(name)}" / method
    result = fit_evaluate_save(ex, fit_x, cid, heldout=held_x, out=run_dir)
    fit_s, rep_fit, rep_held = result.fit_seconds, *result.metrics.values()  # fit, heldout
    files = _write_figures(ex, run_dir)
    record: dict[str, Any] = {
        "run_dir": str(run_dir),
        "fit_seconds": round(fit_s, 2),
        "n_iter": ex.fit_info_["n_iter"],
        "kl_weight": ex.effective_kl_weight,
        "fit": {k: rep_fit[k] for k in KEYS},
        "heldout": {k: rep_held[k] for k in KEYS},
        "top_concepts": [int(i) for i in torch.argsort(ex.importance(), descending=True)[:3]],
        "figures": files,
    }
    h = record["heldout"]
    _log(
        f"   {method:5s} λ={ex.effective_kl_weight:g}: {ex.fit_info_['n_iter']} iterations in {fit_s:.1f} s | held-out "
        f"agreement {h['agreement']:.3f}, KL {h['kl']:.4f}, rel-ℓ2 {h['rel_l2']:.3f}, C-Ins {h['c_insertion']:.3f}, "
        f"C-Del {h['c_deletion']:.3f}",
        progress,
    )
    return record


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    progress: bool = True,
    n_concepts: int = 8,
    kl_weight: float = 1.0,
    seed: int = 0,
    n_views: int = 16,
    n_heldout: int = 8,
    max_classes: int = 3,
    compare_nmf: bool = True,
    max_iter: int | None = None,
) -> dict[str, Any]:
    """Run the demo; return a summary dict (also written to ``out_dir/summary.json``)."""
    start = time.perf_counter()
    out = Path(out_dir)
    split = load_model("bundled:mobilenet_v2")
    _log("face-concepts demo: MobileNetV2 (real ImageNet weights) on bundled real photos", progress)
    classes = choose_classes(split, max_classes)
    if not classes:
        raise RuntimeError(
            "no bundled photo is recognised by the model; are foolbox/scikit-image installed?"
        )
    summary: dict[str, Any] = {"model": split.description(), "classes": [], "out_dir": str(out)}
    assert split.categories is not None  # the bundled models name their classes
    for cid, photos in classes:
        name = split.categories[cid]
        _log(
            f"\n== class {cid} ({name}): {len(photos)} photo(s), {n_views} views to fit, {n_heldout} held out",
            progress,
        )
        fit_x, held_x = _views(photos, n_views, seed), _views(photos, n_heldout, seed + 1000)
        entry: dict[str, Any] = {"class_id": cid, "class_name": name, "n_photos": len(photos)}
        for method in ("face", "nmf") if compare_nmf else ("face",):
            entry[method] = _fit_method(
                split, method, cid, name, fit_x, held_x, out, n_concepts=n_concepts,
                kl_weight=kl_weight, seed=seed, max_iter=max_iter, progress=progress,
            )  # fmt: skip
        summary["classes"].append(entry)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable table of the demo's results."""
    lines = [
        f"{'class':28s} {'method':6s} {'agree(fit)':>10s} {'agree(held)':>11s} {'KL(held)':>9s} {'C-Ins':>6s} {'C-Del':>6s}",
    ]
    for c in summary["classes"]:
        for m in ("face", "nmf"):
            if m not in c:
                continue
            e = c[m]
            lines.append(
                f"{str(c['class_id']) + ' ' + c['class_name']:28.28s} {m:6s} {e['fit']['agreement']:10.3f} "
                f"{e['heldout']['agreement']:11.3f} {e['heldout']['kl']:9.4f} {e['heldout']['c_insertion']:6.3f} "
                f"{e['heldout']['c_deletion']:6.3f}"
            )
    lines.append(f"results in {summary['out_dir']} ({summary['seconds']} s)")
    return "\n".join(lines)
