"""What was tried against the slow tail of the default fit at λ = 100 (issue 15, target 1).

From the same point (the plain-NMF warm start, then ``--start`` default hals iterations at λ),
each mode runs for ``--budget`` seconds on one thread and prints the objective against time:

- ``hals``: the default iteration (projected Newton on U, one Newton-CG step on W);
- ``hals-extrapolate``: the same with the safeguarded extrapolation between iterations;
- ``lbfgsb``: scipy's L-BFGS-B on (U, W) jointly (bounds U, W >= 0; exact objective and gradient);
- ``alt-lbfgsb-w``: one Newton iteration on U, then ``--w-iters`` L-BFGS-B iterations on W;
- ``w-block``: U fixed; 30 Newton-CG W-steps against L-BFGS-B to the W-block's optimum (how far
  one hals iteration leaves W from its block optimum).

    python benchmarks/lambda100_tail.py --mode hals --lam 100 --start 200 --budget 100

``--data``: the rows, head weights and bias written by ``benchmarks/gpu.py --export``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import exported_problem
from face_concepts.decomposition import solvers as sv
from face_concepts.decomposition.hals import solve_hals
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.newton import solve_codes_newton
from face_concepts.decomposition.newton_cg import _objective, bank_derivatives, bank_newton_step

MARKS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class _Budget(Exception):
    pass


def _lbfgsb(fg, x0, iters, callback=None):
    bounds = [(0.0, None)] * x0.size
    opts = {"maxiter": iters, "ftol": 0.0, "gtol": 0.0}
    return minimize(
        fg, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=opts, callback=callback
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".bench-data/mnv2.safetensors")
    parser.add_argument(
        "--mode",
        default="hals",
        choices=["hals", "hals-extrapolate", "lbfgsb", "alt-lbfgsb-w", "w-block"],
    )
    parser.add_argument("--lam", type=float, default=100.0)
    parser.add_argument("--start", type=int, default=200)
    parser.add_argument("--budget", type=float, default=100.0)
    parser.add_argument("--w-iters", type=int, default=20)
    parser.add_argument("--rank", type=int, default=25)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    A, prob = exported_problem(args.data, args.lam)
    U, W = initialize(A, args.rank, "nndsvda", random_state=0)
    start = solve_hals(prob, U, W, max_iter=max(args.start, 1), tol=0.0, warm_start=True)
    U, W = (start.U, start.W) if args.start else (U, W)
    f0, Z = sv._terms_at(prob, U, W)
    print(f"start ({args.start} hals iterations after the warm start): {f0.total:.6f}")
    log: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    def note(value: float) -> None:
        log.append((time.perf_counter() - t0, value))
        if time.perf_counter() - t0 > args.budget:
            raise _Budget

    n, r = U.shape
    w_shape = W.shape
    with torch.no_grad():
        try:
            if args.mode.startswith("hals"):
                solve_hals(
                    prob,
                    U,
                    W,
                    max_iter=10**6,
                    tol=0.0,
                    extrapolate=args.mode == "hals-extrapolate",
                    callback=lambda t, terms: note(terms.total),
                )
            elif args.mode == "lbfgsb":

                def fg(x):
                    x32 = torch.from_numpy(x.astype(np.float32))
                    Ux, Wx = x32[: n * r].view(n, r), x32[n * r :].view(w_shape)
                    terms, Zx = sv._terms_at(prob, Ux, Wx)
                    a2 = 2.0 * prob.alpha
                    G = torch.softmax(Zx, dim=1) - prob.target_P
                    M = Wx @ prob.kl_head.V.T
                    gU = a2 * (Ux @ (Wx @ Wx.T) - A @ Wx.T) + prob.beta * (G @ M.T)
                    gW = a2 * ((Ux.T @ Ux) @ Wx - Ux.T @ A) + prob.beta * (
                        (Ux.T @ G) @ prob.kl_head.V
                    )
                    return terms.total, np.concatenate(
                        [gU.double().numpy().ravel(), gW.double().numpy().ravel()]
                    )

                x0 = np.concatenate([U.double().numpy().ravel(), W.double().numpy().ravel()])
                _lbfgsb(fg, x0, 10**6, callback=lambda xk: note(fg(xk)[0]))
            elif args.mode == "alt-lbfgsb-w":
                f = f0.total
                while True:
                    U, _ = solve_codes_newton(prob, W, U, max_iter=1, tol=0.0, f0=f)
                    UtU, UtA = U.T @ U, U.T @ A

                    def fgw(x, U=U, UtU=UtU, UtA=UtA):
                        Wx = torch.from_numpy(x.astype(np.float32)).view(w_shape)
                        terms, Zx = _objective(prob, U, UtU, UtA, Wx)
                        g, _ = bank_derivatives(prob, U, Wx, Zx, UtU, UtA)
                        return terms.total, g.double().numpy().ravel()

                    res = _lbfgsb(fgw, W.double().numpy().ravel(), args.w_iters)
                    W, f = torch.from_numpy(res.x.astype(np.float32)).view(w_shape), float(res.fun)
                    note(f)
            else:  # w-block
                W2, Z2, f = W, Z, f0
                for _ in range(30):
                    W2, Z2, f, _ = bank_newton_step(prob, U, W2, Z2, f)
                    note(f.total)
                UtU, UtA = U.T @ U, U.T @ A

                def fgw(x):
                    Wx = torch.from_numpy(x.astype(np.float32)).view(w_shape)
                    terms, Zx = _objective(prob, U, UtU, UtA, Wx)
                    g, _ = bank_derivatives(prob, U, Wx, Zx, UtU, UtA)
                    return terms.total, g.double().numpy().ravel()

                for iters in (100, 1500):
                    res = _lbfgsb(fgw, W.double().numpy().ravel(), iters)
                    print(f"W-block by L-BFGS-B, {iters} iterations: {res.fun:.6f}")
        except _Budget:
            pass
    for k in MARKS:
        if k <= len(log):
            print(f"step {k}: {log[k - 1][0]:.1f} s, objective {log[k - 1][1]:.6f}")
    print(f"last (step {len(log)}): {log[-1][0]:.1f} s, objective {log[-1][1]:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
