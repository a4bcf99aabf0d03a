"""The default hals iteration's trajectory on the benchmark rows: objective per iteration and
the scale-free KKT residual every few iterations, from the plain-NMF warm start.

Used to see how far a fit is from convergence at a given iteration (issue 15, the stop rule):

    python benchmarks/trajectory.py --data .bench-data/mnv2.safetensors --lam 100 --iters 1500 --every 10

``--data``: the rows, head weights and bias written by ``benchmarks/gpu.py --export``. One
thread. Writes a JSON file (``--out``) with ``obj`` (one value per iteration), ``kkt``
(``[iteration, residual]`` pairs) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import exported_problem
from face_concepts.decomposition import solvers as sv
from face_concepts.decomposition.hals import solve_hals
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.newton_cg import bank_newton_step
from face_concepts.decomposition.problem import Problem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".bench-data/mnv2.safetensors")
    parser.add_argument("--lam", type=float, default=1.0)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rank", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    A, prob = exported_problem(args.data, args.lam)
    U, W = initialize(A, args.rank, "nndsvda", random_state=0)
    plain = Problem(A=prob.A, head=None, kl_weight=0.0, sq_norm_A=prob.sq_norm_A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm = solve_hals(plain, U, W, max_iter=sv.WARM_MAX_ITER, tol=sv.WARM_TOL)
    U, W = warm.U, warm.W
    curvature = sv._Curvature()
    out: dict = {"lam": args.lam, "warm_iter": warm.n_iter, "obj": [], "kkt": []}
    t0 = time.perf_counter()
    with torch.no_grad():
        prev, Z = sv._terms_at(prob, U, W)
        for t in range(args.iters + 1):
            if t % args.every == 0:
                out["kkt"].append((t, sv.kkt_residual(prob, U, W, None, prev.total)))
            if t == args.iters:
                break
            U, Z, f_u, UtA = sv._u_block(prob, U, W, Z, 10, prev.total, curvature)
            W, Z, prev, UtA = bank_newton_step(prob, U, W, Z, f_u, UtA=UtA)
            out["obj"].append(prev.total)
    out["seconds"] = time.perf_counter() - t0
    path = args.out or f"trajectory_lam{args.lam:g}.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)
    print(
        f"{path}: {len(out['obj'])} iterations, objective {out['obj'][-1]:.6g}, {out['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
