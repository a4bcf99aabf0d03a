"""Throughput of ``extract_activations`` against a bare ``model.features`` + mean-pool loop.

Both run side by side in one process on the same crops of real photos with the bundled
real-weights MobileNetV2, interleaved (A, B, A, B, …) so that load from other processes hits
both alike; the median over repeats is reported. Also timed: extraction with the progress bar
on (drawn into a buffer) and a warm on-disk cache hit.

    python benchmarks/activations.py [--repeats 5] [--out benchmarks/results/activations.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from PIL import Image

from face_concepts.activations.cache import ActivationCache
from face_concepts.activations.extract import extract_activations
from face_concepts.models import load_model

BATCH = 64


def crops(split, n: int, side: int, source: int, seed: int) -> torch.Tensor:
    """``n`` random ``source``-px crops of real photos, resized to ``side`` and normalised."""
    import skimage.data

    pre = split.preprocess
    photos = [
        pre.to_unit_tensor(Image.fromarray(f()))
        for f in (skimage.data.chelsea, skimage.data.coffee)
    ]
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        img = photos[k % len(photos)]
        i, j = torch.randint(0, img.shape[1] - source + 1, (2,), generator=g).tolist()
        c = img[None, :, i : i + source, j : j + source]
        if source != side:
            c = F.interpolate(c, size=(side, side), mode="bilinear", align_corners=False)
        out.append(c)
    return pre.normalize(torch.cat(out))


def bare(split, x: torch.Tensor) -> torch.Tensor:
    """The baseline: the model's own feature stack and a mean, nothing else."""
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], BATCH):
            out.append(split.model.features(x[i : i + BATCH]).mean(dim=(2, 3)))
    return torch.cat(out)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_case(split, x: torch.Tensor, repeats: int) -> dict[str, tuple[float, float]]:
    ours = lambda: extract_activations(split, x, batch_size=BATCH, progress=False)  # noqa: E731

    def with_bar():
        with contextlib.redirect_stderr(io.StringIO()):
            extract_activations(split, x, batch_size=BATCH, progress=True)

    # same numbers first: the comparison is meaningless otherwise
    torch.testing.assert_close(ours(), bare(split, x).float(), atol=1e-5, rtol=0)
    runs = {"bare": lambda: bare(split, x), "ours": ours, "ours+bar": with_bar}
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(repeats):
        for k in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
            times[k].append(timed(runs[k]))
    with tempfile.TemporaryDirectory() as root:
        cache = ActivationCache(root)
        extract_activations(split, x, batch_size=BATCH, progress=False, cache=cache)
        hit = lambda: extract_activations(split, x, batch_size=BATCH, progress=False, cache=cache)  # noqa: E731
        times["cache hit"] = [timed(hit) for _ in range(repeats)]
    out = {k: (min(v), statistics.median(v)) for k, v in times.items()}
    # paired ratios (runs of the same repeat are seconds apart, so they see similar load)
    for k in ("ours", "ours+bar"):
        out[k + " paired"] = (
            statistics.median(a / b for a, b in zip(times[k], times["bare"])),
        ) * 2
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    split = load_model("bundled:mobilenet_v2")
    cases = [
        ("256 crops, 64 px", crops(split, 256, 64, 64, 0)),
        ("64 crops, 224 px", crops(split, 64, 224, 112, 1)),
    ]
    lines = [
        "# extract_activations vs bare forward (MobileNetV2, real weights)",
        "",
        f"- command: `python benchmarks/activations.py --repeats {args.repeats}`",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}",
        f"- batch size {BATCH}; {args.repeats} repeats, run order rotated within each repeat; "
        "times are min / median over repeats; ratio = median over repeats of (time / bare time "
        "of the same repeat), which cancels most of the load from other jobs",
        "",
        "| inputs | bare features+mean (s) | extract_activations (s) | ratio "
        "| with progress bar (s) | ratio | cache hit (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for label, x in cases:
        t = run_case(split, x, args.repeats)
        n = x.shape[0]
        (b0, b1), (o0, o1), (p0, p1) = t["bare"], t["ours"], t["ours+bar"]
        ro, rp = t["ours paired"][0], t["ours+bar paired"][0]
        lines.append(
            f"| {label} | {b0:.3f} / {b1:.3f} ({n / b0:.0f} img/s) | {o0:.3f} / {o1:.3f} | "
            f"{ro:.3f} | {p0:.3f} / {p1:.3f} | {rp:.3f} | {t['cache hit'][1]:.4f} |"
        )
        ratios.append(ro)
        print(lines[-1], file=sys.stderr)
    worst = max(ratios)
    lines += [
        "",
        f"Target (extract_activations within 10 % of the bare forward): worst ratio {worst:.3f} "
        f"-> {'met' if worst <= 1.10 else 'NOT met'}. The work per batch is identical (features, "
        "mean, copy to the CPU); differences at this level are noise from other jobs on the machine.",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
