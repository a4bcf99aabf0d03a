"""Certified agreement (Pinsker): analytic 2- and 3-class cases, q = p, flips, and the bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from face_concepts.metrics import (
    METRIC_KEYS,
    MetricReport,
    accuracy_on_reconstruction,
    certified_agreement,
    compute_metrics,
    kl_divergence,
)


def _case(p_rows: list[list[float]], q_rows: list[list[float]]) -> tuple:
    """(A, U, W, head) whose logits are exactly log p (original) and log q (reconstruction).

    The head is the identity on C features and W the identity bank, so ``h(A) = A`` and
    ``h(U W) = U``; a constant shift keeps the inputs positive (softmax ignores it).
    """
    P = torch.tensor(p_rows, dtype=torch.float64)
    Q = torch.tensor(q_rows, dtype=torch.float64)
    C = P.shape[1]
    return P.log() + 10.0, Q.log() + 10.0, torch.eye(C, dtype=torch.float64), nn.Identity()


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# Hand-computed: margin m = p₁ − p₂, certified iff m > √(2·KL(p ‖ q)).
CASES = [
    # 2 classes, p = (0.8, 0.2), m = 0.6: certified iff KL < 0.18.
    ([0.8, 0.2], [0.7, 0.3], 0.025732, True),  # √(2·0.0257) = 0.227 < 0.6
    ([0.8, 0.2], [0.55, 0.45], 0.137568, True),  # 0.525 < 0.6
    ([0.8, 0.2], [0.51, 0.49], 0.180943, False),  # 0.602 > 0.6, yet q still agrees
    ([0.8, 0.2], [0.45, 0.55], 0.257971, False),  # q flips the class
    # 3 classes, p = (0.5, 0.3, 0.2), m = 0.2: certified iff KL < 0.02.
    ([0.5, 0.3, 0.2], [0.45, 0.33, 0.22], 0.005025, True),  # 0.100 < 0.2
    ([0.5, 0.3, 0.2], [0.4, 0.35, 0.25], 0.020698, False),  # 0.203 > 0.2, agrees
    ([0.2, 0.5, 0.3], [0.2, 0.3, 0.5], 0.102165, False),  # 1 and 2 swapped: 0.2·ln(5/3)
]


@pytest.mark.parametrize(("p", "q", "kl", "certified"), CASES)
def test_hand_computed_cases(p, q, kl, certified) -> None:
    assert _kl(p, q) == pytest.approx(kl, abs=1e-6)  # the comment's arithmetic
    A, U, W, head = _case([p], [q])
    assert kl_divergence(A, U, W, head) == pytest.approx(kl, abs=1e-6)
    assert certified_agreement(A, U, W, head) == float(certified)


def test_all_cases_at_once_is_the_share() -> None:
    two = [c for c in CASES if len(c[0]) == 2]
    A, U, W, head = _case([c[0] for c in two], [c[1] for c in two])
    assert certified_agreement(A, U, W, head) == pytest.approx(2 / 4)
    _, agreement, _ = accuracy_on_reconstruction(A, U, W, head, 0)
    assert agreement == pytest.approx(3 / 4)  # one of the four flips


def test_q_equal_p_certifies_exactly_the_images_with_a_positive_margin() -> None:
    p = [[0.4, 0.4, 0.2], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33], [0.25, 0.25, 0.5], [0.3, 0.3, 0.4]]
    A, U, W, head = _case(p, p)
    # Row 0 ties (margin 0): never certified, even at KL = 0. The others have margins > 0.
    assert certified_agreement(A, U, W, head) == pytest.approx(4 / 5)


def test_a_flipping_q_is_never_certified() -> None:
    g = torch.Generator().manual_seed(3)
    for C in (2, 3, 7):
        P = torch.softmax(3 * torch.randn(200, C, generator=g, dtype=torch.float64), dim=1)
        # q: p with its top-1 and top-2 probabilities swapped (the closest flip), or a random q.
        Q = P.clone()
        top = P.topk(2, dim=1).indices
        rows = torch.arange(P.shape[0])
        Q[rows, top[:, 0]], Q[rows, top[:, 1]] = P[rows, top[:, 1]], P[rows, top[:, 0]]
        Q[rows, top[:, 1]] += 1e-9  # break an exact tie toward the flip
        A, U, W, head = _case(P.tolist(), (Q / Q.sum(1, keepdim=True)).tolist())
        assert certified_agreement(A, U, W, head) == 0.0


def test_certified_is_a_lower_bound_on_agreement_for_every_q_in_the_ball() -> None:
    # Property: for random p and q (near and far), an image passing the certificate keeps its
    # top-1 class, so certified ≤ agreement image by image and in the mean.
    g = torch.Generator().manual_seed(11)
    n, C = 400, 5
    for spread in (0.05, 0.3, 1.0, 3.0):
        logits_p = 2 * torch.randn(n, C, generator=g, dtype=torch.float64)
        logits_q = logits_p + spread * torch.randn(n, C, generator=g, dtype=torch.float64)
        P, Q = torch.softmax(logits_p, 1), torch.softmax(logits_q, 1)
        per_image = []
        for i in range(n):
            A, U, W, head = _case([P[i].tolist()], [Q[i].tolist()])
            per_image.append(certified_agreement(A, U, W, head))
        A, U, W, head = _case(P.tolist(), Q.tolist())
        share = certified_agreement(A, U, W, head)
        assert share == pytest.approx(sum(per_image) / n)
        agree = (P.argmax(1) == Q.argmax(1)).double()
        assert all(c <= a for c, a in zip(per_image, agree.tolist()))
        _, agreement, _ = accuracy_on_reconstruction(A, U, W, head, 0)
        assert share <= agreement
    # Near q's are mostly certified, far ones rarely: the metric is not constant.
    assert 0.0 < share < 1.0


def test_random_linear_head_and_metric_report() -> None:
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(8, 4).double()
    with torch.no_grad():
        for prm in head.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=torch.float64))
    U = torch.rand(30, 3, generator=g, dtype=torch.float64)
    W = torch.rand(3, 8, generator=g, dtype=torch.float64)
    A = U @ W + 0.05 * torch.rand(30, 8, generator=g, dtype=torch.float64)
    cid = int(head(U @ W).argmax(1).mode().values)  # a class the reconstruction predicts
    rep = compute_metrics(A, U, W, head, cid, torch.tensor([0.5, 0.3, 0.2]))
    assert rep.certified == certified_agreement(A, U, W, head)
    assert 0.0 < rep.certified <= rep.agreement
    assert "certified" in METRIC_KEYS and rep.to_dict()["certified"] == rep.certified


def test_older_saved_reports_without_certified_still_load() -> None:
    old = {k: 0.5 for k in METRIC_KEYS if k != "certified"}
    rep = MetricReport.from_dict(old)
    assert rep.certified is None and rep.to_dict()["certified"] is None
    assert "n/a" in rep.to_markdown()
