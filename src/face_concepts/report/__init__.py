"""The concept atlas: one self-contained HTML page built from saved runs.

``build_report(run_dir)`` writes ``run_dir/report.html``: the class and model, the metrics with
one-line explanations, the concepts by importance (top crops, heatmaps on example images,
importance and share of the prediction), deletion/insertion curves, loss history and the run
configuration. A directory holding several runs (e.g. one per class) gives one atlas with a
section per run.

Examples
--------
>>> from face_concepts.report import build_report  # doctest: +SKIP
>>> build_report("runs/cat")  # doctest: +SKIP
PosixPath('runs/cat/report.html')
"""

from __future__ import annotations

from face_concepts.report.analysis import ConceptView, RunView, contribution_shares
from face_concepts.report.atlas import REPORT_FILE, analyse_run, build_report
from face_concepts.report.glossary import METRIC_HELP, metric_table
from face_concepts.report.html import render_atlas
from face_concepts.report.runs import SIDECAR, ModelCache, find_runs, load_run, read_sidecar

__all__ = [
    "METRIC_HELP",
    "REPORT_FILE",
    "SIDECAR",
    "ConceptView",
    "ModelCache",
    "RunView",
    "analyse_run",
    "build_report",
    "contribution_shares",
    "find_runs",
    "load_run",
    "metric_table",
    "read_sidecar",
    "render_atlas",
]
