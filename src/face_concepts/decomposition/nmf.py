"""``NMF``: plain NMF (λ = 0, no head) with the same solvers, encoder and contract as ``FACE``."""

from __future__ import annotations

from typing import Any

from face_concepts.decomposition.estimators import FACE


class NMF(FACE):
    """Plain NMF with the same solvers, encoder and contract as :class:`FACE` (λ = 0, no head).

    Minimises ``mean (A − U W)²`` over ``U, W ≥ 0`` (``bank="signed"``: Semi-NMF, ``W`` free).

    Examples
    --------
    >>> import torch
    >>> A = torch.rand(30, 6)
    >>> NMF(n_concepts=2, random_state=0).fit(A).concept_bank_.shape
    torch.Size([2, 6])
    """

    def __init__(
        self,
        n_concepts: int = 25,
        *,
        solver: str = "auto",
        max_iter: int | None = None,
        tol: float | None = None,
        init: str = "auto",
        random_state: Any = None,
        device: Any = None,
        verbose: bool = False,
        batch_size: int | None = None,
        forget_factor: float = 0.1,
        bank: str = "nonnegative",
    ) -> None:
        super().__init__(
            None,
            n_concepts,
            kl_weight=0.0,
            solver=solver,
            max_iter=max_iter,
            tol=tol,
            init=init,
            random_state=random_state,
            device=device,
            verbose=verbose,
            batch_size=batch_size,
            forget_factor=forget_factor,
            bank=bank,
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        params = super().get_params(deep)
        params.pop("head", None)
        params.pop("kl_weight", None)
        return params
