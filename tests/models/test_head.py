"""The affine head (models/head.py): detection, ``(V, b)``, factored logits — the one fast path.

Oracles: the materialised head ``h(U W)`` in float64, and the Linear layers' own weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from face_concepts.decomposition._head import Head
from face_concepts.metrics.faithfulness import reconstruction_logits
from face_concepts.models.head import AffineHead, affine_parameters


def _data(n: int = 7, r: int = 3, p: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, r, generator=g, dtype=torch.float64), torch.rand(
        r, p, generator=g, dtype=torch.float64
    )


def _heads() -> list[nn.Module]:
    torch.manual_seed(0)
    no_bias = nn.Linear(5, 4, bias=False)
    folded = nn.Sequential(nn.Dropout(0.3), nn.Linear(5, 6), nn.Identity(), nn.Linear(6, 4)).eval()
    return [nn.Linear(5, 4), no_bias, folded]


@pytest.mark.parametrize("which", range(3))
def test_factored_logits_equal_the_materialised_head(which):
    module = _heads()[which].double()
    U, W = _data()
    affine = AffineHead.of(module)
    assert affine is not None and (affine.n_classes, affine.n_features) == (4, 5)
    expected = module(U @ W).detach()
    assert torch.allclose(affine.code_logits(U, W), expected, atol=1e-12)
    assert torch.allclose(affine.logits(U @ W), expected, atol=1e-12)
    M, b = affine.code_space(W)
    assert M.shape == (3, 4) and torch.allclose(U @ M + b, expected, atol=1e-12)


def test_folded_parameters_are_the_product_of_the_layers():
    torch.manual_seed(1)
    a, c = nn.Linear(5, 6), nn.Linear(6, 4)
    V, b = affine_parameters(nn.Sequential(a, c))
    assert torch.allclose(V, c.weight @ a.weight, atol=1e-6)
    assert torch.allclose(b, c.weight @ a.bias + c.bias, atol=1e-6)
    _, b0 = affine_parameters(nn.Linear(5, 4, bias=False))
    assert torch.equal(b0, torch.zeros(4))


def test_non_affine_heads_are_not_detected_and_dropout_in_training_is_random():
    torch.manual_seed(0)
    assert AffineHead.of(nn.Sequential(nn.Linear(5, 4), nn.ReLU())) is None
    assert AffineHead.of(lambda x: x) is None
    training = nn.Sequential(nn.Dropout(0.5), nn.Linear(5, 4)).train()
    assert AffineHead.of(training) is None
    assert AffineHead.of(training.eval()) is not None


def test_code_space_of_some_classes_and_dtype():
    module = _heads()[0]
    _, W = _data()
    affine = AffineHead.of(module)
    full, b = affine.code_space(W)
    assert full.dtype == torch.float64 and b.dtype == torch.float64  # taken in W's dtype
    w_2, b_2 = affine.code_space(W, 2)  # one class: a vector and a scalar
    assert w_2.shape == (3,) and b_2.shape == ()
    assert torch.allclose(w_2, full[:, 2], atol=1e-12) and float(b_2) == float(b[2])
    some, b_some = affine.code_space(W, slice(1, 3))
    assert torch.allclose(some, full[:, 1:3], atol=1e-12) and torch.equal(b_some, b[1:3])
    with pytest.raises(ValueError, match="head expects 5 features but W has 4 columns"):
        affine.code_space(W[:, :4])


def test_every_user_of_the_fast_path_agrees_with_the_materialised_head():
    module = _heads()[2].double()
    U, W = _data(seed=3)
    expected = module(U @ W).detach()
    engine = Head(module, dtype=torch.float64, device=torch.device("cpu"))
    assert engine.is_affine
    assert torch.allclose(engine.code_logits(U, W), expected, atol=1e-12)
    assert torch.allclose(reconstruction_logits(U, W, module), expected, atol=1e-12)
    assert not module.training  # detection changed nothing
