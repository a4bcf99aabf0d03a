"""The paper's claims checked on result rows (face_concepts.apps.benchmark.claims)."""

from __future__ import annotations

import pytest

from face_concepts.apps.benchmark.claims import PAPER_CLAIMS, Claim, check_claims, claims_table
from face_concepts.apps.benchmark.stats import paired_difference

N_CELLS = 10  # (class, seed) cells: enough for the sign test to reach p < 0.05 at 10 of 10


def _rows(values: dict[str, list[float]], *, metric: str, rank: int = 8, encoder: float = 0.0, split: str = "heldout", group: str = "main") -> list[dict]:  # fmt: skip
    """CSV-like rows (strings, as csv.DictReader gives them): one per label and cell."""
    return [
        {"group": group, "split": split, "label": label, "method": label.split("-")[0],
         "class_id": str(i // 2), "seed": str(i % 2), "n_concepts": str(rank),
         "encoder_kl_weight": str(encoder), metric: str(v)}
        for label, vs in values.items() for i, v in enumerate(vs)
    ]  # fmt: skip


AGREE = Claim("face agrees more than craft", "face", "craft", "agreement", "↑")
KL = Claim("face has lower KL than craft", "face", "craft", "kl", "↓")


def test_words_follow_the_paired_comparison():
    up = [0.9 + 0.001 * i for i in range(N_CELLS)]
    down = [0.5 + 0.002 * i for i in range(N_CELLS)]
    rows = _rows({"face": up, "craft": down}, metric="agreement")
    ((_, word, comp),) = check_claims(rows, rank=8, encoder=0.0, claims=[AGREE])
    oracle = paired_difference(up, down)  # same cell order: the mapping pairs them identically
    assert word == "holds" and comp.mean_difference == pytest.approx(oracle.mean_difference)
    assert (comp.ci_low, comp.ci_high, comp.n) == (oracle.ci_low, oracle.ci_high, N_CELLS)
    # the same numbers as KL (lower is better): FACE is worse, so the claim does not hold
    rows = _rows({"face": up, "craft": down}, metric="kl")
    assert check_claims(rows, rank=8, encoder=0.0, claims=[KL])[0][1] == "does not hold"
    # mixed signs: no ordering is claimed
    mixed = [0.5 + (0.1 if i % 2 else -0.1) for i in range(N_CELLS)]
    rows = _rows({"face": mixed, "craft": [0.5] * N_CELLS}, metric="agreement")
    assert check_claims(rows, rank=8, encoder=0.0, claims=[AGREE])[0][1] == "not shown"


def test_rank_encoder_split_and_missing_rows_are_respected():
    good = _rows({"face": [1.0] * N_CELLS, "craft": [0.0] * N_CELLS}, metric="agreement", rank=25, encoder=1.0)  # fmt: skip
    other = _rows({"face": [0.0] * N_CELLS, "craft": [1.0] * N_CELLS}, metric="agreement", rank=8, encoder=1.0)  # fmt: skip
    fit = _rows({"face": [0.0] * N_CELLS, "craft": [1.0] * N_CELLS}, metric="agreement", rank=25, encoder=1.0, split="fit")  # fmt: skip
    rows = good + other + fit
    assert check_claims(rows, rank=25, encoder=1.0, claims=[AGREE])[0][1] == "holds"
    assert check_claims(rows, rank=8, encoder=1.0, claims=[AGREE])[0][1] == "does not hold"
    assert check_claims(rows, rank=25, encoder=0.0, claims=[AGREE])[0][1:] == ("n/a", None)
    no_craft = [r for r in rows if r["label"] != "craft"]
    assert check_claims(no_craft, rank=25, encoder=1.0, claims=[AGREE])[0][1] == "n/a"


def test_table_has_a_cell_per_setting_and_encoder():
    rows = _rows({"face": [1.0] * N_CELLS, "craft": [0.0] * N_CELLS}, metric="agreement")
    md = claims_table({"A": rows, "B": []}, rank=8, encoders=[(0.0, "NNLS"), (1.0, "KL-enc")], claims=[AGREE])  # fmt: skip
    header, rule, line = md.splitlines()
    assert header == "| the paper's claim (A better than B) | A | B |" and rule == "|---|---|---|"
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1].startswith("NNLS: **holds** +1.000 [+1.000, +1.000] (10+/0−)")
    assert cells[1].endswith("<br>KL-enc: n/a") and cells[2] == "NNLS: n/a<br>KL-enc: n/a"


def test_every_paper_claim_names_known_rows_and_metrics():
    from face_concepts.apps.benchmark.report import TABLE_COLUMNS

    metrics = {key: arrow for _, key, arrow in TABLE_COLUMNS}
    for c in PAPER_CLAIMS:
        assert c.a != c.b and {c.a, c.b} <= {"face", "nmf", "craft", "ice", "face-paper", "face-auto"}  # fmt: skip
        assert metrics[c.metric] == c.better, c  # "better" in the metric's own direction
