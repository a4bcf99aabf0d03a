"""Chart figures: importance bars, deletion/insertion curves, loss history of a fit."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from face_concepts._core.validation import check_int
from face_concepts.viz._common import as_vector, concept_label, concept_order, with_class

# Display names of the keys of ``FACE.loss_history_`` (others are shown as they are).
_SERIES_NAMES = {
    "total": "total objective",
    "recon": "reconstruction (MSE)",
    "kl": "KL (unweighted)",
}


def importance_bar(
    importance: Any,
    *,
    class_name: str | None = None,
    labels: Sequence[str] | None = None,
    n_concepts: int | None = None,
    xlabel: str = "Sobol total index",
) -> Figure:
    """Horizontal bars of concept importance, most important on top.

    Parameters
    ----------
    importance : Tensor of shape (r,)
    class_name : str, optional
        Shown in the title.
    labels : sequence of str, optional
        Concept names indexed by concept id (default "concept i").
    n_concepts : int, optional
        Show only the most important ones.
    xlabel : str, default "Sobol total index"
        What the values are (e.g. "Gradient×Input").

    Returns
    -------
    matplotlib.figure.Figure
        One axis; its y tick labels are the concept labels, top to bottom by importance.

    Examples
    --------
    >>> import torch
    >>> fig = importance_bar(torch.tensor([0.1, 0.5, 0.2]), class_name="tabby")
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['concept 1', 'concept 2', 'concept 0']
    """
    imp = as_vector(importance, "importance")
    if n_concepts is not None:
        n_concepts = check_int(n_concepts, "n_concepts", minimum=1)
    order = concept_order(imp, n_concepts)
    fig = Figure(figsize=(6.0, 0.35 * len(order) + 1.4), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(order))
    ax.barh(y, imp[order], color="tab:blue")
    ax.set_yticks(y, [concept_label(int(c), labels) for c in order])
    ax.invert_yaxis()  # most important first, at the top
    ax.set_xlabel(xlabel)
    ax.set_title(with_class("Concept importance", class_name))
    return fig


def curves(
    results: Mapping[str, tuple[Any, Any]],
    *,
    class_name: str | None = None,
    show_scores: bool = True,
    ylabel: str = "accuracy",
) -> Figure:
    """Deletion and insertion curves of several methods, one panel each.

    Parameters
    ----------
    results : mapping method name -> (deletion_curve, insertion_curve)
        Curves over ``k = 0..r`` as returned by ``face_concepts.metrics.deletion_curve`` /
        ``insertion_curve`` (methods may have different ``r``).
    class_name : str, optional
    show_scores : bool, default True
        Append C-Del (AOPC, ``/(r + 1)``) and C-Ins (normalised area) to the legend entries.
    ylabel : str, default "accuracy"

    Returns
    -------
    matplotlib.figure.Figure
        Two axes titled "Deletion" and "Insertion", one line and legend entry per method.

    Examples
    --------
    >>> fig = curves({"face": ([1.0, 0.5, 0.0], [0.0, 0.8, 1.0])}, show_scores=False)
    >>> [ax.get_legend().get_texts()[0].get_text() for ax in fig.axes]
    ['face', 'face']
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError(
            "results must be a non-empty mapping: method name -> (deletion_curve, insertion_curve)"
        )
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    ax_del, ax_ins = fig.subplots(1, 2, sharey=True)
    for method, pair in results.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(
                f"results[{method!r}] must be a (deletion_curve, insertion_curve) pair"
            )
        dele = as_vector(pair[0], f"results[{method!r}][0]")
        ins = as_vector(pair[1], f"results[{method!r}][1]")
        del_label, ins_label = str(method), str(method)
        if show_scores:
            del_score, ins_score = _scores(dele, ins)
            del_label += f" (C-Del {del_score:.3f})"
            ins_label += f" (C-Ins {ins_score:.3f})"
        ax_del.plot(np.arange(len(dele)), dele, marker=".", label=del_label)
        ax_ins.plot(np.arange(len(ins)), ins, marker=".", label=ins_label)
    ax_del.set_title("Deletion")
    ax_del.set_xlabel("most important concepts removed (k)")
    ax_del.set_ylabel(ylabel)
    ax_ins.set_title("Insertion")
    ax_ins.set_xlabel("most important concepts kept (k)")
    for ax in (ax_del, ax_ins):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # k counts concepts
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(with_class("Concept deletion and insertion", class_name))
    return fig


def _scores(deletion: np.ndarray, insertion: np.ndarray) -> tuple[float, float]:
    # The metrics module owns the score definitions (docs/method.md §9); imported here lazily so
    # that drawing curves never depends on it unless scores are requested.
    import torch

    from face_concepts.metrics import c_deletion, c_insertion

    with warnings.catch_warnings():
        # A curve starting at 0 is worth drawing; its warning belongs to metric reports.
        warnings.filterwarnings("ignore", "deletion curve starts at", RuntimeWarning)
        return c_deletion(torch.from_numpy(deletion)), c_insertion(torch.from_numpy(insertion))


def loss_history(history: Mapping[str, Sequence[float]], *, title: str | None = None) -> Figure:
    """Objective terms per iteration of a fit, on a log scale.

    Parameters
    ----------
    history : mapping name -> sequence of floats
        E.g. ``FACE.loss_history_`` ("total", "recon", "kl"). Non-numeric entries are ignored,
        and so are series with no positive value (a log axis cannot show them, e.g. the KL of
        plain NMF when it is recorded as 0).
    title : str, optional
        Default "Loss history".

    Returns
    -------
    matplotlib.figure.Figure
        One axis with a log y scale and one line and legend entry per shown series.

    Examples
    --------
    >>> fig = loss_history({"total": [3.0, 2.0, 1.5], "recon": [2.0, 1.5, 1.2], "kl": [0.0, 0.0, 0.0]})
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['total objective', 'reconstruction (MSE)']
    """
    if not isinstance(history, Mapping):
        raise TypeError(
            f"history must be a mapping name -> list of floats, got {type(history).__name__}"
        )
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    shown = 0
    for name, values in history.items():
        series = _numeric(values)
        if series is None or not np.any(series > 0):
            continue
        positive = np.where(series > 0, series, np.nan)
        ax.plot(np.arange(len(series)), positive, label=_SERIES_NAMES.get(name, str(name)))
        shown += 1
    if not shown:
        raise ValueError("history has no numeric series with positive values to plot")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("value (log scale)")
    ax.set_title(title or "Loss history")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def _numeric(values: Any) -> np.ndarray | None:
    # Histories may carry non-numeric entries (a solver name, a stop reason): skip them.
    if isinstance(values, (str, bytes)):
        return None
    try:
        arr = np.asarray(values.tolist() if hasattr(values, "tolist") else values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 and arr.size else None


def kl_weight_pareto(
    points: Sequence[Mapping[str, Any]],
    chosen: float | None = None,
    *,
    target_agreement: float | None = None,
    title: str | None = None,
) -> Figure:
    """The λ search of ``kl_weight="auto"``: held-out rel-ℓ2 (x) against KL (y), one point per λ.

    Parameters
    ----------
    points : sequence of mappings
        One per tried λ, with keys ``kl_weight``, ``rel_l2``, ``kl`` and optionally
        ``agreement`` (the record's ``"points"``, :mod:`face_concepts.pipeline.auto_lambda`).
    chosen : float, optional
        The chosen λ: marked with a ring and named in the legend.
    target_agreement : float, optional
        Named in the title.

    Returns
    -------
    matplotlib.figure.Figure
        One axis; each point is labelled with its λ (and agreement); a log KL axis when every
        KL is positive.

    Examples
    --------
    >>> pts = [{"kl_weight": 0.0, "rel_l2": 0.1, "kl": 0.3, "agreement": 0.8},
    ...        {"kl_weight": 1.0, "rel_l2": 0.2, "kl": 0.01, "agreement": 1.0}]
    >>> fig = kl_weight_pareto(pts, chosen=1.0)
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['tried λ', 'chosen λ = 1']
    """
    if not points:
        raise ValueError("points is empty: the λ search recorded no tried λ")
    try:
        lams = [float(p["kl_weight"]) for p in points]
        x = np.array([float(p["rel_l2"]) for p in points])
        y = np.array([float(p["kl"]) for p in points])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"every point needs kl_weight, rel_l2 and kl; {exc!r}") from exc
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, y, "-o", color="0.45", zorder=1, label="tried λ")
    for i, (p, lam) in enumerate(zip(points, lams)):
        agree = p.get("agreement")
        label = f"λ={lam:g}" + (f", agree {float(agree):.3f}" if agree is not None else "")
        # Close points (small λ) often coincide: stagger the labels so that all stay legible.
        ax.annotate(label, (x[i], y[i]), fontsize=8, xytext=(6, 10 * (i % 3) - 10), textcoords="offset points")  # fmt: skip
    if chosen is not None and float(chosen) in lams:
        i = lams.index(float(chosen))
        ax.scatter([x[i]], [y[i]], s=160, facecolors="none", edgecolors="tab:red", linewidths=2, zorder=3, label=f"chosen λ = {float(chosen):g}")  # fmt: skip
    if np.all(y > 0):
        ax.set_yscale("log")  # KL spans orders of magnitude over the grid
    ax.set_xlabel("relative ℓ2 reconstruction error (held-out) ↓")
    ax.set_ylabel("D_KL (held-out) ↓")
    target = f" (target agreement {target_agreement:g})" if target_agreement is not None else ""
    ax.set_title(title or f"λ chosen for you{target}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
