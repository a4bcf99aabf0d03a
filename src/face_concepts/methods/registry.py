"""Registry of concept-extraction methods: presets of one pipeline, not copies of it.

Every method goes through the same images → patches → activations → factorisation → *single
encoder* → importance → metrics pipeline; they differ only in the settings below.

=============  ==============================================================================
name           what it is
=============  ==============================================================================
``face``       FACE with the engine's default solver (MM-HALS), native-size crops (FACE code).
``face-paper`` The authors' settings: Adam solver, λ = 1e-5, native-size crops (parity).
``nmf``        The same engine with λ = 0: the ablation isolating what the KL term buys.
``craft``      CRAFT (Fel et al. 2023): crops resized to the model input, scikit-learn
               ``NMF(n_components=r)`` with its defaults (nndsvda, cd, max_iter 200).
``ice``        ICE (Zhang et al. 2021): scikit-learn NMF on whole-image spatial feature maps
               (every position a row); importance by finite differences of the class logit.
=============  ==============================================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from face_concepts._core.validation import with_cli_message
from face_concepts.decomposition import FACE, NMF
from face_concepts.models.head import affine_parameters

_TORCH_SCALAR_WARNING = "Converting a tensor with requires_grad=True to a scalar"


@dataclass(frozen=True)
class MethodSpec:
    """Settings that define a method. ``kl_weight=None`` means "the user's value"."""

    name: str
    factorizer: str  # "face" (our engine) or "sklearn" (scikit-learn NMF)
    solver: str = "auto"
    kl_weight: float | None = None
    resize_patches: bool = False
    rows: str = "patches"  # "patches" (crops) or "spatial" (positions of whole-image maps)
    importance: str = "sobol"  # "sobol" or "finite-difference"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METHODS: dict[str, MethodSpec] = {
    "face": MethodSpec(
        "face", "face", description="FACE, default solver (MM-HALS), native-size crops"
    ),
    "face-paper": MethodSpec(
        "face-paper",
        "face",
        solver="adam",
        kl_weight=1e-5,
        description="FACE with the authors' Adam solver and λ=1e-5",
    ),
    "nmf": MethodSpec(
        "nmf", "face", kl_weight=0.0, description="the FACE engine with λ=0 (ablation)"
    ),
    "craft": MethodSpec(
        "craft",
        "sklearn",
        kl_weight=0.0,
        resize_patches=True,
        description="CRAFT: resized crops, scikit-learn NMF",
    ),
    "ice": MethodSpec(
        "ice",
        "sklearn",
        kl_weight=0.0,
        rows="spatial",
        importance="finite-difference",
        description="ICE: NMF of whole-image spatial maps, finite-difference importance",
    ),
}


def get_method(name: str) -> MethodSpec:
    """Look up a method by name, with a clear error listing the valid ones."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def factorize(
    spec: MethodSpec,
    A: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_concepts: int,
    kl_weight: float,
    random_state: Any,
    max_iter: int | None = None,
    tol: float | None = None,
    verbose: bool = False,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Fit ``A ≈ U W`` as the method says. Returns ``(U, W, info)``; info has n_iter, history,
    and ``bank``. ``verbose``: the FACE solver's progress on stderr. ``batch_size``: rows per
    mini-batch of FACE's fit (``FACE(batch_size=)``; None: every row at once); methods face and
    nmf only (:func:`check_batch_fit`), and ``max_iter``/``tol`` then count epochs.

    Signed rows (a layer with negative activations, kept signed by ``split_model``) get the
    signed concept bank (``FACE(bank="signed")``: codes ≥ 0, signed concepts); scikit-learn's
    NMF (craft, ice) cannot factorise them."""
    check_batch_fit(spec, head, kl_weight, batch_size)
    bank = bank_for(A)
    _check_bank_supported(spec, A, bank)
    if spec.factorizer == "face":
        return _factorize_face(spec, A, head, n_concepts, kl_weight, random_state, max_iter, tol, verbose, bank, batch_size)  # fmt: skip
    return _factorize_sklearn(A, n_concepts, random_state, bank)


def bank_for(A: torch.Tensor) -> str:
    """The concept bank for rows ``A``: ``"signed"`` when any row has a negative entry (a layer
    kept signed), else ``"nonnegative"``."""
    return "signed" if bool((A < 0).any()) else "nonnegative"


def fit_info(est: FACE, bank: str) -> dict[str, Any]:
    """What a fitted :class:`FACE` reports to the pipeline: n_iter, objective, convergence,
    solver, loss history and bank."""
    return {
        "n_iter": est.n_iter_,
        "objective": est.objective_,
        "converged": est.converged_,
        "solver": est.solver_,
        # jacobian: the iteration after which lbfgs took over (None: it did not)
        "handover_iter": getattr(est, "handover_iter_", None),
        "history": est.loss_history_,
        "bank": bank,
    }


def check_batch_fit(spec: MethodSpec, head: Any, kl_weight: float, batch_size: int | None) -> None:
    """Refuse a mini-batch fit (``batch_size``, the explainer's ``fit_batch_size``) that this
    method or head cannot run, in one line naming the setting; called before any model work.

    Only the FACE engine's MM-HALS fits by mini-batches: not scikit-learn's NMF (craft, ice),
    not the Adam loop (face-paper), and with λ > 0 only for an affine head (its running
    statistics use ``h(x) = x Vᵀ + b``). ``ExplainerConfig`` refuses the first two already
    (``face_concepts.pipeline.config.fit_batch_conflict``); this covers direct callers."""
    if batch_size is None:
        return
    why = None
    if spec.factorizer != "face":
        why = "factorises with scikit-learn's NMF, which has no mini-batch fit"
    elif spec.solver not in ("auto", "hals"):
        why = f"runs the {spec.solver!r} solver, which has no mini-batch fit"
    if why is not None:
        raise with_cli_message(
            ValueError(
                f"fit_batch_size is for methods face and nmf only: method {spec.name!r} {why}; "
                "leave fit_batch_size unset (every row at once)"
            ),
            f"--fit-batch-size is for --method face and nmf only: --method {spec.name} {why}; "
            "leave --fit-batch-size unset (every row at once)",
        )
    if kl_weight > 0 and affine_parameters(head) is None:
        raise ValueError(
            "fit_batch_size needs an affine head (nn.Linear, or Dropout + Linear in eval mode) "
            f"when the KL term is on (λ = {kl_weight:g}): the mini-batch fit's running "
            f"statistics use h(x) = x Vᵀ + b, and this model's head ({type(head).__name__}) is "
            "not affine; leave fit_batch_size unset (every row at once)"
        )


def _check_bank_supported(spec: MethodSpec, A: torch.Tensor, bank: str) -> None:
    """Refuse signed rows for a method whose factoriser needs non-negative activations."""
    if bank == "signed" and (spec.factorizer != "face" or spec.solver == "adam"):
        how = "scikit-learn's NMF" if spec.factorizer != "face" else "the authors' Adam loop"
        what = (
            f"factorises with {how}, which needs non-negative activations, but this layer's "
            f"are signed (min {float(A.min()):.3g}); use"
        )
        raise with_cli_message(
            ValueError(
                f"method {spec.name!r} {what} method 'face' or 'nmf' (signed concept bank), "
                "or split the model with signed='posneg'"
            ),
            f"--method {spec.name} {what} --method face or nmf (signed concept bank), or "
            "--signed posneg",
        )


def _factorize_face(
    spec: MethodSpec,
    A: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    n_concepts: int,
    kl_weight: float,
    random_state: Any,
    max_iter: int | None,
    tol: float | None,
    verbose: bool,
    bank: str,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """:func:`factorize` with the FACE engine (by mini-batches of ``batch_size`` rows if given)."""
    est = FACE(
        head,
        n_concepts,
        kl_weight=kl_weight,
        solver=spec.solver,
        max_iter=max_iter,
        tol=tol,
        random_state=random_state,
        verbose=verbose,
        bank=bank,
        batch_size=batch_size,
    )
    with warnings.catch_warnings():
        # The Adam solver (face-paper) reads its loss with float() while it still requires
        # grad; PyTorch's warning about that line is internal and tells a user nothing.
        warnings.filterwarnings("ignore", message=_TORCH_SCALAR_WARNING, category=UserWarning)
        U = est.fit_transform(A)
    return U, est.concept_bank_, fit_info(est, bank)


def _factorize_sklearn(
    A: torch.Tensor, n_concepts: int, random_state: Any, bank: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """:func:`factorize` with scikit-learn's NMF with its defaults, exactly as CRAFT/ICE call it."""
    from sklearn.decomposition import NMF as SkNMF

    A64 = A.detach().cpu().double().numpy()
    sk = SkNMF(
        n_components=n_concepts,
        random_state=random_state if isinstance(random_state, int) else None,
    )
    U_np, converged = _fit_sklearn(sk, A64)
    W = torch.from_numpy(np.ascontiguousarray(sk.components_)).to(A.dtype)
    info = {
        "n_iter": int(sk.n_iter_),
        "converged": converged,
        "solver": "sklearn-cd",
        "history": None,
        "bank": bank,
    }
    return torch.from_numpy(U_np).to(A.dtype), W, info


def _fit_sklearn(sk: Any, A: np.ndarray) -> tuple[np.ndarray, bool]:
    """``sk.fit_transform(A)`` and whether it converged: it did not exactly when scikit-learn
    warned ``ConvergenceWarning``. Every warning it gave, that one included, is passed on to
    the caller as it was given (same category, text and source line, the caller's filters)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)  # seen even if shown before
        U = sk.fit_transform(A)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return U, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def finite_difference_importance(
    U: torch.Tensor,
    W: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    class_id: int,
    *,
    step: float = 1e-4,
) -> torch.Tensor:
    """ICE's importance: ``(h(UW + ε w_i)[c] − h(UW)[c]) / ε`` per image and concept, (n, r).

    Concept directions are the unit-norm rows of ``W``.
    """
    with torch.no_grad():
        R = U @ W
        base = head(R)[:, class_id]
        dirs = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out = torch.empty(U.shape[0], W.shape[0], dtype=R.dtype)
        for i in range(W.shape[0]):
            out[:, i] = (head(R + step * dirs[i])[:, class_id] - base) / step
    return out


__all__ = [
    "METHODS",
    "NMF",
    "MethodSpec",
    "check_batch_fit",
    "factorize",
    "finite_difference_importance",
    "get_method",
]
