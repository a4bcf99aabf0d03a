"""The paper's claims, checked on benchmark results: "holds", "does not hold" or "not shown".

Each claim is "row A is better than row B on a metric" (docs/method.md §11 lists the paper's
numbers behind them). :func:`check_claims` measures every claim on the held-out rows of one
setting's results (the rows of ``results.csv``, :func:`~face_concepts.apps.benchmark.report.result_rows`),
at one rank and one encoder λ, paired over the (class, seed) cells by
:func:`~face_concepts.apps.benchmark.stats.paired_difference`; :func:`claims_table` writes the
summary table of ``benchmarks/results/reproduction.md`` (one column per setting, one line per
encoder in each cell). ``benchmarks/reproduction_summary.py`` runs it on the published CSVs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from face_concepts.apps.benchmark.stats import PairedComparison, claim, paired_difference


@dataclass(frozen=True)
class Claim:
    """ "``a`` is better than ``b`` on ``metric``" (``better``: "↑" higher is better, "↓" lower)."""

    text: str
    a: str
    b: str
    metric: str
    better: str


# The paper's orderings (docs/method.md §11), each as one paired comparison; rows are the runner's
# labels: face (λ = 1 here), nmf (the same engine at λ = 0), craft, ice, face-paper (the
# authors' solver and λ = 1e-5), face-auto (λ chosen by held-out agreement).
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("FACE keeps the prediction better than CRAFT", "face", "craft", "agreement", "↑"),
    Claim("FACE keeps the prediction better than ICE", "face", "ice", "agreement", "↑"),
    Claim("FACE has a lower D_KL than CRAFT", "face", "craft", "kl", "↓"),
    Claim("FACE has a lower D_KL than ICE", "face", "ice", "kl", "↓"),
    Claim("FACE C-Ins > CRAFT", "face", "craft", "c_insertion", "↑"),
    Claim("FACE C-Del > CRAFT", "face", "craft", "c_deletion", "↑"),
    Claim("FACE C-Gini > CRAFT (more concentrated importance)", "face", "craft", "c_gini", "↑"),
    Claim("FACE C-Gini > ICE", "face", "ice", "c_gini", "↑"),
    Claim("ICE reconstructs better than FACE (rel-ℓ2)", "ice", "face", "rel_l2", "↓"),
    Claim("C-Stab: CRAFT above FACE", "craft", "face", "stability", "↑"),
    Claim("C-Stab: ICE above CRAFT", "ice", "craft", "stability", "↑"),
    Claim(
        "the KL term keeps the prediction: FACE (λ = 1) vs NMF (λ = 0)",
        "face",
        "nmf",
        "agreement",
        "↑",
    ),
    Claim("the KL term lowers D_KL: FACE (λ = 1) vs NMF (λ = 0)", "face", "nmf", "kl", "↓"),
    Claim(
        "the authors' FACE (face-paper) keeps the prediction better than CRAFT",
        "face-paper",
        "craft",
        "agreement",
        "↑",
    ),
    Claim(
        "the authors' FACE (face-paper) has a lower D_KL than CRAFT",
        "face-paper",
        "craft",
        "kl",
        "↓",
    ),
    Claim(
        "λ chosen for the user (face-auto) keeps the prediction better than λ = 1",
        "face-auto",
        "face",
        "agreement",
        "↑",
    ),
)


def _num(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)


def _cells(rows: Iterable[Mapping[str, Any]], label: str, metric: str) -> dict[tuple[str, str], float]:  # fmt: skip
    return {(str(r["class_id"]), str(r["seed"])): _num(r[metric]) for r in rows if (r.get("label") or r["method"]) == label}  # fmt: skip


def _selected(rows: Iterable[Mapping[str, Any]], rank: int, encoder: float) -> list[Mapping[str, Any]]:  # fmt: skip
    """Held-out rows of the main table at ``rank`` and ``encoder`` (CSV strings or numbers)."""
    return [
        r for r in rows
        if r["group"] == "main" and r["split"] == "heldout" and int(float(r["n_concepts"])) == rank
        and math.isclose(float(r["encoder_kl_weight"]), encoder)
    ]  # fmt: skip


def check_claims(rows: Iterable[Mapping[str, Any]], *, rank: int, encoder: float, claims: Sequence[Claim] = PAPER_CLAIMS) -> list[tuple[Claim, str, PairedComparison | None]]:  # fmt: skip
    """``(claim, word, comparison)`` per claim: word "holds" / "does not hold" / "not shown",
    or "n/a" (comparison None) where a row or the metric is missing at that rank and encoder."""
    sel = _selected(rows, rank, encoder)
    out: list[tuple[Claim, str, PairedComparison | None]] = []
    for c in claims:
        a, b = _cells(sel, c.a, c.metric), _cells(sel, c.b, c.metric)
        comp = paired_difference(a, b, names=(c.a, c.b)) if a and b else None
        if comp is None or comp.n == 0:
            out.append((c, "n/a", None))
        else:
            out.append((c, claim(comp, c.better), comp))
    return out


def _short(word: str, comp: PairedComparison | None) -> str:
    if comp is None:
        return "n/a"
    shown = f"**{word}**" if word in ("holds", "does not hold") else word
    return (
        f"{shown} {comp.mean_difference:+.3f} [{comp.ci_low:+.3f}, {comp.ci_high:+.3f}] "
        f"({comp.n_positive}+/{comp.n_negative}−)"
    )


def claims_table(settings: Mapping[str, Sequence[Mapping[str, Any]]], *, rank: int, encoders: Sequence[tuple[float, str]], claims: Sequence[Claim] = PAPER_CLAIMS) -> str:  # fmt: skip
    """Markdown: rows the claims, columns the settings (``{name: result rows}``); each cell one
    line per encoder ``(λ, label)``: the word, then the mean paired difference A − B with its
    bootstrap 95 % interval and the cells where A > B / A < B."""
    names = list(settings)
    lines = ["| the paper's claim (A better than B) | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]  # fmt: skip
    checked = {
        (name, lam): check_claims(settings[name], rank=rank, encoder=lam, claims=claims)
        for name in names
        for lam, _ in encoders
    }
    for i, c in enumerate(claims):
        cells = [f"{c.text} ({c.metric} {c.better})"]
        for name in names:
            parts = []
            for lam, label in encoders:
                _, word, comp = checked[name, lam][i]
                parts.append(f"{label}: {_short(word, comp)}")
            cells.append("<br>".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["PAPER_CLAIMS", "Claim", "check_claims", "claims_table"]
