"""kl_weight="auto" (pipeline/auto_lambda.py): the grid, warm starts, planted data, no-reach, saving."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

from _tiny import tiny_split
from face_concepts import ConceptExplainer, viz
from face_concepts.decomposition import FACE
from face_concepts.metrics import accuracy_on_reconstruction, kl_divergence, relative_l2
from face_concepts.metrics.split import train_test_split_indices
from face_concepts.pipeline import auto_lambda as al
from face_concepts.pipeline.config import ExplainerConfig
from face_concepts.report import ModelCache, build_report


def planted(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, nn.Module]:
    """Rows whose large features have rank 2 and whose class is decided by two small ones.

    With r = 2 plain NMF (λ = 0) spends its concepts on the large features and loses the sign
    of x4 − x5, which the head reads with weight ±40: only a large enough λ keeps it.
    """
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(n, 2, generator=g, dtype=torch.float64) @ (
        2 * torch.rand(2, 4, generator=g, dtype=torch.float64)
    )
    small = 0.1 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    head = nn.Linear(6, 2).double()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 4], head.weight[0, 5] = 40.0, -40.0
    return torch.cat([big, small], 1), head


def _search(A, head, r=2, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        U, W, info = al.fit_auto_kl_weight(A, torch.arange(A.shape[0]), A, head, n_concepts=r, **kw)  # fmt: skip
    return U, W, info["auto_kl_weight"], [w for w in caught if w.category is al.AutoKLWeightWarning]


def test_the_target_is_reached_on_planted_data_where_a_larger_lambda_is_needed() -> None:
    A, head = planted()
    U, W, rec, warned = _search(A, head)
    lams = [p["kl_weight"] for p in rec["points"]]
    assert lams == list(al.DEFAULT_GRID[: len(lams)])  # tried in grid order, stopped early
    assert rec["reached"] and not warned
    assert rec["chosen"] == lams[-1] > 0.0
    # Every smaller λ missed the target, the chosen one reaches it: the smallest that does.
    assert all(p["agreement"] < 0.99 for p in rec["points"][:-1])
    assert rec["points"][-1]["agreement"] >= 0.99
    assert rec["points"][0]["agreement"] < 0.6  # plain NMF loses the class here
    # The recorded held-out scores are the metrics' own, recomputed on the held-out images.
    fit_idx, held_idx = train_test_split_indices(A.shape[0], 0.2, 0)
    assert (rec["n_fit_images"], rec["n_heldout_images"]) == (len(fit_idx), len(held_idx))
    oracle = FACE(head, 2, kl_weight=0.0, tol=al.SEARCH_TOL, random_state=0)  # a screening fit
    Wf = oracle.fit(A[torch.as_tensor(fit_idx)]).concept_bank_
    Ah = A[torch.as_tensor(held_idx)]
    Uh = al.encode(Ah, Wf, head, kl_weight=0.0)
    first = rec["points"][0]
    assert first["agreement"] == accuracy_on_reconstruction(Ah, Uh, Wf, head, 0)[1]
    assert first["kl"] == pytest.approx(kl_divergence(Ah, Uh, Wf, head), rel=1e-9)
    assert first["rel_l2"] == pytest.approx(relative_l2(Ah, Uh, Wf), rel=1e-9)
    assert 0.0 <= first["certified"] <= first["agreement"]
    # The refit on all rows keeps the chosen λ's faithfulness on the whole set.
    assert accuracy_on_reconstruction(A, al.encode(A, W, head, kl_weight=rec["chosen"]), W, head, 0)[1] >= 0.95  # fmt: skip
    assert U.shape == (A.shape[0], 2)


def test_grid_is_checked_monotone() -> None:
    assert al.check_grid(al.DEFAULT_GRID) == al.DEFAULT_GRID
    assert all(b > a for a, b in zip(al.DEFAULT_GRID, al.DEFAULT_GRID[1:]))
    with pytest.raises(ValueError, match="strictly increasing"):
        al.check_grid([0.0, 1.0, 0.1])
    with pytest.raises(ValueError, match="strictly increasing"):
        al.check_grid([1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        al.check_grid([-1.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        al.check_grid([])


def test_warm_starts_each_lambda_from_the_previous_one(monkeypatch) -> None:
    A, head = planted()
    seen = []
    real = FACE.fit_transform

    def spy(self, X, y=None, *, U0=None, W0=None):
        seen.append(
            (self.kl_weight, self.init, None if W0 is None else W0.clone(), X.shape[0], self.tol)
        )
        U = real(self, X, y, U0=U0, W0=W0)
        seen[-1] += (self.concept_bank_.clone(), U.clone())  # indices 5, 6
        return U

    monkeypatch.setattr(FACE, "fit_transform", spy)
    _, _, rec, _ = _search(A, head)
    n_search = len(rec["points"])
    assert len(seen) == n_search + 1  # the search, then one refit
    assert seen[0][1] == "auto" and seen[0][2] is None  # the first λ starts cold
    for prev, cur in itertools.pairwise(seen):
        assert cur[1] == "custom"
        torch.testing.assert_close(cur[2], prev[5])  # W0 = the previous fit's bank
    assert [p["init"] for p in rec["points"]][1:] == ["custom"] * (n_search - 1)
    # The refit: all rows, at the chosen λ, from the chosen λ's bank.
    assert seen[-1][0] == rec["chosen"] and seen[-1][3] == A.shape[0]
    # Screening fits stop at SEARCH_TOL; the refit at the user's tol (None: the solver's).
    assert [t[4] for t in seen] == [al.SEARCH_TOL] * n_search + [None]
    # A warm start pays: fewer iterations than a cold fit at the same λ on the same rows.
    fit_idx, _ = train_test_split_indices(A.shape[0], 0.2, 0)
    cold = FACE(head, 2, kl_weight=rec["points"][1]["kl_weight"], tol=al.SEARCH_TOL, random_state=0)
    cold.fit(A[torch.as_tensor(fit_idx)])
    assert rec["points"][1]["n_iter"] < cold.n_iter_ + cold.n_warm_iter_


def test_no_lambda_reaches_the_target_warns_and_keeps_the_best() -> None:
    A, head = planted()
    # A grid that stops below the λ this data needs (0.1 reaches it, see the test above).
    _, _, rec, warned = _search(A, head, grid=(0.0, 1e-3, 1e-2))
    assert not rec["reached"] and len(warned) == 1
    text = str(warned[0].message)
    assert "\n" not in text and "no λ on the grid" in text and "target_agreement" in text
    assert [p["kl_weight"] for p in rec["points"]] == [0.0, 1e-3, 1e-2]  # the whole grid
    best = max(p["agreement"] for p in rec["points"])
    assert best < 0.99
    assert rec["chosen"] == min(p["kl_weight"] for p in rec["points"] if p["agreement"] == best)


def _point(lam: float, agreement: float, kl: float) -> dict:
    return {"kl_weight": lam, "agreement": agreement, "kl": kl}


def test_a_target_reached_by_one_image_against_the_kl_is_called_fragile() -> None:
    """The published MobileNetV2 cell (class 853, seed 0, r = 25; its search record in
    ``benchmarks/results/recheck_capped.md`` §6): λ = 0 … 10 agree on 2 of 3 held-out images,
    λ = 100 on 3 of 3 with the grid's highest held-out KL."""
    cell = [_point(0, 2 / 3, 1.1978), _point(0.01, 2 / 3, 0.9276), _point(0.1, 2 / 3, 0.7582),
            _point(1, 2 / 3, 0.8522), _point(10, 2 / 3, 1.1219), _point(100, 1.0, 1.4577)]  # fmt: skip
    text = al._fragile_choice(cell, 3)
    assert text is not None and "\n" not in text
    assert "λ = 100 reached held-out agreement 1.000 by one image of 3" in text
    assert "(λ = 10: 0.667)" in text and "1.46, is above the 0.758 of λ = 0.1" in text
    assert "more images" in text and "a number for kl_weight" in text
    # Not fragile: a jump of two images; or the chosen λ's KL is the lowest; or the first λ.
    assert al._fragile_choice([_point(0, 1 / 3, 0.5), _point(1, 1.0, 0.9)], 3) is None
    assert al._fragile_choice([_point(0, 2 / 3, 0.5), _point(1, 1.0, 0.4)], 3) is None
    assert al._fragile_choice([_point(0, 1.0, 0.5)], 3) is None
    # With 100 held-out images one image is 0.01: the same pattern is still one image.
    assert al._fragile_choice([_point(0, 0.98, 0.5), _point(1, 0.99, 0.6)], 100) is not None


def test_a_fragile_choice_is_kept_warned_and_recorded(monkeypatch) -> None:
    A, head = planted()
    # 60 images (one row each), 12 held out: one image is 1/12 of the agreement
    scores = iter([(10 / 12, 0.30), (11 / 12, 0.20), (1.0, 0.25)])  # λ = 0, 0.01, 0.1

    def planted_scores(*_args, **_kwargs):
        agreement, kl = next(scores)
        return {"agreement": agreement, "certified": 0.0, "kl": kl, "rel_l2": 0.1}

    monkeypatch.setattr(al, "heldout_scores", planted_scores)
    _, _, rec, warned = _search(A, head)
    assert rec["reached"] and rec["chosen"] == 0.1  # the rule's choice is kept
    assert len(warned) == 1 and "fragile" in str(warned[0].message)
    assert rec["fragile"] == str(warned[0].message)
    assert rec["n_heldout_images"] == 12 and rec["heldout_step"] == pytest.approx(1 / 12)
    assert "by one image of 12 (λ = 0.01: 0.917)" in rec["fragile"]
    monkeypatch.undo()
    _, _, plain, none = _search(A, head)  # the real scores: nothing fragile
    assert plain["fragile"] is None and not none


def test_a_fragile_choice_reaches_the_explainers_warnings_and_the_page(tmp_path, monkeypatch):
    split = tiny_split("test:auto")
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scores = iter([(0.5, 0.3), (1.0, 0.4)])  # 2 held-out images: λ = 0 misses one of them

    def planted_scores(*_args, **_kwargs):
        agreement, kl = next(scores)
        return {"agreement": agreement, "certified": 0.0, "kl": kl, "rel_l2": 0.1}

    monkeypatch.setattr(al, "heldout_scores", planted_scores)
    ex = ConceptExplainer(split, n_concepts=3, kl_weight="auto", patch_size=8, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown, as on a terminal: what warnings_ keeps
        ex.fit(x, class_id=0)
    rec = ex.fit_info_["auto_kl_weight"]
    assert rec["chosen"] == 0.01 and rec["fragile"] in ex.warnings_
    ex.save(tmp_path / "run")
    cache = ModelCache()
    cache.put(split, "test:auto", None, None)
    html = build_report(tmp_path / "run", cache=cache).read_text(encoding="utf-8")
    assert "the choice is fragile" in html


def test_bad_settings_are_one_clear_line() -> None:
    A, head = planted(n=10)
    with pytest.raises(ValueError, match="target_agreement"):
        _search(A, head, target_agreement=1.5)
    with pytest.raises(ValueError, match="at least 2 images"):
        al.fit_auto_kl_weight(A[:1], torch.zeros(1, dtype=torch.long), A[:1], head, n_concepts=1)
    with pytest.raises(ValueError, match="'auto' or a number"):
        ExplainerConfig(kl_weight="automatic")
    with pytest.raises(ValueError, match="between 0 and 1"):
        ExplainerConfig(target_agreement=2.0)
    ex = ConceptExplainer(tiny_split("test:auto-unfitted"), kl_weight="auto")
    with pytest.raises(ValueError, match="fit first"):
        _ = ex.effective_kl_weight


def test_explainer_auto_records_the_search_and_the_run_keeps_it(tmp_path) -> None:
    split = tiny_split("test:auto")
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ex = ConceptExplainer(split, n_concepts=3, kl_weight="auto", patch_size=8, progress=False)
    ex.target_agreement = 0.999
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(x, class_id=0)
    rec = ex.fit_info_["auto_kl_weight"]
    assert rec["target_agreement"] == 0.999
    assert (rec["n_fit_images"], rec["n_heldout_images"]) == (8, 2)
    assert ex.kl_weight == "auto" and ex.effective_kl_weight == rec["chosen"]
    assert ex.run_config()["kl_weight"] == rec["chosen"]  # the run records the λ it used
    assert ex.encoder_settings()["kl_weight"] == rec["chosen"]  # encoder "fit": that λ
    ex.save(tmp_path / "run")
    loaded = ConceptExplainer.load(tmp_path / "run", split)
    assert loaded.fit_info_["auto_kl_weight"] == rec
    assert loaded.kl_weight == rec["chosen"] and loaded.effective_kl_weight == rec["chosen"]
    torch.testing.assert_close(loaded.concept_bank_, ex.concept_bank_)
    # The atlas shows the search: its card with the Pareto plot and the choice.
    cache = ModelCache()
    cache.put(split, "test:auto", None, None)
    html = build_report(tmp_path / "run", cache=cache).read_text(encoding="utf-8")
    assert "λ chosen for you" in html and f"chose λ = {rec['chosen']:g}" in html


def test_pareto_figure_plots_every_tried_lambda_and_marks_the_choice() -> None:
    pts = [
        {"kl_weight": 0.0, "rel_l2": 0.1, "kl": 0.3, "agreement": 0.5},
        {"kl_weight": 0.1, "rel_l2": 0.15, "kl": 0.05, "agreement": 0.9},
        {"kl_weight": 1.0, "rel_l2": 0.3, "kl": 0.002, "agreement": 1.0},
    ]
    fig = viz.kl_weight_pareto(pts, chosen=0.1, target_agreement=0.99)
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [0.1, 0.15, 0.3] and list(line.get_ydata()) == [0.3, 0.05, 0.002]  # fmt: skip
    ring = ax.collections[0].get_offsets()
    assert ring.tolist() == [[0.15, 0.05]]  # the chosen point
    assert ax.get_yscale() == "log" and "0.99" in ax.get_title()
    assert [t.get_text() for t in ax.texts][1] == "λ=0.1, agree 0.900"
    with pytest.raises(ValueError, match="empty"):
        viz.kl_weight_pareto([])
    with pytest.raises(ValueError, match="rel_l2"):
        viz.kl_weight_pareto([{"kl_weight": 0.0, "kl": 0.1}])


def test_methods_that_fix_lambda_ignore_auto() -> None:
    split = tiny_split("test:auto-nmf")
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ex = ConceptExplainer(split, "nmf", n_concepts=2, kl_weight="auto", patch_size=8, progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(x, class_id=0)
    assert "auto_kl_weight" not in ex.fit_info_ and ex.effective_kl_weight == 0.0


def test_signed_rows_get_the_signed_bank_as_in_factorize() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(40, 6, generator=g, dtype=torch.float64)  # a signed layer
    head = nn.Linear(6, 3).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", al.AutoKLWeightWarning)
        U, W, info = al.fit_auto_kl_weight(
            A, torch.arange(40), A, head, n_concepts=3, grid=(0.0, 1.0)
        )
    assert bool((U >= 0).all()) and bool((W < 0).any())  # codes ≥ 0, signed concepts
    assert info["bank"] == "signed"


def test_cli_fit_kl_weight_auto_saves_the_search(tmp_path, monkeypatch, capsys) -> None:
    import json

    from _tiny import patch_load_model, write_png_folder
    from face_concepts.cli.main import main

    patch_load_model(monkeypatch, tiny_split("test:auto-cli"))
    images = write_png_folder(tmp_path / "imgs", n=10)
    base = ["fit", "--model", "test:auto-cli", "--images", str(images), "--class-id", "0"]
    argv = [*base, "--n-concepts", "3", "--patch-size", "8", "--kl-weight", "auto"]
    argv += ["--target-agreement", "0.95", "--out", str(tmp_path / "run"), "-q", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    meta = json.loads((tmp_path / "run" / "bank.json").read_text())["metadata"]
    rec = meta["fit"]["auto_kl_weight"]
    assert rec["target_agreement"] == 0.95 and meta["config"]["kl_weight"] == rec["chosen"]
    assert 0.0 <= summary["metrics"]["fit"]["certified"] <= summary["metrics"]["fit"]["agreement"]
    for bad, word in ((["--kl-weight", "autox"], "'auto' or a number"), (["--target-agreement", "1.5"], "between 0 and 1")):  # fmt: skip
        code = main([*base, "--out", str(tmp_path / "bad"), "-q", *bad])
        err = capsys.readouterr().err
        assert code != 0 and word in err and len(err.strip().splitlines()) == 1
