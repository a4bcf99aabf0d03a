"""The atlas section of a concept bank shared by several classes.

The shared concepts are shown once (crops from every class, heatmaps), with their importance for
each class: a class × concept heatmap of importance shares, the same numbers as a table, and
per-class metrics and deletion/insertion curves. Each class's own run (``classes/<class>/``
below the shared run) is an ordinary run that ``evaluate`` and ``explain`` accept.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from face_concepts.report.analysis import (
    RunView,
    _add_heatmaps,
    _chart_figures,
    _concepts,
    concept_contributions,
    no_source,
)
from face_concepts.report.glossary import METRIC_HELP, format_value, percent
from face_concepts.report.images import figure_png
from face_concepts.report.runs import ModelCache, load_run, read_sidecar

# Annotate heatmap cells with their value up to this many cells (beyond, they get unreadable).
_MAX_ANNOTATED = 150
_SUMMARY = ("acc", "kl", "c_deletion", "c_insertion", "c_gini")


def class_label(entry: dict[str, Any]) -> str:
    """``"285 Egyptian cat"`` for a class entry of a shared run.

    Examples
    --------
    >>> class_label({"class_id": 3, "class_name": "cat"})
    '3 cat'
    """
    name = entry.get("class_name")
    return f"{entry.get('class_id')} {name}" if name else f"class {entry.get('class_id')}"


def importance_shares(importance: torch.Tensor) -> torch.Tensor:
    """Each class's importance as shares of its total (rows sum to 1; all-zero rows stay 0).

    Examples
    --------
    >>> importance_shares(torch.tensor([[1.0, 3.0], [0.0, 0.0]])).tolist()
    [[0.25, 0.75], [0.0, 0.0]]
    """
    imp = importance.double().clamp(min=0)
    total = imp.sum(dim=1, keepdim=True)
    return torch.where(total > 0, imp / total.clamp(min=1e-300), torch.zeros_like(imp))


def class_importance_figure(
    importance: torch.Tensor, class_labels: list[str], order: list[int]
) -> Figure:
    """Heatmap of importance shares: one row per class, one column per concept (in ``order``)."""
    share = importance_shares(importance)[:, order].numpy()
    k, r = share.shape
    fig = Figure(figsize=(max(4.5, 0.5 * r + 2.5), max(2.2, 0.45 * k + 1.4)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(r), [str(i) for i in order])
    ax.set_yticks(range(k), class_labels)
    ax.set_xlabel("concept (by mean importance over classes)")
    if k * r <= _MAX_ANNOTATED:
        top = float(share.max()) or 1.0
        for i in range(k):
            for j in range(r):
                colour = "black" if share[i, j] > 0.6 * top else "white"
                ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center",
                        fontsize=7, color=colour)  # fmt: skip
    fig.colorbar(im, ax=ax, label="share of the class’s importance (cells: %)")
    ax.set_title("Importance of the shared concepts for each class")
    return fig


def _class_curves(view: RunView) -> None:
    from face_concepts import viz

    curves, splits = {}, set()
    for c in view.classes:
        metrics = c.get("metrics") or {}
        split = next((s for s in ("heldout", "fit") if s in metrics), None)
        m = metrics.get(split) or {}
        if split is not None and m.get("deletion_curve") and m.get("insertion_curve"):
            curves[class_label(c)] = (list(m["deletion_curve"]), list(m["insertion_curve"]))
            splits.add(split)
    if curves:
        view.curves_split = ", ".join(sorted(splits))
        view.figures["curves"] = figure_png(viz.curves(curves))


def analyse_shared_run(
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
    """What the atlas shows of a shared bank (called by ``analyse_run`` for shared runs)."""
    meta, tensors = bank.metadata, bank.tensors
    from face_concepts.report.notices import shared_notices

    view = RunView(path, name or path.name, meta, read_sidecar(path), _concepts(tensors))
    view.classes = [dict(c) for c in meta.get("classes") or []]
    view.notes += shared_notices(meta)
    imp = tensors["class_importance"].double()
    view.class_importance = imp.tolist()
    labels = [class_label(c) for c in view.classes]
    crop_class = tensors.get("top_crop_class")
    for c in view.concepts:
        c.class_importance = imp[:, c.index].tolist()
        if crop_class is not None and c.crops:
            c.crop_captions = [str(int(x)) for x in crop_class[c.index, : len(c.crops)]]
    _chart_figures(view)  # the loss history (per-class metrics are drawn below)
    order = [c.index for c in view.concepts]
    view.figures["class_importance"] = figure_png(class_importance_figure(imp, labels, order))
    _class_curves(view)
    if not view.classes:
        return view
    try:
        explainers = [load_run(path / c["run"], weights=weights, cache=cache) for c in view.classes]
    except Exception as exc:  # the atlas still shows what the run holds
        view.notes.append(f"model not loaded ({exc}); contributions and heatmaps left out")
        return view
    _add_class_contributions(view, explainers)
    explainer = explainers[0]
    source = images if not no_source(images) else tensors.get("example_images")
    if source is None:
        view.notes.append("no example images recorded for this run; heatmaps left out")
        return view
    try:
        _add_heatmaps(view, explainer, source, n_examples, max_images)
    except Exception as exc:
        view.notes.append(f"heatmaps left out: the example images could not be used ({exc})")
    return view


def _add_class_contributions(view: RunView, explainers: list[Any]) -> None:
    """Each concept's contribution to every class's logit (on that class's images); the table
    shows their mean over classes, each concept's line the share per class."""
    from face_concepts.report.notices import share_notice

    means, shares = [], []
    for entry, ex in zip(view.classes, explainers):
        mean, share = concept_contributions(ex)
        means.append(mean)
        shares.append(share)
        view.notes += [
            f"{class_label(entry)}: {n}"
            for n in share_notice([float(v) for v in share], float(mean.sum()))
        ]
    mean_all, share_all = torch.stack(means).mean(0), torch.stack(shares).mean(0)
    for c in view.concepts:
        c.contribution = float(mean_all[c.index])
        c.contribution_share = float(share_all[c.index])
        c.class_contribution_share = [float(s[c.index]) for s in shares]


# ---------------------------------------------------------------------- HTML
def class_metrics_table(view: RunView) -> str:
    """Per-class metrics of a shared bank (held-out images where the class has them)."""
    head = "".join(f"<th>{escape(METRIC_HELP[k][0])} {METRIC_HELP[k][1]}</th>" for k in _SUMMARY)
    rows = []
    for c in view.classes:
        metrics = c.get("metrics") or {}
        split = next((s for s in ("heldout", "fit") if s in metrics), "")
        m = metrics.get(split) or {}
        cells = "".join(f'<td class="num">{format_value(m.get(k))}</td>' for k in _SUMMARY)
        # the images the metrics were computed on (the held-out count next to "heldout")
        n = m.get("n_images") if m.get("n_images") is not None else c.get("n_images", "?")
        rows.append(
            f"<tr><td>{escape(class_label(c))}</td><td>{escape(split or 'n/a')}</td>"
            f'<td class="num">{n}</td><td class="num">{c.get("n_images", "?")}</td>{cells}'
            f"<td><code>{escape(str(c.get('run', '')))}</code></td></tr>"
        )
    return (
        '<div class="scroll"><table class="class-metrics"><tr><th>class</th><th>metrics on</th>'
        "<th>images</th><th>fitted on</th>"
        f"{head}<th>class run</th></tr>{''.join(rows)}</table></div>"
    )


def class_importance_table(view: RunView) -> str:
    """Importance of every concept (columns, by rank) for every class (rows), 3 decimals."""
    head = "".join(f"<th>concept {c.index}</th>" for c in view.concepts)
    rows = []
    for i, entry in enumerate(view.classes):
        cells = "".join(
            f'<td class="num">{view.class_importance[i][c.index]:.3f}</td>' for c in view.concepts
        )
        rows.append(f"<tr><td>{escape(class_label(entry))}</td>{cells}</tr>")
    return (
        '<div class="scroll">'
        f'<table class="class-importance"><tr><th>class</th>{head}</tr>{"".join(rows)}</table>'
        '</div><p class="help">Sobol total index of each shared concept for each class’s logit '
        "(the heatmap above shows each row as shares of its total).</p>"
    )


def shared_concept_line(view: RunView, c: Any) -> str:
    """The per-class importance of one shared concept, as a line of its section."""
    parts = []
    for i, e in enumerate(view.classes):
        if i >= len(c.class_importance):
            continue
        part = f"{escape(class_label(e))}: {c.class_importance[i]:.3f}"
        if i < len(c.class_contribution_share):
            part += f" ({percent(c.class_contribution_share[i])} of its prediction)"
        parts.append(part)
    return f'<p class="class-line">importance per class — {" · ".join(parts)}</p>'
