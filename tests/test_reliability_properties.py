"""Property-based tests (hypothesis) of the encoder, the metrics and the FACE objective.

Hypothesis draws shapes, seeds, scales and sparsity patterns; the tensors come from a seeded
torch generator so that every drawn example is reproducible from its printed arguments. Shapes
stay tiny and ``max_examples`` modest so that the file runs in seconds.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from face_concepts.decomposition import encode
from face_concepts.decomposition.losses import face_objective
from face_concepts.metrics import (
    accuracy_on_reconstruction,
    density,
    gini,
    hoyer,
    kl_divergence,
    matched_cosine,
    relative_l2,
)

# The encoder stops on a relative decrease below 1e-7; "never worse than U = 0" may only be
# broken by float64 rounding of the objective.
OBJECTIVE_SLACK = 1e-9
# Metric invariances computed in float64 after a float32/float64 rescale.
INVARIANCE_REL = 1e-9
# A strictly positive objective must stand above the rounding of a float64 mean.
POSITIVE_FLOOR = 1e-300
# kl_divergence computes the reconstruction's logits by the affine fast path (U (W Vᵀ) + b)
# and the original's by h(A): identical predictions may differ by float64 rounding (~1e-17).
KL_ROUNDING = 1e-12

FAST = settings(max_examples=25, deadline=None)

dims = st.integers(min_value=1, max_value=6)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
scales = st.sampled_from([1e-3, 1.0, 7.5, 1e3])


def _rand(shape: tuple[int, ...], seed: int, *, zero_frac: float = 0.0) -> torch.Tensor:
    """Non-negative float64 tensor with a seeded share of exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    if zero_frac > 0:
        x = x * (torch.rand(shape, generator=g, dtype=torch.float64) >= zero_frac)
    return x


def _head(p: int, c: int, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed + 1)
    head = nn.Linear(p, c).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(c, p, generator=g, dtype=torch.float64))
        head.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    return head


# ---------------------------------------------------------------------- encoder
@FAST
@given(n=dims, p=dims, r=dims, seed=seeds, scale=scales, zero_frac=st.sampled_from([0.0, 0.5]))
def test_encoder_codes_are_non_negative_and_finite(n, p, r, seed, scale, zero_frac):
    A = _rand((n, p), seed, zero_frac=zero_frac) * scale
    W = _rand((r, p), seed + 7, zero_frac=zero_frac)
    U = encode(A, W)
    assert U.shape == (n, r)
    assert bool(torch.isfinite(U).all()) and float(U.min()) >= 0.0


@FAST
@given(
    n=dims,
    p=st.integers(2, 6),
    r=dims,
    seed=seeds,
    scale=scales,
    kl_weight=st.sampled_from([0.0, 0.1, 1.0, 10.0]),
)
def test_encoder_is_never_worse_than_zero_codes(n, p, r, seed, scale, kl_weight):
    A = _rand((n, p), seed) * scale
    W = _rand((r, p), seed + 7, zero_frac=0.3)
    head = _head(p, 3, seed)
    U = encode(A, W, head, kl_weight=kl_weight)
    assert float(U.min()) >= 0.0
    got = face_objective(A, U, W, head, kl_weight)
    zero = face_objective(A, torch.zeros_like(U), W, head, kl_weight)
    assert got <= zero + OBJECTIVE_SLACK * max(1.0, abs(zero))


# ---------------------------------------------------------------------- objective
@FAST
@given(n=dims, p=st.integers(2, 6), r=dims, seed=seeds, kl_weight=st.sampled_from([0.0, 0.5, 5.0]))
def test_objective_is_non_negative(n, p, r, seed, kl_weight):
    A, U, W = _rand((n, p), seed), _rand((n, r), seed + 1), _rand((r, p), seed + 2)
    value = face_objective(A, U, W, _head(p, 4, seed), kl_weight)
    assert math.isfinite(value) and value >= 0.0


@FAST
@given(n=dims, p=st.integers(2, 6), seed=seeds, kl_weight=st.sampled_from([0.0, 0.5, 5.0]))
def test_objective_is_zero_at_exact_reconstruction(n, p, seed, kl_weight):
    # U = A, W = I reconstructs A exactly, so the predictions are identical too.
    A = _rand((n, p), seed, zero_frac=0.3)
    value = face_objective(A, A.clone(), torch.eye(p, dtype=A.dtype), _head(p, 4, seed), kl_weight)
    assert value == 0.0


@FAST
@given(n=dims, p=st.integers(2, 6), r=dims, seed=seeds, kl_weight=st.sampled_from([0.0, 1.0]))
def test_objective_is_positive_away_from_exact_reconstruction(n, p, r, seed, kl_weight):
    A, U, W = _rand((n, p), seed), _rand((n, r), seed + 1), _rand((r, p), seed + 2)
    head = _head(p, 4, seed)
    value = face_objective(A, U, W, head, kl_weight)
    if not torch.equal(U @ W, A):
        assert value > POSITIVE_FLOOR
    # The KL part alone: zero exactly when the two prediction vectors agree.
    kl_only = value - face_objective(A, U, W, head, 0.0)
    assert kl_only >= -OBJECTIVE_SLACK * max(1.0, value)


# ---------------------------------------------------------------------- metrics
@FAST
@given(r=dims, seed=seeds, scale=scales, zero_frac=st.sampled_from([0.0, 0.5, 0.9]))
def test_gini_range_and_invariances(r, seed, scale, zero_frac):
    x = _rand((r,), seed, zero_frac=zero_frac)
    g = gini(x)
    assert 0.0 <= g <= (r - 1) / r + INVARIANCE_REL
    perm = torch.randperm(r, generator=torch.Generator().manual_seed(seed))
    assert math.isclose(gini(x[perm]), g, rel_tol=INVARIANCE_REL, abs_tol=INVARIANCE_REL)
    assert math.isclose(gini(x * scale), g, rel_tol=INVARIANCE_REL, abs_tol=INVARIANCE_REL)


@FAST
@given(n=dims, r=dims, seed=seeds, zero_frac=st.sampled_from([0.0, 0.5, 0.9]))
def test_hoyer_and_density_ranges_and_invariances(n, r, seed, zero_frac):
    U = _rand((n, r), seed, zero_frac=zero_frac)
    h, d = hoyer(U), density(U)
    assert 0.0 <= h <= 1.0 and 0.0 <= d <= 1.0
    perm = torch.randperm(r, generator=torch.Generator().manual_seed(seed))
    row_scale = _rand((n, 1), seed + 3) * 10 + 0.1
    assert math.isclose(hoyer(U[:, perm]), h, rel_tol=INVARIANCE_REL, abs_tol=INVARIANCE_REL)
    assert math.isclose(hoyer(U * row_scale), h, rel_tol=1e-7, abs_tol=1e-7)
    assert density(U[:, perm]) == d and density(U * row_scale) == d


@FAST
@given(n=dims, p=st.integers(2, 6), r=dims, seed=seeds, scale=scales)
def test_faithfulness_metric_ranges(n, p, r, seed, scale):
    A, U, W = _rand((n, p), seed) * scale, _rand((n, r), seed + 1), _rand((r, p), seed + 2)
    head = _head(p, 3, seed)
    acc, agreement, acc0 = accuracy_on_reconstruction(A, U, W, head, 1)
    assert all(0.0 <= v <= 1.0 for v in (acc, agreement, acc0))
    assert kl_divergence(A, U, W, head) >= -KL_ROUNDING
    assert relative_l2(A, U, W) >= 0.0


@FAST
@given(n=dims, p=st.integers(2, 6), seed=seeds, scale=scales)
def test_exact_reconstruction_is_perfectly_faithful(n, p, seed, scale):
    A = _rand((n, p), seed) * scale
    eye, head = torch.eye(p, dtype=A.dtype), _head(p, 3, seed)
    _, agreement, _ = accuracy_on_reconstruction(A, A.clone(), eye, head, 0)
    assert agreement == 1.0
    assert abs(kl_divergence(A, A.clone(), eye, head)) <= KL_ROUNDING
    assert relative_l2(A, A.clone(), eye) == 0.0


@FAST
@given(n=dims, p=st.integers(2, 6), r=dims, seed=seeds, scale=scales)
def test_relative_l2_is_scale_free(n, p, r, seed, scale):
    A, U, W = _rand((n, p), seed), _rand((n, r), seed + 1), _rand((r, p), seed + 2)
    base = relative_l2(A, U, W)
    assert math.isclose(relative_l2(A * scale, U * scale, W), base, rel_tol=1e-6, abs_tol=1e-12)


@FAST
@given(r=dims, p=st.integers(2, 6), seed=seeds, scale=scales)
def test_matched_cosine_range_and_permutation_invariance(r, p, seed, scale):
    W1, W2 = _rand((r, p), seed) + 1e-3, _rand((r, p), seed + 1) + 1e-3
    perm = torch.randperm(r, generator=torch.Generator().manual_seed(seed))
    assert math.isclose(matched_cosine(W1, W1[perm] * scale), 1.0, rel_tol=1e-9)
    value = matched_cosine(W1, W2)
    assert 0.0 <= value <= 1.0 + 1e-12
