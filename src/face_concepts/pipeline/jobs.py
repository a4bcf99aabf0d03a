"""Fit → evaluate → save, written once.

Every entry point that makes a run goes through :func:`fit_evaluate_save`: ``face-concepts fit``
and ``atlas`` (per class and shared, :mod:`face_concepts.pipeline.shared`), the demo and the
benchmark (which keeps its cells' metrics and saves no run). The metrics it returns are the ones
the saved run holds: ``{"fit": ..., "heldout": ...}`` for one class, and that per class id for a
shared bank.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from face_concepts.pipeline.explainer import ConceptExplainer

__all__ = ["N_STABILITY_FOLDS", "FitResult", "fit_evaluate_save"]

# C-Stab refits on this many folds of the images (stability_folds' default, the authors' 5).
N_STABILITY_FOLDS = 5


@dataclass
class FitResult:
    """What :func:`fit_evaluate_save` did: the fitted explainer, its metrics, the fit's time and
    where the run was written (None when not saved)."""

    explainer: Any
    metrics: dict[Any, dict[str, Any]]
    fit_seconds: float
    run_dir: Path | None


def fit_evaluate_save(
    explainer: Any,
    images: Any,
    class_id: int | None = None,
    *,
    heldout: Any = None,
    stability: bool = False,
    out: Any = None,
    say: Callable[[str], None] | None = None,
) -> FitResult:
    """Fit ``explainer``, evaluate it on the fitting (and held-out) images, save it to ``out``.

    ``explainer``: a :class:`~face_concepts.ConceptExplainer` (``images`` of ``class_id``) or a
    :class:`~face_concepts.pipeline.shared.SharedConceptExplainer` (``images`` and ``heldout``
    map class ids to images; ``class_id`` is not given). ``stability`` adds C-Stab to the fit's
    metrics (one class only; it needs at least 5 images, else a warning says why it is not
    computed). ``say`` receives progress messages. ``out=None`` saves nothing.

    Examples
    --------
    >>> result = fit_evaluate_save(explainer, "cats/", 285, heldout="more_cats/",
    ...                            out="runs/cat")  # doctest: +SKIP
    >>> sorted(result.metrics)  # doctest: +SKIP
    ['fit', 'heldout']
    """
    one = isinstance(explainer, ConceptExplainer)
    if one == (class_id is None):
        raise TypeError(
            "fit_evaluate_save: give class_id with a ConceptExplainer, and none with a "
            "SharedConceptExplainer (its images map class ids to images)"
        )
    start = time.perf_counter()
    if one:
        explainer.fit(images, class_id)
    else:
        explainer.fit(images)
    seconds = time.perf_counter() - start
    if one:
        metrics: dict[Any, dict[str, Any]] = _metrics(explainer, heldout, stability, say)
    else:
        if stability:
            warnings.warn(
                "C-Stab not computed for a shared bank: it refits one class's images, and a "
                "shared bank is fitted on every class's",
                UserWarning,
                stacklevel=2,
            )
        held = dict(heldout or {})
        metrics = {
            c: _metrics(explainer.explainer(c), held.get(c), False, say) for c in explainer.classes_
        }
    run_dir = None
    if out is not None:
        run_dir = Path(explainer.save(out, metrics=metrics))
    return FitResult(explainer, metrics, seconds, run_dir)


def _metrics(
    explainer: ConceptExplainer,
    heldout: Any,
    stability: bool,
    say: Callable[[str], None] | None,
) -> dict[str, Any]:
    """The fit's metrics (with C-Stab when asked and the images allow) and the held-out ones."""
    if stability and explainer.n_images_ < N_STABILITY_FOLDS:
        warnings.warn(
            f"C-Stab not computed: it refits on {N_STABILITY_FOLDS} folds of the images and "
            f"needs at least {N_STABILITY_FOLDS} images, got {explainer.n_images_}",
            UserWarning,
            stacklevel=3,
        )
        stability = False
    if stability and say is not None:
        say(f"computing C-Stab: {N_STABILITY_FOLDS} refits on folds of the images ...")
    metrics = {"fit": explainer.evaluate(stability=stability).to_dict()}
    if heldout is not None:
        metrics["heldout"] = explainer.evaluate(heldout).to_dict()
    return metrics
