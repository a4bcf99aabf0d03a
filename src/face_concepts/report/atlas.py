"""``build_report``: saved run(s) → one self-contained HTML atlas, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from face_concepts._core.io import atomic_write_bytes
from face_concepts.report.analysis import RunView, analyse_class_run
from face_concepts.report.html import render_atlas
from face_concepts.report.runs import ModelCache, find_runs, load_bank
from face_concepts.report.shared import analyse_shared_run

REPORT_FILE = "report.html"


def analyse_run(run: str | Path, **kwargs: Any) -> RunView:
    """Everything the atlas shows of one saved run: a class run or a shared bank.

    Keyword arguments are those of :func:`face_concepts.report.analysis.analyse_class_run`
    (``images``, ``weights``, ``cache``, ``n_examples``, ``max_images``, ``name``).
    """
    path = Path(run)
    bank = load_bank(path)
    if bank.metadata.get("shared"):
        return analyse_shared_run(path, bank, **kwargs)
    return analyse_class_run(path, bank, **kwargs)


def _run_label(run: Path, root: Path) -> str:
    if run == root:
        return run.name or str(run)
    return str(run.relative_to(root))


def build_report(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    images: Any = None,
    weights: str | None = None,
    device: Any = None,
    n_examples: int = 3,
    progress: bool = False,
    title: str | None = None,
    cache: ModelCache | None = None,
) -> Path:
    """Write the concept atlas of the run(s) in ``run_dir``.

    Parameters
    ----------
    run_dir : path
        A run directory, or a directory with runs below it (one atlas section per run).
    out : path, optional
        The HTML file (default ``run_dir/report.html``).
    images : folder, file or list of files, optional
        Example images for the heatmaps (default: the images recorded with each run).
    weights : path, optional
        Weights file of the model, when the run's record lacks it.
    device : str, optional
        Where the model runs for contributions and heatmaps (default CPU).
    n_examples : int
        Heatmaps per concept.
    progress : bool
        A progress bar over runs on stderr.
    title : str, optional
        Page title (default "Concept atlas — <class names>").
    cache : ModelCache, optional
        Models already loaded (e.g. by the command that fitted the runs).

    Returns
    -------
    pathlib.Path
        The written file.

    Examples
    --------
    >>> build_report("runs/cat").name  # doctest: +SKIP
    'report.html'
    """
    root = Path(run_dir)
    runs = find_runs(root)
    cache = cache if cache is not None else ModelCache(device=device)
    views: list[RunView] = []
    for run in _progress(runs, progress):
        view = analyse_run(
            run,
            images=images,
            weights=weights,
            cache=cache,
            n_examples=n_examples,
            name=_run_label(run, root),
        )
        views.append(view)
    html = render_atlas(views, title=title or _title(views), generator=_generator())
    target = Path(out) if out is not None else root / REPORT_FILE
    return atomic_write_bytes(target, html.encode("utf-8"))


def _progress(runs: list[Path], show: bool) -> Any:
    if not show or len(runs) < 2:
        return runs
    from tqdm.auto import tqdm

    return tqdm(runs, desc="atlas", unit="run")


def _title(views: list[RunView]) -> str:
    names = [
        c.get("class_name") or f"class {c.get('class_id')}"
        for v in views
        for c in (v.classes or [{"class_id": v.class_id, "class_name": v.class_name}])
    ]
    unique = list(dict.fromkeys(names))
    shown = ", ".join(unique[:4]) + (f" and {len(unique) - 4} more" if len(unique) > 4 else "")
    return f"Concept atlas — {shown}" if shown else "Concept atlas"


def _generator() -> str:
    from face_concepts import __version__

    return (
        f"Made by face-concepts {__version__}. Open this file in any browser; it needs no network."
    )
