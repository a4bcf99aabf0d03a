"""Refit, with today's code, the FACE fits that a published reproduction CSV records as capped.

A reproduction (``benchmarks/reproduce.py``) records per fit its iterations and whether the
solver stopped by its own rule (``converged``). Fits recorded at their iteration cap are
refitted here, each cell alone, with the config's settings and the same model checkpoint (its
sha256 is printed next to the one recorded by the training script), and the two records are set
side by side: iterations, converged, fit time, agreement and KL on the fitting and held-out
images (encoder λ = the config's first). The rest of the CSV is not touched.

    python benchmarks/recheck_capped.py CONFIG CSV [--record JSON] [--threads 1] [--out FILE]
    python benchmarks/recheck_capped.py --count CSV [CSV ...]

``--count``: no refits; per CSV, per method and group, how many fits stopped by their own rule.

e.g. ``benchmarks/configs/fashion_mnist.toml benchmarks/results/reproduction_fashion_mnist.csv
--record benchmarks/results/fashion_mnist_cnn.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import load_average, machine_lines
from face_concepts.apps.benchmark.runner import load_config, run_benchmark

FACE_METHODS = ("face",)


def fit_rows(csv_path: str) -> list[dict[str, str]]:
    """One row per fit of ``csv_path``: its fitting split at the first encoder λ."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    first_encoder = rows[0]["encoder_kl_weight"] if rows else ""
    return [r for r in rows if r["split"] == "fit" and r["encoder_kl_weight"] == first_encoder]


def capped_cells(csv_path: str) -> list[dict[str, str]]:
    """The FACE fits of ``csv_path`` that did not stop by their own rule."""
    return [
        r for r in fit_rows(csv_path) if r["method"] in FACE_METHODS and r["converged"] == "False"
    ]


def cell_settings(base: dict, row: dict[str, str], out_dir: str) -> dict:
    """The config that runs only this cell (and, for a main-table cell, the class's FACE fit at
    the config's λ, which the runner always adds)."""
    cid, seed, r = int(row["class_id"]), int(row["seed"]), int(row["n_concepts"])
    cfg = {k: v for k, v in base.items() if k not in ("out_dir",)}
    cfg.update(
        classes=[cid], seeds=[seed], methods=["face"], n_concepts=[r], other_rank_seeds=[],
        stability=False, sweep_n_concepts=[], sweep_max_classes=1, out_dir=out_dir,
    )  # fmt: skip
    if row["group"] == "sweep":
        cfg.update(sweep_seeds=[seed], sweep_kl_weights=[float(row["kl_weight"])],
                   auto_kl_weight=False)  # fmt: skip
    else:
        cfg.update(sweep_kl_weights=[], auto_kl_weight=row["kl_weight"] == "auto")
    return cfg


def count_lines(csv_paths: list[str]) -> list[str]:
    """Per CSV, per (method label, group): fits (the fitting split at the first encoder λ) and
    how many stopped by their own rule; the capped FACE fits named."""
    out = [
        "| CSV | method | group | fits | converged | capped FACE fits (class, λ, seed, r) |",
        "|---|---|---|---|---|---|",
    ]
    for path in csv_paths:
        fits = fit_rows(path)
        for label, group in sorted({(r["label"], r["group"]) for r in fits}):
            mine = [r for r in fits if r["label"] == label and r["group"] == group]
            ok = sum(r["converged"] == "True" for r in mine)
            capped = [
                f"{r['class_id']}, {r['kl_weight_chosen']}, {r['seed']}, {r['n_concepts']}"
                for r in mine
                if r["converged"] != "True" and r["method"] in FACE_METHODS
            ]
            out.append(
                f"| `{Path(path).name}` | {label} | {group} | {len(mine)} | {ok} | "
                f"{'; '.join(capped) or '—'} |"
            )
    return out


def matching(rows: list[dict[str, str]], before: dict[str, str], split: str) -> dict[str, str]:
    keys = ("group", "class_id", "label", "kl_weight", "seed", "n_concepts", "encoder_kl_weight")
    for r in rows:
        if all(r[k] == before[k] for k in keys) and r["split"] == split:
            return r
    raise LookupError(f"no refitted row for {[before[k] for k in keys]} ({split})")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _columns(r: dict[str, str]) -> str:
    """One fit's record: iterations, converged, fit time, agreement, KL."""
    return (
        f"{r['n_iter']}, {r['converged']}, {float(r['fit_seconds']):.1f}, "
        f"{float(r['agreement']):.4f}, {float(r['kl']):.5f}"
    )


def _emit(lines: list[str], out: str | None) -> None:
    text = "\n".join(lines) + "\n"
    if out:
        Path(out).write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?")
    ap.add_argument("csv", nargs="?")
    ap.add_argument(
        "--count", nargs="+", default=None, metavar="CSV", help="only count (no refits)"
    )
    ap.add_argument("--record", default=None, help="the training record (JSON) of the model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    args = ap.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv  # main(argv) from Python names its own args
    command = f"- command: `python benchmarks/recheck_capped.py {' '.join(given)}`"
    if args.count:
        _emit([command, "", *count_lines(args.count)], args.out)
        return
    if not (args.config and args.csv):
        ap.error("give CONFIG and CSV, or --count CSV")
    torch.set_num_threads(args.threads)
    load0 = load_average()
    base = load_config(args.config)
    with open(args.csv, newline="") as fh:
        published = list(csv.DictReader(fh))
    lines = [
        command,
        *machine_lines(),
        f"- load average (1/5/15 min) at start {load0}",
    ]
    if args.record:
        rec = json.loads(Path(args.record).read_text())
        ckpt = Path(rec["checkpoint"]).expanduser()
        now = sha256(ckpt) if ckpt.is_file() else "absent"
        same = "the same" if now == rec["sha256"] else "**not** the same"
        lines.append(
            f"- model: `{rec['checkpoint']}`, sha256 {now[:16]}…, {same} as the training "
            f"record's ({rec['sha256'][:16]}…)"
        )
    lines += [
        "",
        "| cell (group, class, method, λ, seed, r) | split | in the CSV: iterations, converged, "
        "fit (s), agreement, KL | today | λ chosen, in the CSV / today |",
        "|---|---|---|---|---|",
    ]
    cells = capped_cells(args.csv)
    for row in cells:
        name = (
            f"{row['group']}, {row['class_id']} {row['class_name']}, {row['label']}, "
            f"λ = {row['kl_weight']}, seed {row['seed']}, r = {row['n_concepts']}"
        )
        print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_benchmark(cell_settings(base, row, tmp), progress=False)
            with open(result["csv"], newline="") as fh:
                fresh = list(csv.DictReader(fh))
        for split in ("fit", "heldout"):
            old, new = matching(published, row, split), matching(fresh, row, split)
            lines.append(
                f"| {name} | {split} | {_columns(old)} | {_columns(new)} | "
                f"{old['kl_weight_chosen']} / {new['kl_weight_chosen']} |"
            )
    lines += ["", f"- load average at end {load_average()}; {len(cells)} capped cell(s)"]
    _emit(lines, args.out)


if __name__ == "__main__":
    main()
