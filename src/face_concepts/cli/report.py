"""``face-concepts report`` and ``explain``: the HTML atlas of runs, one image's explanation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from face_concepts.cli.common import (
    _emit_json,
    _say,
)
from face_concepts.cli.fit import _images_arg


def cmd_report(s: SimpleNamespace) -> int:
    from face_concepts.report import build_report, find_runs

    runs = find_runs(s.run)
    _say(s, f"building the atlas of {len(runs)} run(s) ...")
    images = _images_arg(s.images, "--images") if s.images is not None else None
    path = build_report(
        s.run, s.out, images=images, weights=s.weights, device=s.device,
        n_examples=s.n_examples, progress=s.progress,
    )  # fmt: skip
    if s.json:
        _emit_json({"report": str(path), "runs": [str(r) for r in runs]})
    else:
        print(f"wrote {path} ({len(runs)} run(s)); open it in a browser")
    return 0


def cmd_explain(s: SimpleNamespace) -> int:
    from face_concepts.pipeline.explain import explain_figure, explain_image, explain_table
    from face_concepts.report.figures import write_figure
    from face_concepts.report.runs import load_run

    explainer = load_run(s.run, weights=s.weights, device=s.device, progress=s.progress)
    result, x, maps = explain_image(explainer, s.image)
    out = Path(s.out) if s.out is not None else Path(s.run) / f"explain-{Path(s.image).stem}.png"
    write_figure(explain_figure(result, x, maps, explainer, top=s.top), out)
    result.update(run_dir=str(s.run), figure=str(out))
    if s.json:
        _emit_json(result)
    else:
        print(explain_table(result))
        print(f"\nwrote {out}")
    return 0
