"""Benchmark runner: models × classes × methods × seeds, through one pipeline, encoder and metrics.

Each *cell* (model, class, method, λ, seed) fits a :class:`~face_concepts.ConceptExplainer` on
random views of the class's bundled real photos (one seed), then evaluates it on those fitting
views and on held-out views (another seed). Every method uses the same encoder λ
(``encoder_kl_weight``, default 0: non-negative least-squares codes) so that a comparison
isolates the factorisation. Finished cells are stored as one JSON file each under
``out_dir/cells/`` and skipped on a rerun, so an interrupted run resumes.

Honest scope: the bundled photos give one or two source photos per class, so held-out images
are other random crops of the same photos, not other images of the class.

Outputs in ``out_dir``: ``results.csv`` (one row per cell and split), ``results.md`` (tables in
the paper's layout, mean ± std over classes × seeds; the λ sweep and its recommended point),
``curves_<model>.png`` (mean deletion/insertion curves per method) and ``sweep_<model>.png``
(rel-ℓ2 vs KL over λ).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write_bytes, atomic_write_json
from ._validation import check_float, check_int
from .methods import get_method
from .metrics.report import METRIC_KEYS

try:  # Python ≥ 3.11; older ones read config files when tomli is installed
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

DEFAULTS: dict[str, Any] = {
    "name": "benchmark",
    "models": ["bundled:mobilenet_v2"],
    "methods": ["face", "nmf", "craft", "ice"],
    "classes": "auto",
    "max_classes": 3,
    "seeds": [0, 1, 2],
    "n_concepts": 8,
    "kl_weight": 1.0,
    "encoder_kl_weight": 0.0,
    "n_views": 24,
    "n_heldout": 12,
    "max_iter": 200,
    "patch_size": 64,
    "n_designs": 32,
    "stability": False,
    "out_dir": "runs/benchmark",
    "sweep_kl_weights": [],
    "sweep_max_classes": 1,
    "sweep_seeds": [0],
}
# Paper layout (method.md §8): label, metric key, better direction.
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("Acc", "acc", "↑"),
    ("Agree", "agreement", "↑"),
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
    "group", "model", "class_id", "class_name", "n_photos", "method", "kl_weight",
    "encoder_kl_weight", "seed", "split", "n_images", "n_concepts", "fit_seconds", "n_iter",
    "converged", *METRIC_KEYS, "acc_original",
)  # fmt: skip
CELL_SETTINGS: tuple[str, ...] = (
    "n_concepts", "encoder_kl_weight", "n_views", "n_heldout", "max_iter", "patch_size",
    "n_designs", "stability",
)  # fmt: skip
# Recommended λ: the smallest λ whose mean held-out agreement is at least this …
SWEEP_MIN_AGREEMENT = 0.99
# … and whose mean held-out KL is within this fraction (or KL_FLOOR absolute) of the sweep's minimum.
SWEEP_KL_SLACK = 0.10
SWEEP_KL_FLOOR = 1e-3


# ---------------------------------------------------------------------- configuration
def load_config(config: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """Defaults updated by a TOML file or a dict; unknown keys and bad values raise ValueError.

    Examples
    --------
    >>> load_config({"seeds": [0], "methods": ["face", "nmf"]})["seeds"]
    [0]
    """
    if config is None:
        given: dict[str, Any] = {}
    elif isinstance(config, dict):
        given = dict(config)
    elif isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        if tomllib is None:  # pragma: no cover
            raise RuntimeError("reading a TOML config needs Python 3.11+ or the tomli package")
        with path.open("rb") as fh:
            given = tomllib.load(fh)
        given.update(given.pop("benchmark", {}))  # a [benchmark] table, as the CLI writes it
        if "out_dir" in given and not Path(given["out_dir"]).is_absolute():
            given["out_dir"] = os.path.normpath(path.parent / given["out_dir"])
    else:
        raise TypeError(f"config must be a path, a dict or None, got {type(config).__name__}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown benchmark setting(s) {unknown}; valid: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **given}
    for m in cfg["methods"]:
        get_method(m)
    for key in ("n_concepts", "n_views", "n_heldout", "max_iter", "patch_size", "n_designs"):
        check_int(cfg[key], key, minimum=1)
    check_int(cfg["max_classes"], "max_classes", minimum=1)
    for key in ("kl_weight", "encoder_kl_weight"):
        check_float(cfg[key], key, minimum=0.0)
    for key in ("seeds", "sweep_seeds", "models", "methods"):
        if not isinstance(cfg[key], list) or not cfg[key]:
            raise ValueError(f"{key} must be a non-empty list, got {cfg[key]!r}")
    if cfg["classes"] != "auto" and not (
        isinstance(cfg["classes"], list) and all(isinstance(c, int) for c in cfg["classes"])
    ):
        raise ValueError(f'classes must be "auto" or a list of class ids, got {cfg["classes"]!r}')
    for lam in cfg["sweep_kl_weights"]:
        check_float(lam, "sweep_kl_weights", minimum=0.0)
    if not isinstance(cfg["stability"], bool):
        raise ValueError(f"stability must be true or false, got {cfg['stability']!r}")
    return cfg


def _cells(cfg: dict[str, Any], model: str, classes: list[int]) -> list[dict[str, Any]]:
    """Main cells (every method) and sweep cells (FACE over λ); identical keys are merged."""
    cells: dict[str, dict[str, Any]] = {}

    def add(group: str, cid: int, method: str, lam: float, seed: int) -> None:
        spec = get_method(method)
        lam = float(spec.kl_weight if spec.kl_weight is not None else lam)
        key = f"{_slug(model)}__{cid}__{method}__kl{lam:g}__s{seed}"
        cells.setdefault(key, {"key": key, "groups": set(), "model": model, "class_id": cid,
                               "method": method, "kl_weight": lam, "seed": int(seed)})  # fmt: skip
        cells[key]["groups"].add(group)

    for cid in classes:
        for method in cfg["methods"]:
            for seed in cfg["seeds"]:
                add("main", cid, method, cfg["kl_weight"], seed)
    for cid in classes[: cfg["sweep_max_classes"]]:
        for lam in cfg["sweep_kl_weights"]:
            for seed in cfg["sweep_seeds"]:
                add("sweep", cid, "face", lam, seed)
    return list(cells.values())


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text).lower()).strip("_")


# ---------------------------------------------------------------------- running cells
def _class_photos(split: Any, cfg: dict[str, Any]) -> dict[int, list[torch.Tensor]]:
    from .demo import choose_classes

    if cfg["classes"] == "auto":
        return dict(choose_classes(split, cfg["max_classes"]))
    found = dict(choose_classes(split, 1000))
    missing = [c for c in cfg["classes"] if c not in found]
    if missing:
        raise ValueError(
            f"classes {missing} are not recognised in the bundled photos; recognised: {sorted(found)}"
        )
    return {c: found[c] for c in cfg["classes"]}


def _cell_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Settings besides the cell key that change a result: a stored cell is reused only if equal."""
    return {k: cfg[k] for k in CELL_SETTINGS}


def _load_cell(path: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    rec = json.loads(path.read_text(encoding="utf-8"))
    return rec if rec.get("settings") == _cell_settings(cfg) else None


def run_cell(split: Any, cell: dict[str, Any], photos: list[torch.Tensor], cfg: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Fit one cell and evaluate it on its fitting views and held-out views; a JSON-able record."""
    from .demo import _views
    from .pipeline import ConceptExplainer

    seed = cell["seed"]
    fit_x, held_x = (
        _views(photos, cfg["n_views"], seed),
        _views(photos, cfg["n_heldout"], seed + 1000),
    )
    ex = ConceptExplainer(
        split, cell["method"], n_concepts=cfg["n_concepts"], kl_weight=cell["kl_weight"],
        patch_size=cfg["patch_size"], encoder_kl_weight=cfg["encoder_kl_weight"],
        n_designs=cfg["n_designs"], max_iter=cfg["max_iter"], random_state=seed, progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # A capped budget may stop before tol; n_iter and "converged" are recorded instead.
        warnings.simplefilter("ignore")
        ex.fit(fit_x, class_id=cell["class_id"])
    fit_seconds = time.perf_counter() - t0
    rep_fit = ex.evaluate(stability=cfg["stability"]).to_dict()
    rep_held = ex.evaluate(held_x).to_dict()
    rep_held["stability"] = rep_fit["stability"]  # a property of the bank, not of the images
    info = ex.fit_info_
    return {
        **{k: v for k, v in cell.items() if k != "groups"},
        "groups": sorted(cell["groups"]),
        "class_name": ex.class_name(),
        "n_photos": len(photos),
        "encoder_kl_weight": ex.effective_encoder_kl_weight,
        "n_concepts": cfg["n_concepts"],
        "fit_seconds": round(fit_seconds, 3),
        "n_iter": int(info["n_iter"]),
        "converged": bool(info.get("converged", False)),
        "settings": _cell_settings(cfg),
        "metrics": {"fit": rep_fit, "heldout": rep_held},
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def run_benchmark(
    config_path_or_dict: str | Path | dict[str, Any] | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a benchmark and write its CSV, markdown tables and figures.

    Parameters
    ----------
    config_path_or_dict : path to a TOML file, dict or None
        Settings (see ``DEFAULTS``); None runs the defaults.
    out_dir : path, optional
        Overrides the config's ``out_dir``.
    progress : bool
        A progress bar over cells on stderr.

    Returns
    -------
    dict
        ``out_dir``, ``csv``, ``markdown``, ``figures``, ``n_cells``, ``n_run``, ``n_skipped``,
        ``recommended_kl_weight`` (per model), ``seconds``.

    Examples
    --------
    >>> run_benchmark("benchmarks/configs/small.toml", out_dir="runs/small")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from .models import load_model

    start = time.perf_counter()
    cfg = load_config(config_path_or_dict)
    out = Path(out_dir if out_dir is not None else cfg["out_dir"])
    cfg["out_dir"] = str(out)
    records, n_run, n_skipped = [], 0, 0
    for model in cfg["models"]:
        split = load_model(model)
        photos = _class_photos(split, cfg)
        cells = _cells(cfg, model, list(photos))
        bar = tqdm(
            cells, desc=f"benchmark {model}", unit="cell", disable=not progress, file=sys.stderr
        )
        for cell in bar:
            path = out / "cells" / f"{cell['key']}.json"
            stored = _load_cell(path, cfg)
            if stored is not None:
                stored["groups"] = sorted(cell["groups"])  # this config's use of the cell
                records.append(stored)
                n_skipped += 1
                continue
            bar.set_postfix_str(f"{cell['method']} class {cell['class_id']} seed {cell['seed']}")
            rec = run_cell(split, cell, photos[cell["class_id"]], cfg)
            atomic_write_json(path, rec)
            records.append(rec)
            n_run += 1
    result = write_outputs(records, cfg, out)
    result.update(n_cells=len(records), n_run=n_run, n_skipped=n_skipped)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------------- outputs
def result_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CSV rows: one per cell, split and group (a cell shared by the main table and the sweep twice)."""
    rows = []
    for rec in records:
        for group in rec["groups"]:
            for split_name in ("fit", "heldout"):
                m = rec["metrics"][split_name]
                row = {k: rec.get(k) for k in CSV_COLUMNS if k in rec}
                row.update(group=group, split=split_name, n_images=m["n_images"])
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


def summarise(rows: list[dict[str, Any]], *, group: str, model: str, split: str, by: str) -> dict[Any, dict[str, tuple[float, float, int]]]:  # fmt: skip
    """``{value of by: {metric: (mean, std, n)}}`` over classes × seeds of the selected rows."""
    sel = [r for r in rows if r["group"] == group and r["model"] == model and r["split"] == split]
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
        cells = [f"{method} (λ={lams[method]:g})", str(st["acc"][2])]
        cells += [_fmt(st[key]) for _, key, _ in TABLE_COLUMNS]
        cells += [f"{st['fit_seconds'][0]:.1f}", f"{st['n_iter'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommend_kl_weight(summary: dict[float, dict[str, tuple[float, float, int]]]) -> tuple[float | None, str]:  # fmt: skip
    """The smallest λ with held-out agreement ≥ SWEEP_MIN_AGREEMENT and KL near the minimum.

    "Near" is within ``SWEEP_KL_SLACK`` (relative) or ``SWEEP_KL_FLOOR`` (absolute) of the
    sweep's smallest mean KL. Falls back to the λ of smallest KL. Returns (λ, reason).

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
    ok = [lam for lam, st in summary.items() if st["agreement"][0] >= SWEEP_MIN_AGREEMENT and st["kl"][0] <= limit]  # fmt: skip
    if ok:
        return min(ok), (
            f"smallest λ with mean held-out agreement ≥ {SWEEP_MIN_AGREEMENT} and mean held-out "
            f"KL ≤ {limit:.4g} (minimum {kl_min:.4g} + max(10 %, {SWEEP_KL_FLOOR:g}))"
        )
    best = min(summary, key=lambda lam: summary[lam]["kl"][0])
    return best, "no λ met the agreement and KL rule; this is the λ of smallest held-out KL"


def sweep_table(summary: dict[float, dict[str, tuple[float, float, int]]]) -> str:
    keys = ("agreement", "kl", "rel_l2", "mse", "c_insertion", "c_deletion", "c_gini", "density")
    lines = ["| λ | n | " + " | ".join(keys) + " | fit s |", "|" + "---|" * (len(keys) + 3)]
    for lam in sorted(summary):
        st = summary[lam]
        cells = [f"{lam:g}", str(st["kl"][2]), *(_fmt(st[k]) for k in keys), f"{st['fit_seconds'][0]:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _curves_figure(records: list[dict[str, Any]], model: str) -> Any:
    from .viz import curves

    pairs = {}
    for method in dict.fromkeys(r["method"] for r in records if r["model"] == model and "main" in r["groups"]):  # fmt: skip
        sel = [r["metrics"]["heldout"] for r in records if r["model"] == model and r["method"] == method and "main" in r["groups"]]  # fmt: skip
        dele = np.mean([m["deletion_curve"] for m in sel], axis=0)
        ins = np.mean([m["insertion_curve"] for m in sel], axis=0)
        pairs[method] = (dele, ins)
    fig = curves(pairs, ylabel="accuracy (held-out, mean over classes × seeds)")
    fig.suptitle(f"Concept deletion and insertion — {model}")
    return fig


def _pareto_figure(summary: dict[float, dict[str, tuple[float, float, int]]], chosen: float | None, model: str) -> Any:  # fmt: skip
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.subplots()
    lams = sorted(summary)
    x = [summary[lam]["rel_l2"][0] for lam in lams]
    y = [summary[lam]["kl"][0] for lam in lams]
    ax.plot(x, y, "o-", color="tab:blue")
    for i, (lam, xi, yi) in enumerate(zip(lams, x, y)):
        # Small λ often give (nearly) the same point: stagger the labels so that all stay legible.
        label = f"λ={lam:g}" + (" (chosen)" if lam == chosen else "")
        ax.annotate(label, (xi, yi), fontsize=8, xytext=(6, 10 * (i % 3) - 10), textcoords="offset points")  # fmt: skip
    if min(y) > 0:
        ax.set_yscale("log")  # KL spans orders of magnitude over a λ sweep
    ax.set_xlabel("relative ℓ2 reconstruction error (held-out) ↓")
    ax.set_ylabel("D_KL (held-out) ↓")
    ax.set_title(f"FACE λ sweep — {model}")
    ax.grid(alpha=0.3)
    return fig


def write_outputs(records: list[dict[str, Any]], cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """results.csv, results.md and the figures; returns their paths and the recommended λ."""
    rows = result_rows(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode("utf-8"))
    md = [f"# Benchmark `{cfg['name']}`", "", *_header_lines(cfg, records)]
    figures, recommended = [], {}
    for model in cfg["models"]:
        lams = {r["method"]: r["kl_weight"] for r in records if r["model"] == model and "main" in r["groups"]}  # fmt: skip
        for split_name, title in (("fit", "fitting views"), ("heldout", "held-out views")):
            st = summarise(rows, group="main", model=model, split=split_name, by="method")
            md += ["", f"## {model}: {title} (mean ± std over classes × seeds)", "", method_table(st, lams)]  # fmt: skip
        if lams:
            path = out / f"curves_{_slug(model)}.png"
            atomic_write_bytes(path, _png(_curves_figure(records, model)))
            figures.append(str(path))
        sweep = summarise(rows, group="sweep", model=model, split="heldout", by="kl_weight")
        if sweep:
            lam, why = recommend_kl_weight(sweep)
            recommended[model] = lam
            path = out / f"sweep_{_slug(model)}.png"
            atomic_write_bytes(path, _png(_pareto_figure(sweep, lam, model)))
            figures.append(str(path))
            md += ["", f"## {model}: FACE λ sweep (held-out)", "", sweep_table(sweep), "",
                   f"Recommended λ = {lam:g}: {why}."]  # fmt: skip
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode("utf-8"))
    return {"out_dir": str(out), "csv": str(out / "results.csv"), "markdown": str(out / "results.md"),
            "figures": figures, "recommended_kl_weight": recommended}  # fmt: skip


def _header_lines(cfg: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    classes = sorted({(r["class_id"], r["class_name"], r["n_photos"]) for r in records})
    shown = {k: v for k, v in cfg.items() if k != "out_dir"}
    return [
        f"- written: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}",
        "- settings: `" + json.dumps(shown) + "`",
        "- classes (id, name, source photos): "
        + ", ".join(f"{c} {n} ({k})" for c, n, k in classes),
        f"- every method encodes images with the same encoder λ = {cfg['encoder_kl_weight']:g}; "
        "held-out views are other random crops of the same source photos",
    ]
