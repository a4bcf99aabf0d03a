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
============================  ======================================  ==========================

VGG is the exception: its head is ``AdaptiveAvgPool2d(7)`` → flatten → classifier, so no mean
pool of a conv map feeds it; the only exact split with a mean pool is inside the classifier
(the 4096-d output of the second ReLU, viewed as a 1×1 map; the head is the last Linear).

Signed layers (MobileNetV3, EfficientNet, ConvNeXt) are refused by default, because NMF needs
``A ≥ 0``. Opt in with ``signed="posneg"`` (exact: the map ``f`` becomes ``[relu(f), relu(-f)]``,
p doubles, and the head takes the difference) or ``signed="relu"`` (approximate: the head sees
``relu(f)``, so the split no longer equals the model).

Intermediate layers (``layer="layer3"``) are approximate by nature: the rest of the network
needs a spatial map, not a pooled vector. The head then runs the rest of the network on a map
whose every position equals the pooled vector (at the layer's natural spatial size for the
probe input). ``verify`` reports, but does not enforce, the difference for such splits.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from face_concepts._validation import check_choice
from face_concepts.data.preprocess import Preprocess
from face_concepts.models._advice import signed_layer_error, unknown_layer_error
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

__all__ = ["ModelSplit", "split_model"]

_SIGNED_CHOICES = ("posneg", "relu")
_RELU_TYPES = (nn.ReLU, nn.ReLU6)


@dataclass
class _Parts:
    features: nn.Module
    head: nn.Module
    layer: str


def _seq(model: nn.Module, names: Sequence[str]) -> nn.Sequential:
    return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))


def _vgg_parts(model: nn.Module) -> _Parts:
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


def _timm_parts(model: nn.Module) -> _Parts | None:
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
    check_non_negative: bool = True,
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
        Refuse a layer with negative activations on the probe batch (ValueError).
    signed : None, "posneg" or "relu"
        What to do when the layer is signed (applied only then): see the module docstring.
    input_size : int or None
        Probe side; defaults to ``preprocess.crop_size``, else 224.

    Examples
    --------
    >>> import torchvision
    >>> split = split_model(torchvision.models.resnet18(), input_size=64)
    >>> split.layer, split.n_features, split.is_affine
    ('layer4', 512, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if signed is not None:
        check_choice(signed, "signed", _SIGNED_CHOICES)
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str) or None, got {type(layer).__name__}")
    model.eval()
    parts = _torchvision_parts(model) or _timm_parts(model)
    common = {
        "preprocess": preprocess,
        "name": name,
        "categories": categories,
        "model": model,
        "input_size": input_size,
    }
    if layer is None or (parts is not None and layer == parts.layer):
        if parts is None:
            raise TypeError(
                f"no default split for {type(model).__name__} (supported: torchvision ResNet, "
                "MobileNetV2/V3, EfficientNet, DenseNet, VGG, ConvNeXt, RegNet, ShuffleNetV2, "
                "MNASNet, timm CNNs); pass layer=<module name> or build ModelSplit(features, head)"
            )
        split = ModelSplit(parts.features, parts.head, layer=parts.layer, **common)
    else:
        _check_layer(model, layer)
        features = Truncated(model, layer)
        probe = ModelSplit(features, nn.Identity(), **common).probe(1)
        with torch.inference_mode():
            size = tuple(features(probe).shape[-2:])
        head = RestOfNetwork(model, layer, tuple(probe.shape[1:]), size)
        split = ModelSplit(features, head, layer=layer, exact=False, **common)
    if categories is not None and len(split.categories) != split.n_classes:
        raise ValueError(
            f"categories has {len(split.categories)} names but the model has {split.n_classes} classes"
        )
    # one probe forward serves both the sign check and the verification
    probe = split.probe()
    with torch.inference_mode():
        fmap = split.features(probe)
    if fmap.min() < 0 and (signed is not None or check_non_negative):
        split = _signed_split(split, signed, float(fmap.min()))
        if verify:
            split.verify(probe, tol=tol)
    elif verify:
        with torch.inference_mode():
            split._compare(probe, split.head(split._pool(fmap)), tol)
    return split


def _signed_split(split: ModelSplit, signed: str | None, minimum: float) -> ModelSplit:
    if signed is None:
        raise signed_layer_error(split.model, split.layer, minimum, split.probe())
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
