"""Total-order Sobol estimators, vectorised over images.

Each estimator takes the model outputs on the masks of :func:`~.designs.sobol_design`, one row
per image, in the design's order ``[A_s; B_s; C^1; …; C^r]``, and returns one total index per
image and concept. Images whose outputs on ``A_s`` have zero variance (a constant class logit:
e.g. an all-zero code) get index 0 rather than NaN; the driver warns about them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from face_concepts._core.validation import check_choice, check_int


def split_outputs(
    outputs: torch.Tensor, n_designs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split outputs (n, N_d (r + 2)) into ``y_A`` (n, N_d), ``y_B`` (n, N_d), ``y_C`` (n, r, N_d)."""
    n_designs = check_int(n_designs, "n_designs", minimum=2)
    if outputs.ndim != 2:
        raise ValueError(
            f"outputs must be 2-D (n_images, n_masks), got shape {tuple(outputs.shape)}"
        )
    n_masks = outputs.shape[1]
    if n_masks % n_designs or n_masks // n_designs < 3:
        raise ValueError(
            f"outputs has {n_masks} columns, which is not n_designs * (n_concepts + 2) "
            f"with n_designs={n_designs} and n_concepts >= 1"
        )
    n_concepts = n_masks // n_designs - 2
    y_a = outputs[:, :n_designs]
    y_b = outputs[:, n_designs : 2 * n_designs]
    y_c = outputs[:, 2 * n_designs :].reshape(outputs.shape[0], n_concepts, n_designs)
    return y_a, y_b, y_c


def _safe_ratio(num: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    # Zero variance means the output does not depend on any concept: no concept matters.
    ok = var > 0
    den = torch.where(ok, var, torch.ones_like(var))
    return torch.where(ok[:, None], num / den[:, None], torch.zeros_like(num))


def jansen(outputs: torch.Tensor, n_designs: int) -> torch.Tensor:
    """Jansen (1999) estimator: ``S_T,i = Σ_j (y_A,j − y_{C^i},j)² / (2 N_d Var(y_A))``.

    ``Var`` is the unbiased sample variance of ``y_A``, as in docs/method.md §8.1 and Craft-xai.

    Parameters
    ----------
    outputs : Tensor of shape (n_images, n_designs * (n_concepts + 2))
    n_designs : int

    Returns
    -------
    Tensor of shape (n_images, n_concepts)

    Examples
    --------
    >>> y = torch.tensor([[0.0, 1.0, 5.0, 5.0, 0.0, 1.0]])  # N_d = 2, r = 1: A, B, C^1
    >>> jansen(y, 2)
    tensor([[0.]])
    """
    y_a, _, y_c = split_outputs(outputs, n_designs)
    var = y_a.var(dim=1, unbiased=True)
    num = ((y_a[:, None, :] - y_c) ** 2).sum(dim=2) / (2 * n_designs)
    return _safe_ratio(num, var)


def saltelli(outputs: torch.Tensor, n_designs: int) -> torch.Tensor:
    """Saltelli (Primer, 2008) estimator: ``S_T,i = 1 − (mean_j y_A,j y_{C^i},j − μ_A²) / Var``.

    ``C^i`` shares every column but ``i`` with ``A_s``, so the covariance of ``y_A`` and
    ``y_{C^i}`` is the variance explained by all concepts except ``i``. Same formula as
    Craft-xai's ``SaltelliEstimator`` (including its mix of the biased second moment and the
    unbiased variance, so it is not exactly 0 for an output that ignores concept ``i``). It is not shift invariant in finite samples (a large
    mean logit inflates its error); compute in float64, as :func:`sobol_indices` does.

    Parameters
    ----------
    outputs : Tensor of shape (n_images, n_designs * (n_concepts + 2))
    n_designs : int

    Returns
    -------
    Tensor of shape (n_images, n_concepts)

    Examples
    --------
    >>> y = torch.rand(3, 4 * (2 + 2), dtype=torch.float64)  # 3 images, N_d = 4, r = 2
    >>> saltelli(y, 4).shape
    torch.Size([3, 2])
    """
    y_a, _, y_c = split_outputs(outputs, n_designs)
    mu_a = y_a.mean(dim=1)
    var = y_a.var(dim=1, unbiased=True)
    cross = (y_a[:, None, :] * y_c).mean(dim=2) - (mu_a**2)[:, None]
    out = _safe_ratio(var[:, None] - cross, var)
    return out


ESTIMATORS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "jansen": jansen,
    "saltelli": saltelli,
}


def get_estimator(name: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Return the estimator registered under ``name`` ("jansen" or "saltelli")."""
    check_choice(name, "estimator", tuple(ESTIMATORS))
    return ESTIMATORS[name]
