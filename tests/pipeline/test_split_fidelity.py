"""How well an approximate split's head stands in for the model (issue 18, item 1): measured on
the fitting images, warned, recorded in ``fit_info_`` and shown wherever warnings are."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from face_concepts import ConceptExplainer
from face_concepts.data.preprocess import Preprocess
from face_concepts.models import split_model
from face_concepts.models.split import ApproximateSplitWarning, check_fidelity

SIZE = 16


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()  # fmt: skip


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def _split(layer: str | None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximateSplitWarning)
        return split_model(_model(), layer, input_size=SIZE, name="tiny",
                           preprocess=Preprocess(resize_size=SIZE, crop_size=SIZE))  # fmt: skip


def _by_hand(model_logits: torch.Tensor, head_logits: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement and mean KL(model ‖ head), written out."""
    ref, got = model_logits.double().log_softmax(1), head_logits.double().log_softmax(1)
    agree = float((ref.argmax(1) == got.argmax(1)).double().mean())
    return agree, float((ref.exp() * (ref - got)).sum(1).mean())


def _fit(split, x: torch.Tensor, method: str = "face") -> ConceptExplainer:
    ex = ConceptExplainer(split, method=method, n_concepts=2, patch_size=8, n_designs=4,
                          max_iter=5, progress=False, **({"kl_weight": 1.0} if method == "face" else {}))  # fmt: skip
    ex.fit(x, class_id=0)
    return ex


def test_fidelity_against_the_model_by_hand():
    split, x = _split("1"), _images()  # the first ReLU: the head runs conv, relu, pool, linear
    assert not split.exact
    fid = split.fidelity(x, batch_size=4)  # two batches
    with torch.no_grad():
        agree, kl = _by_hand(split.model(x), split.head(split.pooled(x)))
    assert fid["n_images"] == 6 and fid["agreement"] == pytest.approx(agree)
    assert fid["kl"] == pytest.approx(kl, rel=1e-9) and fid["kl"] > 1e-6  # the proxy differs
    exact = _split("3")  # followed by the global mean pool: the model's own head, exact
    assert exact.exact and check_fidelity(exact, x) is None  # nothing measured, nothing warned
    assert exact.fidelity(x)["agreement"] == 1.0 and abs(exact.fidelity(x)["kl"]) < 1e-6


def test_fit_on_an_approximate_split_warns_and_records_the_fidelity():
    split, x = _split("1"), _images()
    with pytest.warns(ApproximateSplitWarning, match=r"on the 6 fitting images .* model's on \d+"):
        ex = _fit(split, x)
    fid = ex.fit_info_["split_fidelity"]
    assert fid == pytest.approx(split.fidelity(x))
    assert any("on the 6 fitting images" in w for w in ex.warnings_)  # saved, shown by the atlas


class _Captured(Exception):
    pass


@pytest.mark.parametrize("method", ["face", "craft"])
def test_native_crops_are_factorised_with_the_head_for_their_size(monkeypatch, method):
    """At an intermediate layer, FACE's native 8-px crops are fitted with the rest of the network
    on a constant 8×8 map (their own size), not the 16×16 map of a whole image; CRAFT's crops,
    resized to the model input, keep the split's head."""
    from face_concepts.pipeline import explainer as module

    split, x = _split("1"), _images()
    heads = []
    factorize = module.factorize

    def capture(spec, rows, head, **kwargs):
        heads.append(head)
        return factorize(spec, rows, head, **kwargs)

    monkeypatch.setattr(module, "factorize", capture)
    ex = ConceptExplainer(split, method=method, n_concepts=2, kl_weight=1.0, patch_size=8,
                          n_designs=4, max_iter=5, progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(x, class_id=0)
    assert split.head.map_size == (SIZE, SIZE)
    if method == "face":
        assert len(heads) == 1 and heads[0].map_size == (8, 8)
        assert heads[0] is split.head_for_input(8)
    else:
        assert heads == [split.head]


def test_auto_kl_weight_fits_crops_with_their_head_and_scores_images_with_the_splits(
    monkeypatch,
):
    from face_concepts.pipeline import auto_lambda

    def capture(rows, row_image, A_img, head, **kwargs):
        raise _Captured(head, kwargs["image_head"])

    monkeypatch.setattr(auto_lambda, "fit_auto_kl_weight", capture)
    split, x = _split("1"), _images()
    ex = ConceptExplainer(split, n_concepts=2, kl_weight="auto", patch_size=8, n_designs=4,
                          max_iter=5, progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(_Captured) as err:
            ex.fit(x, class_id=0)
    head, image_head = err.value.args
    assert head is split.head_for_input(8) and head.map_size == (8, 8)
    assert image_head is split.head


def test_fit_on_crops_measures_the_crops_head_against_the_model_on_the_crops():
    """The head the crops are fitted with (their own map size) is measured too: against
    ``model(crop)``, by hand, warned and recorded as ``fit_info_["split_fidelity_crops"]``."""
    split, x = _split("1"), _images()
    with pytest.warns(ApproximateSplitWarning, match=r"on the \d+ fitting crops .* model's on"):
        ex = _fit(split, x)
    fid = ex.fit_info_["split_fidelity_crops"]
    crops, head = ex.crops_, split.head_for_input(8)
    with torch.no_grad():
        agree, kl = _by_hand(split.model(crops), head(split.pooled(crops)))
    assert fid["n_images"] == crops.shape[0] > x.shape[0]
    assert fid["agreement"] == pytest.approx(agree) and fid["kl"] == pytest.approx(kl, rel=1e-6)
    assert any("fitting crops" in w for w in ex.warnings_)  # saved, shown by the atlas
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        craft = _fit(split, x, method="craft")
    assert "split_fidelity_crops" not in craft.fit_info_  # resized crops: the images' head
