"""Progress on stderr (issue 18 item 2): counts the right unit, one summary line, quiet logs."""

from __future__ import annotations

import io

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

import _tiny
from face_concepts._core import progress as pr
from face_concepts.pipeline.explainer import ConceptExplainer


def _clock(times):
    it = iter(times)
    return lambda: next(it)


def test_log_mode_prints_a_line_every_log_every_seconds_and_the_summary_once(monkeypatch):
    monkeypatch.setattr(pr, "LOG_EVERY", 10.0)
    out = io.StringIO()  # not a terminal: no carriage-return redraws
    # start 0; updates at 4 s (no line), 11 s (line), 15 s (no line), 22 s (line); close at 30 s
    bar = pr.Progress(
        100, "activations", unit="patch", file=out, clock=_clock([0, 4, 11, 15, 22, 30])
    )
    for k in (10, 20, 30, 40):
        bar.update(k)
    bar.close()
    bar.close()  # a second close prints nothing more
    lines = out.getvalue().splitlines()
    assert lines == [
        "activations: 30/100 patches …",
        "activations: 100/100 patches …",
        "activations: 100 patches in 30.0 s (3 patches/s)",
    ]
    assert "\r" not in out.getvalue()


def test_disabled_progress_prints_nothing_but_still_counts():
    out = io.StringIO()
    with pr.Progress(5, "x", unit="row", enabled=False, file=out) as bar:
        bar.update(5)
    assert bar.n == 5 and out.getvalue() == ""


def test_plural():
    assert [pr.plural(u) for u in ("patch", "image", "row", "pass")] == [
        "patches", "images", "rows", "passes",
    ]  # fmt: skip


def test_a_crop_fit_reports_patches_in_one_line(capfd):
    split = _tiny.tiny_split("test:progress", seed=0)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ex = ConceptExplainer(split, n_concepts=2, patch_size=8, n_designs=8, max_iter=5, progress=True)
    with pytest.warns(ConvergenceWarning):  # max_iter=5: the fit is not the point here
        ex.fit(x, class_id=0)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "patches" in line]
    n_rows = ex.row_codes_.shape[0]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"activations: {n_rows:,} patches in "), lines[0]
    assert "img/s" not in err
