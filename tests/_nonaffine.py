"""Shared data for the solvers of heads that are not affine (``linearised``, ``jacobian``)."""

from __future__ import annotations

import warnings

import torch
from sklearn.exceptions import ConvergenceWarning


class Counting(torch.nn.Module):
    """Wraps a head and counts its forward calls (so the head is never seen as affine)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def mlp_data(seed: int = 0, n: int = 60, p: int = 10, C: int = 5):
    """Seeded rows ``A`` (n, p) in [0, 1) and a tanh MLP head with real curvature."""
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, p, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(p, 8), torch.nn.Tanh(), torch.nn.Linear(8, C)
    ).double()
    with torch.no_grad():
        mlp[2].weight.mul_(4.0)
    return A, mlp


def run_quiet(fn, prob, U, W, **kw):
    """``fn(prob, U, W, **kw)`` on copies, without the ConvergenceWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(prob, U.clone(), W.clone(), **kw)


def written_out_objective(A, mlp, lam, U, W):
    """§2's objective written out directly (the oracle): mean squared error plus λ times the
    mean KL of the head's softmax on ``A`` to its softmax on ``U W``; differentiable."""
    logP = torch.log_softmax(mlp(A), dim=1).detach()
    X = U @ W
    kl = (logP.exp() * (logP - torch.log_softmax(mlp(X), dim=1))).sum(1).mean()
    return ((A - X) ** 2).mean() + lam * kl


def projected_gradient_norm(A, mlp, lam, U, W):
    """Norm of the projected gradient of :func:`written_out_objective` (0 at a KKT point of
    ``U, W ≥ 0``)."""
    U, W = U.clone().requires_grad_(True), W.clone().requires_grad_(True)
    gU, gW = torch.autograd.grad(written_out_objective(A, mlp, lam, U, W), (U, W))
    parts = [torch.where(Y > 0, g, g.clamp(max=0)) for Y, g in ((U, gU), (W, gW))]
    return float(torch.cat([q.flatten() for q in parts]).norm())
