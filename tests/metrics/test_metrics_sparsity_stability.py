"""Gini, density, Hoyer, MSE / relative l2, stability and the held-out split, against oracles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from face_concepts.metrics import (
    density,
    fold_indices,
    gini,
    hoyer,
    matched_cosine,
    mse,
    relative_l2,
    stability,
    stability_folds,
    train_test_split_indices,
)

# Exactness expected from float64 sums of a handful of terms.
EXACT_F64 = 1e-12


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _gini_mean_abs_diff(x: np.ndarray) -> float:
    # Textbook definition: Σ_i Σ_j |x_i − x_j| / (2 r Σ x), a different route to the same value.
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) * x.sum()))


def test_gini_hand_computed():
    # Sorted [1, 2, 3, 4]: (−3·1 − 1·2 + 1·3 + 3·4) / (4 · 10) = 10 / 40.
    assert gini(torch.tensor([3.0, 1.0, 4.0, 2.0])) == pytest.approx(0.25, abs=EXACT_F64)
    assert gini(torch.tensor([0.0, 0.0, 5.0])) == pytest.approx(2 / 3, abs=EXACT_F64)


@pytest.mark.parametrize("seed", range(4))
def test_gini_matches_mean_absolute_difference(seed):
    x = _rand(7, seed=seed)
    assert gini(x) == pytest.approx(_gini_mean_abs_diff(x.numpy()), abs=EXACT_F64)


def test_gini_invariances_and_extremes():
    x = _rand(6, seed=1)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(2))
    assert gini(x[perm]) == pytest.approx(gini(x), abs=EXACT_F64)
    assert gini(37.5 * x) == pytest.approx(gini(x), abs=EXACT_F64)
    assert gini(torch.full((6,), 0.3)) == pytest.approx(0.0, abs=EXACT_F64)
    one_hot = torch.zeros(6)
    one_hot[4] = 2.0
    assert gini(one_hot) == pytest.approx(5 / 6, abs=EXACT_F64)  # the maximum (r − 1) / r
    assert gini(torch.zeros(6)) == 0.0
    assert gini(torch.tensor([4.0])) == 0.0
    assert 0.0 <= gini(x) <= 5 / 6


def test_gini_negative_entries_use_magnitude_with_warning():
    with pytest.warns(RuntimeWarning, match="negative"):
        assert gini(torch.tensor([-3.0, 1.0, 2.0])) == gini(torch.tensor([3.0, 1.0, 2.0]))


def test_density_matches_loop():
    U = _rand(9, 5, seed=3)
    U[U < 0.5] = 0.0
    naive = np.mean([sum(float(v) != 0.0 for v in row) / 5 for row in U])
    assert density(U) == pytest.approx(naive, abs=EXACT_F64)
    naive_thr = np.mean([sum(abs(float(v)) > 0.8 for v in row) / 5 for row in U])
    assert density(U, threshold=0.8) == pytest.approx(naive_thr, abs=EXACT_F64)
    assert density(torch.zeros(3, 4)) == 0.0
    assert density(torch.ones(3, 4)) == 1.0


def test_hoyer_hand_computed_and_loop():
    # [1, 1, 0, 0]: ‖u‖₁/‖u‖₂ = √2, so (2 − √2) / (2 − 1).
    assert hoyer(torch.tensor([[1.0, 1.0, 0.0, 0.0]])) == pytest.approx(
        2 - math.sqrt(2), abs=EXACT_F64
    )
    U = _rand(8, 5, seed=4)
    U[U < 0.4] = 0.0
    naive = np.mean(
        [(math.sqrt(5) - row.abs().sum() / row.norm()) / (math.sqrt(5) - 1) for row in U]
    )
    assert hoyer(U) == pytest.approx(float(naive), abs=EXACT_F64)


def test_hoyer_invariances_and_extremes():
    U = _rand(6, 5, seed=5)
    scales = torch.tensor([0.1, 1.0, 3.0, 10.0, 1e3, 2.0], dtype=torch.float64)[:, None]
    perm = torch.tensor([4, 0, 3, 1, 2])
    assert hoyer(U * scales) == pytest.approx(hoyer(U), abs=EXACT_F64)
    assert hoyer(U[:, perm]) == pytest.approx(hoyer(U), abs=EXACT_F64)
    assert hoyer(torch.eye(5)) == pytest.approx(1.0, abs=EXACT_F64)
    assert hoyer(torch.full((3, 5), 2.0)) == pytest.approx(0.0, abs=EXACT_F64)
    assert hoyer(torch.zeros(2, 5)) == 1.0  # documented: an all-zero row is maximally sparse
    assert hoyer(torch.tensor([[2.0], [0.0]])) == 1.0  # documented: r = 1


def test_mse_and_relative_l2_match_loop():
    U, W = _rand(7, 3, seed=6), _rand(3, 4, seed=7)
    A = _rand(7, 4, seed=8)
    sq = [(float(A[i, j]) - float(U[i] @ W[:, j])) ** 2 for i in range(7) for j in range(4)]
    assert mse(A, U, W) == pytest.approx(sum(sq) / 28, abs=EXACT_F64)
    assert mse(A, U, W, batch_size=2) == pytest.approx(sum(sq) / 28, abs=EXACT_F64)
    norm_a = math.sqrt(sum(float(v) ** 2 for v in A.flatten()))
    assert relative_l2(A, U, W) == pytest.approx(math.sqrt(sum(sq)) / norm_a, abs=EXACT_F64)
    assert relative_l2(5 * A, 5 * U, W) == pytest.approx(relative_l2(A, U, W), abs=EXACT_F64)
    assert mse(U @ W, U, W) == pytest.approx(0.0, abs=EXACT_F64)


def test_relative_l2_zero_activations():
    W = _rand(2, 3, seed=9)
    assert relative_l2(torch.zeros(4, 3), torch.zeros(4, 2), W) == 0.0
    with pytest.warns(RuntimeWarning, match="inf"):
        assert relative_l2(torch.zeros(4, 3), torch.ones(4, 2), W) == math.inf
    with pytest.raises(ValueError, match="A_bar"):
        mse(torch.zeros(4, 2), torch.zeros(4, 2), W)


def _brute_force_matched_cosine(W1: torch.Tensor, W2: torch.Tensor) -> float:
    a = torch.nn.functional.normalize(W1, dim=1)
    b = torch.nn.functional.normalize(W2, dim=1)
    cos = (a @ b.T).numpy()
    r = cos.shape[0]
    return max(np.mean([cos[i, p[i]] for i in range(r)]) for p in itertools.permutations(range(r)))


@pytest.mark.parametrize("seed", range(3))
def test_matched_cosine_equals_brute_force(seed):
    W1, W2 = _rand(4, 6, seed=seed), _rand(4, 6, seed=seed + 10)
    assert matched_cosine(W1, W2) == pytest.approx(
        _brute_force_matched_cosine(W1, W2), abs=EXACT_F64
    )


def test_stability_identical_permuted_and_orthogonal_banks():
    W = _rand(5, 7, seed=11)
    perm = torch.tensor([3, 1, 4, 0, 2])
    scaled = W[perm] * torch.tensor([0.5, 2.0, 7.0, 1.0, 3.0], dtype=torch.float64)[:, None]
    assert stability([W, W, W]) == pytest.approx(1.0, abs=EXACT_F64)
    assert stability([W, scaled]) == pytest.approx(1.0, abs=EXACT_F64)
    eye = torch.eye(6, dtype=torch.float64)
    assert stability([eye[:3], eye[3:]]) == pytest.approx(0.0, abs=EXACT_F64)
    banks = [W, _rand(5, 7, seed=12), _rand(5, 7, seed=13)]
    pairs = [matched_cosine(a, b) for a, b in itertools.combinations(banks, 2)]
    assert stability(banks) == pytest.approx(np.mean(pairs), abs=EXACT_F64)
    with pytest.raises(ValueError, match="at least 2"):
        stability([W])


def test_stability_folds_uses_seeded_kfold_over_rows():
    A = _rand(20, 6, seed=14)
    seen: list[torch.Tensor] = []

    def fit(subset: torch.Tensor) -> torch.Tensor:
        seen.append(subset)
        return subset[:3]  # any bank; the rows identify which split was passed

    stability_folds(A, fit)
    expected = [train for train, _ in KFold(5, shuffle=True, random_state=42).split(np.arange(20))]
    assert len(seen) == 5
    for subset, train in zip(seen, expected):
        assert torch.equal(subset, A[np.sort(train)])
    assert stability_folds(A, lambda X: torch.eye(3, 6)) == pytest.approx(1.0, abs=EXACT_F64)


def test_fold_indices_with_groups_keep_images_together():
    groups = np.repeat(np.arange(10), 3)  # 10 images, 3 patches each
    folds = fold_indices(30, groups=groups)
    assert len(folds) == 5
    for idx in folds:
        assert len(idx) == 24
        kept = set(groups[idx])
        assert all(set(np.flatnonzero(groups == g)) <= set(idx) for g in kept)
    with pytest.raises(ValueError, match="groups"):
        fold_indices(30, groups=np.arange(10))


def test_train_test_split_indices():
    fit, held = train_test_split_indices(20, test_size=0.25, random_state=3)
    assert (len(fit), len(held)) == (15, 5)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(20))
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(held) > 0)
    again = train_test_split_indices(20, test_size=0.25, random_state=3)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(train_test_split_indices(20, 0.25, random_state=4)[1], held)
    assert len(train_test_split_indices(20, test_size=3)[1]) == 3
    assert len(train_test_split_indices(2, test_size=0.01)[1]) == 1  # never empty
    with pytest.raises(ValueError, match="test_size"):
        train_test_split_indices(20, test_size=1.5)
    with pytest.raises(ValueError, match="test_size"):
        train_test_split_indices(20, test_size=20)
    with pytest.raises(TypeError, match="test_size"):
        train_test_split_indices(20, test_size="a")
