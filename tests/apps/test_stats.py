"""Paired statistics of the benchmark (apps/benchmark/stats.py) and their table in results.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from face_concepts.apps.benchmark import report as bm
from face_concepts.apps.benchmark.stats import NO_DIFFERENCE, claim, paired_difference


def test_constant_difference_gives_a_point_interval_and_an_ordering() -> None:
    b = [0.1, 0.5, 0.3, 0.9, 0.7, 0.2]
    a = [v + 0.25 for v in b]
    r = paired_difference(a, b)
    assert r.mean_difference == pytest.approx(0.25, rel=1e-12)
    assert r.ci_low == pytest.approx(0.25, rel=1e-12) and r.ci_high == pytest.approx(
        0.25, rel=1e-12
    )
    assert (r.n, r.n_positive, r.n_negative) == (6, 6, 0)
    assert r.verdict == "A > B"
    assert paired_difference(b, a, names=("face", "ice")).verdict == "face < ice"


def test_symmetric_noise_shows_no_difference() -> None:
    # Differences ±e in mirrored pairs: mean exactly 0, the interval straddles 0.
    e = np.random.default_rng(5).uniform(0.05, 0.3, size=10)
    d = np.concatenate([e, -e])
    base = np.linspace(0.2, 0.8, d.size)
    r = paired_difference(list(base + d), list(base))
    assert r.mean_difference == pytest.approx(0.0, abs=1e-12)
    assert r.ci_low < 0 < r.ci_high
    assert r.verdict == NO_DIFFERENCE
    assert (r.n_positive, r.n_negative) == (10, 10) and r.p_value == pytest.approx(1.0)


def test_sign_test_and_bootstrap_against_direct_computation() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1.0, 15), rng.normal(0.0, 1.0, 15)
    a[3] = b[3]  # one tie: left out of the sign test
    r = paired_difference(list(a), list(b), n_resamples=4000, random_state=7)
    d = a - b
    k, m = int((d > 0).sum()), int((d != 0).sum())
    assert (r.n_positive, r.n_positive + r.n_negative) == (k, m)
    assert r.p_value == pytest.approx(binomtest(k, m, 0.5, alternative="two-sided").pvalue)
    # The bootstrap oracle: the same seeded resamples, drawn the obvious way.
    g = np.random.default_rng(7)
    means = np.array([d[g.integers(0, d.size, size=d.size)].mean() for _ in range(4000)])
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    # Reproducible; another seed moves the interval only a little.
    assert paired_difference(list(a), list(b), n_resamples=4000, random_state=7) == r
    other = paired_difference(list(a), list(b), n_resamples=4000, random_state=8)
    assert other.ci_low != r.ci_low and abs(other.ci_low - r.ci_low) < 0.1


def test_mappings_pair_on_common_cells_and_skip_missing_values() -> None:
    a = {("s", 1, 0): 0.9, ("s", 1, 1): 0.8, ("s", 2, 0): None, ("s", 3, 0): 0.5}
    b = {("s", 1, 1): 0.6, ("s", 1, 0): 0.7, ("s", 2, 0): 0.1, ("s", 4, 0): 0.0}
    r = paired_difference(a, b)
    assert r.n == 2 and r.mean_difference == pytest.approx(0.2)
    empty = paired_difference({1: 0.5}, {2: 0.5})
    assert empty.n == 0 and math.isnan(empty.mean_difference) and empty.verdict == NO_DIFFERENCE
    # One cell: no interval to speak of, no claim.
    assert paired_difference([1.0], [0.0]).verdict == NO_DIFFERENCE


def test_bad_inputs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="same cell order"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(TypeError, match="both"):
        paired_difference({1: 1.0}, [1.0])
    with pytest.raises(ValueError, match="better"):
        claim(paired_difference([1.0, 2.0], [0.0, 0.0]), "up")


def test_claim_reads_the_metric_direction() -> None:
    higher = paired_difference([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    assert (claim(higher, "↑"), claim(higher, "↓")) == ("holds", "does not hold")


def test_an_ordering_needs_the_sign_test_too() -> None:
    """Four cells of one sign: the bootstrap interval excludes 0 (every resample is positive)
    but the two-sided sign test cannot go below 2 / 2**4 = 0.125, so nothing is claimed."""
    r = paired_difference([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.5, 3.4])
    assert r.ci_low > 0 and r.p_value == pytest.approx(0.125)
    assert r.verdict == "no difference shown" and claim(r, "↑") == "not shown"
    # 8 of 9 cells (our reproduction's 3 classes x 3 seeds): p = 20 / 512 < 0.05, shown
    r9 = paired_difference([1.0] * 8 + [0.0], [0.0] * 8 + [0.1])
    assert r9.p_value == pytest.approx(20 / 512) and r9.verdict == "A > B"
    assert claim(paired_difference([1.0, 0.0], [0.0, 1.0]), "↑") == "not shown"


def _rows() -> list[dict]:
    """A synthetic results table: 2 classes × 3 seeds, face / craft / nmf, held-out and fit."""
    rng = np.random.default_rng(0)
    rows = []
    for cls in (1, 2):
        for seed in (0, 1, 2):
            base = rng.uniform(0.3, 0.7)
            for method, shift in (("face", 0.2), ("craft", 0.0), ("nmf", None)):
                for split in ("fit", "heldout"):
                    row = {"group": "main", "model": "m", "class_id": cls, "seed": seed,
                           "method": method, "split": split}  # fmt: skip
                    for _, key, _ in bm.TABLE_COLUMNS:
                        # face: +0.2 on every metric vs craft; nmf: noise around face.
                        noise = rng.uniform(-0.1, 0.1) if shift is None else 0.0
                        row[key] = base + (0.2 if shift is None else shift) + noise
                    row["stability"] = None  # not computed: n/a
                    rows.append(row)
    return rows


def test_paired_table_on_a_synthetic_results_table() -> None:
    rows = _rows()
    comp = bm.paired_comparisons(rows, model="m")
    assert list(comp) == ["craft", "nmf"]
    c = comp["craft"]["c_deletion"]
    assert c.n == 6 and c.mean_difference == pytest.approx(0.2) and c.verdict == "face > craft"
    assert comp["craft"]["stability"].n == 0
    # face − nmf: noise only; its interval is the oracle's and decides the word.
    nmf = comp["nmf"]["kl"]
    face = {(r["class_id"], r["seed"]): r["kl"] for r in rows if r["split"] == "heldout" and r["method"] == "face"}  # fmt: skip
    other = {(r["class_id"], r["seed"]): r["kl"] for r in rows if r["split"] == "heldout" and r["method"] == "nmf"}  # fmt: skip
    assert nmf == paired_difference(face, other, names=("face", "nmf"))
    md = bm.paired_table(comp)
    lines = md.splitlines()
    assert lines[0] == "| metric | face − craft | face − nmf |"
    kl_line = next(line for line in lines if line.startswith("| D_KL ↓"))
    assert "**face worse**" in kl_line.split(" | ")[1]  # higher KL is worse
    del_line = next(line for line in lines if line.startswith("| C-Del ↑"))
    assert "**face better**" in del_line.split(" | ")[1]
    expected = {1: "face better", -1: "face worse", 0: NO_DIFFERENCE}
    word = expected[nmf.ordering * -1]
    assert word in kl_line.split(" | ")[2]
    assert "| C-Stab ↑ | n/a | n/a |" in md
    # No face rows: nothing to compare.
    assert bm.paired_comparisons([r for r in rows if r["method"] != "face"], model="m") == {}
