"""``ConceptExplainer.set_encoder``: one fit re-encoded with another λ equals a fit made with it."""

from __future__ import annotations

import warnings

import pytest
import torch

from _tiny import tiny_split
from face_concepts import ConceptExplainer
from face_concepts.metrics import METRIC_KEYS

ENC_KL = 1.0  # the KL-aware encoder's λ (the other one is 0: non-negative least squares)


def _images(seed: int) -> torch.Tensor:
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _fit(encoder_kl_weight: float) -> ConceptExplainer:
    ex = ConceptExplainer(
        tiny_split("test:tiny-set-encoder"), n_concepts=3, kl_weight=1.0, patch_size=8,
        encoder_kl_weight=encoder_kl_weight, n_designs=8, max_iter=50, progress=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a capped tiny fit may not converge; not the point here
        return ex.fit(_images(0), class_id=1)  # the class the tiny model predicts


def _close(a: dict, b: dict, tol: float) -> None:
    for key in METRIC_KEYS:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=tol, abs=tol), key


def test_set_encoder_equals_fitting_with_that_encoder(tol):
    switched, direct = _fit(0.0), _fit(ENC_KL)
    nnls_codes = switched.image_codes_.clone()
    assert switched.set_encoder(ENC_KL) is switched
    assert switched.encoder_kl_weight == ENC_KL
    assert switched.encoder_settings()["kl_weight"] == ENC_KL
    torch.testing.assert_close(switched.concept_bank_, direct.concept_bank_, rtol=0, atol=0)
    torch.testing.assert_close(switched.image_codes_, direct.image_codes_)
    torch.testing.assert_close(switched.importance_, direct.importance_)
    # the two encoders differ on this data, so the comparison above could fail
    assert not torch.allclose(nnls_codes, direct.image_codes_, atol=1e-4)
    _close(switched.evaluate().to_dict(), direct.evaluate().to_dict(), tol["metric_naive"])
    held = _images(1)
    _close(switched.evaluate(held).to_dict(), direct.evaluate(held).to_dict(), tol["metric_naive"])


def test_set_encoder_refuses_bad_values_and_unfitted_explainers():
    ex = _fit(0.0)
    with pytest.raises(ValueError, match="encoder_kl_weight"):
        ex.set_encoder(-1.0)
    assert ex.encoder_kl_weight == 0.0
    with pytest.raises(RuntimeError, match="not fitted"):
        ConceptExplainer(tiny_split("test:tiny-set-encoder")).set_encoder(ENC_KL)
