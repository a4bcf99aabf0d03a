"""Signed layers work by default (issue 16, items 2 and 6): MobileNetV3, EfficientNet-B0,
ConvNeXt-Tiny and RegNet split exactly and fit with no extra argument; a signed layer gets the
signed concept bank (recorded in the run and its atlas card); the explicit ``signed="posneg"``
and ``"relu"`` stay; layers and models that cannot be split get one message naming the layer and
the explicit ``ModelSplit(features, head)`` way.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from face_concepts.models import ModelSplit, split_model
from face_concepts.models.split import ApproximateSplitWarning
from face_concepts.pipeline.explainer import ConceptExplainer

INPUT = 64


def _build(name: str, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torchvision.models.get_model(name).eval()


def _images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, 3, INPUT, INPUT), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("name", "signed_layer"),
    [
        ("mobilenet_v3_small", True),
        ("efficientnet_b0", True),
        ("convnext_tiny", True),
        ("regnet_y_400mf", False),  # its last stage ends in a ReLU
    ],
)
def test_modern_cnns_split_and_fit_with_no_extra_argument(name, signed_layer, tol, tmp_path):
    model = _build(name)
    split = split_model(model, input_size=INPUT)  # verify=True: raises unless exact
    assert split.exact and split.transform is None
    x = _images()
    with torch.no_grad():
        fmap = split.features(x)
        torch.testing.assert_close(
            split.head(fmap.mean(dim=(2, 3))), model(x), atol=tol["split_logits"], rtol=0
        )
    assert bool(fmap.min() < 0) is signed_layer
    ex = ConceptExplainer(
        split, n_concepts=3, patch_size=32, max_iter=4, n_designs=4, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=4 does not converge, by design of the test
        ex.fit(x, class_id=0)
    bank = "signed" if signed_layer else "nonnegative"
    assert ex.fit_info_["bank"] == bank
    W, U = ex.concept_bank_, ex.image_codes_
    assert W.shape == (3, fmap.shape[1]) and U.shape == (3, 3) and float(U.min()) >= 0
    assert bool((W < 0).any()) is signed_layer
    assert torch.isfinite(ex.importance()).all()
    # the choice is saved with the run and shown on its atlas card
    from face_concepts.pipeline.bank import ConceptBank
    from face_concepts.report.html import concept_bank_fact

    run = ex.save(tmp_path / "run")
    meta = ConceptBank.load(run).metadata
    assert meta["fit"]["bank"] == bank
    assert concept_bank_fact(meta["fit"]).startswith(f"concept bank: {bank}")


def test_posneg_and_relu_stay_explicit_choices():
    model = _build("mobilenet_v3_small")
    posneg = split_model(model, input_size=INPUT, signed="posneg")
    assert posneg.transform == "posneg" and posneg.exact
    with pytest.warns(ApproximateSplitWarning):
        relu = split_model(model, input_size=INPUT, signed="relu")
    assert relu.transform == "relu" and not relu.exact
    x = _images(2)
    with torch.no_grad():
        assert float(posneg.features(x).min()) >= 0 and float(relu.features(x).min()) >= 0
    ex = ConceptExplainer(posneg, n_concepts=2, patch_size=32, max_iter=3, n_designs=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(x, class_id=0)
    assert ex.fit_info_["bank"] == "nonnegative" and float(ex.concept_bank_.min()) >= 0


def test_signed_layer_advice_no_longer_asks_for_posneg():
    model = _build("mobilenet_v3_small")
    split = split_model(model, input_size=INPUT)  # accepted: no advice needed
    assert split.transform is None
    with pytest.raises(ValueError) as err:
        split_model(model, input_size=INPUT, check_non_negative=True)
    msg = str(err.value)
    assert (
        msg.count("\n") == 0 and "signed concept bank" in msg and "Drop check_non_negative" in msg
    )
    assert "signed='posneg'" in msg and "signed='relu'" in msg  # the alternatives stay named
    # a method that cannot factorise signed rows says which can
    from face_concepts.methods.registry import factorize, get_method

    A = torch.randn(10, 6)
    for method in ("craft", "face-paper"):
        with pytest.raises(ValueError, match=rf"method '{method}' .* signed .* method 'face'"):
            factorize(get_method(method), A, nn.Linear(6, 2), n_concepts=2, kl_weight=0.0,
                      random_state=0)  # fmt: skip


class _Unpoolable(nn.Module):
    """A model whose only layer outputs a 3-d (tokens) tensor: nothing a mean pool can take."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 8, stride=8)
        self.mix = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.mix(self.embed(x).flatten(2).transpose(1, 2))  # (N, L, 4)
        return self.fc(tokens.mean(1))


def test_layer_that_cannot_be_pooled_names_the_layer_and_model_split():
    with pytest.raises(TypeError) as err:
        split_model(_Unpoolable().eval(), "mix", input_size=32)
    msg, cli = str(err.value), err.value.cli_message
    assert msg.count("\n") == 0
    assert "layer 'mix' of _Unpoolable" in msg and "(N, 16, 4)" in msg
    assert "ModelSplit(features, head" in msg and "pool=" in msg
    assert "--layer mix" in cli and "layer=" not in cli


def test_model_without_a_head_names_it_and_model_split():
    with pytest.raises(TypeError) as err:
        split_model(_Unpoolable().eval(), input_size=32)
    msg, cli = str(err.value), err.value.cli_message
    assert msg.count("\n") == 0 and "head cannot be found" in msg
    assert "_Unpoolable" in msg and "layer=" in msg and "ModelSplit(features, head" in msg
    assert "--layer" in cli and "layer=" not in cli
    # the explicit way: the mean of the tokens feeds an affine mix, so the split is exact
    net = _Unpoolable().eval()
    split = ModelSplit(net.embed, nn.Sequential(net.mix, net.fc), model=net, input_size=32)
    assert split.verify() <= 1e-5
