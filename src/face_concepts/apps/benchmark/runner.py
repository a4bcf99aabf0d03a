"""Benchmark runner: models × classes × methods × seeds, through one pipeline, encoder and metrics.

Each *cell* (model, class, method, λ, r, seed) fits a :class:`~face_concepts.ConceptExplainer`
on a class's fitting images (drawn with the cell's seed), then evaluates it on those images and
on held-out images. Every method uses the same encoder λ (``encoder_kl_weight``, default 0:
non-negative least-squares codes) so that a comparison isolates the factorisation; a list of
λs (``encoder_kl_weight = [0.0, 1.0]``) evaluates every fit once per encoder, the same for all
methods, and the tables report them side by side. ``n_concepts`` may be a list too: the main
table is then run at each rank (the ranks after the first with ``other_rank_seeds`` when set,
and C-Stab, 5 refits per cell, at the first rank and in the rank sweep only).
``auto_kl_weight = true`` adds a FACE row with ``kl_weight="auto"`` (labelled ``face-auto``;
its cells keep the λ search's record, ``auto_kl_weight``: every λ tried, its held-out scores,
the choice and why). Finished cells are stored as one JSON file each under ``out_dir/cells/``
and skipped on a rerun, so an interrupted run resumes. C-Stab
(``stability = true``) refits on 5 grouped folds of the fitting rows: 5 extra fits per cell, so
it is off unless a config asks for it.

Image sources (:mod:`face_concepts.apps.benchmark.sources`, setting ``dataset``):

- ``"bundled"``: ImageNet classes recognised in the bundled real photos — one or two source
  photos per class, so held-out images are other random crops of the same photos.
- ``"fashion_mnist"``: the class-level protocol — fitting images from the class's training
  images, held-out images from its test images, explained model trained by
  ``benchmarks/train_fashion_mnist.py`` (model spec ``"fashion_mnist_cnn[:PATH]"``).

Outputs in ``out_dir`` (written by :mod:`face_concepts.apps.benchmark.report`): ``results.csv`` (one
row per cell, group and split), ``results.md`` (tables in the paper's layout, mean ± std over
classes × seeds; the λ and rank sweeps with their recommended points), ``curves_<model>.png`` (mean deletion/insertion curves per method),
``sweep_<model>.png`` and ``rank_<model>.png`` (Pareto plots: rel-ℓ2 vs KL, coloured by density).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from sklearn.exceptions import ConvergenceWarning

from face_concepts._core.io import atomic_write_json
from face_concepts._core.names import slug
from face_concepts._core.validation import check_float, check_int
from face_concepts.apps.benchmark.report import (  # noqa: F401  (re-exported: the runner's public output API)
    CSV_COLUMNS,
    SWEEP_AGREEMENT_SLACK,
    SWEEP_KL_FLOOR,
    SWEEP_KL_SLACK,
    SWEEP_MIN_AGREEMENT,
    TABLE_COLUMNS,
    _stats,
    encoder_weights,
    method_table,
    ranks,
    recommend_kl_weight,
    result_rows,
    summarise,
    sweep_table,
    write_outputs,
)
from face_concepts.methods.registry import get_method
from face_concepts.pipeline.config import ExplainerConfig

try:  # Python ≥ 3.11; older ones read config files when tomli is installed
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    try:
        import tomli as tomllib  # type: ignore[no-redef]  # Python < 3.11 only
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]  # Python < 3.11 only

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
    "auto_kl_weight": False,
    "other_rank_seeds": [],
    "out_dir": "runs/benchmark",
    "sweep_kl_weights": [],
    "sweep_n_concepts": [],
    "sweep_max_classes": 1,
    "sweep_seeds": [0],
    "dataset": "bundled",
    "dataset_root": "",
}
DATASETS = ("bundled", "fashion_mnist")
CELL_SETTINGS: tuple[str, ...] = (
    "n_concepts", "encoder_kl_weight", "n_views", "n_heldout", "max_iter", "patch_size",
    "n_designs", "stability",
)  # fmt: skip
# Settings added later: recorded only when not at their default, so older stored cells stay valid.
CELL_SETTINGS_IF_SET: tuple[str, ...] = ("dataset", "dataset_root")
AUTO_LABEL = "face-auto"  # the row of FACE with kl_weight="auto"


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
    for key in ("n_views", "n_heldout", "max_iter", "patch_size", "n_designs"):
        check_int(cfg[key], key, minimum=1)
    check_int(cfg["max_classes"], "max_classes", minimum=1)
    check_float(cfg["kl_weight"], "kl_weight", minimum=0.0)
    for key, values in (("n_concepts", cfg["n_concepts"]), ("encoder_kl_weight", cfg["encoder_kl_weight"])):  # fmt: skip
        if isinstance(values, list):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{key} as a list must be non-empty and without repeats, got {values!r}")  # fmt: skip
        for v in values if isinstance(values, list) else [values]:
            if key == "n_concepts":
                check_int(v, key, minimum=1)
            else:
                check_float(v, key, minimum=0.0)
    if not isinstance(cfg["auto_kl_weight"], bool):
        raise ValueError(f"auto_kl_weight must be true or false, got {cfg['auto_kl_weight']!r}")
    for key in ("seeds", "sweep_seeds", "models", "methods"):
        if not isinstance(cfg[key], list) or not cfg[key]:
            raise ValueError(f"{key} must be a non-empty list, got {cfg[key]!r}")
    if cfg["classes"] != "auto" and not (
        isinstance(cfg["classes"], list) and all(isinstance(c, int) for c in cfg["classes"])
    ):
        raise ValueError(f'classes must be "auto" or a list of class ids, got {cfg["classes"]!r}')
    if not isinstance(cfg["other_rank_seeds"], list):
        raise ValueError(f"other_rank_seeds must be a list, got {cfg['other_rank_seeds']!r}")
    for lam in cfg["sweep_kl_weights"]:
        check_float(lam, "sweep_kl_weights", minimum=0.0)
    for r in cfg["sweep_n_concepts"]:
        check_int(r, "sweep_n_concepts", minimum=1)
    if cfg["dataset"] not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {cfg['dataset']!r}")
    if cfg["dataset"] == "fashion_mnist" and cfg["dataset_root"]:
        cfg["dataset_root"] = str(cfg["dataset_root"])
    if not isinstance(cfg["stability"], bool):
        raise ValueError(f"stability must be true or false, got {cfg['stability']!r}")
    for method in cfg["methods"]:  # every explainer setting checked as the cells will use it
        cell_config(cfg, {"method": method, "kl_weight": cfg["kl_weight"], "seed": 0})
    return cfg


def cell_config(cfg: dict[str, Any], cell: dict[str, Any]) -> ExplainerConfig:
    """The explainer settings of one cell: the cell's method, λ, r and seed, the config's rest
    (the first encoder λ; the others are evaluated after the fit, see ``run_cell``)."""
    return ExplainerConfig(
        method=cell["method"], n_concepts=int(cell.get("n_concepts", ranks(cfg)[0])),
        kl_weight=cell["kl_weight"], patch_size=cfg["patch_size"],
        encoder_kl_weight=encoder_weights(cfg)[0], n_designs=cfg["n_designs"],
        max_iter=cfg["max_iter"], random_state=cell["seed"], progress=False,
    )  # fmt: skip


def _cells(cfg: dict[str, Any], model: str, classes: list[int]) -> list[dict[str, Any]]:
    """Main cells (every method at every rank, and FACE with λ "auto" if asked), λ-sweep and
    rank-sweep cells (FACE); identical keys merge."""
    cells: dict[str, dict[str, Any]] = {}
    primary = ranks(cfg)[0]

    def add(group: str, cid: int, method: str, lam: float | str, seed: int, r: int | None = None) -> None:  # fmt: skip
        spec = get_method(method)
        lam = "auto" if lam == "auto" else float(spec.kl_weight if spec.kl_weight is not None else lam)  # fmt: skip
        r = int(primary if r is None else r)
        # The primary r keeps the original key, so cells stored before rank sweeps existed stay valid.
        rank = "" if r == primary else f"__r{r}"
        lam_key = lam if isinstance(lam, str) else f"{lam:g}"
        key = f"{slug(model)}__{cid}__{method}__kl{lam_key}__s{seed}{rank}"
        label = AUTO_LABEL if lam == "auto" else method
        cells.setdefault(key, {"key": key, "groups": set(), "model": model, "class_id": cid,
                               "method": method, "label": label, "kl_weight": lam,
                               "seed": int(seed), "n_concepts": r})  # fmt: skip
        cells[key]["groups"].add(group)

    main = [(m, cfg["kl_weight"]) for m in cfg["methods"]]
    if cfg["auto_kl_weight"]:
        main.append(("face", "auto"))
    for cid in classes:
        for r in ranks(cfg):
            seeds = cfg["seeds"] if r == primary or not cfg["other_rank_seeds"] else cfg["other_rank_seeds"]  # fmt: skip
            for method, lam in main:
                for seed in seeds:
                    add("main", cid, method, lam, seed, r)
    for cid in classes[: cfg["sweep_max_classes"]]:
        for lam in cfg["sweep_kl_weights"]:
            for seed in cfg["sweep_seeds"]:
                add("sweep", cid, "face", lam, seed)
        for r in cfg["sweep_n_concepts"]:
            for seed in cfg["sweep_seeds"]:
                add("rank", cid, "face", cfg["kl_weight"], seed, r)
    return list(cells.values())


# ---------------------------------------------------------------------- running cells
class DatasetUnavailableError(FileNotFoundError):
    """The config's dataset is not on this machine (the message says how to install it)."""


def _stability(cfg: dict[str, Any], cell: dict[str, Any] | None) -> bool:
    """Whether a cell computes C-Stab: asked for, and at the main table's first rank or in the
    rank sweep (5 refits per cell: the main table's other ranks go without)."""
    if not cfg["stability"] or cell is None:
        return bool(cfg["stability"])
    return cell.get("n_concepts", ranks(cfg)[0]) == ranks(cfg)[0] or "rank" in cell["groups"]


def _cell_settings(cfg: dict[str, Any], cell: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings besides the cell key that change a result: a stored cell is reused only if equal."""
    out = {k: cfg[k] for k in CELL_SETTINGS}
    out["stability"] = _stability(cfg, cell)
    # A cell's own rank is in its key; the primary rank stays recorded as before, so that
    # adding ranks to the main table keeps the stored cells valid.
    out["n_concepts"] = ranks(cfg)[0]
    out.update({k: cfg[k] for k in CELL_SETTINGS_IF_SET if cfg[k] != DEFAULTS[k]})
    return out


def _load_cell(path: Path, cfg: dict[str, Any], cell: dict[str, Any] | None = None) -> dict[str, Any] | None:  # fmt: skip
    if not path.is_file():
        return None
    rec = json.loads(path.read_text(encoding="utf-8"))
    return rec if rec.get("settings") == _cell_settings(cfg, cell) else None


def run_cell(split: Any, cell: dict[str, Any], source: Any, cfg: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Fit one cell and evaluate it on its fitting and held-out images; a JSON-able record.

    ``source`` gives the images (:mod:`face_concepts.apps.benchmark.sources`): ``fit(n, seed)`` and
    ``heldout(n, seed)`` batches and ``n_available`` (source photos or training images).
    """
    from face_concepts.pipeline.explainer import ConceptExplainer
    from face_concepts.pipeline.jobs import fit_evaluate_save

    seed = cell["seed"]
    r = int(cell.get("n_concepts", ranks(cfg)[0]))
    fit_x, held_x = source.fit(cfg["n_views"], seed), source.heldout(cfg["n_heldout"], seed)
    ex = ConceptExplainer.from_config(split, cell_config(cfg, cell))
    with warnings.catch_warnings():
        # A capped budget may stop before tol; n_iter and "converged" are recorded instead.
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit_evaluate_save(
            ex, fit_x, cell["class_id"], heldout=held_x, stability=_stability(cfg, cell)
        )
    fit_seconds = result.fit_seconds
    rep_fit, rep_held = result.metrics["fit"], result.metrics["heldout"]
    rep_held["stability"] = rep_fit["stability"]  # a property of the bank, not of the images
    info = ex.fit_info_
    lam_fit = ex.effective_kl_weight  # "auto": the λ the fit chose
    first = ex.effective_encoder_kl_weight
    encoders = []
    for lam_enc in encoder_weights(cfg)[1:]:  # the same bank, encoded again (no refit)
        ex.set_encoder(lam_enc)
        fit_m, held_m = ex.evaluate().to_dict(), ex.evaluate(held_x).to_dict()
        fit_m["stability"] = held_m["stability"] = rep_fit["stability"]
        encoders.append({"encoder_kl_weight": lam_enc, "metrics": {"fit": fit_m, "heldout": held_m}})  # fmt: skip
    return {
        **{k: v for k, v in cell.items() if k != "groups"},
        "groups": sorted(cell["groups"]),
        "class_name": ex.class_name(),
        "n_photos": source.n_available,
        "encoder_kl_weight": first,
        "encoders": encoders,
        "kl_weight_chosen": lam_fit,
        "n_concepts": r,
        "fit_seconds": round(fit_seconds, 3),
        "n_iter": int(info["n_iter"]),
        "converged": bool(info.get("converged", False)),
        "settings": _cell_settings(cfg, cell),
        "metrics": {"fit": rep_fit, "heldout": rep_held},
        # face-auto: the search (every λ tried, its held-out scores, the choice and why), so a
        # cell's choice can be read back instead of traced again
        **({"auto_kl_weight": info["auto_kl_weight"]} if "auto_kl_weight" in info else {}),
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

    from face_concepts.apps.benchmark.sources import (
        dataset_available,
        load_benchmark_model,
        load_sources,
    )

    start = time.perf_counter()
    cfg = load_config(config_path_or_dict)
    missing = dataset_available(cfg)
    if missing is not None:
        raise DatasetUnavailableError(missing)
    out = Path(out_dir if out_dir is not None else cfg["out_dir"])
    cfg["out_dir"] = str(out)
    records, n_run, n_skipped = [], 0, 0
    for model in cfg["models"]:
        split = load_benchmark_model(model)
        sources = load_sources(split, cfg)
        cells = _cells(cfg, model, list(sources))
        bar = tqdm(
            cells, desc=f"benchmark {model}", unit="cell", disable=not progress, file=sys.stderr
        )
        for cell in bar:
            path = out / "cells" / f"{cell['key']}.json"
            stored = _load_cell(path, cfg, cell)
            if stored is not None:
                stored["groups"] = sorted(cell["groups"])  # this config's use of the cell
                records.append(stored)
                n_skipped += 1
                continue
            bar.set_postfix_str(f"{cell['method']} class {cell['class_id']} seed {cell['seed']}")
            rec = run_cell(split, cell, sources[cell["class_id"]], cfg)
            atomic_write_json(path, rec)
            records.append(rec)
            n_run += 1
    result = write_outputs(records, cfg, out)
    result.update(n_cells=len(records), n_run=n_run, n_skipped=n_skipped)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result
