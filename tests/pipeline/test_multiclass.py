"""Shared concept banks (one W for several classes) and per-class many-class runs.

Oracles: the shared fit is FACE on the concatenated rows of every class (same W, and its
objective is the docs/method.md §2.1 objective written out with the KL over the *full* softmax);
per-class importance is Sobol on that class's codes for that class's logit; per-class mode
gives exactly the banks of separate ``ConceptExplainer`` fits.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import _tiny
from face_concepts import ConceptExplainer
from face_concepts.decomposition import FACE, encode
from face_concepts.importance import sobol_indices
from face_concepts.models import ModelSplit
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.classes import ClassJob, fit_classes
from face_concepts.pipeline.executors import LocalExecutor
from face_concepts.pipeline.shared import CLASSES_DIR, SharedConceptExplainer, class_run_name
from face_concepts.report import ModelCache, build_report, find_runs
from face_concepts.report.shared import importance_shares

TINY = "test:multi"
SETTINGS = {"n_concepts": 3, "patch_size": 8, "n_designs": 8, "max_iter": 25, "random_state": 0}
# The shared objective recomputed by hand (float32 rows, float64 sums) vs the solver's value.
OBJECTIVE_REL = 1e-4
# Importance is printed with 3 decimals in the atlas.
PRINTED_ABS = 5e-4


def tiny_split() -> ModelSplit:
    return _tiny.tiny_split(TINY, seed=3, n_classes=4)


def class_images(seed: int, n: int = 5) -> torch.Tensor:
    return torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def split() -> ModelSplit:
    return tiny_split()


@pytest.fixture(scope="module")
def data() -> dict[int, torch.Tensor]:
    return {0: class_images(10), 2: class_images(12, 4)}


def _quiet_fit(obj, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 25-iteration budget may stop before tol
        return obj.fit(*args)


@pytest.fixture(scope="module")
def shared(split, data) -> SharedConceptExplainer:
    return _quiet_fit(SharedConceptExplainer(split, progress=False, **SETTINGS), data)


def _rows(split, x, c):
    return ConceptExplainer(split, progress=False, **SETTINGS)._prepare_fit(x, c)["rows"]


# ----------------------------------------------------------------------------- shared bank
def test_shared_fit_is_face_on_the_concatenated_rows(shared, split, data):
    rows = torch.cat([_rows(split, x, c) for c, x in data.items()])
    face = FACE(split.head, 3, kl_weight=1.0, max_iter=25, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        U = face.fit_transform(rows)
    assert shared.concept_bank_.shape == (3, 6)
    torch.testing.assert_close(shared.concept_bank_, face.concept_bank_, rtol=0, atol=0)
    torch.testing.assert_close(shared.row_codes_, U, rtol=0, atol=0)
    assert (
        shared.row_class_.tolist()
        == [0] * _rows(split, data[0], 0).shape[0] + [2] * _rows(split, data[2], 2).shape[0]
    )


def test_shared_objective_has_the_kl_over_the_full_softmax(shared, split, data):
    rows = torch.cat([_rows(split, x, c) for c, x in data.items()]).double()
    U, W = shared.row_codes_.double(), shared.concept_bank_.double()
    head64 = nn.Linear(6, 4).double()
    head64.load_state_dict({k: v.double() for k, v in split.head.state_dict().items()})
    with torch.no_grad():
        P = torch.softmax(head64(rows), dim=1)  # the model's own prediction on A: all 4 classes
        log_q = torch.log_softmax(head64(U @ W), dim=1)
    kl = float((P * (P.log() - log_q)).sum(dim=1).mean())
    mse = float(((rows - U @ W) ** 2).mean())
    expected = mse + 1.0 * kl
    assert shared.fit_info_["objective"] == pytest.approx(expected, rel=OBJECTIVE_REL)
    assert kl > 0  # the KL term is not vacuous on this data


def test_per_class_importance_is_sobol_for_that_class(shared, split, data):
    imp = shared.importance()
    assert imp.shape == (2, 3) and shared.classes_ == [0, 2]
    W = shared.concept_bank_
    for row, (c, x) in zip(imp, data.items()):
        with torch.no_grad():
            A = split.pooled(x)
        codes = encode(A, W, split.head, kl_weight=1.0)
        expected = sobol_indices(codes, W, split.head, c, n_designs=8).mean(0)
        torch.testing.assert_close(row, expected)
        torch.testing.assert_close(shared.explainer(c).image_codes_, codes)
    assert not torch.allclose(imp[0], imp[1])  # relative to each class's own logit


def test_per_class_metrics_use_the_shared_bank(shared, data):
    reports = shared.evaluate()
    held = shared.evaluate({2: class_images(99, 3)})
    assert sorted(reports) == [0, 2] and list(held) == [2]
    assert held[2].to_dict()["n_images"] == 3
    for c, rep in reports.items():
        assert rep.to_dict()["n_images"] == data[c].shape[0]
        assert shared.explainer(c).concept_bank_ is not None
        torch.testing.assert_close(shared.explainer(c).concept_bank_, shared.concept_bank_)


def test_shared_save_load_and_find_runs(shared, split, tmp_path):
    metrics = {c: {"fit": rep.to_dict()} for c, rep in shared.evaluate().items()}
    out = shared.save(tmp_path / "shared", metrics=metrics)
    bank = ConceptBank.load(out)
    assert bank.metadata["shared"] is True
    torch.testing.assert_close(bank.W, shared.concept_bank_)
    torch.testing.assert_close(bank.tensors["class_importance"], shared.importance())
    torch.testing.assert_close(bank.importance, shared.importance().mean(0))
    assert [c["class_id"] for c in bank.metadata["classes"]] == [0, 2]
    # Each class's run is an ordinary run, with the shared W and its own importance.
    sub = ConceptExplainer.load(out / CLASSES_DIR / class_run_name(2, "cat"), split=split)
    torch.testing.assert_close(sub.concept_bank_, shared.concept_bank_)
    torch.testing.assert_close(sub.importance(), shared.importance()[1])
    again = SharedConceptExplainer.load(out, split=split)
    torch.testing.assert_close(again.importance(), shared.importance())
    assert find_runs(tmp_path) == [out]  # the class runs are part of the shared one


def test_shared_bad_inputs(split, shared, tmp_path):
    with pytest.raises(ValueError, match="images_by_class"):
        SharedConceptExplainer(split).fit({})
    with pytest.raises(RuntimeError, match="not fitted"):
        SharedConceptExplainer(split).importance()
    with pytest.raises(ValueError, match="class_id must be one of"):
        shared.explainer(3)
    with pytest.raises(ValueError, match="method"):
        SharedConceptExplainer(split, "pca", progress=False).fit({0: class_images(1)})
    with pytest.raises(ValueError, match="not a shared bank"):
        path = ConceptBank({"W": torch.ones(2, 6)}, {"config": {}}).save(tmp_path / "one")
        SharedConceptExplainer.load(path, split=split)


# ----------------------------------------------------------------------------- per-class mode
def test_per_class_mode_equals_separate_fits(split, data, tmp_path):
    jobs = [ClassJob(c, x, heldout=class_images(50 + c, 2)) for c, x in data.items()]
    results = _quiet_fit_classes(split, jobs, tmp_path)
    assert [r["class_id"] for r in results] == [0, 2]
    assert torch.get_num_threads() == 1  # what every executor runs a task with
    for r, (c, x) in zip(results, data.items()):
        ex = _quiet_fit(ConceptExplainer(split, progress=False, **SETTINGS), x, c)
        saved = ConceptExplainer.load(r["run_dir"], split=split)
        torch.testing.assert_close(saved.concept_bank_, ex.concept_bank_, rtol=0, atol=0)
        torch.testing.assert_close(saved.importance(), ex.importance(), rtol=0, atol=0)
        assert r["importance"] == ex.importance().tolist()
        assert set(r["metrics"]) == {"fit", "heldout"}


def _quiet_fit_classes(split, jobs, out, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_classes(split, jobs, out, settings=SETTINGS, executor=LocalExecutor(), **kwargs)


def test_fit_classes_bad_inputs(split, tmp_path):
    with pytest.raises(ValueError, match="non-empty list of ClassJob"):
        fit_classes(split, [], tmp_path, settings=SETTINGS)
    x = class_images(1)
    with pytest.raises(ValueError, match="distinct"):
        fit_classes(split, [ClassJob(0, x), ClassJob(0, x)], tmp_path, settings=SETTINGS)
    with pytest.raises(ValueError, match="method must be one of"):
        fit_classes(split, [ClassJob(0, x)], tmp_path, settings={**SETTINGS, "method": "pca"})


# ----------------------------------------------------------------------------- the atlas
def _cells(html: str, table_class: str) -> list[list[str]]:
    table = re.search(rf'<table class="{table_class}">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for row in rows]


def test_atlas_of_a_shared_bank_and_per_class_runs(split, data, tmp_path):
    jobs = [ClassJob(c, x) for c, x in data.items()]
    _quiet_fit_classes(split, jobs, tmp_path, shared=True)
    _quiet_fit_classes(split, jobs[:1], tmp_path / "own")
    cache = ModelCache()
    cache.put(split, TINY, None, None)
    html = build_report(tmp_path, cache=cache).read_text(encoding="utf-8")
    assert html.count('<article class="run') == 2  # shared bank once + one per-class run
    assert html.count('<article class="run shared"') == 1
    bank = ConceptBank.load(tmp_path / "shared")
    imp = bank.tensors["class_importance"]
    rows = _cells(html, "class-importance")
    assert [r[0] for r in rows] == ["0 ant", "2 cat"]
    order = torch.argsort(bank.importance, descending=True, stable=True).tolist()
    shown = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(shown, imp[:, order].numpy(), atol=PRINTED_ABS)
    assert len(_cells(html, "class-metrics")) == 2
    # The shared concepts appear once each, with a line of per-class importance.
    assert html.count('class="class-line"') == 3
    assert "Importance of each shared concept for each class" in html
    assert "model not loaded" not in html  # the cached tiny model drew the heatmaps
    assert html.count('class="heat"') > 0


def test_importance_shares_rows_sum_to_one():
    imp = torch.rand(3, 5, generator=torch.Generator().manual_seed(0))
    share = importance_shares(imp)
    torch.testing.assert_close(share.sum(1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(share, imp.double() / imp.double().sum(1, keepdim=True))
