"""Outputs of the benchmark runner (:mod:`face_concepts.apps.benchmark.runner`): CSV, tables, figures.

``write_outputs`` turns the stored cell records into ``results.csv`` (one row per cell, group,
encoder and split), ``results.md`` (tables in the paper's layout, mean ± std over classes × seeds,
one pair per rank and encoder λ of the main table; the λ
and rank sweeps with their recommended points; per model the paired differences face − each
other method over the class × seed cells, by :mod:`face_concepts.apps.benchmark.stats`) and the
figures: mean deletion/insertion curves per method and Pareto plots of the sweeps (rel-ℓ2 vs KL,
coloured by code density).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from face_concepts._core.io import atomic_write_bytes
from face_concepts._core.names import slug
from face_concepts.apps.benchmark.stats import claim, paired_difference
from face_concepts.metrics.report import METRIC_KEYS
from face_concepts.report.images import figure_png

# Paper layout (docs/method.md §11): label, metric key, better direction.
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Acc", "acc", "↑"),
    ("Agree", "agreement", "↑"),
    ("Cert", "certified", "↑"),
    ("Acc(Ā)", "acc_original", ""),
    ("MSE", "mse", "↓"),
    ("rel-ℓ2", "rel_l2", "↓"),
    ("D_KL", "kl", "↓"),
    ("C-Ins", "c_insertion", "↑"),
    ("C-Del", "c_deletion", "↑"),
    ("C-μFid", "c_mu_fidelity", "↑"),
    ("C-Gini", "c_gini", "↑"),
    ("density", "density", "↓"),
    ("Hoyer", "hoyer", "↑"),
    ("C-Stab", "stability", "↑"),
)
CSV_COLUMNS: tuple[str, ...] = (
    "group", "model", "class_id", "class_name", "n_photos", "method", "label", "kl_weight",
    "kl_weight_chosen", "encoder_kl_weight", "seed", "split", "n_images", "n_concepts", "fit_seconds", "n_iter",
    "converged", *METRIC_KEYS, "acc_original",
)  # fmt: skip
# Recommended λ: the smallest λ whose mean held-out agreement is at least this …
SWEEP_MIN_AGREEMENT = 0.99
# … or, where no point of the sweep reaches it (a model that is itself often unsure, e.g. on
# Fashion-MNIST), at most this far below the sweep's best agreement …
SWEEP_AGREEMENT_SLACK = 0.01
# … and whose mean held-out KL is within this fraction (or KL_FLOOR absolute) of the sweep's minimum.
SWEEP_KL_SLACK = 0.10
SWEEP_KL_FLOOR = 1e-3


# ---------------------------------------------------------------------- config lists
def ranks(cfg: dict[str, Any]) -> list[int]:
    """The main table's ranks: ``n_concepts`` as a list (the first is the primary one)."""
    r = cfg["n_concepts"]
    return [int(v) for v in r] if isinstance(r, list) else [int(r)]


def encoder_weights(cfg: dict[str, Any]) -> list[float]:
    """Encoder λs every fit is evaluated with (the first is the explainer's own)."""
    lam = cfg["encoder_kl_weight"]
    return [float(v) for v in lam] if isinstance(lam, list) else [float(lam)]


# ---------------------------------------------------------------------- outputs
def _encodings(rec: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """(encoder λ, metrics) of a cell: its own encoder first, then the others it was evaluated with."""
    own = [(rec["encoder_kl_weight"], rec["metrics"])]
    return own + [(e["encoder_kl_weight"], e["metrics"]) for e in rec.get("encoders", [])]


def result_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CSV rows: one per cell, group, encoder and split (a cell shared by the main table and a
    sweep appears once per group)."""
    rows = []
    for rec in records:
        for group in rec["groups"]:
            for lam_enc, metrics in _encodings(rec):
                for split_name in ("fit", "heldout"):
                    m = metrics[split_name]
                    row = {k: rec.get(k) for k in CSV_COLUMNS if k in rec}
                    row.setdefault("label", rec["method"])  # cells stored before labels existed
                    row.update(group=group, split=split_name, n_images=m["n_images"],
                               encoder_kl_weight=lam_enc)  # fmt: skip
                    row.update({k: m.get(k) for k in (*METRIC_KEYS, "acc_original")})
                    rows.append(row)
    return rows


def _stats(values: list[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the non-missing values."""
    v = np.array([float(x) for x in values if x is not None and not _isnan(x)])
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _select(rows: list[dict[str, Any]], where: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def summarise(rows: list[dict[str, Any]], *, group: str, model: str, split: str, by: str, where: dict[str, Any] | None = None) -> dict[Any, dict[str, tuple[float, float, int]]]:  # fmt: skip
    """``{value of by: {metric: (mean, std, n)}}`` over classes × seeds of the selected rows
    (``where``: further equalities, e.g. one rank and one encoder λ)."""
    sel = _select(rows, {"group": group, "model": model, "split": split, **(where or {})})
    out: dict[Any, dict[str, tuple[float, float, int]]] = {}
    for value in dict.fromkeys(r[by] for r in sel):
        part = [r for r in sel if r[by] == value]
        out[value] = {
            k: _stats([r[k] for r in part])
            for k in (*METRIC_KEYS, "acc_original", "fit_seconds", "n_iter")
        }
    return out


def _fmt(stat: tuple[float, float, int]) -> str:
    mean, std, n = stat
    return "n/a" if n == 0 else f"{mean:.3f} ± {std:.3f}"


def _fmt_of(stat: tuple[float, float, int], n_row: int) -> str:
    """``_fmt``, saying how many cells a metric has when fewer than its row (C-Stab measured on
    the rank-sweep cell only, at a rank of the main table other than the first)."""
    return _fmt(stat) + (f" (n = {stat[2]})" if 0 < stat[2] < n_row else "")


def _lam(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def method_table(summary: dict[Any, dict[str, tuple[float, float, int]]], lams: dict[str, float]) -> str:  # fmt: skip
    """Markdown: rows methods, columns the paper's metrics, then fit time and iterations."""
    head = [
        "method",
        "n",
        *(f"{lab} {arrow}".strip() for lab, _, arrow in TABLE_COLUMNS),
        "fit s",
        "iters",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, st in summary.items():
        n = st["acc"][2]
        cells = [f"{method} (λ={_lam(lams[method])})", str(n)]
        cells += [_fmt_of(st[key], n) for _, key, _ in TABLE_COLUMNS]
        cells += [f"{st['fit_seconds'][0]:.1f}", f"{st['n_iter'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommend_kl_weight(summary: dict[float, dict[str, tuple[float, float, int]]], what: str = "λ") -> tuple[float | None, str]:  # fmt: skip
    """The smallest λ with held-out agreement high enough and KL near the minimum.

    "High enough" is ≥ ``min(SWEEP_MIN_AGREEMENT, best − SWEEP_AGREEMENT_SLACK)``, best being
    the sweep's highest mean agreement. "Near" is within ``SWEEP_KL_SLACK`` (relative) or ``SWEEP_KL_FLOOR`` (absolute) of the
    sweep's smallest mean KL. Falls back to the λ of smallest KL. Returns (λ, reason). The same
    rule picks the rank of a rank sweep (``what="r"``): the smallest r past which KL saturates.

    Examples
    --------
    >>> s = {0.0: {"agreement": (0.9, 0, 1), "kl": (0.5, 0, 1)}, 1.0: {"agreement": (1.0, 0, 1), "kl": (0.1, 0, 1)}}
    >>> recommend_kl_weight(s)[0]
    1.0
    """
    if not summary:
        return None, "no sweep was run"
    kl_min = min(st["kl"][0] for st in summary.values())
    limit = kl_min + max(SWEEP_KL_SLACK * kl_min, SWEEP_KL_FLOOR)
    best_agree = max(st["agreement"][0] for st in summary.values())
    need = min(SWEEP_MIN_AGREEMENT, best_agree - SWEEP_AGREEMENT_SLACK)
    ok = [lam for lam, st in summary.items() if st["agreement"][0] >= need and st["kl"][0] <= limit]  # fmt: skip
    if ok:
        return min(ok), (
            f"smallest {what} with mean held-out agreement ≥ {need:.3g} (min({SWEEP_MIN_AGREEMENT}, "
            f"best {best_agree:.3g} − {SWEEP_AGREEMENT_SLACK})) and mean held-out "
            f"KL ≤ {limit:.4g} (minimum {kl_min:.4g} + max(10 %, {SWEEP_KL_FLOOR:g}))"
        )
    best = min(summary, key=lambda lam: summary[lam]["kl"][0])
    return (
        best,
        f"no {what} met the agreement and KL rule; this is the {what} of smallest held-out KL",
    )


def sweep_table(summary: dict[float, dict[str, tuple[float, float, int]]], what: str = "λ") -> str:
    keys = ("agreement", "kl", "rel_l2", "mse", "c_insertion", "c_deletion", "c_gini", "density", "stability")  # fmt: skip
    lines = [f"| {what} | n | " + " | ".join(keys) + " | fit s |", "|" + "---|" * (len(keys) + 3)]
    for lam in sorted(summary):
        st = summary[lam]
        cells = [f"{lam:g}", str(st["kl"][2]), *(_fmt(st[k]) for k in keys), f"{st['fit_seconds'][0]:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_comparisons(rows: list[dict[str, Any]], *, model: str, reference: str = "face", split: str = "heldout", group: str = "main", where: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """``{other row label: {metric: PairedComparison}}`` of ``reference − other`` over paired cells.

    A cell is one (class, seed) of ``model`` in ``group`` (``where``: one rank and encoder λ);
    rows are told apart by their label (the method, or "face-auto"); every metric of the
    paper's table (``TABLE_COLUMNS`` with a better direction) is compared by
    :func:`~face_concepts.apps.benchmark.stats.paired_difference`.
    """
    sel = _select(rows, {"group": group, "model": model, "split": split, **(where or {})})
    per_method: dict[str, list[dict[str, Any]]] = {}
    for r in sel:
        per_method.setdefault(r.get("label") or r["method"], []).append(r)
    if reference not in per_method:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for other in per_method:
        if other == reference:
            continue
        out[other] = {}
        for _, key, arrow in TABLE_COLUMNS:
            if not arrow:
                continue
            values = [{(r["class_id"], r["seed"]): r.get(key) for r in per_method[m]} for m in (reference, other)]  # fmt: skip
            out[other][key] = paired_difference(*values, names=(reference, other))
    return out


def paired_table(comparisons: dict[str, dict[str, Any]], reference: str = "face") -> str:
    """Markdown: rows metrics, columns ``reference − other``: mean [95 % CI], sign test, verdict.

    The verdict claims an ordering only where the bootstrap interval excludes 0.
    """
    others = list(comparisons)
    head = ["metric", *(f"{reference} − {o}" for o in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, arrow in TABLE_COLUMNS:
        if not arrow:
            continue
        cells = [f"{label} {arrow}"]
        for o in others:
            c = comparisons[o][key]
            word = {"holds": f"{reference} better", "does not hold": f"{reference} worse"}.get(claim(c, arrow), c.verdict)  # fmt: skip
            cells.append("n/a" if c.n == 0 else f"{c.cell()}: **{word}**" if c.ordering else f"{c.cell()}: {word}")  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _paired_lines(rows: list[dict[str, Any]], model: str, where: dict[str, Any], what: str) -> tuple[list[str], dict[str, Any]]:  # fmt: skip
    comparisons = paired_comparisons(rows, model=model, where=where)
    if not comparisons:
        return [], {}
    n = max(c.n for per in comparisons.values() for c in per.values())
    title = (
        f"### {model}{what}: paired differences, face − each row (held-out, {n} class × seed cells)"
    )
    note = (
        "Mean of the per-cell difference, bootstrap 95 % interval (10,000 resamples, seeded), "
        "two-sided sign test; an ordering is claimed only where the interval excludes 0."
    )
    md = ["", title, "", note, "", paired_table(comparisons)]
    return md, {o: {k: c.to_dict() for k, c in per.items()} for o, per in comparisons.items()}


def _row_lambdas(main: list[dict[str, Any]]) -> dict[str, Any]:
    """Each row's λ as the tables show it; for λ "auto", the range the fits chose."""
    lams: dict[str, Any] = {}
    for rec in main:
        label = rec.get("label", rec["method"])
        if rec["kl_weight"] != "auto":
            lams[label] = rec["kl_weight"]
            continue
        chosen = sorted({float(r["kl_weight_chosen"]) for r in main if r.get("label") == label})
        span = f"{chosen[0]:g}" if len(chosen) == 1 else f"{chosen[0]:g}–{chosen[-1]:g}"
        lams[label] = f"auto: {span}"
    return lams


def _curves_figure(records: list[dict[str, Any]], model: str, rank: int) -> Any:
    """Mean held-out deletion and insertion curves per row of the main table at ``rank`` (own encoder)."""
    from face_concepts.viz import curves

    main = [r for r in records if r["model"] == model and "main" in r["groups"] and r["n_concepts"] == rank]  # fmt: skip
    pairs = {}
    for label in dict.fromkeys(r.get("label", r["method"]) for r in main):
        sel = [r["metrics"]["heldout"] for r in main if r.get("label", r["method"]) == label]
        dele = np.mean([m["deletion_curve"] for m in sel], axis=0)
        ins = np.mean([m["insertion_curve"] for m in sel], axis=0)
        pairs[label] = (dele, ins)
    fig = curves(pairs, ylabel="accuracy (held-out, mean over classes × seeds)")
    fig.suptitle(f"Concept deletion and insertion — {model}, r = {rank}")
    return fig


def _pareto_figure(summary: dict[float, dict[str, tuple[float, float, int]]], chosen: float | None, model: str, what: str = "λ") -> Any:  # fmt: skip
    """Reconstruction (x) vs KL (y) vs code density (colour) over a λ or rank sweep."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    pts = sorted(summary)
    x = [summary[v]["rel_l2"][0] for v in pts]
    y = [summary[v]["kl"][0] for v in pts]
    dens = [summary[v]["density"][0] for v in pts]
    ax.plot(x, y, "-", color="0.6", zorder=1)
    sc = ax.scatter(x, y, c=dens, cmap="viridis", zorder=2)
    fig.colorbar(sc, ax=ax, label="code density (held-out) ↓")
    for i, (v, xi, yi) in enumerate(zip(pts, x, y)):
        # Close points (small λ) often coincide: stagger the labels so that all stay legible.
        label = f"{what}={v:g}" + (" (chosen)" if v == chosen else "")
        ax.annotate(label, (xi, yi), fontsize=8, xytext=(6, 10 * (i % 3) - 10), textcoords="offset points")  # fmt: skip
    if min(y) > 0:
        ax.set_yscale("log")  # KL spans orders of magnitude over a sweep
    ax.set_xlabel("relative ℓ2 reconstruction error (held-out) ↓")
    ax.set_ylabel("D_KL (held-out) ↓")
    ax.set_title(f"FACE {'λ' if what == 'λ' else 'rank'} sweep — {model}")
    ax.grid(alpha=0.3)
    return fig


def _sweep_section(rows: list[dict[str, Any]], model: str, out: Path, group: str, what: str, encoder: float) -> tuple[float | None, list[str], str | None]:  # fmt: skip
    """Markdown lines and Pareto figure of one sweep (group "sweep": λ, "rank": r), own encoder."""
    by = "kl_weight" if group == "sweep" else "n_concepts"
    sweep = summarise(rows, group=group, model=model, split="heldout", by=by, where={"encoder_kl_weight": encoder})  # fmt: skip
    if not sweep:
        return None, [], None
    chosen, why = recommend_kl_weight(sweep, what)
    path = out / f"{group}_{slug(model)}.png"
    atomic_write_bytes(path, figure_png(_pareto_figure(sweep, chosen, model, what)))
    title = "λ sweep" if group == "sweep" else "rank sweep"
    md = ["", f"## {model}: FACE {title} (held-out)", "", sweep_table(sweep, what), "",
          f"Recommended {what} = {chosen:g}: {why}."]  # fmt: skip
    return chosen, md, str(path)


def write_outputs(records: list[dict[str, Any]], cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """results.csv, results.md and the figures; returns their paths and the recommended λ."""
    rows = result_rows(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode("utf-8"))
    md = [f"# Benchmark `{cfg['name']}`", "", *_header_lines(cfg, records)]
    recommended: dict[str, float | None] = {}
    recommended_rank: dict[str, float | None] = {}
    figures: list[str] = []
    paired: dict[str, dict[str, Any]] = {}
    encoders, main_ranks = encoder_weights(cfg), ranks(cfg)
    for model in cfg["models"]:
        lams = _row_lambdas([r for r in records if r["model"] == model and "main" in r["groups"]])
        paired[model] = {}
        for rank in main_ranks:
            for lam_enc in encoders:
                where = {"n_concepts": rank, "encoder_kl_weight": lam_enc}
                what = f", r = {rank}, encoder λ = {lam_enc:g}" + (" (NNLS)" if lam_enc == 0 else " (KL-aware)")  # fmt: skip
                md += ["", f"## {model}{what}"]
                for split_name, title in (("fit", "fitting views"), ("heldout", "held-out views")):
                    st = summarise(rows, group="main", model=model, split=split_name, by="label", where=where)  # fmt: skip
                    md += ["", f"### {title} (mean ± std over classes × seeds)", "", method_table(st, lams)]  # fmt: skip
                lines, paired[model][f"r{rank}_enc{lam_enc:g}"] = _paired_lines(rows, model, where, what)  # fmt: skip
                md += lines
        if lams:
            for rank in main_ranks:
                suffix = "" if rank == main_ranks[0] else f"_r{rank}"
                path = out / f"curves_{slug(model)}{suffix}.png"
                atomic_write_bytes(path, figure_png(_curves_figure(records, model, rank)))
                figures.append(str(path))
        for group, what in (("sweep", "λ"), ("rank", "r")):
            chosen, lines, fig = _sweep_section(rows, model, out, group, what, encoders[0])
            if fig is not None:
                (recommended if group == "sweep" else recommended_rank)[model] = chosen
                md += lines
                figures.append(fig)
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode("utf-8"))
    return {"out_dir": str(out), "csv": str(out / "results.csv"), "markdown": str(out / "results.md"),
            "figures": figures, "recommended_kl_weight": recommended,
            "recommended_n_concepts": recommended_rank, "paired": paired}  # fmt: skip


def _header_lines(cfg: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    classes = sorted({(r["class_id"], r["class_name"], r["n_photos"]) for r in records})
    shown = {k: v for k, v in cfg.items() if k != "out_dir"}
    distinct = cfg["dataset"] != "bundled"  # distinct images per class, not views of a few photos
    return [
        f"- written: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}",
        "- settings: `" + json.dumps(shown) + "`",
        f"- classes (id, name, {'training images' if distinct else 'source photos'}): "
        + ", ".join(f"{c} {n} ({k})" for c, n, k in classes),
        "- every method encodes images with the same encoder λ = "
        + " and, side by side, λ = ".join(f"{v:g}" for v in encoder_weights(cfg))
        + "; "
        + (
            "fitting images are drawn per seed from the training split, held-out images from the test split"
            if distinct
            else "held-out views are other random crops of the same source photos"
        ),
    ]
