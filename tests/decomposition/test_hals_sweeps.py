"""``solvers._hals_sweeps``: exact coordinate (HALS row) sweeps for a non-negative quadratic."""

from __future__ import annotations

import pytest
import torch

from face_concepts.decomposition import solvers as sv


def _by_hand(X, Q, R, sweeps):
    """The obvious loops in float64: each entry of row k set to its exact minimiser in turn."""
    X = X.double().clone()
    Q, R = Q.double(), R.double()
    r, m = X.shape
    for _ in range(sweeps):
        for k in range(r):
            for j in range(m):
                rest = sum(Q[k, i] * X[i, j] for i in range(r) if i != k)
                X[k, j] = max(0.0, float((R[k, j] - rest) / Q[k, k]))
    return X


@pytest.mark.parametrize("sweeps", [1, 3])
def test_sweeps_match_the_obvious_coordinate_descent(sweeps):
    g = torch.Generator().manual_seed(0)
    B = torch.randn(6, 4, generator=g)
    Q = B.T @ B + 0.1 * torch.eye(4)
    R = torch.randn(4, 7, generator=g)
    X = torch.rand(4, 7, generator=g)
    expected = _by_hand(X, Q, R, sweeps)
    # the early exit (1e-4 of the first sweep's move) does not fire within 3 sweeps here
    got = sv._hals_sweeps(X.clone(), Q, R, sweeps)
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert (got >= 0).all() and (got == 0).any()  # some bounds are active


def test_sweeps_converge_to_the_nonnegative_minimiser():
    """Many sweeps reach the KKT point of ``½ xᵀQx − rᵀx`` per column (scipy's NNLS)."""
    from scipy.optimize import nnls

    g = torch.Generator().manual_seed(1)
    B = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(8, 5, generator=g, dtype=torch.float64)
    X = torch.zeros(4, 5, dtype=torch.float64)
    for _ in range(500):  # one sweep per call: no early exit
        X = sv._hals_sweeps(X, B.T @ B, B.T @ y, 1)
    for j in range(5):
        ref, _ = nnls(B.numpy(), y[:, j].numpy())
        assert torch.allclose(X[:, j], torch.from_numpy(ref), atol=1e-7)
