"""One-line explanations of the metrics (docs/method.md §9) and of a fit's solver, shared by the
atlas and the CLI."""

from __future__ import annotations

from typing import Any

from face_concepts._core.numbers import fixed

# (display name, better direction, one-line explanation) per MetricReport key, in report order.
METRIC_HELP: dict[str, tuple[str, str, str]] = {
    "acc": (
        "Acc",
        "↑",
        "share of images still given the class when the model sees the concepts' reconstruction "
        "U·W instead of its own activations",
    ),
    "agreement": (
        "Agreement",
        "↑",
        "share of images whose top-1 prediction is the same on the reconstruction as on the "
        "original activations",
    ),
    "certified": (
        "Certified",
        "↑",
        "share of images whose top-1 margin p₁ − p₂ exceeds √(2·KL): by Pinsker no distribution "
        "that close can change their prediction (a guaranteed lower bound on Agreement)",
    ),
    "kl": (
        "D_KL",
        "↓",
        "mean KL divergence between the model's predicted distribution on the original and on "
        "the reconstructed activations",
    ),
    "mse": ("MSE", "↓", "mean squared error of the reconstruction U·W of the activations"),
    "rel_l2": (
        "rel-ℓ2",
        "↓",
        "reconstruction error relative to the size of the activations (scale-free)",
    ),
    "c_deletion": (
        "C-Del",
        "↑",
        "how fast accuracy drops when the most important concepts are removed first "
        "(area over the deletion curve, /(r+1))",
    ),
    "c_deletion_paper": (
        "C-Del (paper)",
        "↑",
        "the same deletion score with the authors' /(r+2) normalisation, for comparison with "
        "published numbers",
    ),
    "c_insertion": (
        "C-Ins",
        "↑",
        "how fast accuracy recovers when only the most important concepts are kept "
        "(normalised area under the insertion curve)",
    ),
    "c_mu_fidelity": (
        "C-μFidelity",
        "↑",
        "correlation between the importance of random concept subsets and the drop of the "
        "class logit when they are removed",
    ),
    "c_gini": (
        "C-Gini",
        "↑",
        "how concentrated the importance is on few concepts (0: all equal, near 1: one concept)",
    ),
    "density": (
        "U-density",
        "↓",
        "mean fraction of non-zero concept codes per image (lower: each image uses fewer concepts)",
    ),
    "hoyer": ("Hoyer", "↑", "Hoyer sparsity of the concept codes (1: one concept per image)"),
    "stability": (
        "C-Stab",
        "↑",
        "mean cosine between concepts matched across refits on 5 folds of the images "
        "(n/a: not computed; fit --stability or evaluate(stability=True) computes it)",
    ),
}


def format_value(value: Any) -> str:
    """A metric value for tables: 3 significant decimals, ``n/a`` for missing ones.

    Examples
    --------
    >>> format_value(0.12345), format_value(None)
    ('0.123', 'n/a')
    """
    if value is None:
        return "n/a"
    try:
        return fixed(float(value), 3)
    except (TypeError, ValueError):
        return str(value)


def percent(value: float | None) -> str:
    """A share as a percentage with one decimal (``n/a`` for a missing or NaN one).

    Examples
    --------
    >>> percent(0.1234), percent(-1e-9), percent(None), percent(float("nan"))
    ('12.3 %', '0.0 %', 'n/a', 'n/a')
    """
    if value is None or value != value:
        return "n/a"
    return f"{fixed(100 * float(value), 1)} %"


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """``(key, name, value, better, explanation)`` for each known metric present in ``metrics``.

    Examples
    --------
    >>> metric_rows({"acc": 1.0, "unknown": 3})[0][:3]
    ('acc', 'Acc', '1.000')
    """
    return [
        (key, name, format_value(metrics[key]), better, text)
        for key, (name, better, text) in METRIC_HELP.items()
        if key in metrics
    ]


def metric_table(metrics: dict[str, Any], *, explain: bool = True) -> str:
    """A plain-text table of the metrics, one per line, with their one-line explanations.

    Examples
    --------
    >>> print(metric_table({"acc": 0.5}, explain=False))
    metric          value   better
    Acc             0.500   ↑
    """
    lines = [f"{'metric':<14} {'value':>6}   better" + ("   meaning" if explain else "")]
    for _, name, value, better, text in metric_rows(metrics):
        line = f"{name:<14} {value:>6}   {better}"
        lines.append(line + (f"        {text}" if explain else ""))
    return "\n".join(lines)


def solver_summary(fit: dict[str, Any]) -> str:
    """``"solver S, N iterations"``, with where ``jacobian`` handed the fit to ``lbfgs`` and
    whether it stopped before converging, from a run's fit record (``fit_info_``)."""
    solver = fit.get("solver")
    text = (f"solver {solver}, " if solver else "") + f"{fit.get('n_iter', '?')} iterations"
    if fit.get("handover_iter") is not None:
        text += (
            f" (lbfgs from iteration {int(fit['handover_iter']) + 1}: the head is far from affine)"
        )
    return text + ("" if fit.get("converged", True) in (True, None) else ", not converged")


def importance_fact(fit: dict[str, Any], setting: str = "importance_precision") -> str:
    """A run's line on the precision of its Sobol importance (``fit["importance_precision"]``):
    empty unless the head ran in bfloat16, which is then said wherever the solver is.
    ``setting``: the setting's name in the reader's interface (the CLI's flag)."""
    if fit.get("importance_precision") != "bfloat16":
        return ""
    return (
        "Sobol importance with the head in bfloat16, where this hardware multiplies it natively "
        f"({setting} full: in the activations' precision)"
    )
