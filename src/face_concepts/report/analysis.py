"""What the atlas shows of one saved run, computed once: concepts by importance, their crops,
their share of the prediction, heatmaps on example images and the run's figures.

The run's own tensors give importance, crops, metrics, curves and loss history without the
model. The model (reloaded from the recorded spec) adds each concept's contribution to the class
logit and the heatmaps; when it cannot be loaded, those parts are left out with a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from face_concepts.report.images import figure_png, image_jpeg, overlay
from face_concepts.report.runs import ModelCache, load_run, run_images

# Crops are stored at patch size (e.g. 64 px); shown a little larger.
CROP_DISPLAY = 96
HEATMAP_DISPLAY = 180
# Optional bank tensor: uint8 (N, 3, H, W) fitting images at the model's input size, for runs
# fitted on tensors (no files to reopen).
EXAMPLE_IMAGES = "example_images"


@dataclass
class ConceptView:
    """One concept of a run, as the atlas shows it."""

    index: int
    rank: int
    importance: float
    importance_share: float
    contribution: float | None = None
    contribution_share: float | None = None
    crops: list[bytes] = field(default_factory=list)
    heatmaps: list[tuple[str, bytes]] = field(default_factory=list)
    crop_captions: list[str] = field(default_factory=list)
    class_importance: list[float] = field(default_factory=list)  # shared banks: per class
    class_contribution_share: list[float | None] = field(default_factory=list)  # per class


@dataclass
class RunView:
    """One run of the atlas: its metadata, metrics, concepts and figures (PNG bytes)."""

    path: Path
    name: str
    metadata: dict[str, Any]
    sidecar: dict[str, Any]
    concepts: list[ConceptView]
    figures: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    curves: tuple[list[float], list[float]] | None = None
    anchor: str = "run"
    curves_split: str = ""
    # Shared banks: one entry per class ({class_id, class_name, n_images, run, metrics}) and the
    # importance of every concept for every class, (n_classes, n_concepts).
    classes: list[dict[str, Any]] = field(default_factory=list)
    class_importance: list[list[float]] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        return bool(self.classes)

    @property
    def method(self) -> str:
        return str(self.metadata.get("config", {}).get("method", "?"))

    @property
    def class_id(self) -> Any:
        return self.metadata.get("class_id")

    @property
    def class_name(self) -> str | None:
        return self.metadata.get("class_name")

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        m = self.metadata.get("metrics") or {}
        return {k: v for k, v in m.items() if isinstance(v, dict)}


def contribution_shares(gi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean contribution (r,) of each concept to the class logit, and its share of their sum.

    ``gi`` (n, r) holds per-image contributions (Gradient×Input; exact for an affine head). The
    share divides by the sum over concepts, so shares add up to 1 (bias excluded); a concept
    that lowers the logit gets a negative share.

    Examples
    --------
    >>> mean, share = contribution_shares(torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    >>> share.tolist()
    [0.25, 0.75]
    """
    mean = gi.double().mean(dim=0)
    total = float(mean.sum())
    share = mean / total if total != 0 else torch.full_like(mean, float("nan"))
    return mean, share


def _concepts(tensors: dict[str, torch.Tensor]) -> list[ConceptView]:
    imp = tensors["importance"].double().cpu()
    total = float(imp.sum())
    order = torch.argsort(imp, descending=True, stable=True).tolist()
    crops = tensors.get("crops")
    r = int(imp.shape[0])
    k = crops.shape[0] // r if crops is not None and r else 0
    views = []
    for rank, c in enumerate(order, start=1):
        share = float(imp[c]) / total if total > 0 else float("nan")
        view = ConceptView(
            index=int(c), rank=rank, importance=float(imp[c]), importance_share=share
        )
        if k and crops is not None:
            view.crops = [image_jpeg(x, size=CROP_DISPLAY) for x in crops[c * k : (c + 1) * k]]
        views.append(view)
    return views


def _chart_figures(view: RunView) -> None:
    # Importance is drawn as HTML bars in the concept table: one matplotlib figure less per run.
    from face_concepts import viz

    metrics = view.metrics
    view.curves_split = next(
        (k for k in ("heldout", "fit") if k in metrics), next(iter(metrics), "")
    )
    chosen = metrics.get(view.curves_split, {})
    dele, ins = chosen.get("deletion_curve"), chosen.get("insertion_curve")
    if dele and ins:
        view.curves = (list(dele), list(ins))
        fig = viz.curves({view.method: view.curves}, class_name=view.class_name)
        view.figures["curves"] = figure_png(fig)
    history = view.metadata.get("loss_history")
    if isinstance(history, dict):
        try:
            view.figures["loss"] = figure_png(viz.loss_history(history))
        except (ValueError, TypeError) as exc:
            view.notes.append(f"loss history not drawn: {exc}")
    else:
        view.notes.append("this run recorded no loss history (the solver keeps none)")
    search = (view.metadata.get("fit") or {}).get("auto_kl_weight")  # kl_weight="auto"
    if isinstance(search, dict) and search.get("points"):
        try:
            fig = viz.kl_weight_pareto(
                search["points"], search.get("chosen"),
                target_agreement=search.get("target_agreement"),
            )  # fmt: skip
            view.figures["auto_kl_weight"] = figure_png(fig)
        except (ValueError, TypeError) as exc:
            view.notes.append(f"λ search not drawn: {exc}")


def concept_contributions(explainer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean contribution (r,) of each concept to the run's class logit on its fitting images,
    and its share of their sum (see :func:`contribution_shares`)."""
    from face_concepts.importance import gradient_input

    gi = gradient_input(
        explainer.image_codes_, explainer.concept_bank_, explainer.split.head, explainer.class_id_
    )
    return contribution_shares(gi)


def _add_contributions(view: RunView, explainer: Any) -> None:
    from face_concepts.report.notices import share_notice

    mean, share = concept_contributions(explainer)
    for c in view.concepts:
        c.contribution, c.contribution_share = float(mean[c.index]), float(share[c.index])
    view.notes += share_notice([float(v) for v in share], float(mean.sum()))


def shown_importance(view: RunView) -> torch.Tensor:
    """The importance the page shows for each concept, indexed by concept (mean over classes
    for a shared bank), for figure titles that agree with the page."""
    imp = torch.zeros(len(view.concepts), dtype=torch.float64)
    for c in view.concepts:
        imp[c.index] = c.importance
    return imp


def no_source(source: Any) -> bool:
    """Whether ``source`` names no example image (``None``, ``""`` or an empty list)."""
    return source is None or (isinstance(source, (str, list, tuple)) and len(source) == 0)


def _example_batch(source: Any, split: Any, max_images: int) -> tuple[torch.Tensor, list[str]]:
    from face_concepts.data import ImageSet, load_images, preprocess_images

    if isinstance(source, torch.Tensor):  # stored example images: uint8 (N, 3, H, W) at input size
        unit = source[:max_images].float() / 255.0
        return split.preprocess.normalize(unit), [f"image {i}" for i in range(unit.shape[0])]
    imageset = load_images(source)
    if imageset.images is None:
        raise ValueError("the recorded images are a tensor, not files")
    images = imageset.images[:max_images]
    names = [Path(p).name if p else f"image {i}" for i, p in enumerate(imageset.paths)]
    x = preprocess_images(
        ImageSet(images=images, paths=imageset.paths[:max_images]), split.preprocess
    )
    return x, names[:max_images]


def _add_heatmaps(
    view: RunView, explainer: Any, source: Any, n_examples: int, max_images: int
) -> None:
    from face_concepts import viz

    split = explainer.split
    x, names = _example_batch(source, split, max_images)
    maps = explainer.concept_maps(x)  # (N, r, H, W)
    codes = explainer.transform(x)  # (N, r)
    unit = split.preprocess.denormalize(x)
    for c in view.concepts:
        ids = torch.argsort(codes[:, c.index], descending=True, stable=True)[:n_examples]
        best = [int(i) for i in ids if codes[i, c.index] > 0]  # an image without it shows nothing
        if not best:
            continue
        vmax = float(maps[best, c.index].max())
        for i in best:
            pic = overlay(unit[i], maps[i, c.index], vmax=vmax)
            caption = f"{names[i]} · code {float(codes[i, c.index]):.3g}"
            c.heatmaps.append((caption, image_jpeg(pic, size=HEATMAP_DISPLAY)))
    top = [c.index for c in view.concepts[:7]]
    fig = viz.heatmap_overlay(
        x[0], maps[0], top, importance=shown_importance(view), class_name=view.class_name,
        preprocess=split.preprocess,
    )  # fmt: skip
    view.figures["overview_heatmaps"] = figure_png(fig)


def analyse_class_run(
    path: Path,
    bank: Any,
    *,
    images: Any = None,
    weights: str | None = None,
    cache: ModelCache | None = None,
    n_examples: int = 3,
    max_images: int = 8,
    name: str | None = None,
) -> RunView:
    """Everything the atlas shows of one class run (``bank`` loaded from ``path``; shared banks
    go to :func:`face_concepts.report.shared.analyse_shared_run`, both through
    :func:`face_concepts.report.atlas.analyse_run`).

    Parameters
    ----------
    path : Path
        The run directory.
    bank : ConceptBank
        Its bank.
    images : folder, file or list of files, optional
        Example images for the heatmaps (default: those recorded with the run).
    weights : path, optional
        Weights file of the model (default: the one recorded with the run).
    cache : ModelCache, optional
        Shares loaded models between runs.
    n_examples : int
        Heatmaps per concept (the examples where the concept is strongest).
    max_images : int
        Example images considered.
    name : str, optional
        Run label (default: the directory name).
    """
    from face_concepts.report.notices import run_notices
    from face_concepts.report.runs import read_sidecar

    meta, tensors = bank.metadata, bank.tensors
    if "importance" not in tensors:
        raise ValueError(f"the run at {str(path)!r} has no concept importance; is it a fitted run?")
    view = RunView(path, name or path.name, meta, read_sidecar(path), _concepts(tensors))
    view.notes += run_notices(meta)
    if "crops" not in tensors:
        view.notes.append("no crops: this method factorises spatial positions, not image crops")
    _chart_figures(view)
    try:
        explainer = load_run(path, weights=weights, cache=cache)
    except Exception as exc:  # the atlas still shows what the run holds
        view.notes.append(f"model not loaded ({exc}); contributions and heatmaps left out")
        return view
    _add_contributions(view, explainer)
    source = images if not no_source(images) else run_images(path, meta)
    if no_source(source):  # runs fitted on tensors record no files: their stored examples
        source = tensors.get(EXAMPLE_IMAGES)
    if source is None:
        view.notes.append("no example images recorded for this run; heatmaps left out")
        return view
    try:
        _add_heatmaps(view, explainer, source, n_examples, max_images)
    except Exception as exc:
        view.notes.append(f"heatmaps left out: the example images could not be used ({exc})")
    return view
