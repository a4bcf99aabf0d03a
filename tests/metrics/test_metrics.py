"""Faithfulness metrics and MetricReport against naive loops, scipy and analytic cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import entropy, pearsonr
from torch import nn

from face_concepts.metrics import (
    CURVE_KEYS,
    METRIC_KEYS,
    MetricReport,
    accuracy_on_reconstruction,
    c_deletion,
    c_deletion_paper,
    c_insertion,
    c_mu_fidelity,
    compute_metrics,
    concept_order,
    deletion_curve,
    insertion_curve,
    kl_divergence,
    mu_fidelity_subsets,
    reconstruction_logits,
)

N, P, R, C = 20, 8, 4, 5


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    # Standard-normal weights from a local generator: signed and large enough that different
    # images (and different concept subsets) land in different classes.
    g = torch.Generator().manual_seed(seed)
    module = module.double().eval()
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g, dtype=torch.float64))
    return module


def _linear_head(seed: int = 101) -> nn.Module:
    return _seeded(nn.Linear(P, C), seed)


def _mlp_head(seed: int = 7) -> nn.Module:
    return _seeded(nn.Sequential(nn.Linear(P, 6), nn.ReLU(), nn.Linear(6, C)), seed)


HEADS = {"affine": _linear_head, "mlp": _mlp_head}


def _make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    U = torch.rand(N, R, generator=g, dtype=torch.float64)
    U[U < 0.3] = 0.0  # exact zeros, as from the non-negative encoder
    W = torch.rand(R, P, generator=g, dtype=torch.float64)
    W = W * (torch.rand(R, P, generator=g, dtype=torch.float64) < 0.5)
    A = U @ W + 0.1 * torch.rand(N, P, generator=g, dtype=torch.float64)
    importance = torch.rand(R, generator=g, dtype=torch.float64)
    return A, U, W, importance


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _make_data()


def _class_of(head: nn.Module, U: torch.Tensor, W: torch.Tensor) -> int:
    # The most predicted class on the reconstruction, so curves start above 0.
    with torch.no_grad():
        return int(torch.mode(head(U @ W).argmax(dim=1)).values)


def _predict_one(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head(x.unsqueeze(0))[0]


def _naive_order(importance: torch.Tensor) -> list[int]:
    return sorted(range(len(importance)), key=lambda i: (-float(importance[i]), i))


def _naive_curve(head, U, W, class_id, importance, *, deletion: bool) -> list[float]:
    order = _naive_order(importance)
    curve = []
    for k in range(U.shape[1] + 1):
        hits = 0
        for i in range(U.shape[0]):
            u = U[i].clone()
            if deletion:
                u[order[:k]] = 0.0
            else:
                kept = torch.zeros_like(u)
                kept[order[:k]] = u[order[:k]]
                u = kept
            hits += int(_predict_one(head, u @ W).argmax()) == class_id
        curve.append(hits / U.shape[0])
    return curve


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_accuracy_and_agreement_match_loop(data, kind, tol):
    A, U, W, _ = data
    head = HEADS[kind]()
    cid = _class_of(head, U, W)
    acc, agreement, acc0 = accuracy_on_reconstruction(A, U, W, head, cid)
    pred_r = [int(_predict_one(head, U[i] @ W).argmax()) for i in range(N)]
    pred_a = [int(_predict_one(head, A[i]).argmax()) for i in range(N)]
    assert acc == pytest.approx(sum(p == cid for p in pred_r) / N, abs=tol["metric_naive"])
    assert agreement == pytest.approx(np.mean(np.equal(pred_r, pred_a)), abs=tol["metric_naive"])
    assert acc0 == pytest.approx(sum(p == cid for p in pred_a) / N, abs=tol["metric_naive"])


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_kl_matches_scipy_entropy(data, kind, tol):
    A, U, W, _ = data
    head = HEADS[kind]()
    expected = np.mean(
        [
            entropy(
                torch.softmax(_predict_one(head, A[i]), 0).numpy(),
                torch.softmax(_predict_one(head, U[i] @ W), 0).numpy(),
            )
            for i in range(N)
        ]
    )
    assert kl_divergence(A, U, W, head) == pytest.approx(expected, abs=tol["metric_naive"])


def test_kl_is_zero_for_exact_reconstruction(data, tol):
    _, U, W, _ = data
    assert abs(kl_divergence(U @ W, U, W, _linear_head())) <= tol["metric_naive"]


def test_affine_fast_path_equals_plain_head_call(data, tol):
    _, U, W, importance = data
    head = _linear_head()
    opaque = lambda x: head(x)  # noqa: E731 - not recognised as affine: forces the generic path
    fast = reconstruction_logits(U, W, head)
    assert torch.allclose(fast, reconstruction_logits(U, W, opaque), atol=tol["metric_naive"])
    cid = _class_of(head, U, W)
    for fn in (deletion_curve, insertion_curve):
        assert torch.equal(fn(U, W, head, cid, importance), fn(U, W, opaque, cid, importance))


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("batch_size", [7, 8192])
def test_deletion_insertion_curves_match_loop(data, kind, batch_size, tol):
    _, U, W, importance = data
    head = HEADS[kind]()
    cid = _class_of(head, U, W)
    for fn, deletion in ((deletion_curve, True), (insertion_curve, False)):
        curve = fn(U, W, head, cid, importance, batch_size=batch_size)
        naive = _naive_curve(head, U, W, cid, importance, deletion=deletion)
        assert curve.shape == (R + 1,)
        assert np.allclose(curve.numpy(), naive, atol=tol["metric_naive"])


def test_curves_use_few_batched_head_calls(data):
    _, U, W, importance = data
    inner = _mlp_head()
    calls = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return inner(x)

    deletion_curve(U, W, counting, 0, importance)
    assert calls == [(R + 1) * N]  # all k at once, not one call per image or per k
    calls.clear()
    insertion_curve(U, W, counting, 0, importance, batch_size=2 * N)
    assert len(calls) == math.ceil((R + 1) / 2)


def test_curve_endpoints(data):
    A, U, W, importance = data
    head = _mlp_head()
    cid = _class_of(head, U, W)
    acc, _, _ = accuracy_on_reconstruction(A, U, W, head, cid)
    d = deletion_curve(U, W, head, cid, importance)
    s = insertion_curve(U, W, head, cid, importance)
    bias_only = float(_predict_one(head, torch.zeros(P, dtype=torch.float64)).argmax() == cid)
    assert d[0] == s[-1] == pytest.approx(acc)
    assert d[-1] == s[0] == bias_only


def _known_case() -> tuple[torch.Tensor, torch.Tensor, nn.Module, torch.Tensor]:
    # W = I; class 0 logit = sum of codes, class 1 logit = 0.5: an image is class 0 iff the
    # codes still present sum to more than 0.5. Importance order: concept 0, 1, 2.
    U = torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.float64)
    head = nn.Linear(3, 2).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 1, 1], [0, 0, 0]]))
        head.bias.copy_(torch.tensor([0.0, 0.5]))
    return U, torch.eye(3, dtype=torch.float64), head, torch.tensor([3.0, 2.0, 1.0])


def test_deletion_insertion_known_answer(tol):
    U, W, head, importance = _known_case()
    d = deletion_curve(U, W, head, 0, importance)
    s = insertion_curve(U, W, head, 0, importance)
    # Deleting 0, then 1, then 2: remaining sums (1,2,3,1) (0,1,2,1) (0,0,1,1) (0,0,0,0).
    assert d.tolist() == [1.0, 0.75, 0.5, 0.0]
    # Keeping 0, then 0+1, then all: sums (0..) (1,1,1,0) (1,2,2,0) (1,2,3,1).
    assert s.tolist() == [0.0, 0.75, 0.75, 1.0]
    drops = 0.0 + 0.25 + 0.5 + 1.0
    assert c_deletion(d) == pytest.approx(drops / 4, abs=tol["metric_naive"])
    assert c_deletion_paper(d) == pytest.approx(drops / 5, abs=tol["metric_naive"])
    trapezoids = (0.0 + 0.75) / 2 + (0.75 + 0.75) / 2 + (0.75 + 1.0) / 2
    assert c_insertion(s) == pytest.approx(trapezoids / 3, abs=tol["metric_naive"])


def _authors_deletion_score(results: dict[int, float]) -> float:
    # The authors' compute_deletion_score: AOPC sum divided by (number of points + 1).
    keys = np.array(list(results))
    acc = np.array(list(results.values()))
    return float(np.sum(acc[0] - acc) / (len(keys) + 1))


def _authors_insertion_auc(results: dict[int, float]) -> float:
    # The authors' compute_insertion_auc: trapezoid over k, divided by the k range.
    keys = np.array(list(results), dtype=float)
    acc = np.array(list(results.values()))
    area = np.sum((acc[1:] + acc[:-1]) / 2 * np.diff(keys))
    return float(area / (keys[-1] - keys[0]))


@pytest.mark.parametrize("r", [1, 3, 6])
def test_authors_normalisations_reproduced(r, tol):
    g = torch.Generator().manual_seed(r)
    curve = torch.rand(r + 1, generator=g, dtype=torch.float64)
    as_dict = {k: float(v) for k, v in enumerate(curve)}
    assert c_deletion_paper(curve) == pytest.approx(_authors_deletion_score(as_dict), abs=1e-15)
    assert c_insertion(curve) == pytest.approx(_authors_insertion_auc(as_dict), abs=1e-15)
    naive = sum(float(curve[0] - curve[k]) for k in range(r + 1))
    assert c_deletion(curve) == pytest.approx(naive / (r + 1), abs=tol["metric_naive"])
    assert c_deletion_paper(curve) * (r + 2) == pytest.approx(naive, abs=tol["metric_naive"])


def test_concept_order_descending_ties_by_index():
    imp = torch.tensor([0.2, 0.9, 0.2, 0.9, 0.0])
    assert concept_order(imp).tolist() == _naive_order(imp) == [1, 3, 0, 2, 4]
    assert concept_order(torch.zeros(4)).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_mu_fidelity_matches_loop(data, kind, tol):
    _, U, W, importance = data
    head = HEADS[kind]()
    cid, n_subsets, size = 2, 12, 2
    subsets = mu_fidelity_subsets(R, n_subsets, size, random_state=3)
    assert subsets.sum(dim=1).tolist() == [size] * n_subsets
    scores, flags = [], []
    for i in range(N):
        full = _predict_one(head, U[i] @ W)[cid]
        mass, drop = [], []
        for s in subsets:
            u = U[i].clone()
            u[s] = 0.0
            mass.append(float(importance[s].sum()))
            drop.append(float(full - _predict_one(head, u @ W)[cid]))
        flat = np.std(drop) <= 1e-12
        flags.append(None if flat else True)
        scores.append(0.0 if flat else pearsonr(mass, drop)[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = c_mu_fidelity(
            U, W, head, cid, importance, n_subsets=n_subsets, subset_size=size, random_state=3
        )
    assert got == pytest.approx(np.mean(scores), abs=tol["metric_naive"])
    # A warning exactly when some image had an undefined (zero-variance) correlation.
    assert bool(caught) == any(s is None for s in flags)


def test_mu_fidelity_is_one_for_exact_local_importance(data, tol):
    # One image, affine head: the logit drop of subset S is Σ_{i∈S} u_i (W Vᵀ)_{i,c}, so the
    # Gradient×Input importance correlates perfectly (and its negation anti-correlates).
    _, U, W, _ = data
    head = _linear_head()
    u = U[2:3]
    gxi = u[0] * (W @ head.weight.detach().T)[:, 1]
    assert c_mu_fidelity(u, W, head, 1, gxi, n_subsets=30) == pytest.approx(
        1.0, abs=tol["metric_naive"]
    )
    assert c_mu_fidelity(u, W, head, 1, -gxi, n_subsets=30) == pytest.approx(
        -1.0, abs=tol["metric_naive"]
    )


def test_mu_fidelity_seeded():
    g = torch.Generator().manual_seed(5)
    U, W = torch.rand(6, 5, generator=g), torch.rand(5, P, generator=g)
    head, imp = _linear_head().float(), torch.rand(5, generator=g)
    a = c_mu_fidelity(U, W, head, 0, imp, random_state=7)
    assert a == c_mu_fidelity(U, W, head, 0, imp, random_state=7)
    assert not torch.equal(mu_fidelity_subsets(5, 50, 2, 7), mu_fidelity_subsets(5, 50, 2, 8))


def test_mu_fidelity_undefined_cases_warn_and_give_zero(data):
    _, U, W, importance = data
    head = _linear_head()
    with pytest.warns(RuntimeWarning, match="do not vary"):
        assert c_mu_fidelity(U[:, :1], W[:1], head, 0, importance[:1]) == 0.0  # r = 1
    with pytest.warns(RuntimeWarning, match="do not vary"):
        assert c_mu_fidelity(U, W, head, 0, torch.ones(R), subset_size=2) == 0.0
    zero_codes = torch.zeros(3, R, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="3 of 3"):
        assert c_mu_fidelity(zero_codes, W, head, 0, importance) == 0.0


def test_class_never_predicted_gives_zero_with_warning(data):
    A, U, W, importance = data
    head = _linear_head()
    with torch.no_grad():
        head.bias[3] = -1e6  # class 3 can never win
    acc, _, acc0 = accuracy_on_reconstruction(A, U, W, head, 3)
    assert acc == acc0 == 0.0
    d = deletion_curve(U, W, head, 3, importance)
    assert d.tolist() == [0.0] * (R + 1)
    with pytest.warns(RuntimeWarning, match=r"d\(0\) = 0"):
        assert c_deletion(d) == 0.0
    assert c_insertion(insertion_curve(U, W, head, 3, importance)) == 0.0


def test_single_concept(data, tol):
    _, U, W, _ = data
    head = _mlp_head()
    cid = _class_of(head, U[:, :1], W[:1])
    d = deletion_curve(U[:, :1], W[:1], head, cid, torch.ones(1))
    s = insertion_curve(U[:, :1], W[:1], head, cid, torch.ones(1))
    assert torch.equal(d, s.flip(0))
    assert c_insertion(s) == pytest.approx(float(s.sum()) / 2, abs=tol["metric_naive"])
    assert c_deletion(d) == pytest.approx(float(d[0] - d[1]) / 2, abs=tol["metric_naive"])


def test_float32_head_with_float64_codes(data, tol):
    A, U, W, importance = data
    head64 = _linear_head()
    head32 = _linear_head().float()
    opaque32 = lambda x: head32(x.float())  # noqa: E731
    got = kl_divergence(A, U, W, head32)
    assert got == pytest.approx(kl_divergence(A, U, W, head64), rel=1e-4)
    cid = _class_of(head64, U, W)
    assert torch.equal(
        deletion_curve(U, W, head32, cid, importance),
        deletion_curve(U, W, opaque32, cid, importance),
    )


def test_input_errors_name_the_parameter(data):
    A, U, W, importance = data
    head = _linear_head()
    with pytest.raises(ValueError, match="W"):
        deletion_curve(U, W[:2], head, 0, importance)
    with pytest.raises(ValueError, match="A_bar"):
        kl_divergence(A[:, :3], U, W, head)
    with pytest.raises(ValueError, match="class_id"):
        deletion_curve(U, W, head, C, importance)
    with pytest.raises(ValueError, match="importance"):
        insertion_curve(U, W, head, 0, importance[:2])
    with pytest.raises(ValueError, match="subset_size"):
        c_mu_fidelity(U, W, head, 0, importance, subset_size=R + 1)
    with pytest.raises(ValueError, match="curve"):
        c_insertion(torch.ones(1))
    with pytest.raises(TypeError, match="class_id"):
        accuracy_on_reconstruction(A, U, W, head, 1.5)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_compute_metrics_fills_every_key_consistently(data, kind):
    A, U, W, importance = data
    head = HEADS[kind]()
    cid = _class_of(head, U, W)
    rep = compute_metrics(
        A, U, W, head, cid, importance, encoder={"kl_weight": 0.0}, split="heldout"
    )
    out = rep.to_dict()
    assert set(METRIC_KEYS) | set(CURVE_KEYS) <= set(out)
    assert out["stability"] is None
    assert (out["n_images"], out["n_concepts"], out["class_id"], out["split"]) == (
        N,
        R,
        cid,
        "heldout",
    )
    assert out["encoder"] == {"kl_weight": 0.0}
    # Every value equals the stand-alone function's.
    acc, agreement, _ = accuracy_on_reconstruction(A, U, W, head, cid)
    d = deletion_curve(U, W, head, cid, importance)
    assert (out["acc"], out["agreement"]) == (acc, agreement)
    assert out["kl"] == kl_divergence(A, U, W, head)
    assert out["deletion_curve"] == d.tolist()
    assert out["c_deletion"] == c_deletion(d)
    assert out["c_deletion_paper"] == c_deletion_paper(d)
    size = out["settings"]["mu_fidelity_subset_size"]
    assert out["c_mu_fidelity"] == c_mu_fidelity(U, W, head, cid, importance, subset_size=size)
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in out.values())
    text = json.dumps(out)
    assert MetricReport.from_dict(json.loads(text)) == rep


def test_report_stability_markdown_and_from_dict_errors(data):
    A, U, W, importance = data
    head = _linear_head()
    banks = [W, W.flip(0)]
    rep = compute_metrics(A, U, W, head, _class_of(head, U, W), importance, stability=banks)
    assert rep.stability == pytest.approx(1.0)
    lines = rep.to_markdown().splitlines()
    assert len(lines) == 3
    assert lines[0].split(" | ")[2:4] == ["acc", "agreement"]
    assert lines[2].count("|") == lines[0].count("|")
    with pytest.raises(ValueError, match="c_gini"):
        MetricReport.from_dict({k: 0.0 for k in METRIC_KEYS if k != "c_gini"})
    assert (
        "n/a"
        in MetricReport.from_dict({k: 0.0 for k in METRIC_KEYS if k != "stability"}).to_markdown()
    )
