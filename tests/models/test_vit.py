"""Vision transformers: splits reproduce the model (torchvision ViT and Swin, timm ViT, DeiT, Swin),
the map's positions are the patches, and the whole pipeline runs on a tiny ViT.

Token activations are signed: until the signed concept bank is the default, fits use
``signed="posneg"`` (exact: ``[relu(f), relu(-f)]``, the head takes the difference).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
import timm.models.deit as timm_deit  # timm is in requirements-dev.txt
import timm.models.swin_transformer as timm_swin
import timm.models.vision_transformer as timm_vit
import torch
import torchvision
from torch import nn

from face_concepts.apps.benchmark import sources
from face_concepts.data.idx import fashion_mnist
from face_concepts.data.patches import resize_patches
from face_concepts.models import ModelSplit, split_model

SIDE, PATCH = 32, 8  # a 4×4 grid of patch tokens
GRID = SIDE // PATCH


def _seeded(build, seed: int = 0) -> nn.Module:
    """``build()`` with torch's global RNG seeded and restored; eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
        # torchvision zero-initialises the classifier (all logits 0): draw it too
        heads = getattr(model, "heads", None)
        if heads is not None:
            nn.init.normal_(heads.head.weight, std=0.5)
            nn.init.normal_(heads.head.bias, std=0.5)
    return model.eval()


def tiny_vit(num_layers: int = 1, seed: int = 0) -> nn.Module:
    """The brief's tiny torchvision ViT: 32-px input, 8-px patches, one block, 16-d tokens."""
    return _seeded(
        lambda: torchvision.models.VisionTransformer(
            image_size=SIDE, patch_size=PATCH, num_layers=num_layers, hidden_dim=16, mlp_dim=32,
            num_heads=2, num_classes=10,
        ),
        seed,
    )  # fmt: skip


def _timm(**kwargs) -> nn.Module:
    base = dict(img_size=SIDE, patch_size=PATCH, embed_dim=16, depth=1, num_heads=2, num_classes=10)
    return _seeded(lambda: timm_vit.VisionTransformer(**{**base, **kwargs}))


def _x(n: int = 3, side: int = SIDE, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, 3, side, side), generator=torch.Generator().manual_seed(seed))


def _tokens_after_norm(model: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of the final norm, recorded by a hook on the model's own forward (the oracle)."""
    seen = []
    handle = norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def _check_exact(split: ModelSplit, model: nn.Module, x: torch.Tensor, tol: float) -> torch.Tensor:
    """head(mean(map)) == model(x), and A Vᵀ + b == model(x) for affine heads; returns the map."""
    with torch.no_grad():
        ref, fmap = model(x), split.features(x)
        A = fmap.mean(dim=(2, 3))
        torch.testing.assert_close(split.head(A), ref, atol=tol, rtol=0)
        if split.is_affine:
            V, b = split.affine
            torch.testing.assert_close(A @ V.T + b, ref, atol=tol, rtol=0)
    assert split.verify(tol=tol) <= tol
    return fmap


def _grid(tokens: torch.Tensor) -> torch.Tensor:
    """(n, h·w, d) patch tokens → (n, d, h, w), row-major like the patch embedding."""
    n, hw, d = tokens.shape
    side = round(hw**0.5)
    return tokens.transpose(1, 2).reshape(n, d, side, side)


# --------------------------------------------------------------------------- splits
def test_torchvision_vit_map_has_the_class_token_as_its_mean(tol):
    model = tiny_vit()
    split = split_model(model, signed="posneg")
    assert (split.layer, split.probe_size, split.n_features, split.is_affine) == (
        "encoder.ln",
        SIDE,  # the model's own image size, not 224
        32,  # posneg: 2 × 16
        True,
    )
    raw = split.features.features  # the signed map under the posneg transform
    x = _x()
    fmap = raw(x)
    tokens = _tokens_after_norm(model, model.encoder.ln, x)
    cls, patches = tokens[:, 0], tokens[:, 1:]
    # oracle: position j is the class token plus patch j's deviation from the mean patch token
    expected = _grid(patches - patches.mean(1, keepdim=True) + cls[:, None])
    # (float32, the oracle's sums in another order: a few ulps of values near 10)
    torch.testing.assert_close(fmap, expected, atol=4e-6, rtol=1e-6)
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), cls, atol=1e-6, rtol=0)
    _check_exact(split, model, x, tol["split_logits"])
    with torch.no_grad():  # the head is the model's own classifier on the class token
        torch.testing.assert_close(model.heads(cls), model(x), atol=tol["split_logits"], rtol=0)


@pytest.mark.slow  # 86 M parameters to initialise: ~10 s
def test_torchvision_vit_b_16_other_sizes_split_exactly(tol):
    model = _seeded(lambda: torchvision.models.vit_b_16(image_size=64))
    split = split_model(model, signed="posneg")
    assert split.layer == "encoder.ln" and split.n_features == 2 * 768 and split.is_affine
    fmap = _check_exact(split, model, _x(2, 64), tol["split_logits"])
    assert fmap.shape == (2, 2 * 768, 4, 4)


def test_torchvision_vit_with_a_pre_logits_layer_gets_a_non_affine_exact_head(tol):
    model = _seeded(
        lambda: torchvision.models.VisionTransformer(
            image_size=SIDE, patch_size=PATCH, num_layers=1, hidden_dim=16, mlp_dim=32,
            num_heads=2, num_classes=10, representation_size=8,
        )
    )  # fmt: skip
    split = split_model(model, signed="posneg")
    assert not split.is_affine  # Linear → Tanh → Linear: the head goes through autograd
    _check_exact(split, model, _x(), tol["split_logits"])


@pytest.mark.parametrize(
    ("kwargs", "read", "affine"),
    [
        ({"global_pool": "token"}, "token", True),  # ViT / DeiT (non-distilled) style
        ({"global_pool": "token", "fc_norm": True}, "token", False),
        ({"global_pool": "avg"}, "patches", False),  # fc_norm by default with avg
        ({"global_pool": "avg", "fc_norm": False}, "patches", True),
        ({"global_pool": "avg", "class_token": False, "fc_norm": False}, "patches", True),
        ({"global_pool": "token", "reg_tokens": 2}, "token", True),
        ({"global_pool": "avg", "pool_include_prefix": True, "fc_norm": False}, "all", True),
    ],
)
def test_timm_vit_heads_split_exactly(kwargs, read, affine, tol):
    model = _timm(**kwargs)
    split = split_model(model, signed="posneg")
    assert split.layer == "norm" and split.probe_size == SIDE and split.is_affine is affine
    assert split.features.features.read == read
    x = _x()
    fmap = split.features.features(x)
    tokens = _tokens_after_norm(model, model.norm, x)
    patches = tokens[:, model.num_prefix_tokens :]
    if read == "patches":  # the model averages the patch tokens itself: the map is them
        expected = _grid(patches)
    elif read == "all":  # the model averages every token, the class token included
        expected = _grid(patches - patches.mean(1, keepdim=True) + tokens.mean(1, keepdim=True))
    else:
        expected = _grid(patches - patches.mean(1, keepdim=True) + tokens[:, :1])
    torch.testing.assert_close(fmap, expected, atol=1e-6, rtol=0)
    _check_exact(split, model, x, tol["split_logits"])


def test_timm_deit_distilled_averages_both_heads(tol):
    model = _seeded(
        lambda: timm_deit.VisionTransformerDistilled(
            img_size=SIDE, patch_size=PATCH, embed_dim=16, depth=1, num_heads=2, num_classes=10
        )
    )
    split = split_model(model, signed="posneg")
    assert split.n_features == 2 * 2 * 16 and split.is_affine  # [cls; dist] maps, then posneg
    x = _x()
    A = split.features.features(x).mean(dim=(2, 3))
    tokens = _tokens_after_norm(model, model.norm, x)
    torch.testing.assert_close(A, torch.cat([tokens[:, 0], tokens[:, 1]], 1), atol=1e-6, rtol=0)
    with torch.no_grad():  # oracle: DeiT's eval logits, written out
        ref = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
    torch.testing.assert_close(ref, model(x), atol=1e-6, rtol=0)
    _check_exact(split, model, x, tol["split_logits"])


def test_timm_swin_splits_exactly(tol):
    timm_model = _seeded(
        lambda: timm_swin.SwinTransformer(
            img_size=SIDE, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
            num_heads=(1, 2), num_classes=10,
        )
    )  # fmt: skip
    split = split_model(timm_model, signed="posneg")
    assert split.layer == "norm" and split.is_affine and split.probe_size == SIDE
    x = _x()
    fmap = _check_exact(split, timm_model, x, tol["split_logits"])
    nhwc = _tokens_after_norm(timm_model, timm_model.norm, x)
    assert fmap.shape == (3, 2 * 32, 4, 4)
    torch.testing.assert_close(split.features.features(x), nhwc.permute(0, 3, 1, 2))


@pytest.mark.slow  # 28 M parameters
def test_torchvision_swin_t_splits_exactly(tol):
    tv_model = _seeded(torchvision.models.swin_t)
    split = split_model(tv_model, signed="posneg", input_size=64)
    assert split.layer == "norm" and split.is_affine and split.n_features == 2 * 768
    _check_exact(split, tv_model, _x(1, 64), tol["split_logits"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_pool": "max"}, r"global_pool='max'.*ModelSplit\(features, head"),
        ({"global_pool": "map", "class_token": False}, r"attention pool.*ModelSplit\(features"),
    ],
)
def test_pools_that_are_no_mean_nor_token_are_refused_in_one_line(kwargs, match):
    with pytest.raises(TypeError, match=match) as err:
        split_model(_timm(**kwargs), signed="posneg")
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "p", "grid"),
    [
        ("timm:vit_tiny_patch16_224", 192, 14),
        ("timm:deit_tiny_distilled_patch16_224", 2 * 192, 14),
        ("timm:swin_tiny_patch4_window7_224", 768, 7),
    ],
)
def test_timm_architectures_load_and_split_exactly(spec, p, grid, tol):
    """The real timm architectures (untrained, seeded: no download) through load_model."""
    from face_concepts.models import load_model

    split = load_model(spec, weights="random", signed="posneg")
    assert split.n_features == 2 * p and split.is_affine and split.preprocess.crop_size == 224
    fmap = _check_exact(split, split.model, _x(1, 224), tol["split_logits"])
    assert fmap.shape[2:] == (grid, grid)


# --------------------------------------------------------------------------- token maps
def test_map_positions_are_the_patches():
    """With no block (no attention), patch (i, j)'s pixels move map position (i, j) only."""
    x = _x(1)
    y = x.clone()
    y[..., PATCH * 1 : PATCH * 2, PATCH * 2 : PATCH * 3] += 1.0  # the pixels of patch (1, 2)
    avg = split_model(_timm(depth=0, global_pool="avg", class_token=False), signed="posneg")
    with torch.no_grad():
        delta = (avg.features.features(y) - avg.features.features(x)).abs().amax(1)[0]
    assert delta[1, 2] > 1e-3 and torch.count_nonzero(delta > 1e-6) == 1
    # class-token map: the other positions all move by the same vector (the mean patch token)
    tok = split_model(tiny_vit(num_layers=0), signed="posneg").features.features
    with torch.no_grad():
        d = (tok(y) - tok(x))[0].flatten(1)  # (p, h·w)
    others = torch.cat([d[:, : 1 * GRID + 2], d[:, 1 * GRID + 3 :]], 1)
    torch.testing.assert_close(others, others[:, :1].expand_as(others), atol=1e-6, rtol=0)
    assert (d[:, 1 * GRID + 2] - others[:, 0]).abs().max() > 1e-3


def test_other_input_sizes_are_resized_like_craft_crops():
    split = split_model(tiny_vit(), signed="posneg")
    crop = _x(2, 16)
    with torch.no_grad():
        got = split.features(crop)
        ref = split.features(resize_patches(crop, SIDE))
    assert got.shape == (2, 32, GRID, GRID)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


# --------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def vit_split() -> ModelSplit:
    from face_concepts.data.preprocess import Preprocess

    split = split_model(
        tiny_vit(), signed="posneg", name="test:tiny_vit",
        preprocess=Preprocess(resize_size=SIDE, crop_size=SIDE),
        categories=[f"c{i}" for i in range(10)],
    )  # fmt: skip
    return split


def _class_images(split: ModelSplit, n: int = 8) -> tuple[torch.Tensor, int]:
    """Seeded images, and the class the model predicts most often on them."""
    x = torch.randn((4 * n, 3, SIDE, SIDE), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = split.model(x).argmax(1)
    c = int(pred.mode().values)
    return x[pred == c][:n], c


def test_concept_explainer_runs_end_to_end_on_a_tiny_vit(vit_split, tmp_path, monkeypatch):
    from _tiny import patch_load_model
    from face_concepts import ConceptExplainer
    from face_concepts.importance.concept_maps import input_faithful_maps
    from face_concepts.report.atlas import build_report

    x, c = _class_images(vit_split)
    assert x.shape[0] >= 4
    ex = ConceptExplainer(
        vit_split, n_concepts=3, patch_size=16, stride=8, max_iter=40, n_designs=8,
        progress=False, random_state=0,
    )  # fmt: skip
    ex.fit(x, class_id=c)
    assert ex.concept_bank_.shape == (3, vit_split.n_features)
    assert torch.isfinite(torch.as_tensor(ex.importance())).all()
    report = ex.evaluate(x[:2])
    assert report is not None
    idx, crops = ex.top_crops(k=2)
    assert idx.shape == (3, 2) and crops.shape[0] == 6 and crops.shape[-1] == 16  # native crops
    for k in range(3):  # oracle: the rows with the two largest codes of each concept
        assert set(idx[k].tolist()) == set(ex.row_codes_[:, k].topk(2).indices.tolist())
    maps = ex.concept_maps(x[:2])  # one map per concept over the 4×4 patch grid, upsampled
    assert maps.shape[:2] == (2, 3) and torch.isfinite(maps).all()
    faithful = input_faithful_maps(vit_split.features, x[:2], ex.concept_bank_)
    assert faithful.shape == (2, 3, SIDE, SIDE) and faithful.abs().sum() > 0
    explanation = ex.explain(x[0])
    assert {e["concept"] for e in explanation["concepts"]} <= {0, 1, 2}
    # ICE factorises the spatial positions: here the patch tokens
    ice = ConceptExplainer(vit_split, "ice", n_concepts=3, max_iter=40, n_designs=8, progress=False)
    ice.fit(x, class_id=c)
    assert ice.row_codes_.shape[0] == x.shape[0] * GRID * GRID
    run = ex.save(tmp_path / "run")
    patch_load_model(monkeypatch, vit_split)
    html = build_report(run, tmp_path / "atlas.html")
    assert html.is_file() and "test:tiny_vit" in html.read_text(encoding="utf-8")


def test_signed_tokens_get_the_signed_bank_by_default():
    """No ``signed=`` argument: the token map stays signed and exact, FACE fits the signed bank."""
    from face_concepts import ConceptExplainer
    from face_concepts.data.preprocess import Preprocess

    split = split_model(tiny_vit(), preprocess=Preprocess(resize_size=SIDE, crop_size=SIDE))
    assert split.transform is None and split.n_features == 16 and split.exact
    x, c = _class_images(split)
    ex = ConceptExplainer(
        split, n_concepts=3, patch_size=16, stride=8, max_iter=40, n_designs=8, progress=False
    ).fit(x, class_id=c)
    assert ex.concept_bank_.min() < 0  # signed concepts (directions)
    assert ex.row_codes_.min() >= 0  # non-negative codes
    maps = ex.concept_maps(x[:2])
    assert maps.shape[:2] == (2, 3) and torch.isfinite(maps).all()


# --------------------------------------------------------------------------- real weights
REPO = Path(__file__).resolve().parents[2]
VIT_RECORD = REPO / "benchmarks" / "results" / "fashion_mnist_vit.json"


def _vit_recipe():
    """benchmarks/train_vit_fashion_mnist.py as a module (benchmarks/ is not a package)."""
    path = REPO / "benchmarks" / "train_vit_fashion_mnist.py"
    spec = importlib.util.spec_from_file_location("_train_vit_fashion_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(sources.FASHION_MNIST_ROOT).is_dir(),
    reason="dataset-fashion-mnist not installed: apt-get install -y dataset-fashion-mnist (as root; .ci/run does it)",
)
def test_trained_fashion_mnist_vit_explains_real_images(tmp_path):
    """The recipe's checkpoint where this machine has it (its recorded hash and accuracy are
    checked), else the same recipe on 6,000 training images for two epochs (about 15 s of CPU)."""
    recipe = _vit_recipe()
    record = json.loads(VIT_RECORD.read_text(encoding="utf-8"))
    ckpt = sources.FASHION_MNIST_VIT_CHECKPOINT
    x_te, y_te = fashion_mnist(sources.FASHION_MNIST_ROOT, "test")
    if ckpt.is_file() and hashlib.sha256(ckpt.read_bytes()).hexdigest() == record["sha256"]:
        n_test, expected = len(y_te), record["test_accuracy"]  # the recorded number, all 10,000
    else:
        ckpt = tmp_path / "vit.pt"
        args = ["--out", str(ckpt), "--n-train", "6000", "--epochs", "2", "--force"]
        assert recipe.main(args) in (0, 1)  # 1: below the full recipe's promise, as expected
        n_test, expected = 2000, None
    split = sources.load_benchmark_model(f"fashion_mnist_vit:{ckpt}")
    assert split.layer == "encoder.ln" and split.probe_size == 28 and split.is_affine
    x = sources.fashion_mnist_tensor(x_te[:n_test])
    y = torch.as_tensor(y_te[:n_test]).long()
    with torch.no_grad():
        ours = torch.cat([split(b) for b in x.split(1000)])  # head(pool(features(x)))
        ref = torch.cat([split.model(b) for b in x.split(1000)])
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)  # exact on real images too
    acc = float((ours.argmax(1) == y).float().mean())
    if expected is not None:
        assert abs(acc - expected) <= 1e-4
    else:
        assert acc >= 0.5, acc  # 10 classes: chance is 0.1

    from face_concepts import ConceptExplainer

    boots = sources.fashion_mnist_tensor(x_te[y_te == 9][:40])
    with torch.no_grad():
        boots = boots[split(boots).argmax(1) == 9]
    assert boots.shape[0] >= 12
    ex = ConceptExplainer(
        split, n_concepts=4, patch_size=16, stride=12, max_iter=100, n_designs=8, progress=False
    )
    ex.fit(boots[:-6], class_id=9)
    report = ex.evaluate(boots[-6:]).to_dict()
    assert report["agreement"] >= 0.8, report  # the reconstruction keeps the prediction
    maps = ex.concept_maps(boots[-2:])
    assert maps.shape[:2] == (2, 4) and torch.isfinite(maps).all()


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(sources.FASHION_MNIST_ROOT).is_dir(),
    reason="dataset-fashion-mnist not installed: apt-get install -y dataset-fashion-mnist (as root; .ci/run does it)",
)
def test_reproduction_setting_4_runs_every_method_on_the_vit(tmp_path):
    """benchmarks/configs/fashion_mnist_vit.toml, shrunk (one class, 6 images, 10 iterations),
    on an untrained seeded ViT of the recipe's architecture: FACE, CRAFT and ICE all run."""
    from face_concepts.apps.benchmark import runner as bm

    ckpt = tmp_path / "vit.pt"
    torch.save(_seeded(sources.fashion_vit).state_dict(), ckpt)
    cfg = bm.load_config(REPO / "benchmarks" / "configs" / "fashion_mnist_vit.toml")
    assert cfg["models"] == [sources.FASHION_MNIST_VIT_SPEC]
    cfg.update(
        models=[f"{sources.FASHION_MNIST_VIT_SPEC}:{ckpt}"], classes=[9], seeds=[0],
        methods=["face", "craft", "ice"], n_views=6, n_heldout=2, max_iter=10, n_designs=4,
        n_concepts=2, stability=False, sweep_n_concepts=[], sweep_kl_weights=[],
        out_dir=str(tmp_path / "bench"),
    )  # fmt: skip
    res = bm.run_benchmark(cfg, progress=False)
    with open(res["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["method"], r["split"]) for r in rows} == {
        (m, s) for m in ("face", "craft", "ice") for s in ("fit", "heldout")
    }
    assert {r["class_name"] for r in rows} == {"Ankle boot"}
    assert all(0.0 <= float(r["agreement"]) <= 1.0 and math.isfinite(float(r["kl"])) for r in rows)
