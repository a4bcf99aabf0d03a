"""The KL kernel (``losses.kl_rows``) and the one missing-head message.

Oracles: ``torch.nn.functional.kl_div`` and the float64 formula ``Σ_c p_c (log p_c − log q_c)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from face_concepts.decomposition import FACE, encode, face_objective
from face_concepts.decomposition.losses import HEAD_REQUIRED, kl_rows
from face_concepts.decomposition.problem import make_problem
from face_concepts.metrics.faithfulness import kl_divergence


def _logits(n: int = 6, C: int = 5, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, C, generator=g), scale * torch.randn(n, C, generator=g)


def _direct_f64(za: torch.Tensor, zr: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(za.double(), dim=1)
    q = torch.softmax(zr.double(), dim=1)
    return (p * (p.log() - q.log())).sum(dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_rows_matches_kl_div_and_the_direct_formula(dtype):
    za, zr = (z.to(dtype) for z in _logits())
    logP = torch.log_softmax(za, dim=1)
    rows = kl_rows(logP, zr)
    assert rows.shape == (6,) and rows.dtype == dtype
    oracle = F.kl_div(torch.log_softmax(zr, dim=1), logP, reduction="none", log_target=True)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert torch.allclose(rows, oracle.sum(dim=1), atol=tol)
    assert torch.allclose(rows.double(), _direct_f64(za, zr), atol=10 * tol)
    assert torch.equal(kl_rows(logP, zr, logP.exp()), rows)  # P passed or recomputed: same bits
    assert torch.all(kl_rows(logP, za).abs() < tol)  # KL(P ‖ P) = 0


def test_objective_and_metric_use_the_same_kl():
    torch.manual_seed(0)
    head = nn.Linear(4, 3).double()
    g = torch.Generator().manual_seed(1)
    A, U, W = (torch.rand(*s, generator=g, dtype=torch.float64) for s in ((8, 4), (8, 2), (2, 4)))
    with torch.no_grad():
        za, zr = head(A), head(U @ W)
    kl = float(_direct_f64(za, zr).mean())
    mse = float(((A - U @ W) ** 2).mean())
    assert face_objective(A, U, W, head, 0.7) == pytest.approx(mse + 0.7 * kl, rel=1e-12)
    assert kl_divergence(A, U, W, head) == pytest.approx(kl, rel=1e-12)


def test_a_missing_head_is_the_same_message_everywhere():
    A = torch.rand(8, 4)
    W = torch.rand(2, 4)
    calls = {
        "face_objective": lambda: face_objective(A, torch.rand(8, 2), W, None, 1.0),
        "FACE.fit": lambda: FACE(None, 2, kl_weight=1.0, max_iter=2).fit(A),
        "FACE.fit(batch_size)": lambda: FACE(None, 2, kl_weight=1.0, batch_size=4).fit(A),
        "encode": lambda: encode(A, W, None, kl_weight=1.0),
        "make_problem": lambda: make_problem(A, None, 1.0),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == HEAD_REQUIRED, name
    assert "kl_weight" in HEAD_REQUIRED and "head" in HEAD_REQUIRED
