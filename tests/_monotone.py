"""The monotone-decrease check shared by the solver tests (``from _monotone import ...``)."""

from __future__ import annotations

import numpy as np


def assert_monotone(history: list[float], rel: float, scale: float = 0.0) -> None:
    """No rise beyond ``rel`` times the objective, or times ``scale``: the size of the terms
    whose cancellation the objective's rounding is relative to (``mean(A²)`` for the factored
    ``‖A‖² − 2⟨UᵀA, W⟩ + ⟨UᵀU, WWᵀ⟩``), once a fit is at a stationary point to rounding."""
    h = np.asarray(history)
    # (two entries: a fit stationary after one step, e.g. jacobian, whose model of this affine
    # head is exact, after its plain-NMF warm start)
    assert len(h) >= 2, "history too short to test monotonicity"
    rises = np.diff(h) - rel * np.maximum(np.abs(h[:-1]), scale)
    assert np.all(rises <= 0), f"objective rose by {np.diff(h).max():.3g}"
