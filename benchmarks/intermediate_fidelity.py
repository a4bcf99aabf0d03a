"""How well the head of an intermediate-layer split stands in for the model, on real images.

FACE keeps the *head's* prediction on the reconstruction. For the last layer the head is the
model's own (exact split); for an intermediate layer it is the rest of the network run on a
constant map equal to the pooled activations (``split_model``'s docstring), an approximation.
This script measures that approximation with :meth:`ModelSplit.fidelity`: the share of real
images on which the head's top-1 class (on the pooled activations) is the model's, and the mean
KL(model ‖ head). The same number is warned and recorded by every fit on such a split.

Models with real weights that work offline: the bundled MobileNetV2 (ImageNet weights; its
intermediate maps are signed and split with ``signed="posneg"``, which is exact and leaves the
approximation to the head) on the 43 photos bundled with installed packages, and the
Fashion-MNIST CNN of ``benchmarks/train_fashion_mnist.py`` (when trained) on 500 test images.

Also measured, for the MobileNetV2 heads (a plain tail after the layer): a variant not adopted,
the same tail on an *unbounded* constant map — each convolution replaced by its kernel summed
over space and run on a 1×1 map (no zero-padding borders), pooling layers by the identity —
with its head-call time next to the library's head on the same rows.

Second table: the rows FACE factorises are native-size crops (ConceptExplainer's defaults: a grid
of 64-px crops), which the model sees as small inputs. For each crop, the model's own prediction
on the crop against the head on the crop's pooled activations, with the constant map at the size
of a whole image (the split's head) and at the crop's own size (``ModelSplit.head_for_input``,
what the fit uses), and the time of one head call on all crops with each.

    python benchmarks/intermediate_fidelity.py [--out benchmarks/results/intermediate_fidelity.md]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine_lines

MNV2_LAYERS = ("features.10", "features.14", "features.16", "features.17")
FASHION_LAYERS = ("features.2", "features.6", "features.10", "features.13")
PATCH = 64  # ConceptExplainer's default crop side


def _unbounded(module: nn.Module) -> nn.Module:
    """``module`` on an unbounded constant map, run on 1×1: summed kernels, pools dropped."""

    def conv(c: nn.Conv2d) -> nn.Conv2d:
        new = nn.Conv2d(c.in_channels, c.out_channels, 1, groups=c.groups, bias=c.bias is not None)
        with torch.no_grad():
            new.weight.copy_(c.weight.sum(dim=(2, 3), keepdim=True))
            if c.bias is not None:
                new.bias.copy_(c.bias)
        return new

    def swap(m: nn.Module) -> nn.Module:
        if isinstance(m, nn.Conv2d):
            return conv(m)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return nn.Identity()
        for name, child in m.named_children():
            setattr(m, name, swap(child))
        return m

    return swap(copy.deepcopy(module))


def _unbounded_fidelity(split, x: torch.Tensor) -> tuple[dict, float, float]:
    """Fidelity of the unbounded variant of ``split``'s head, and both heads' call times (s)."""
    from face_concepts.models._modules import PosNegHead, RestOfNetwork

    head = split.head
    inner = head.head if isinstance(head, PosNegHead) else head
    tail = RestOfNetwork([_unbounded(m) for m in inner.rest], (1, 1), chunk_rows=4096).eval()
    variant = PosNegHead(tail) if isinstance(head, PosNegHead) else tail
    with torch.inference_mode():
        A = split.pooled(x)
        times = []
        for h in (head, variant):
            t = time.perf_counter()
            h(A)
            times.append(time.perf_counter() - t)
    split.head = variant  # measured with the split's own fidelity, then put back
    try:
        return split.fidelity(x, A), times[0], times[1]
    finally:
        split.head = head


def _rows_mobilenet() -> list[tuple[str, str, dict]]:
    from face_concepts.data import bundled_photos, load_images
    from face_concepts.models import load_model

    paths = [p.path for p in bundled_photos()]
    out = []
    for layer in MNV2_LAYERS:
        split = load_model("bundled:mobilenet_v2", layer=layer, signed="posneg")
        x = torch.stack([split.preprocess(im) for im in load_images(paths).images])
        fid = split.fidelity(x)
        ub, t_head, t_ub = _unbounded_fidelity(split, x)
        fid.update(ub_agreement=ub["agreement"], ub_kl=ub["kl"], t_head=t_head, t_ub=t_ub)
        out.append(("MobileNetV2 (ImageNet weights)", layer, fid))
    return out


def _crop_rows_mobilenet() -> list[tuple[str, dict, dict, float, float, str, str]]:
    """Per layer: fidelity on the crops with the image-size and the crop-size map, their call
    times (s) and map sizes."""
    from face_concepts.data import bundled_photos, extract_patches, load_images
    from face_concepts.models import load_model

    paths = [p.path for p in bundled_photos()]
    out = []
    for layer in MNV2_LAYERS:
        split = load_model("bundled:mobilenet_v2", layer=layer, signed="posneg")
        x = torch.stack([split.preprocess(im) for im in load_images(paths).images])
        crops = extract_patches(x, PATCH).patches
        head, crop_head = split.head, split.head_for_input(PATCH)
        with torch.inference_mode():
            A = torch.cat([split.pooled(b) for b in crops.split(64)])
        fids, times = [], []
        for h in (head, crop_head):
            with torch.inference_mode():
                t = time.perf_counter()
                h(A)
                times.append(time.perf_counter() - t)
            split.head = h  # measured with the split's own fidelity, then put back
            try:
                fids.append(split.fidelity(crops, A))
            finally:
                split.head = head
        sizes = ["×".join(map(str, _map_size(h))) for h in (head, crop_head)]
        out.append((layer, fids[0], fids[1], times[0], times[1], sizes[0], sizes[1]))
    return out


def _map_size(head: nn.Module) -> tuple[int, int]:
    from face_concepts.models._modules import PosNegHead

    return (head.head if isinstance(head, PosNegHead) else head).map_size


def _rows_fashion() -> list[tuple[str, str, dict]]:
    from face_concepts.apps.benchmark import sources
    from face_concepts.models import split_model

    try:
        base = sources.load_benchmark_model("fashion_mnist_cnn")
    except FileNotFoundError as exc:
        print(f"Fashion-MNIST CNN skipped: {exc}", file=sys.stderr)
        return []
    cfg = {"dataset": "fashion_mnist", "dataset_root": "", "classes": "auto", "max_classes": 10}
    src = sources.load_sources(base, {**cfg, "n_views": 1, "n_heldout": 50})
    x = torch.cat([s.heldout(50, 0) for s in src.values()])
    out = []
    for layer in FASHION_LAYERS:
        split = split_model(base.model, layer, preprocess=base.preprocess, name="fashion_mnist_cnn")
        out.append(("Fashion-MNIST CNN (ours, trained)", layer, split.fidelity(x)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="markdown file (default: print only)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # the splits' own ApproximateSplitWarning: measured here
    start, load0 = time.perf_counter(), load_average()
    rows = _rows_mobilenet() + _rows_fashion()
    crop_rows = _crop_rows_mobilenet()
    lines = [
        "# Intermediate-layer splits: how well the head stands in for the model",
        "",
        f"- command: `python benchmarks/intermediate_fidelity.py {' '.join(sys.argv[1:])}`",
        *machine_lines(),
        f"- load average at the start: {load0}; at the end: {load_average()}; "
        f"{time.perf_counter() - start:.0f} s",
        "- measure: `ModelSplit.fidelity(x)`, the share of images whose top-1 class of "
        "`head(pool(features(x)))` is `model(x)`'s, and the mean KL(model ‖ head); images: the "
        "43 bundled photos (MobileNetV2), 50 test images of each Fashion-MNIST class (CNN)",
        "",
        "| model | layer | images | agreement with the model | mean KL(model ‖ head) "
        "| unbounded variant: agreement / KL | head call on all images: library / unbounded |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, layer, fid in rows:
        ub = (f"{fid['ub_agreement']:.3f} / {fid['ub_kl']:.3f}", f"{1000 * fid['t_head']:.0f} ms / {1000 * fid['t_ub']:.0f} ms") if "ub_kl" in fid else ("—", "—")  # fmt: skip
        lines.append(
            f"| {model} | `{layer}` | {fid['n_images']} | {fid['agreement']:.3f} | {fid['kl']:.3f} | {ub[0]} | {ub[1]} |"
        )
    lines += [
        "",
        f"## Native-size crops (MobileNetV2, {PATCH}-px grid crops of the bundled photos)",
        "",
        "The rows FACE factorises. Model: `model(crop)`; head: on the crop's pooled activations, "
        "with a constant map of a whole image's size (the split's head) or of the crop's own size "
        "(`ModelSplit.head_for_input`, what fits on crops use).",
        "",
        "| layer | crops | image-size map: agreement / KL | crop-size map: agreement / KL "
        "| head call on all crops: image-size / crop-size map |",
        "|---|---|---|---|---|",
    ]
    for layer, f_img, f_crop, t_img, t_crop, s_img, s_crop in crop_rows:
        lines.append(
            f"| `{layer}` | {f_img['n_images']} | {f_img['agreement']:.3f} / {f_img['kl']:.3f} "
            f"({s_img}) | {f_crop['agreement']:.3f} / {f_crop['kl']:.3f} ({s_crop}) | "
            f"{1000 * t_img:.0f} ms / {1000 * t_crop:.0f} ms |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
