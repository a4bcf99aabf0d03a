"""One factorisation problem: ``A``, the head, ``λ`` and what every iteration reuses.

Kept apart from the solvers so that the block steps (``newton.py``, ``newton_cg.py``) and the
solver loops (``solvers.py``) depend on it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

from face_concepts.decomposition._head import Head
from face_concepts.decomposition.losses import HEAD_REQUIRED

T = TypeVar("T")


@dataclass
class Problem:
    """Data of one factorisation: ``A``, the head and the target ``log P``."""

    A: torch.Tensor
    head: Head | None
    kl_weight: float
    logP: torch.Tensor | None = None
    P: torch.Tensor | None = None
    sq_norm_A: float = 0.0
    Vc_sq_norm: float = 0.0
    Vc: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def p(self) -> int:
        return self.A.shape[1]

    @property
    def alpha(self) -> float:
        return 1.0 / (self.n * self.p)

    @property
    def beta(self) -> float:
        return self.kl_weight / self.n

    @property
    def factored(self) -> bool:
        return self.kl_weight == 0 or (self.head is not None and self.head.is_affine)

    # What make_problem sets when kl_weight > 0 (Vc: for an affine head), for the KL steps.
    @property
    def kl_head(self) -> Head:
        return _required(self.head, "head")

    @property
    def target_logP(self) -> torch.Tensor:
        return _required(self.logP, "logP")

    @property
    def target_P(self) -> torch.Tensor:
        return _required(self.P, "P")

    @property
    def centred_V(self) -> torch.Tensor:
        return _required(self.Vc, "Vc")


def _required(value: T | None, name: str) -> T:
    if value is None:
        raise ValueError(f"Problem.{name} is set only when kl_weight > 0 (see make_problem)")
    return value


def make_problem(
    A: torch.Tensor, head: Head | None, kl_weight: float, logP: torch.Tensor | None = None
) -> Problem:
    """Precompute what every iteration reuses (target distribution, norms)."""
    prob = Problem(A=A, head=head, kl_weight=kl_weight)
    prob.sq_norm_A = float((A.double() ** 2).sum())
    if kl_weight > 0:
        if head is None:
            raise ValueError(HEAD_REQUIRED)
        if logP is None:
            with torch.no_grad():
                logP = torch.log_softmax(head.logits(A), dim=1)
        prob.logP = logP
        prob.P = logP.exp()
        if head.is_affine:
            prob.Vc = head.V - head.V.mean(dim=0, keepdim=True)
    return prob
