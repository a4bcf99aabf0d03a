"""C-μFidelity (docs/method.md §9.1): per image, the correlation between the importance mass of
random concept subsets and the logit drop when they are removed, averaged over images.
"""

from __future__ import annotations

import warnings

import torch

from face_concepts._core.seeding import make_generator
from face_concepts._core.validation import check_int
from face_concepts.metrics.faithfulness import (
    DEFAULT_BATCH_SIZE,
    Head,
    _check_codes,
    _check_importance,
    _masked_logits,
)

# Default number of random subsets for C-μFidelity (Xplique's MuFidelity uses 200 samples).
DEFAULT_N_SUBSETS = 200


def default_subset_size(n_concepts: int) -> int:
    """Default C-μFidelity subset size: ``max(1, round(0.2 · r))`` (Xplique's 20 % of features).

    Examples
    --------
    >>> default_subset_size(25)
    5
    """
    return max(1, round(0.2 * check_int(n_concepts, "n_concepts", minimum=1)))


def mu_fidelity_subsets(
    n_concepts: int,
    n_subsets: int = DEFAULT_N_SUBSETS,
    subset_size: int | None = None,
    random_state: int | torch.Generator | None = 0,
) -> torch.Tensor:
    """The random concept subsets of :func:`c_mu_fidelity`: a bool mask (n_subsets, n_concepts).

    Each row has exactly ``subset_size`` True entries (no repeats inside a subset); rows are
    independent draws from a CPU generator seeded by ``random_state``.

    Examples
    --------
    >>> mu_fidelity_subsets(6, n_subsets=3, subset_size=2).sum(dim=1).tolist()
    [2, 2, 2]
    """
    r = check_int(n_concepts, "n_concepts", minimum=1)
    n_subsets = check_int(n_subsets, "n_subsets", minimum=2)
    size = default_subset_size(r) if subset_size is None else subset_size
    size = check_int(size, "subset_size", minimum=1, maximum=r)
    generator = make_generator(random_state)
    chosen = torch.rand(n_subsets, r, generator=generator).argsort(dim=1)[:, :size]
    return torch.zeros(n_subsets, r, dtype=torch.bool).scatter_(1, chosen, True)


def c_mu_fidelity(
    U_hat: torch.Tensor,
    W: torch.Tensor,
    head: Head,
    class_id: int,
    importance: torch.Tensor,
    *,
    n_subsets: int = DEFAULT_N_SUBSETS,
    subset_size: int | None = None,
    random_state: int | torch.Generator | None = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """C-μFidelity: Pearson correlation between importance mass and logit drop, per image.

    ``n_subsets`` random subsets ``S`` of ``subset_size`` concepts (default
    :func:`default_subset_size`; drawn by :func:`mu_fidelity_subsets`, seeded by
    ``random_state``) are shared by all images. For each image, correlate ``Σ_{i∈S} importance_i``
    with ``h(û W)[class] − h((û with S zeroed) W)[class]`` over the subsets; average over images.

    Undefined correlations (zero variance) count as 0, with a ``RuntimeWarning``: an image whose
    drops are all equal (e.g. an all-zero code), or every image when the importance sums do not
    vary (``r = 1``, ``subset_size = r``, equal importances).

    Examples
    --------
    >>> U, W = torch.rand(6, 4), torch.rand(4, 5)
    >>> imp = torch.tensor([0.4, 0.3, 0.2, 0.1])
    >>> -1 <= c_mu_fidelity(U, W, torch.nn.Linear(5, 3), 0, imp, n_subsets=16) <= 1
    True
    """
    U, Wt = _check_codes(U_hat, W)
    r = U.shape[1]
    imp = _check_importance(importance, r, U).cpu()
    size = default_subset_size(r) if subset_size is None else subset_size
    in_subset = mu_fidelity_subsets(r, n_subsets, size, random_state)
    # Row 0 is the intact code, the reference for every drop.
    keep = torch.cat([torch.ones(1, r, dtype=torch.bool), ~in_subset])
    logits = _masked_logits(U, Wt, head, keep, batch_size, column=class_id)[..., 0].double().cpu()
    drops = logits[:1] - logits[1:]  # (S, n)
    mass = in_subset.double() @ imp  # (S,)
    scale = logits.abs().amax(dim=0).clamp_min(1.0)
    eps = 64 * torch.finfo(U.dtype).eps
    return _mean_pearson(mass, drops, eps * scale)


def _mean_pearson(x: torch.Tensor, Y: torch.Tensor, y_tol: torch.Tensor) -> float:
    """Mean over columns of corr(x, Y[:, j]); zero-variance columns count as 0 (warned)."""
    xc = x - x.mean()
    sx = xc.norm()
    if float(sx) <= 1e-12 * max(1.0, float(x.abs().max())):
        warnings.warn(
            "C-μFidelity is undefined because the importance sums of the subsets do not vary "
            "(r = 1, subset_size = r or equal importances); returning 0",
            RuntimeWarning,
            stacklevel=3,
        )
        return 0.0
    Yc = Y - Y.mean(dim=0)
    sy = Yc.norm(dim=0)
    flat = sy <= y_tol * Y.shape[0] ** 0.5
    if bool(flat.any()):
        warnings.warn(
            f"C-μFidelity: the logit drop does not vary over subsets for {int(flat.sum())} of "
            f"{Y.shape[1]} image(s) (e.g. all-zero codes); their correlation counts as 0",
            RuntimeWarning,
            stacklevel=3,
        )
    corr = (xc @ Yc) / (sx * sy.clamp_min(torch.finfo(sy.dtype).tiny))
    return float(torch.where(flat, torch.zeros_like(corr), corr).mean())
