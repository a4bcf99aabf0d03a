"""``kl_weight="auto"``: the smallest λ whose held-out agreement reaches a target.

A user of FACE has to pick λ, the weight of the KL term, and its useful range depends on the
model and the layer (the authors use 1e-5 on ImageNet, where we measured that it gives the same
bank as λ = 0, and much larger values on CelebA). :func:`fit_auto_kl_weight` picks it for them:

1. a seeded split holds out ``heldout_fraction`` (20 %) of the fitting *images*; their crops are
   left out of the search fits;
2. FACE is fitted on the other images' rows at each λ of an increasing grid, each fit
   warm-started from the previous λ's factors (``init="custom"``): the bank moves little from one
   λ to the next, so most fits take a few iterations. These screening fits stop at a looser
   tolerance, ``SEARCH_TOL`` (relative decrease of the objective per iteration, averaged over
   10 iterations, 1e-3 instead of the solver's 1e-5): they only have to rank the λ, and the
   tolerance decides the cost (``benchmarks/results/auto_lambda.md``);
3. at each λ the held-out images are encoded with the single encoder (at λ, or at the
   explainer's fixed encoder λ) and their top-1 agreement, KL and rel-ℓ2 are measured; the search
   stops at the first λ whose agreement reaches ``target_agreement``;
4. FACE is refitted on every row at the chosen λ, warm-started from the search's factors, with
   the user's ``max_iter`` and ``tol`` (the solver's defaults unless given).

If no λ on the grid reaches the target, a warning says so and the λ with the best held-out
agreement is kept (the smallest such λ on ties). A target reached by one held-out image's top-1
flipping, at a λ whose held-out KL is higher than a smaller λ's, is kept too, with a warning
that the choice is fragile (``record["fragile"]``): on few held-out images (16 views per
class hold out 3) agreement moves in steps of a third.

The grid ``DEFAULT_GRID = (0, 1e-2, 1e-1, 1, 10, 100)``: one point per decade over the range
where FACE's objective (mean squared error + λ · batch-mean KL) changes. On MobileNetV2 features
λ ≤ 1e-2 gave about the same concepts as λ = 0 and λ = 1 changed them (C-Deletion 0.60 → 0.74;
``benchmarks/results/reproduction.md``), and λ = 100 already drives the KL close to its floor
(``benchmarks/results/solver.md``), so the grid spans "plain NMF" to "prediction kept" with
points in between; starting at 0 means a model that NMF already explains faithfully gets plain
NMF. Larger λ cost more iterations, and the early stop avoids them when a smaller λ suffices.

The record (``explainer.fit_info_["auto_kl_weight"]``, saved with the run) holds the grid, every
tried λ's held-out agreement, KL, rel-ℓ2 and certified agreement, the choice and why.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from face_concepts._core.validation import check_float
from face_concepts.decomposition import FACE, encode
from face_concepts.methods.registry import bank_for, fit_info
from face_concepts.metrics import faithfulness as fa
from face_concepts.metrics.reconstruction import relative_l2
from face_concepts.metrics.split import train_test_split_indices

AUTO = "auto"
DEFAULT_GRID: tuple[float, ...] = (0.0, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_TARGET_AGREEMENT = 0.99
DEFAULT_HELDOUT_FRACTION = 0.2
SEARCH_TOL = 1e-3


class AutoKLWeightWarning(UserWarning):
    """No λ on the grid reached the target agreement on the held-out images."""


def check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    """The grid as floats, strictly increasing and ≥ 0, or one clear error.

    Examples
    --------
    >>> check_grid([0, 0.1, 1])
    (0.0, 0.1, 1.0)
    """
    values = tuple(check_float(v, "kl_weight grid value", minimum=0.0) for v in grid)
    if not values:
        raise ValueError("the kl_weight grid is empty; give at least one λ >= 0")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"the kl_weight grid must be strictly increasing, got {list(values)}")
    return values


def heldout_scores(
    A_img: torch.Tensor, W: torch.Tensor, head: Any, encoder_kl_weight: float
) -> dict[str, float]:
    """Agreement, certified agreement, KL and rel-ℓ2 of images ``A_img`` (n, p) under bank ``W``."""
    U = encode(A_img, W, head, kl_weight=encoder_kl_weight)
    U, Wt = fa._check_codes(U, W)
    A = fa._check_activations(A_img, U, Wt)
    logits_a = fa.head_logits(A, head)
    logits_r = fa.reconstruction_logits(U, Wt, head)
    pred_a = logits_a.argmax(dim=1)
    _, agreement, _ = fa._accuracy_from_logits(logits_a, logits_r, int(pred_a[0]))
    return {
        "agreement": agreement,
        "certified": fa._certified_from_logits(logits_a, logits_r),
        "kl": fa._kl_from_logits(logits_a, logits_r),
        "rel_l2": relative_l2(A, U, Wt),
    }


def _fit(est: FACE, rows: torch.Tensor, U0: Any, W0: Any) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    if W0 is None:
        U = est.fit_transform(rows)
    else:
        U = est.fit_transform(rows, U0=U0, W0=W0)
    return U, time.perf_counter() - start


def _check_search(
    target_agreement: float, grid: Sequence[float], heldout_fraction: float, A_img: torch.Tensor
) -> tuple[float, tuple[float, ...], float, int]:
    """The search settings checked: ``(target, grid, held-out fraction, number of images)``."""
    target = check_float(target_agreement, "target_agreement", minimum=0.0, maximum=1.0)
    values = check_grid(grid)
    frac = check_float(heldout_fraction, "heldout_fraction", minimum=0.0, maximum=1.0)
    n_img = int(A_img.shape[0])
    if n_img < 2:
        raise ValueError(
            f"kl_weight='auto' needs at least 2 images (it holds out {frac:.0%} of them to "
            f"choose λ), got {n_img}; give more images or a number for kl_weight"
        )
    return target, values, frac, n_img


def _split_images(
    rows: torch.Tensor, row_image: torch.Tensor, n_img: int, frac: float, random_state: int
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The seeded fit / held-out split of the images, and the mask of the rows of fit images."""
    fit_idx, held_idx = train_test_split_indices(n_img, frac, random_state)
    in_fit = torch.zeros(n_img, dtype=torch.bool)
    in_fit[torch.as_tensor(fit_idx)] = True
    return fit_idx, held_idx, in_fit[row_image.cpu()].to(rows.device)


def _search(
    grid: tuple[float, ...],
    estimator: Callable[[float, bool], FACE],
    fit_rows: torch.Tensor,
    A_held: torch.Tensor,
    head: Any,
    encoder_kl_weight: str | float,
    target: float,
) -> tuple[list[dict[str, Any]], dict[float, tuple[torch.Tensor, torch.Tensor]], float | None]:
    """Screen the grid in increasing λ, each fit warm-started from the previous one, until the
    held-out agreement reaches ``target``: ``(points, factors, chosen λ or None)``."""
    points: list[dict[str, Any]] = []
    factors: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    U = W = None
    for lam in grid:
        est = estimator(lam, W is not None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            U, seconds = _fit(est, fit_rows, U, W)
        W = est.concept_bank_
        factors[lam] = (U, W)
        enc = lam if encoder_kl_weight == "fit" else float(encoder_kl_weight)
        scores = heldout_scores(A_held.to(W.device), W, head, enc)
        points.append(
            {"kl_weight": lam, **scores, "n_iter": int(est.n_iter_), "init": est.init_,
             "converged": bool(est.converged_), "seconds": seconds}
        )  # fmt: skip
        if scores["agreement"] >= target:
            return points, factors, lam
    return points, factors, None


def _best_point(points: list[dict[str, Any]], grid: tuple[float, ...], target: float) -> float:
    """No λ reached ``target``: the smallest λ of best held-out agreement, with a warning."""
    best = max(p["agreement"] for p in points)
    chosen = min(p["kl_weight"] for p in points if p["agreement"] == best)
    warnings.warn(
        f"kl_weight='auto': no λ on the grid {list(grid)} reached held-out agreement "
        f"{target:g} (best {best:.3f}, at λ = {chosen:g}); kept λ = {chosen:g}. Lower "
        "target_agreement, or give more concepts (n_concepts) or a number for kl_weight",
        AutoKLWeightWarning,
        stacklevel=4,  # fit_auto_kl_weight's caller's caller, as before this helper existed
    )
    return float(chosen)


def _fragile_choice(points: list[dict[str, Any]], n_held: int) -> str | None:
    """Why a reached target rests on one held-out image, or None.

    The search stops at the first λ whose held-out agreement reaches the target. When the λ
    before it missed by exactly one image, and the chosen λ's held-out KL (the continuous
    measure of the same faithfulness) is higher than a smaller λ's, the choice was made by one
    image's top-1 flipping against what the KL says: on few held-out images it can go either
    way (another seed, another thread count)."""
    if len(points) < 2 or n_held < 1:
        return None
    *before, last = points
    prev = before[-1]
    if last["agreement"] - prev["agreement"] > 1.0 / n_held + 1e-9:
        return None
    best = min(before, key=lambda p: p["kl"])
    if not last["kl"] > best["kl"]:  # the KL agrees with the choice (or is NaN: no evidence)
        return None
    return (
        f"kl_weight='auto': λ = {last['kl_weight']:g} reached held-out agreement "
        f"{last['agreement']:.3f} by one image of {n_held} (λ = {prev['kl_weight']:g}: "
        f"{prev['agreement']:.3f}), but its held-out KL, {last['kl']:.3g}, is above the "
        f"{best['kl']:.3g} of λ = {best['kl_weight']:g}: on {n_held} held-out images the choice "
        "is fragile. Give more images, or a number for kl_weight"
    )


def _warm_codes(
    rows: torch.Tensor,
    fit_rows_mask: torch.Tensor,
    U_fit: torch.Tensor,
    W_fit: torch.Tensor,
    head: Any,
    lam: float,
    n_concepts: int,
) -> torch.Tensor:
    """Codes of every row for the refit: the search's for its rows, the encoder's for the rest."""
    U0 = torch.zeros(rows.shape[0], n_concepts, dtype=U_fit.dtype, device=U_fit.device)
    U0[fit_rows_mask] = U_fit
    if bool((~fit_rows_mask).any()):
        U0[~fit_rows_mask] = encode(rows[~fit_rows_mask], W_fit, head, kl_weight=lam)
    return U0


def _choice(chosen: float, reached: bool, target: float) -> dict[str, Any]:
    """The search record's ``chosen`` / ``reached`` / ``reason`` entries."""
    reason = (
        f"smallest λ on the grid whose held-out agreement reaches {target:g}"
        if reached
        else f"no λ reached {target:g}: the λ of best held-out agreement"
    )
    return {"chosen": chosen, "reached": reached, "reason": reason}


def fit_auto_kl_weight(
    rows: torch.Tensor,
    row_image: torch.Tensor,
    A_img: torch.Tensor,
    head: Any,
    *,
    n_concepts: int,
    encoder_kl_weight: str | float = "fit",
    target_agreement: float = DEFAULT_TARGET_AGREEMENT,
    grid: Sequence[float] = DEFAULT_GRID,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    solver: str = "auto",
    max_iter: int | None = None,
    tol: float | None = None,
    random_state: int = 0,
    verbose: bool = False,
    image_head: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Search λ on ``grid`` (module docstring), refit on all rows; return ``(U, W, info)``.

    Parameters
    ----------
    rows : Tensor (m, p)
        The rows to factorise (crop activations), on the device of the fit.
    row_image : Tensor (m,)
        The image each row comes from (0 .. n − 1).
    A_img : Tensor (n, p)
        The images' pooled activations: what agreement is measured on.
    head : callable
        The classifier head (n, p) -> (n, C) of the rows.
    image_head : callable, optional
        The head of the images' pooled activations, when it differs from the rows' (native-size
        crops at an intermediate layer: ``ConceptExplainer._row_head``); default ``head``.
    encoder_kl_weight : "fit" or float
        λ of the encoder for the held-out codes; "fit" encodes at each candidate λ.
    target_agreement : float in [0, 1]
        Held-out top-1 agreement the chosen λ must reach.

    ``info`` is what :func:`face_concepts.methods.registry.factorize` returns for the final fit
    plus ``info["auto_kl_weight"]``, the record of the search.
    """
    target, grid, frac, n_img = _check_search(target_agreement, grid, heldout_fraction, A_img)
    started = time.perf_counter()
    fit_idx, held_idx, fit_rows_mask = _split_images(rows, row_image, n_img, frac, random_state)
    fit_rows = rows[fit_rows_mask]
    A_held = A_img[torch.as_tensor(held_idx)]

    # Signed rows (a layer kept signed) get the signed concept bank, as in factorize.
    bank = bank_for(rows)

    def estimator(lam: float, warm: bool, stop: float | None) -> FACE:
        return FACE(
            head, n_concepts, kl_weight=lam, solver=solver, max_iter=max_iter, tol=stop,
            init="custom" if warm else "auto", random_state=random_state, verbose=verbose,
            bank=bank,
        )  # fmt: skip

    # Screening fits: the looser of SEARCH_TOL and the user's tol; their convergence is recorded
    # per point instead of warned (the refit below warns as any fit does).
    search_tol = SEARCH_TOL if tol is None else max(SEARCH_TOL, float(tol))

    points, factors, chosen = _search(
        grid, lambda lam, warm: estimator(lam, warm, search_tol), fit_rows, A_held,
        head if image_head is None else image_head, encoder_kl_weight, target,
    )  # fmt: skip
    reached = chosen is not None
    fragile = _fragile_choice(points, len(held_idx)) if reached else None
    if fragile is not None:
        warnings.warn(fragile, AutoKLWeightWarning, stacklevel=3)
    if chosen is None:
        chosen = _best_point(points, grid, target)
    # Refit on every row at the chosen λ, warm-started: the search's codes for its rows, the
    # single encoder's for the held-out images' rows.
    U_fit, W_fit = factors[chosen]
    U0 = _warm_codes(rows, fit_rows_mask, U_fit, W_fit, head, chosen, n_concepts)
    est = estimator(chosen, True, tol)
    U, seconds = _fit(est, rows, U0, W_fit)
    record = {
        "grid": list(grid),
        "target_agreement": target,
        "heldout_fraction": frac,
        "search_tol": search_tol,
        "n_fit_images": len(fit_idx),
        "n_heldout_images": len(held_idx),
        "heldout_step": 1.0 / len(held_idx) if len(held_idx) else None,
        "fragile": fragile,
        "encoder_kl_weight": encoder_kl_weight,
        "points": points,
        **_choice(chosen, reached, target),
        "refit_n_iter": int(est.n_iter_),
        "refit_seconds": seconds,
        "seconds": time.perf_counter() - started,
    }
    info = {**fit_info(est, bank), "auto_kl_weight": record}
    return U, est.concept_bank_, info


def fit_explainer(explainer: Any, prepared: dict[str, Any], device: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:  # fmt: skip
    """:meth:`ConceptExplainer.fit`'s factorisation when ``kl_weight="auto"`` (its settings)."""
    return fit_auto_kl_weight(
        prepared["rows"].to(device),
        prepared["index"],
        prepared["A_img"].to(device),
        explainer._row_head(),
        n_concepts=prepared["n_concepts"],
        encoder_kl_weight=explainer.encoder_kl_weight,
        target_agreement=explainer.target_agreement,
        solver=explainer.spec.solver,
        max_iter=explainer.max_iter,
        tol=explainer.tol,
        random_state=explainer.random_state,
        verbose=explainer.verbose,
        image_head=explainer._head(),
    )


def chosen_kl_weight(explainer: Any) -> float:
    """The λ that the last ``fit`` chose for ``kl_weight="auto"``, or one clear error."""
    record = (getattr(explainer, "fit_info_", None) or {}).get("auto_kl_weight")
    if not record_is_valid(record):
        raise ValueError(
            "kl_weight='auto' is chosen by ConceptExplainer.fit from held-out images and no fit "
            "has chosen one yet (shared banks cannot: give them a number); fit first, or give "
            "a number for kl_weight"
        )
    assert record is not None  # record_is_valid
    return float(record["chosen"])


def record_is_valid(record: Any) -> bool:
    """Whether ``record`` looks like a search record (for readers of saved runs)."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("points"), list)
        and all(
            isinstance(p, dict) and all(k in p for k in ("kl_weight", "kl", "rel_l2"))
            for p in record["points"]
        )
        and isinstance(record.get("chosen"), int | float)
        and not math.isnan(float(record["chosen"]))
    )


__all__ = [
    "AUTO",
    "DEFAULT_GRID",
    "DEFAULT_HELDOUT_FRACTION",
    "DEFAULT_TARGET_AGREEMENT",
    "SEARCH_TOL",
    "AutoKLWeightWarning",
    "check_grid",
    "chosen_kl_weight",
    "fit_auto_kl_weight",
    "fit_explainer",
    "heldout_scores",
    "record_is_valid",
]
