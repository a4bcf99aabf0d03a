"""Where the time of FACE's solvers goes at λ = 1 (solver.md §8, scale.md §3).

``--case iteration``: one ``solve_hals`` iteration on the exported benchmark problem
(``benchmarks/gpu.py --export`` writes ``.bench-data/mnv2.safetensors``; n = 3311, C = 1000,
r = 25) after 30 warm iterations, profiled with ``torch.profiler`` (matrix products and the
passes over the n × C logits, grouped by shape), then an A/B of the W block's softmax-Jacobian
product, fused (``addcmul_``, the code) against a multiplication and a subtraction, the two
versions alternating in one process.

``--case heap``: the default ``FACE(...).fit(A)`` on the same problem, each fit in a fresh
process, with freed memory kept in the heap during the fit (``_core/heap.py``, the code) and with
glibc's own thresholds (``heap.ENABLED = False``), the two alternating ``--rounds`` times:
wall time, minor page faults and peak RSS per λ in ``--lambdas``.

``--case fit``: where the default ``FACE(...).fit(A)``'s wall time goes on the same problem, at
each λ of ``--lambdas``: one warm-up fit, then one fit timed by phase (the plain-NMF warm start
and the λ continuation's stages, the U blocks, the W blocks, the joint steps, the final
encoding), each phase's wall time (a phase called inside another counts in the outer one), and
the objective where the first joint step starts.

``--case minibatch``: a mini-batch fit (batches of 1024, two passes) of ``--rows`` rows generated
like ``benchmarks/scale.py``'s, with timers around the per-batch steps.

    python benchmarks/iteration_profile.py --case iteration [--threads 1]
    python benchmarks/iteration_profile.py --case fit [--lambdas 1,100] [--threads 2]
    python benchmarks/iteration_profile.py --case minibatch [--rows 20480] [--threads 1]
    python benchmarks/iteration_profile.py --case heap [--lambdas 0,1] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import exported_problem, load_average, mobilenet_crop_activations, mobilenet_v2

DATA = Path(__file__).resolve().parents[1] / ".bench-data" / "mnv2.safetensors"
AB_ROUNDS = 8


def _unfused(S: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """The softmax-Jacobian product before the fused pass: a mul and a sub over n × C."""
    SE = S * E
    return SE - S * SE.sum(dim=1, keepdim=True)


def iteration() -> None:
    from torch.profiler import ProfilerActivity, profile

    import face_concepts.decomposition.newton_cg as ncg
    from face_concepts.decomposition.hals import solve_hals
    from face_concepts.decomposition.init import initialize

    A, prob = exported_problem(str(DATA), 1.0)
    U, W = initialize(A, 25, "nndsvda", random_state=0)
    res = solve_hals(prob, U, W, max_iter=30, warm_start=True)
    U, W = res.U, res.W
    solve_hals(prob, U, W, max_iter=1)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        solve_hals(prob, U, W, max_iter=1)
        total = time.perf_counter() - t
    print(f"one iteration under the profiler: {1000 * total:.0f} ms")
    print("| op | input shapes | calls | self time |\n|---|---|---|---|")
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)  # fmt: skip
    for e in events[:16]:
        print(
            f"| `{e.key}` | {e.input_shapes} | {e.count} | {e.self_cpu_time_total / 1000:.1f} ms |"
        )
    fused = ncg._curvature_of_softmax
    times: dict[str, list[float]] = {"fused": [], "unfused": []}
    for _ in range(AB_ROUNDS):
        for name, f in (("fused", fused), ("unfused", _unfused)):
            ncg._curvature_of_softmax = f
            t = time.perf_counter()
            solve_hals(prob, U, W, max_iter=1)
            times[name].append(time.perf_counter() - t)
    ncg._curvature_of_softmax = fused
    for name, v in times.items():
        print(f"A/B {name}: median {1000 * statistics.median(v):.1f} ms over {len(v)} iterations")


def minibatch(n: int) -> None:
    import face_concepts.decomposition.minibatch as mb
    from face_concepts.decomposition import FACE

    A0 = mobilenet_crop_activations().A
    g = torch.Generator().manual_seed(0)
    A = A0[torch.randint(A0.shape[0], (n,), generator=g)] * torch.exp(0.25 * torch.randn(n, A0.shape[1], generator=g))  # fmt: skip
    spent: collections.Counter[str] = collections.Counter()

    def timed(name: str):
        f = getattr(mb, name)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = f(*args, **kwargs)
            spent[name] += time.perf_counter() - t
            return out

        setattr(mb, name, wrapper)

    for name in ("solve_codes", "streaming_objective", "_update_w", "evaluate", "batch_statistics"):
        timed(name)
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    est = FACE(mobilenet_v2().classifier, 25, kl_weight=1.0, batch_size=1024, max_iter=2, tol=0.0, random_state=0).fit(A)  # fmt: skip
    total = time.perf_counter() - t
    print(f"n = {n}: {total:.1f} s, objective {est.objective_:.5f}")
    print("| step | time | share |\n|---|---|---|")
    for name, v in spent.most_common():
        print(f"| `{name}` | {v:.2f} s | {100 * v / total:.1f} % |")


# (module, function, phase) timed by ``fit_phases``; a phase called inside another (the warm
# start's own U blocks) is counted in the outer one. The λ continuation's stages (λ ≥ 100) are
# fits at smaller λ: their blocks and joint steps count in those phases.
FIT_PHASES = (
    ("face_concepts.decomposition.hals", "_plain_warm_start", "plain-NMF warm start"),
    ("face_concepts.decomposition.hals", "_u_block", "U blocks (projected Newton on the codes)"),
    ("face_concepts.decomposition.hals", "bank_newton_step", "W blocks (projected Newton-CG)"),
    ("face_concepts.decomposition.joint", "joint_newton_step", "joint steps on (U, W)"),
    ("face_concepts.decomposition.estimators", "solve_codes", "final encoding of the rows"),
)


def fit_phases(lambdas: list[float]) -> None:
    """Time the default fit by phase (``FIT_PHASES``; a phase inside another counts in it)."""
    import importlib

    from face_concepts import FACE

    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    inside = [False]  # a phase is running: an inner one counts in it
    first_joint: list[float] = []  # the objective where the first joint step starts

    def timed(module: str, name: str, label: str) -> None:
        mod = importlib.import_module(module)
        f = getattr(mod, name)

        def wrapper(*args, **kwargs):
            if inside[0]:
                return f(*args, **kwargs)
            inside[0] = True
            if name == "joint_newton_step" and not first_joint:
                first_joint.append(float(args[4].total))  # (prob, U, W, Z, f_cur)
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t
                calls[label] += 1
                inside[0] = False

        setattr(mod, name, wrapper)

    for module, name, label in FIT_PHASES:
        timed(module, name, label)
    for lam in lambdas:
        A, prob = exported_problem(str(DATA), lam)
        head = prob.head.module
        warnings.simplefilter("ignore")
        FACE(head, 25, kl_weight=lam, random_state=0).fit(A)  # warm-up
        spent.clear()
        calls.clear()
        first_joint.clear()
        t = time.perf_counter()
        est = FACE(head, 25, kl_weight=lam, random_state=0).fit(A)
        total = time.perf_counter() - t
        print(
            f"\nλ = {lam:g}: {total:.2f} s, {est.n_warm_iter_} + {est.n_iter_} iterations, "
            f"objective {est.objective_:.6f}, converged {est.converged_}"
        )
        print("| phase | calls | time | share |\n|---|---|---|---|")
        for label, v in spent.most_common():
            print(f"| {label} | {calls[label]} | {v:.2f} s | {100 * v / total:.1f} % |")
        rest = total - sum(spent.values())
        print(f"| the rest (init, objective passes, stop tests) | | {rest:.2f} s | {100 * rest / total:.1f} % |")  # fmt: skip
        if first_joint:
            gap = 100 * (first_joint[0] / est.objective_ - 1)
            print(
                f"- objective where the first joint step starts: {first_joint[0]:.6f}, "
                f"{gap:+.2f} % above where the fit ends"
            )


def heap_fit(lam: float, retain: bool) -> None:
    """One default fit in this process; prints its wall time, minor faults and peak RSS (JSON)."""
    import resource

    from face_concepts import FACE
    from face_concepts._core import heap

    heap.ENABLED = retain
    A, prob = exported_problem(str(DATA), lam)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FACE(prob.head.module, 25, kl_weight=lam, random_state=0).fit(A)
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"wall": wall, "faults": usage.ru_minflt - faults, "rss_mb": usage.ru_maxrss / 1024}
    print(json.dumps({**out, "objective": est.objective_, "n_iter": est.n_iter_}))


def heap(lambdas: list[float], rounds: int, threads: int) -> None:
    import subprocess

    runs: dict[tuple[float, bool], list[dict]] = collections.defaultdict(list)
    for lam in lambdas:
        for k in range(rounds):
            for retain in (True, False) if k % 2 == 0 else (False, True):
                cmd = [sys.executable, __file__, "--case", "heap-fit", "--lambdas", str(lam),
                       "--threads", str(threads), "--retain", str(int(retain))]  # fmt: skip
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[lam, retain].append(json.loads(out.strip().splitlines()[-1]))
    print("| λ | freed memory | fit, median (all) | minor page faults | peak RSS | objective |")
    print("|---|---|---|---|---|---|")
    for (lam, retain), rs in runs.items():
        walls = sorted(r["wall"] for r in rs)
        every = ", ".join(f"{w:.1f}" for w in (r["wall"] for r in rs))
        print(
            f"| {lam:g} | {'kept in the heap' if retain else 'glibc default'} | "
            f"{statistics.median(walls):.2f} s ({every}) | "
            f"{statistics.median(r['faults'] for r in rs):,.0f} | "
            f"{max(r['rss_mb'] for r in rs):.0f} MB | {rs[0]['objective']:.6f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--case", choices=["iteration", "fit", "minibatch", "heap", "heap-fit"], required=True
    )
    ap.add_argument("--lambdas", default="0,1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--retain", type=int, default=1)
    ap.add_argument("--rows", type=int, default=20480)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.case == "heap-fit":
        return heap_fit(float(args.lambdas), bool(args.retain))
    print(f"load average at the start: {load_average()}; threads {args.threads}")
    if args.case == "heap":
        heap([float(x) for x in args.lambdas.split(",")], args.rounds, args.threads)
    elif args.case == "fit":
        fit_phases([float(x) for x in args.lambdas.split(",")])
    else:
        iteration() if args.case == "iteration" else minibatch(args.rows)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
