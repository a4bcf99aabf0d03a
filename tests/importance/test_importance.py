"""Sobol and Gradient×Input importance: oracles (analytic affine case, naive loops, Craft-xai)."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from face_concepts.importance import (
    gradient_input,
    importance_precision,
    jansen,
    saltelli,
    sobol_design,
    sobol_importance,
    sobol_indices,
)

# With N_d = 1024 Halton points in 2r = 10 dimensions the Jansen estimate of the analytic
# affine indices is within this (absolute) distance; the default N_d = 32 is only asked to rank.
SOBOL_ANALYTIC_TOL = 5e-3
# Vectorised path vs per-row loop, both in float64 outputs from a float64 head.
LOOP_TOL_F64 = 1e-10


def _mlp_head(p: int, n_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return (
        torch.nn.Sequential(torch.nn.Linear(p, 6), torch.nn.Tanh(), torch.nn.Linear(6, n_classes))
        .double()
        .eval()
    )


def _data(n: int = 6, r: int = 4, p: int = 5, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, r, generator=g, dtype=dtype), torch.rand(r, p, generator=g, dtype=dtype)


def _jansen_loop(y: np.ndarray, n_designs: int) -> np.ndarray:
    r = y.size // n_designs - 2
    y_a = y[:n_designs]
    var = sum((v - y_a.mean()) ** 2 for v in y_a) / (n_designs - 1)
    out = []
    for i in range(r):
        y_c = y[(2 + i) * n_designs : (3 + i) * n_designs]
        out.append(sum((y_a[j] - y_c[j]) ** 2 for j in range(n_designs)) / (2 * n_designs * var))
    return np.array(out)


def _saltelli_loop(y: np.ndarray, n_designs: int) -> np.ndarray:
    r = y.size // n_designs - 2
    y_a = y[:n_designs]
    mu = y_a.mean()
    var = sum((v - mu) ** 2 for v in y_a) / (n_designs - 1)
    out = []
    for i in range(r):
        y_c = y[(2 + i) * n_designs : (3 + i) * n_designs]
        out.append(1 - (sum(y_a[j] * y_c[j] for j in range(n_designs)) / n_designs - mu**2) / var)
    return np.array(out)


# ----------------------------------------------------------------------------- designs


def test_design_layout_a_b_and_replicated_columns():
    r, n_d = 4, 8
    masks = sobol_design(r, n_d).numpy()
    assert masks.shape == (n_d * (r + 2), r)
    a, b = masks[:n_d], masks[n_d : 2 * n_d]
    for i in range(r):
        c = masks[(2 + i) * n_d : (3 + i) * n_d]
        expected = a.copy()
        expected[:, i] = b[:, i]
        np.testing.assert_array_equal(c, expected)
    # A and B are the two halves of one Halton point set in 2r dimensions.
    from scipy.stats import qmc

    points = qmc.Halton(2 * r, scramble=False).random(n_d).astype(np.float32)
    np.testing.assert_array_equal(np.hstack([a, b]), points)


def test_scrambled_sobol_design_is_seeded():
    m1 = sobol_design(3, 16, "sobol", random_state=1)
    m2 = sobol_design(3, 16, "sobol", random_state=1)
    m3 = sobol_design(3, 16, "sobol", random_state=2)
    assert torch.equal(m1, m2)
    assert not torch.equal(m1, m3)
    assert float(m1.min()) >= 0 and float(m1.max()) <= 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"design": "lhs"}, ValueError),
        ({"estimator": "homma"}, ValueError),
        ({"n_designs": 1}, ValueError),
        ({"n_designs": 2.5}, TypeError),
        ({"batch_size": 0}, ValueError),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, error):
    U, W = _data()
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        sobol_indices(U, W, lambda x: x, 0, **kwargs)


def test_shape_and_class_checks():
    U, W = _data(r=4, p=5)
    with pytest.raises(ValueError, match="concepts"):
        sobol_indices(U[:, :3], W, torch.nn.Linear(5, 3), 0)
    with pytest.raises(ValueError, match="class_id"):
        sobol_indices(U, W, torch.nn.Linear(5, 3).double(), 3)
    with pytest.raises(ValueError, match="class_id"):
        sobol_indices(U, W, _mlp_head(5, 3), 7)


# ----------------------------------------------------------------------------- estimators


@pytest.mark.parametrize(
    ("estimator", "loop"), [(jansen, _jansen_loop), (saltelli, _saltelli_loop)]
)
def test_estimators_match_naive_loop(estimator, loop):
    n_d, r = 8, 3
    y = torch.randn(
        5, n_d * (r + 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    got = estimator(y, n_d).numpy()
    expected = np.stack([loop(row, n_d) for row in y.numpy()])
    np.testing.assert_allclose(got, expected, rtol=0, atol=LOOP_TOL_F64)


def test_estimator_rejects_wrong_width():
    with pytest.raises(ValueError, match="n_designs"):
        jansen(torch.zeros(2, 17), 8)


def test_sobol_indices_match_per_row_loop_nonaffine_head():
    U, W = _data(n=5, r=3, p=4)
    head = _mlp_head(4, 3)
    n_d, class_id = 8, 2
    masks = sobol_design(3, n_d).double()
    expected = []
    with torch.no_grad():
        for u in U:
            y = np.array([float(head(((u * m) @ W)[None])[0, class_id]) for m in masks])
            expected.append(_jansen_loop(y, n_d))
    # batch_size=7 does not divide the 5 × 40 (image, mask) rows: chunk edges are exercised.
    got = sobol_indices(U, W, head, class_id, n_designs=n_d, batch_size=7)
    np.testing.assert_allclose(got.numpy(), np.stack(expected), rtol=0, atol=LOOP_TOL_F64)


@pytest.mark.parametrize("estimator", ["jansen", "saltelli"])
def test_affine_path_equals_generic_path(estimator):
    U, W = _data(n=7, r=4, p=6)
    torch.manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(6, 5)).double().eval()
    fast = sobol_indices(U, W, head, 3, estimator=estimator)
    # A lambda hides the affine structure, so every masked code goes through W and the head.
    slow = sobol_indices(U, W, lambda x: head(x), 3, estimator=estimator, batch_size=50)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-9)


def _affine_case(n: int = 4, r: int = 5, seed: int = 0, shared_order: bool = False):
    """Images whose concept contributions z_i = u_i (W Vᵀ)_{i,c} are well separated (ratio
    1.6 between neighbours); with ``shared_order`` all images rank the concepts alike."""
    g = torch.Generator().manual_seed(seed)
    p, n_classes, class_id = 7, 3, 1
    head = torch.nn.Linear(p, n_classes).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(n_classes, p, generator=g, dtype=torch.float64))
    W = torch.rand(r, p, generator=g, dtype=torch.float64) + 0.1
    w_c = W @ head.weight[class_id].detach()
    scales = 1.6 ** torch.arange(r, dtype=torch.float64)
    perm = torch.randperm(r, generator=g)
    rows = [scales[perm if shared_order else torch.randperm(r, generator=g)] for _ in range(n)]
    # A ±10 % jitter per entry keeps neighbours apart (1.1 / 0.9 < 1.6).
    jitter = 0.9 + 0.2 * torch.rand(n, r, generator=g, dtype=torch.float64)
    U = torch.stack(rows) * jitter / w_c.abs()
    z = U * w_c
    return U, W, head, class_id, z


def test_affine_head_matches_analytic_indices():
    # y = Σ_i m_i z_i + b with independent uniform masks: S_T,i = z_i² / Σ_j z_j².
    U, W, head, class_id, z = _affine_case()
    analytic = z**2 / (z**2).sum(1, keepdim=True)
    got = sobol_indices(U, W, head, class_id, n_designs=1024)
    torch.testing.assert_close(got, analytic, rtol=0, atol=SOBOL_ANALYTIC_TOL)
    scrambled = sobol_indices(U, W, head, class_id, n_designs=1024, design="sobol", random_state=0)
    torch.testing.assert_close(scrambled, analytic, rtol=0, atol=SOBOL_ANALYTIC_TOL)


def test_affine_head_exact_ranking_at_default_design():
    U, W, head, class_id, z = _affine_case(n=6)
    local = sobol_indices(U, W, head, class_id)
    for row, zi in zip(local, z):
        assert torch.equal(torch.argsort(row), torch.argsort(zi.abs()))


def test_gradient_input_ranking_agrees_with_sobol_on_affine_head():
    U, W, head, class_id, _ = _affine_case(n=6, seed=1, shared_order=True)
    sobol = sobol_indices(U, W, head, class_id)
    gi = gradient_input(U, W, head, class_id)
    for s_row, g_row in zip(sobol, gi):
        assert torch.equal(torch.argsort(s_row), torch.argsort(g_row.abs()))
    glob_s = sobol_importance(U, W, head, class_id)
    glob_g = (gi**2 / (gi**2).sum(1, keepdim=True)).mean(0)  # GxI's analytic Sobol counterpart
    assert torch.equal(torch.argsort(glob_s), torch.argsort(glob_g))


def test_global_importance_is_mean_of_local():
    U, W = _data()
    head = torch.nn.Linear(5, 3).double()
    torch.testing.assert_close(
        sobol_importance(U, W, head, 1), sobol_indices(U, W, head, 1).mean(0)
    )


def test_constant_logit_gives_zero_and_warns():
    U, W = _data(n=3)
    U[1] = 0.0
    with pytest.warns(RuntimeWarning, match="1 image"):
        out = sobol_indices(U, W, torch.nn.Linear(5, 2).double(), 0)
    assert torch.equal(out[1], torch.zeros(4, dtype=out.dtype))
    assert bool(torch.isfinite(out).all())


def test_training_mode_dropout_head_warns():
    U, W = _data()
    head = torch.nn.Sequential(
        torch.nn.Dropout(0.5), torch.nn.Linear(5, 2)
    ).double()  # training mode
    with pytest.warns(RuntimeWarning, match="eval"):
        sobol_indices(U, W, head, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sobol_indices(U, W, torch.nn.Linear(5, 2).double(), 0)  # training-mode Linear is fine


def test_dtype_follows_codes():
    U, W = _data(dtype=torch.float32)
    assert sobol_indices(U, W, torch.nn.Linear(5, 2), 0).dtype == torch.float32


# ----------------------------------------------------------------------------- Gradient×Input


def test_gradient_input_affine_is_exact_decomposition():
    U, W = _data(n=4, r=3, p=5)
    head = torch.nn.Linear(5, 4).double()
    gi = gradient_input(U, W, head, 2)
    torch.testing.assert_close(gi, U * (W @ head.weight[2].detach()))
    torch.testing.assert_close(gi.sum(1) + head.bias[2].detach(), head(U @ W)[:, 2].detach())


def test_gradient_input_nonaffine_matches_jacobian_loop():
    U, W = _data(n=5, r=3, p=4)
    head = _mlp_head(4, 3)
    expected = []
    for u in U:
        jac = torch.autograd.functional.jacobian(lambda v: head((v @ W)[None])[0, 1], u)
        expected.append(u * jac)
    got = gradient_input(U, W, head, 1, batch_size=2)
    torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=LOOP_TOL_F64)


# ----------------------------------------------------------------------------- Craft-xai


@pytest.fixture
def craft(monkeypatch):
    """Craft-xai's torch module; its sampler imports TensorFlow at module level for a sampler
    we do not use, so a stub stands in when TensorFlow is absent."""
    if importlib.util.find_spec("craft") is None:
        pytest.skip("Craft-xai is not installed")
    if importlib.util.find_spec("tensorflow") is None and "tensorflow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    craft_torch = importlib.import_module("craft.craft_torch")
    sampler = importlib.import_module("craft.sobol.sampler")
    estimators = importlib.import_module("craft.sobol.estimators")
    return types.SimpleNamespace(torch=craft_torch, sampler=sampler, estimators=estimators)


class _GivenCodes:
    """Stands in for Craft's fitted sklearn NMF: its transform returns the codes it is given,
    so Craft.estimate_importance runs on exactly our U and W."""

    def __init__(self, W: np.ndarray) -> None:
        self.components_ = W

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X


def _craft_explainer(craft, head, W: np.ndarray):
    explainer = craft.torch.Craft(
        lambda x: x, head, number_of_concepts=W.shape[0], batch_size=64, device="cpu"
    )
    explainer.reducer = _GivenCodes(W)
    explainer.W = W
    return explainer


def test_halton_masks_identical_to_craft(craft):
    for r in (1, 5, 25):
        theirs = craft.sampler.HaltonSequence()(r, nb_design=32).astype(np.float32)
        np.testing.assert_array_equal(sobol_design(r, 32).numpy(), theirs)


def test_global_importance_equals_craft_estimate_importance(craft, tol):
    g = torch.Generator().manual_seed(0)
    r, p = 6, 20
    U, W = torch.rand(12, r, generator=g), torch.rand(r, p, generator=g)
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(p, 10)).eval()
    expected = _craft_explainer(craft, head, W.numpy()).estimate_importance(U.numpy(), class_id=4)
    got = sobol_importance(U, W, head, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=tol["sobol_craft"])


# Craft's Saltelli formula subtracts two large moments, so float32 outputs make it lose
# digits; it is compared in float64 (Craft's code then runs in float64 as well).
@pytest.mark.parametrize(
    ("name", "dtype"), [("jansen", torch.float32), ("saltelli", torch.float64)]
)
def test_local_indices_equal_craft_estimators(craft, tol, name, dtype):
    g = torch.Generator().manual_seed(1)
    r, p, class_id = 4, 9, 2
    U, W = torch.rand(5, r, generator=g, dtype=dtype), torch.rand(r, p, generator=g, dtype=dtype)
    head = _mlp_head(p, 3).to(dtype)
    masks = craft.sampler.HaltonSequence()(r, nb_design=32).astype(np.float32)
    estimator = {
        "jansen": craft.estimators.JansenEstimator,
        "saltelli": craft.estimators.SaltelliEstimator,
    }[name]()
    expected = []
    for u in U.numpy():
        # Craft's own per-image loop body (craft_torch.Craft.estimate_importance, 2-D case).
        y = craft.torch._batch_inference(head, (u[None, :] * masks) @ W.numpy(), 64, device="cpu")
        expected.append(estimator(masks, y[:, class_id].numpy(), 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zero-variance warning expected here
        got = sobol_indices(U, W, head, class_id, estimator=name, precision="full")
    np.testing.assert_allclose(got.numpy(), np.stack(expected), rtol=0, atol=tol["sobol_craft"])


# ---------------------------------------------------------------- precision of a non-affine head
def _conv_tail(p: int = 8, n_classes: int = 5) -> torch.nn.Module:
    """A small convolutional tail on a constant 6×6 map, float32 (an intermediate layer's
    head in miniature)."""
    torch.manual_seed(3)

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(p, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x[:, :, None, None].expand(-1, -1, 6, 6)
            return self.fc(torch.relu(self.conv(m)).mean(dim=(2, 3)))

    return Tail().eval()


def test_bfloat16_head_gives_the_full_precision_indices_to_bfloat16_rounding():
    g = torch.Generator().manual_seed(0)
    U, W = torch.rand(6, 4, generator=g), torch.rand(4, 8, generator=g)
    head = _conv_tail()
    full = sobol_indices(U, W, head, 2, precision="full")
    low = sobol_indices(U, W, head, 2, precision="bfloat16")
    assert low.dtype == torch.float32
    assert not torch.equal(full, low)  # the autocast really ran: bfloat16 rounds the logits
    # the head receives the masked activations (u ⊙ m) W in float32, formed outside autocast
    seen = []
    hook = head.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].dtype))
    try:
        sobol_indices(U, W, head, 2, n_designs=2, precision="bfloat16")
    finally:
        hook.remove()
    assert set(seen) == {torch.float32}
    # bfloat16 keeps about 3 significant digits of each logit; the indices move by far less
    # than the estimator's own spread between designs (benchmarks/results/sobol_designs.md).
    torch.testing.assert_close(low, full, rtol=0, atol=0.03)
    assert torch.equal(low.argmax(dim=1), full.argmax(dim=1))
    torch.testing.assert_close(
        sobol_importance(U, W, head, 2, precision="bfloat16"), low.mean(0), rtol=0, atol=1e-6
    )


def test_importance_precision_resolves_auto_from_the_hardware(monkeypatch):
    from face_concepts.importance import sobol as sobol_module

    head = _conv_tail()
    monkeypatch.setattr(sobol_module, "native_bfloat16", lambda device: False)
    assert importance_precision("auto", head, "cpu") == "full"
    assert importance_precision("bfloat16", head, "cpu") == "bfloat16"  # asked: always
    monkeypatch.setattr(sobol_module, "native_bfloat16", lambda device: True)
    assert importance_precision("auto", head, "cpu") == "bfloat16"
    assert importance_precision("full", head, "cpu") == "full"
    # affine heads take the float64 product, float64 codes are not autocast: always "full"
    assert importance_precision("auto", torch.nn.Linear(8, 5), "cpu") == "full"
    assert importance_precision("bfloat16", head, "cpu", torch.float64) == "full"
    with pytest.raises(
        ValueError, match=r"precision must be one of \['auto', 'bfloat16', 'full'\]"
    ):
        importance_precision("half", head, "cpu")


def test_auto_precision_runs_what_it_resolves_to(monkeypatch):
    from face_concepts.importance import sobol as sobol_module

    g = torch.Generator().manual_seed(1)
    U, W = torch.rand(4, 3, generator=g), torch.rand(3, 8, generator=g)
    head = _conv_tail()
    for native, same_as in ((False, "full"), (True, "bfloat16")):
        monkeypatch.setattr(sobol_module, "native_bfloat16", lambda device, v=native: v)
        got = sobol_indices(U, W, head, 1)
        assert torch.equal(got, sobol_indices(U, W, head, 1, precision=same_as))


def test_native_bfloat16_is_false_without_the_probe(monkeypatch):
    from face_concepts._core.device import native_bfloat16

    assert native_bfloat16("meta") is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert native_bfloat16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bfloat16("cpu") is True
    # CUDA: bfloat16 without emulation only (no GPU needed: the query is patched)
    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert native_bfloat16("cuda") is True and asked == [False]

    def broken(including_emulation=True):
        raise RuntimeError("no CUDA driver")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", broken)
    assert native_bfloat16("cuda:0") is False


def test_the_precision_is_decided_where_the_head_computes(monkeypatch):
    from face_concepts.importance import sobol as sobol_module

    assert sobol_module.head_device(torch.nn.Linear(2, 2).to("meta"), "cpu").type == "meta"
    assert sobol_module.head_device(lambda x: x, "cpu").type == "cpu"  # no parameters: the input's
    asked = []

    def probe(device):
        asked.append(torch.device(device).type)
        return False

    monkeypatch.setattr(sobol_module, "native_bfloat16", probe)
    g = torch.Generator().manual_seed(2)
    U, W = torch.rand(3, 3, generator=g), torch.rand(3, 8, generator=g)
    sobol_indices(U, W, _conv_tail(), 1, n_designs=2)
    assert asked == ["cpu"]
