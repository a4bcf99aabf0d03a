"""Tests of the benchmark runner (face_concepts.benchmark)."""

from __future__ import annotations

import csv
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from face_concepts import benchmark as bm

SMALL_CONFIG = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "small.toml"
IMAGENET_CONFIG = SMALL_CONFIG.with_name("imagenet_mobilenet.toml")
STAT_TOL = 1e-12  # mean/std of a handful of floats against numpy


def test_load_config_defaults_and_overrides():
    cfg = bm.load_config({"seeds": [4], "methods": ["nmf"]})
    assert cfg["seeds"] == [4] and cfg["methods"] == ["nmf"]
    assert cfg["encoder_kl_weight"] == bm.DEFAULTS["encoder_kl_weight"]
    assert bm.load_config(None)["seeds"] == [0, 1, 2]


@pytest.mark.parametrize(
    "bad, word",
    [
        ({"n_concept": 3}, "n_concept"),
        ({"methods": ["pca"]}, "method"),
        ({"n_views": 0}, "n_views"),
        ({"seeds": []}, "seeds"),
        ({"classes": "all"}, "classes"),
        ({"kl_weight": -1.0}, "kl_weight"),
        ({"stability": 1}, "stability"),
    ],
)
def test_load_config_rejects_bad_settings(bad, word):
    with pytest.raises(ValueError, match=word):
        bm.load_config(bad)


def test_config_files_parse(tmp_path):
    for path in (SMALL_CONFIG, IMAGENET_CONFIG):
        cfg = bm.load_config(path)
        # relative out_dir is taken from the config file's folder, not the working directory
        assert Path(cfg["out_dir"]).is_absolute() or str(path.parent) in cfg["out_dir"]
    with pytest.raises(ValueError, match="does not exist"):
        bm.load_config(tmp_path / "missing.toml")


def test_cells_merge_sweep_with_main_and_fix_baseline_lambda():
    cfg = bm.load_config(
        {
            "methods": ["face", "craft"],
            "seeds": [0, 1],
            "kl_weight": 1.0,
            "sweep_kl_weights": [0.0, 1.0],
        }
    )
    cells = bm._cells(cfg, "m", [7, 9])
    keys = [c["key"] for c in cells]
    assert len(keys) == len(set(keys))
    # main: 2 classes × 2 methods × 2 seeds; sweep (first class, seed 0): λ=0 new, λ=1 shared
    assert len(cells) == 8 + 1
    shared = [c for c in cells if c["groups"] == {"main", "sweep"}]
    assert len(shared) == 1 and shared[0]["kl_weight"] == 1.0 and shared[0]["class_id"] == 7
    assert all(c["kl_weight"] == 0.0 for c in cells if c["method"] == "craft")


def test_stats_against_numpy():
    vals = [0.3, 0.9, 0.4, None, float("nan")]
    mean, std, n = bm._stats(vals)
    ref = np.array([0.3, 0.9, 0.4])
    assert n == 3
    assert abs(mean - ref.mean()) < STAT_TOL and abs(std - ref.std(ddof=1)) < STAT_TOL
    assert bm._stats([2.0])[1:] == (0.0, 1)
    assert math.isnan(bm._stats([None])[0])


def _stat(v):
    return (v, 0.0, 1)


def test_recommend_kl_weight_rule():
    s = {
        0.0: {"agreement": _stat(0.95), "kl": _stat(0.05)},  # agreement too low
        1e-2: {"agreement": _stat(1.0), "kl": _stat(0.0300)},  # KL 0.030 > 0.02 · 1.1
        1.0: {"agreement": _stat(1.0), "kl": _stat(0.0215)},  # within 10 % of the minimum
        10.0: {"agreement": _stat(1.0), "kl": _stat(0.0200)},
    }
    lam, why = bm.recommend_kl_weight(s)
    assert lam == 1.0 and "smallest" in why
    # nobody agrees: fall back to the smallest KL
    for st in s.values():
        st["agreement"] = _stat(0.5)
    assert bm.recommend_kl_weight(s)[0] == 10.0
    assert bm.recommend_kl_weight({})[0] is None


@pytest.mark.slow
def test_small_benchmark_runs_and_resumes(tmp_path, monkeypatch):
    from face_concepts import models

    # The model and the bundled-photo scan are loaded once for both runs (the runner's cost is
    # the cells; the rerun must not fit anything).
    monkeypatch.setattr(models, "load_model", functools.lru_cache(models.load_model))
    photos_cache = {}
    real_class_photos = bm._class_photos

    def cached_class_photos(split, cfg):
        key = (id(split), str(cfg["classes"]), cfg["max_classes"])
        if key not in photos_cache:
            photos_cache[key] = real_class_photos(split, cfg)
        return photos_cache[key]

    monkeypatch.setattr(bm, "_class_photos", cached_class_photos)
    calls = []
    real_run_cell = bm.run_cell

    def counting_run_cell(*args, **kwargs):
        calls.append(args[1]["key"])
        return real_run_cell(*args, **kwargs)

    monkeypatch.setattr(bm, "run_cell", counting_run_cell)
    out = tmp_path / "bench"
    res = bm.run_benchmark(SMALL_CONFIG, out_dir=out, progress=False)
    # face λ=1 (main + sweep), nmf, craft, face λ=0 (sweep)
    assert res["n_cells"] == 4 and res["n_run"] == 4 and len(calls) == 4
    with open(res["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == bm.CSV_COLUMNS
    main = [r for r in rows if r["group"] == "main"]
    assert sorted({r["method"] for r in main}) == ["craft", "face", "nmf"]
    assert len(main) == 3 * 2 and {r["split"] for r in main} == {"fit", "heldout"}
    assert len([r for r in rows if r["group"] == "sweep"]) == 2 * 2
    for r in rows:
        assert 0.0 <= float(r["agreement"]) <= 1.0 and float(r["rel_l2"]) >= 0.0
        assert r["encoder_kl_weight"] == "0.0" and int(r["n_iter"]) >= 1
    md = Path(res["markdown"]).read_text(encoding="utf-8")
    for label, _, _ in bm.TABLE_COLUMNS:
        assert label in md
    for method in ("face (λ=1)", "nmf (λ=0)", "craft (λ=0)"):
        assert md.count(f"| {method} |") == 2  # fit and held-out tables
    assert "Recommended λ" in md and all(Path(f).is_file() for f in res["figures"])
    cell_files = sorted((out / "cells").glob("*.json"))
    assert len(cell_files) == 4
    stamps = {p: p.stat().st_mtime_ns for p in cell_files}

    calls.clear()
    res2 = bm.run_benchmark(SMALL_CONFIG, out_dir=out, progress=False)
    assert calls == [] and res2["n_skipped"] == 4 and res2["n_run"] == 0
    assert {p: p.stat().st_mtime_ns for p in cell_files} == stamps
    with open(res2["csv"], newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh)) == rows
    # a changed setting invalidates the stored cells instead of silently reusing them
    rec = json.loads(cell_files[0].read_text(encoding="utf-8"))
    assert rec["settings"]["max_iter"] == 30
    assert bm._load_cell(cell_files[0], {**bm.load_config(SMALL_CONFIG), "max_iter": 31}) is None
