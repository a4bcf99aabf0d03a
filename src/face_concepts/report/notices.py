"""The bad news of a run, as the atlas states it: one sentence per problem, shown at the top of
the run's section. Every warning the terminal showed while the run was made is recorded with it
(``metadata["warnings"]``) and shown; the rest is derived from the run itself, so that runs saved
without that record (or by another process) are flagged too.
"""

from __future__ import annotations

import math
from typing import Any

_METRIC_SPLITS = ("heldout", "fit")


def _class_label(meta: dict[str, Any], entry: dict[str, Any] | None = None) -> str:
    src = entry if entry is not None else meta
    name = src.get("class_name")
    cid = src.get("class_id")
    return f"class {cid} “{name}”" if name else f"class {cid}"


def model_notices(meta: dict[str, Any]) -> list[str]:
    """How the model split behind the run differs from the model (intermediate layer, relu)."""
    model = meta.get("model") or {}
    if model.get("exact") is not False:
        return []
    text = model.get("approximation")
    if text:
        return [str(text)]
    return [
        f"approximate split: layer {model.get('layer')!r} does not reproduce the model "
        "(an intermediate layer, whose head sees a spatially constant map, or a signed layer "
        "clipped with signed='relu'); contributions and metrics are those of the split"
    ]


def fit_notices(meta: dict[str, Any]) -> list[str]:
    """An unconverged solver and dead concepts (unless a recorded warning already says so)."""
    out = []
    fit = meta.get("fit") or {}
    recorded = " ".join(map(str, meta.get("warnings") or [])).lower()
    if fit.get("converged") is False and "converg" not in recorded:
        out.append(
            f"the fit did not converge: the solver ({fit.get('solver', '?')}) stopped after "
            f"{fit.get('n_iter', '?')} iterations before its stopping rule was met, so the "
            "concepts may still change with more iterations (max_iter / --max-iter)"
        )
    dead = meta.get("dead_concepts") or []
    if dead and "dead" not in recorded:
        out.append(
            f"{len(dead)} concept(s) are dead (zero on every training crop): {list(dead)}; their "
            "importance is 0 (fit fewer concepts or more images)"
        )
    return out


def metric_notices(metrics: dict[str, Any], label: str) -> list[str]:
    """A class the model (or the reconstruction) never predicts on a split's images."""
    out = []
    for split in (*_METRIC_SPLITS, *(k for k in metrics if k not in _METRIC_SPLITS)):
        m = metrics.get(split)
        if not isinstance(m, dict):
            continue
        n = m.get("n_images", "?")
        original, acc = m.get("acc_original"), m.get("acc")
        if original == 0:
            out.append(
                f"the model never predicts {label} on the {n} {split} images (its own accuracy "
                "is 0.000): the concepts explain a logit that never wins, so Acc, C-Deletion and "
                "C-Insertion are 0 by construction and say nothing about the concepts"
            )
        elif acc == 0:
            out.append(
                f"the concepts never give {label} on the {n} {split} images (Acc 0.000) although "
                f"the model predicts it on {100 * original:.0f} % of them: the reconstruction "
                "loses the class"
                if isinstance(original, (int, float))
                else f"the concepts never give {label} on the {n} {split} images (Acc 0.000)"
            )
    return out


def share_notice(shares: list[float | None], total: float | None = None) -> list[str]:
    """Shares of the prediction that do not read as parts of it: contributions of mixed signs
    (shares above 100 % or below 0) or a negative total (the concepts lower the logit)."""
    values = [s for s in shares if s is not None and not math.isnan(s)]
    if not values:
        return []
    if total is not None and total < 0:
        return [
            f"the concepts lower the class logit in total (their contributions sum to {total:.3g}): "
            "a share of the prediction is then a share of a negative total, and a positive share "
            "means that the concept pushes the logit down"
        ]
    if all(0.0 <= s <= 1.0 for s in values):
        return []
    return [
        "the concepts' contributions have mixed signs, so shares of the prediction go above "
        f"100 % or below 0 (from {100 * min(values):.1f} % to {100 * max(values):.1f} %): a "
        "share is the concept's part of the net sum of contributions, which some concepts cancel"
    ]


def recorded_notices(meta: dict[str, Any], already: list[str]) -> list[str]:
    """The warnings the terminal showed while the run was made, not already stated."""
    out = []
    for text in meta.get("warnings") or []:
        line = f"warning shown while the run was made: {text}"
        if text not in already and line not in out:
            out.append(line)
    return out


def run_notices(meta: dict[str, Any]) -> list[str]:
    """Every notice of a single-class run that its metadata alone supports."""
    out = model_notices(meta) + fit_notices(meta)
    out += metric_notices(meta.get("metrics") or {}, _class_label(meta))
    return out + recorded_notices(meta, out)


def shared_notices(meta: dict[str, Any]) -> list[str]:
    """Notices of a shared bank: its model and fit, and each class's metrics."""
    out = model_notices(meta) + fit_notices(meta)
    for entry in meta.get("classes") or []:
        out += metric_notices(entry.get("metrics") or {}, _class_label(meta, entry))
    return out + recorded_notices(meta, out)
