"""``split_model``: write a torchvision or timm classifier as ``head ∘ mean-pool ∘ features``.

Default splits (the last feature map before global pooling, verified exact):

============================  ======================================  ==========================
family                        features                                head
============================  ======================================  ==========================
ResNet / ResNeXt / WideResNet ``conv1`` … ``layer4``                  ``fc`` (affine)
MobileNetV2                   ``features`` (ends in ReLU6)            ``classifier`` (affine)
MobileNetV3, EfficientNet     ``features`` (Hardswish/SiLU: signed)   ``classifier``
DenseNet                      ``features`` + the ReLU of its forward  ``classifier`` (affine)
VGG                           up to ``classifier.4`` (ReLU), 1×1 map  ``classifier.6`` (affine)
ConvNeXt                      ``features`` (signed, no ReLU)          LayerNorm2d + Linear
RegNet, ShuffleNetV2, MNASNet last stage (ReLU)                       ``fc`` / ``classifier``
timm CNNs (avg global pool)   ``forward_features``                    ``forward_head``
ViT, DeiT, Swin               patch tokens after the final norm       see ``models/vit.py``
============================  ======================================  ==========================

Vision transformers (torchvision ViT and Swin, timm ViT/DeiT/Swin): the patch tokens after the
final norm are the map (the grid from the patch size); class-token models get a map whose spatial
mean is the class token, so the split stays exact (:mod:`face_concepts.models.vit`).

VGG is the exception: its head is ``AdaptiveAvgPool2d(7)`` → flatten → classifier, so no mean
pool of a conv map feeds it; the only exact split with a mean pool is inside the classifier
(the 4096-d output of the second ReLU, viewed as a 1×1 map; the head is the last Linear).

Signed layers (MobileNetV3, EfficientNet, ConvNeXt, RegNet blocks) are kept as they are by
default (``signed=None``): the split stays exact and the pipeline factorises them with the
*signed concept bank* (``FACE(bank="signed")``, Semi-NMF: codes ≥ 0, concepts are signed
directions; :mod:`face_concepts.decomposition.semi_nmf`). The explicit alternatives stay:
``signed="posneg"`` (exact: the map ``f`` becomes ``[relu(f), relu(-f)]``, p doubles, the head
takes the difference, and the non-negative bank is used) or ``signed="relu"`` (approximate: the
head sees ``relu(f)``, so the split no longer equals the model). ``check_non_negative=True``
refuses a signed layer instead.

Intermediate layers (``layer="layer3"``) are approximate by nature: the rest of the network
needs a spatial map, not a pooled vector. The head then runs the rest of the network on a map
whose every position equals the pooled vector (at the layer's natural spatial size for the
probe input). ``verify`` reports, but does not enforce, the difference for such splits; the
split warns once with the measured difference and records it in :attr:`ModelSplit.approximation`
(saved with every run and shown by the atlas).

The head runs only what follows the layer: for the families above the model's forward is a
plain chain (checked numerically against the model when the split is built), so the head of
``layer3`` is ``layer4 → avgpool → flatten → fc`` and that of ``features.14`` is
``features[15:] → pool → classifier``. A layer inside a block with its own forward (a residual
block) runs that block alone, from its recorded input for a zero image, with a hook replacing
the layer's output. Models of unknown structure fall back to the whole model on a zero image
with that hook. Rows are processed in chunks in every case. A layer followed directly by the
global mean pool (``layer4.1`` of a ResNet) is an exact split with the model's own head.
"""

from __future__ import annotations

import difflib
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from face_concepts._core.validation import check_choice
from face_concepts.data.preprocess import Preprocess
from face_concepts.models._advice import no_head_error, signed_layer_error, unknown_layer_error
from face_concepts.models._modules import (
    OnMap,
    PosNegFeatures,
    PosNegHead,
    ReluFeatures,
    Reshape4d,
    RestOfNetwork,
    TimmFeatures,
    TimmHead,
    Truncated,
)
from face_concepts.models.base import ModelSplit
from face_concepts.models.intermediate import _rest_of_network
from face_concepts.models.modes import ensure_eval
from face_concepts.models.vit import transformer_parts

__all__ = ["ModelSplit", "split_model"]

_SIGNED_CHOICES = ("posneg", "relu")
_RELU_TYPES = (nn.ReLU, nn.ReLU6)


@dataclass
class _Parts:
    features: nn.Module
    head: nn.Module
    layer: str
    input_size: int | None = None  # the model's native input side, where it has one (ViT)


def _seq(model: nn.Module, names: Sequence[str]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))


def _vgg_parts(model: Any) -> _Parts:  # a torchvision VGG / AlexNet
    clf = model.classifier
    body = nn.Sequential(model.features, model.avgpool, nn.Flatten(1), *list(clf)[:-1])
    relus = [i for i, m in enumerate(clf) if isinstance(m, _RELU_TYPES)]
    return _Parts(Reshape4d(body), clf[-1], f"classifier.{relus[-1] if relus else len(clf) - 2}")


def _torchvision_parts(model: nn.Module) -> _Parts | None:
    from torchvision import models as tvm

    if isinstance(model, tvm.ResNet):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return _Parts(_seq(model, names), model.fc, "layer4")
    if isinstance(model, (tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet)):
        return _Parts(model.features, model.classifier, "features")
    if isinstance(model, tvm.DenseNet):
        # DenseNet.forward applies F.relu after norm5; without it the map would be signed
        return _Parts(nn.Sequential(model.features, nn.ReLU()), model.classifier, "features")
    if isinstance(model, tvm.VGG):
        return _vgg_parts(model)
    if isinstance(model, tvm.ConvNeXt):
        return _Parts(model.features, OnMap(model.classifier), "features")
    if isinstance(model, tvm.RegNet):
        return _Parts(_seq(model, ["stem", "trunk_output"]), model.fc, "trunk_output")
    if isinstance(model, tvm.ShuffleNetV2):
        names = ["conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"]
        return _Parts(_seq(model, names), model.fc, "conv5")
    if isinstance(model, tvm.MNASNet):
        return _Parts(model.layers, model.classifier, "layers")
    return None


def _transformer_parts(model: nn.Module) -> _Parts | None:
    found = transformer_parts(model)
    return None if found is None else _Parts(*found)


def _timm_parts(model: Any) -> _Parts | None:  # any model; timm's methods when it has them
    if not (type(model).__module__.startswith("timm.") and hasattr(model, "forward_head")):
        return None
    pool_type = getattr(getattr(model, "global_pool", None), "pool_type", "avg")
    if pool_type != "avg":
        raise TypeError(
            f"timm model {type(model).__name__} uses global pool {pool_type!r}, not the mean; "
            "build an explicit ModelSplit(features, head, pool=...)"
        )
    head: nn.Module = TimmHead(model)
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    p = getattr(model, "num_features", None)
    if isinstance(clf, nn.Module) and isinstance(p, int):
        # Prefer the bare classifier when it equals forward_head on pooled vectors: then an
        # affine head exposes (V, b). Checked numerically, since some heads add norms/MLPs.
        a = torch.rand((2, p), generator=torch.Generator().manual_seed(0)).to(_device_of(model))
        with torch.inference_mode():
            if torch.equal(clf(a), head(a)):
                head = clf
    return _Parts(TimmFeatures(model), head, "forward_features")


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _check_layer(model: nn.Module, layer: str) -> None:
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(map(repr, close))}" if close else f"first names: {names[:8]}"
    raise unknown_layer_error(model, layer, names, hint)


def split_model(
    model: nn.Module,
    layer: str | None = None,
    *,
    preprocess: Preprocess | None = None,
    categories: Sequence[str] | None = None,
    verify: bool = True,
    check_non_negative: bool = False,
    signed: str | None = None,
    input_size: int | None = None,
    name: str | None = None,
    tol: float = 1e-4,
) -> ModelSplit:
    """Split ``model`` into features → mean pool → head (see the module docstring for families).

    Parameters
    ----------
    model : nn.Module
        A torchvision or timm classifier (put in eval mode by this call).
    layer : str or None
        ``None`` (or the family's default name) for the verified last-map split; another
        module name for an approximate intermediate split.
    preprocess, categories, name : optional
        Recorded on the split (from the weights' metadata; see :func:`load_model`).
    verify : bool
        Check ``head(pool(features(x))) == model(x)`` within ``tol`` on a seeded probe batch.
    check_non_negative : bool
        Refuse a layer with negative activations on the probe batch (ValueError). Default
        False: a signed layer is kept and gets the signed concept bank.
    signed : None, "posneg" or "relu"
        What to do when the layer is signed (applied only then): None keeps it signed (the
        signed concept bank); see the module docstring.
    input_size : int or None
        Probe side; defaults to ``preprocess.crop_size``, else 224.

    Examples
    --------
    >>> import torchvision
    >>> split = split_model(torchvision.models.resnet18().eval(), input_size=64)
    >>> split.layer, split.n_features, split.is_affine
    ('layer4', 512, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if signed is not None:
        check_choice(signed, "signed", _SIGNED_CHOICES)
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str) or None, got {type(layer).__name__}")
    ensure_eval(model, "the model given to split_model")
    parts = _torchvision_parts(model) or _transformer_parts(model) or _timm_parts(model)
    if input_size is None and parts is not None and parts.input_size is not None:
        if preprocess is None or preprocess.crop_size is None:
            input_size = parts.input_size  # a ViT accepts only its own image size
    common: dict[str, Any] = {
        "preprocess": preprocess,
        "name": name,
        "categories": categories,
        "model": model,
        "input_size": input_size,
    }
    split = _make_split(model, layer, parts, common, tol)
    if categories is not None and len(categories) != split.n_classes:
        raise ValueError(
            f"categories has {len(categories)} names but the model has {split.n_classes} classes"
        )
    split, diff = _check_sign_and_verify(split, signed, check_non_negative, verify, tol)
    if not split.exact:
        split.approximation = _approximation(split, diff)
        warnings.warn(split.approximation, ApproximateSplitWarning, stacklevel=2)
    return split


def _make_split(
    model: nn.Module, layer: str | None, parts: _Parts | None, common: dict[str, Any], tol: float
) -> ModelSplit:
    """The split at the family's last map (``parts``), or at an intermediate ``layer`` with the
    rest of the network as its head."""
    if layer is None or (parts is not None and layer == parts.layer):
        if parts is None:
            raise no_head_error(
                model,
                "torchvision ResNet, MobileNetV2/V3, EfficientNet, DenseNet, VGG, ConvNeXt, "
                "RegNet, ShuffleNetV2, MNASNet, ViT, Swin; timm CNNs, ViT, DeiT, Swin",
            )
        return ModelSplit(parts.features, parts.head, layer=parts.layer, **common)
    _check_layer(model, layer)
    features = Truncated(model, layer)
    probe = ModelSplit(features, nn.Identity(), **common).probe(1)
    with torch.inference_mode():
        fmap = features(probe)
    head, exact = _rest_of_network(model, layer, probe, tuple(fmap.shape[1:]), tol)
    return ModelSplit(features, head, layer=layer, exact=exact, **common)


def _check_sign_and_verify(
    split: ModelSplit, signed: str | None, check_non_negative: bool, verify: bool, tol: float
) -> tuple[ModelSplit, float | None]:
    """Apply ``signed`` / ``check_non_negative`` to a signed layer and verify the split on one
    probe forward; return the split and its measured difference (None when not measured)."""
    probe = split.probe()
    with torch.inference_mode():
        fmap = split.features(probe)
    diff = None
    if fmap.min() < 0 and (signed is not None or check_non_negative):
        split = _signed_split(split, signed, float(fmap.min()))
        if verify or not split.exact:
            diff = split.verify(probe, tol=tol)
    elif verify or not split.exact:
        with torch.inference_mode():
            diff = split._compare(probe, split.head(split._pool(fmap)), tol)
    return split, diff


class ApproximateSplitWarning(UserWarning):
    """The split does not reproduce the model (intermediate layer, or ``signed="relu"``)."""


def check_fidelity(
    split: Any,
    x: torch.Tensor,
    A: torch.Tensor | None = None,
    batch_size: int = 32,
    *,
    head: Any = None,
    what: str = "fitting images",
) -> dict[str, Any] | None:
    """For a split that is not the model (an intermediate layer, ``signed="relu"``): how often
    its head agrees with the model on the images ``x`` (:meth:`ModelSplit.fidelity`), said in an
    :class:`ApproximateSplitWarning` (which the atlas shows too) and returned; None for an exact
    split or one without its model. The explainer records it as ``fit_info_["split_fidelity"]``,
    and for native-size crops (``head``: the head for their size, ``what="fitting crops"``) as
    ``fit_info_["split_fidelity_crops"]``.
    """
    if getattr(split, "exact", True) or getattr(split, "model", None) is None:
        return None
    fid = split.fidelity(x, A, batch_size=batch_size, head=head)
    k, n = round(fid["agreement"] * fid["n_images"]), fid["n_images"]
    warnings.warn(
        f"approximate split: on the {n} {what} the head's top-1 class on pooled "
        f"activations is the model's on {k} ({100 * fid['agreement']:.0f} %), mean "
        f"KL(model ‖ head) = {fid['kl']:.3g}; the concepts keep the head's prediction, which is "
        "only as faithful to the model as this",
        ApproximateSplitWarning,
        stacklevel=3,
    )
    return fid


def _approximation(split: ModelSplit, diff: float | None) -> str:
    """One sentence: how the split differs from the model, with the measured difference."""
    where = f"layer {split.layer!r} of {split.name or type(split.model).__name__}"
    head = split.head.head if isinstance(split.head, PosNegHead) else split.head
    reasons = []
    if isinstance(head, RestOfNetwork):
        size = "×".join(map(str, head.map_size))
        reasons.append(
            "it is an intermediate layer, so its head runs the rest of the network on a "
            f"constant {size} map equal to the pooled activations (for a native-size crop, "
            "a constant map of the crop's own size at this layer; the model sees a map that "
            "varies across space)"
        )
    if split.transform == "relu":
        reasons.append("it is signed and signed='relu' clips it, so the head sees relu(f)")
    measured = (
        f"; on a probe batch max |model(x) - head(pool(features(x)))| = {diff:.3g} (logits)"
        if diff is not None
        else ""
    )
    return (
        f"approximate split: {where} does not reproduce the model: {'; '.join(reasons)}{measured}"
    )


def _signed_split(split: ModelSplit, signed: str | None, minimum: float) -> ModelSplit:
    if signed is None:
        assert split.model is not None and split.layer is not None  # split_model sets both
        raise signed_layer_error(split.model, split.layer, minimum, split.probe())
    features: nn.Module
    head: nn.Module
    if signed == "posneg":
        features, head, exact = PosNegFeatures(split.features), PosNegHead(split.head), split.exact
    else:
        features, head, exact = ReluFeatures(split.features), split.head, False
    return ModelSplit(
        features,
        head,
        preprocess=split.preprocess,
        name=split.name,
        layer=split.layer,
        categories=split.categories,
        model=split.model,
        input_size=split.input_size,
        exact=exact,
        transform=signed,
    )
