"""Head calls and objective of the solvers for heads that are not affine (``jacobian``, the
default, ``linearised`` and ``pgd``) on a seeded MLP head, from the same start (issue 18 item 1).

    python benchmarks/linearised.py [--out benchmarks/results/linearised.md]

One thread; side by side in one run; ``pgd`` and ``linearised`` to tol 1e-6 (at most 1000
iterations), ``jacobian`` at its default tol (1e-4 over its outer iterations) and at 1e-6. A head
call is one forward of the head (a backward follows some of them; ``jacobian``'s one
forward-mode Jacobian counts as one).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_lines
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.autograd_solvers import solve_pgd
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.jacobian import solve_jacobian
from face_concepts.decomposition.linearised import solve_linearised
from face_concepts.decomposition.problem import make_problem

N, P, R, C = 200, 32, 5, 10


class Counting(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x) * 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/linearised.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    A = torch.rand(N, P, dtype=torch.float64)
    mlp = torch.nn.Sequential(torch.nn.Linear(P, 16), torch.nn.Tanh(), torch.nn.Linear(16, C))
    head = Counting(mlp.double()).eval()
    rows = []
    load_before = os.getloadavg()
    for lam in (1.0, 100.0):
        prob = make_problem(A, Head(head, dtype=A.dtype, device=A.device), lam)
        U0, W0 = initialize(A, R, "nndsvda", random_state=0)
        for name, solve, tol in (
            ("pgd", solve_pgd, 1e-6),
            ("linearised", solve_linearised, 1e-6),
            ("jacobian", solve_jacobian, 1e-4),
            ("jacobian", solve_jacobian, 1e-6),
        ):
            head.calls = 0
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = solve(prob, U0.clone(), W0.clone(), max_iter=1000, tol=tol)
            seconds = time.perf_counter() - t0
            h = res.history["total"]
            monotone = all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(h))
            rows.append((lam, name, tol, h[-1], res.n_iter, head.calls, seconds, monotone))
            print(rows[-1], file=sys.stderr, flush=True)
    lines = [
        "# Solvers for a head that is not affine: `jacobian` vs `linearised` vs `pgd`",
        "",
        "- command: `python benchmarks/linearised.py`",
        *machine_lines(),
        f"- load average before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- A: {N} x {P} uniform (seed 0), r = {R}, head: Linear({P}, 16) - tanh - Linear(16, {C}), "
        "logits x 3; nndsvda start; max_iter 1000; one thread",
        "",
        "| λ | solver | tol | final objective | iterations | head calls | wall (s) | monotone |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {lam:g} | {name} | {tol:g} | {obj:.6f} | {it} | {calls:,} | {sec:.1f} | {mono} |"
            for lam, name, tol, obj, it, calls, sec, mono in rows
        ),
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
