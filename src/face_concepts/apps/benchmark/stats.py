"""Paired statistics for benchmark comparisons: is method A really above method B?

A benchmark cell is one (setting, class, seed); two methods run on the same cells, so their
difference is measured cell by cell (paired), which removes the between-class spread that
dominates the mean ± std tables. :func:`paired_difference` returns the mean paired difference
``mean(a − b)``, a seeded percentile-bootstrap 95 % interval of that mean, a two-sided sign test
(``scipy.stats.binomtest`` on the cells where ``a ≠ b``) and a verdict that claims an ordering
only where the interval excludes 0 *and* the sign test gives p < ``SIGN_ALPHA`` (0.05).

Both are required because the percentile bootstrap is optimistic for few cells: with 3 to 5
cells of one sign it excludes 0 although no sign test on so few cells can reach p < 0.05 (the
smallest two-sided p with 5 cells is 0.0625). With the 9 cells of our reproduction (3 classes ×
3 seeds), an ordering needs at least 8 of the 9 cells on one side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest

from face_concepts._core.validation import check_float, check_int

NO_DIFFERENCE = "no difference shown"
DEFAULT_RESAMPLES = 10_000
SIGN_ALPHA = 0.05  # the sign test's level, required besides the interval for an ordering


@dataclass(frozen=True)
class PairedComparison:
    """The paired comparison of two methods over the cells both have values for.

    ``mean_difference`` is ``mean(a − b)``; ``ci_low``/``ci_high`` its bootstrap interval at
    ``confidence``; ``p_value`` the two-sided sign test; ``n`` the number of paired cells,
    ``n_positive``/``n_negative`` the cells with ``a > b`` / ``a < b`` (ties are left out of the
    sign test). ``verdict`` is ``"A > B"``, ``"A < B"`` (with the methods' names) or
    ``"no difference shown"``.
    """

    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n_positive: int
    n_negative: int
    verdict: str
    confidence: float = 0.95
    n_resamples: int = DEFAULT_RESAMPLES

    @property
    def ordering(self) -> int:
        """+1 where A > B is shown, −1 where A < B is shown, 0 otherwise (shown: the interval
        excludes 0 and the sign test's p is below ``SIGN_ALPHA``)."""
        if self.n < 2 or math.isnan(self.ci_low) or not self.p_value < SIGN_ALPHA:
            return 0
        return 1 if self.ci_low > 0 else -1 if self.ci_high < 0 else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cell(self) -> str:
        """Markdown cell: ``+0.093 [+0.021, +0.160], sign p = 0.039 (7+/2−)``."""
        if self.n == 0:
            return "n/a"
        return (
            f"{self.mean_difference:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}], "
            f"sign p = {self.p_value:.2g} ({self.n_positive}+/{self.n_negative}−)"
        )


def _pairs(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("a and b must both be mappings cell -> value or both sequences")
    if isinstance(a, Mapping):
        keys = [k for k in a if k in b]  # a's order: deterministic for a given input
        xa, xb = [a[k] for k in keys], [b[k] for k in keys]
    else:
        if not isinstance(a, Sequence | np.ndarray) or not isinstance(b, Sequence | np.ndarray):
            raise TypeError("a and b must be mappings cell -> value or sequences of values")
        if len(a) != len(b):
            raise ValueError(
                f"a and b must hold one value per cell, in the same cell order; got {len(a)} and "
                f"{len(b)} values"
            )
        xa, xb = list(a), list(b)

    def num(v: Any) -> float:
        return math.nan if v is None else float(v)

    va = np.array([num(v) for v in xa], dtype=np.float64)
    vb = np.array([num(v) for v in xb], dtype=np.float64)
    keep = ~(np.isnan(va) | np.isnan(vb))  # a cell missing in either method is not a pair
    return va[keep], vb[keep]


def paired_difference(
    a: Mapping[Any, Any] | Sequence[Any],
    b: Mapping[Any, Any] | Sequence[Any],
    *,
    names: tuple[str, str] = ("A", "B"),
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    random_state: int = 0,
) -> PairedComparison:
    """Mean paired difference ``a − b`` with a bootstrap interval, a sign test and a verdict.

    Parameters
    ----------
    a, b : mapping cell -> value, or sequences in the same cell order
        A metric's value per cell (e.g. keyed by ``(setting, class_id, seed)``) for the two
        methods. Mappings are paired on their common cells; cells where either value is missing
        (``None`` or NaN) are left out.
    names : (str, str)
        The methods' names in the verdict (``"face > craft"``); default ``("A", "B")``.
    n_resamples : int
        Bootstrap resamples of the cells (with replacement), from ``numpy.random.default_rng``
        seeded with ``random_state``: the same inputs always give the same interval.
    confidence : float
        Coverage of the percentile interval (default 0.95).

    Examples
    --------
    >>> a = [0.9, 0.8, 0.7, 0.95, 0.85, 0.75]
    >>> r = paired_difference(a, [0.6, 0.5, 0.6, 0.7, 0.65, 0.6], names=("face", "craft"))
    >>> r.verdict, round(r.mean_difference, 4), round(r.p_value, 4)
    ('face > craft', 0.2167, 0.0312)
    >>> paired_difference(a[:4], [0.6, 0.5, 0.6, 0.7]).verdict  # 4 of 4: sign p = 0.125
    'no difference shown'
    """
    n_resamples = check_int(n_resamples, "n_resamples", minimum=1)
    confidence = check_float(confidence, "confidence", minimum=0.0, maximum=1.0)
    va, vb = _pairs(a, b)
    d = va - vb
    n = int(d.size)
    if n == 0:
        nan = math.nan
        return PairedComparison(nan, nan, nan, 1.0, 0, 0, 0, NO_DIFFERENCE, confidence, n_resamples)
    rng = np.random.default_rng(random_state)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory for many cells
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
    p = binomtest(n_pos, n_pos + n_neg, 0.5).pvalue if n_pos + n_neg else 1.0
    result = PairedComparison(
        float(d.mean()), float(low), float(high), float(p), n, n_pos, n_neg, NO_DIFFERENCE,
        confidence, n_resamples,
    )  # fmt: skip
    verdict = {1: f"{names[0]} > {names[1]}", -1: f"{names[0]} < {names[1]}", 0: NO_DIFFERENCE}
    return PairedComparison(**{**result.to_dict(), "verdict": verdict[result.ordering]})


def claim(comparison: PairedComparison, better: str) -> str:
    """Whether "A is better than B" holds for a metric whose better direction is ``better``.

    ``better`` is ``"↑"`` (higher is better) or ``"↓"``. Returns ``"holds"`` where the interval
    shows A better, ``"does not hold"`` where it shows A worse, ``"not shown"`` otherwise.

    Examples
    --------
    >>> claim(paired_difference([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0, 1.0, 2.0, 3.0, 4.0, 5.0]), "↓")
    'does not hold'
    """
    if better not in ("↑", "↓"):
        raise ValueError(f"better must be '↑' or '↓', got {better!r}")
    sign = comparison.ordering * (1 if better == "↑" else -1)
    return {1: "holds", -1: "does not hold", 0: "not shown"}[sign]


__all__ = ["NO_DIFFERENCE", "SIGN_ALPHA", "PairedComparison", "claim", "paired_difference"]
