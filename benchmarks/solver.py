"""Solver benchmark: the default FACE solver against the authors' Adam loop, side by side.

Data: MobileNetV2 (real ImageNet weights) features of random 64-px crops of the bundled real
photos (``_common.mobilenet_crop_activations``, p = 1280), its real classifier as the head,
r = 25, λ ∈ {1e-5, 1, 100}. For each λ, in one process:

- ``adam`` (the authors' solver, their init "nndsvd-authors") for 1,500 steps (or a time cap);
  (a) = its loss at the step where its own rule ``|L_t − L_{t−1}| < 1e-3`` stops it,
  (b) = its loss after 1,500 steps (or at the cap);
- ``hals`` (the default solver, default init "nndsvda") with tol 0 for a long run (time cap): the
  run with default settings (tol 1e-5, max_iter 1000) follows the same iterates, so its stop is
  read off this trace; the time each reaches (a) and (b) is the first iteration at or below them;
- ``hals`` from the authors' init (diagnostic row), ``pgd`` continued from the end of the long
  ``hals`` run (does a different solver find a lower point?), and the public ``FACE.fit``
  end to end with defaults (where it finishes in reasonable time).

λ = 0: scikit-learn ``NMF(25, init="nndsvda", solver="cd")`` (defaults, float32) against our
``NMF`` (hals). GFLOP/s: matmul flops of one ``hals`` iteration counted with
``torch.utils.flop_counter.FlopCounterMode`` (and a closed formula) over its measured time,
against the measured rate of plain matmuls in the same run.

Times are wall-clock seconds from the solver call (setup: init SVD and target ``P``, reported
separately); CPU seconds are recorded too, because other jobs share the machine.

    python benchmarks/solver.py [--out benchmarks/results/solver.md] [--adam-caps 480,240,240]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
import sklearn
import torch
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning
from torch.utils.flop_counter import FlopCounterMode

from _common import (
    Trace,
    load_average,
    log,
    machine_lines,
    matmul_gflops,
    mobilenet_crop_activations,
    timed,
    traced,
)
from face_concepts.decomposition import FACE, NMF
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.losses import kl_rows
from face_concepts.decomposition.solvers import (
    DEFAULTS,
    SOLVERS,
    _hals_sweeps,
    evaluate,
    make_problem,
    u_step,
    w_step,
)

R = 25
LAMBDAS = (1e-5, 1.0, 100.0)
ADAM_STEPS, ADAM_TOL = 1500, 1e-3


def adam_stop(obj: list[float]) -> int | None:
    """Index of the step where the authors' rule ``|L_t − L_{t−1}| < 1e-3`` stops Adam."""
    for i in range(1, len(obj)):
        if abs(obj[i] - obj[i - 1]) < ADAM_TOL:
            return i
    return None


def default_stop(obj0: float, obj: list[float]) -> tuple[int, bool] | None:
    """Where ``hals`` with default settings stops on this trace: (index, converged)."""
    tol, max_iter = DEFAULTS["hals"]["tol"], int(DEFAULTS["hals"]["max_iter"])
    prev = obj0
    for i, v in enumerate(obj[:max_iter]):
        if prev <= 0 or (prev - v) / prev < tol:
            return i, True
        prev = v
    return (max_iter - 1, False) if len(obj) >= max_iter else None


def fmt_t(tr: Trace, i: int | None) -> str:
    return "—" if i is None else f"{tr.wall[i]:.3g} s ({tr.cpu[i]:.3g} cpu-s, it {i + 1})"


def ratio(num: float | None, den: float | None) -> str:
    return "—" if num is None or den is None or den <= 0 else f"{num / den:.0f}×"


def run_lambda(A, head_module, lam: float, inits: dict, caps: dict, e2e: bool) -> dict:
    """All runs for one λ; returns the numbers and the markdown rows."""
    prob, t_prob = timed(
        lambda: make_problem(A, Head(head_module, dtype=A.dtype, device=A.device), lam)
    )
    log(f"λ={lam:g}: problem set up in {t_prob:.1f} s; adam ...")
    (Ua, Wa, t_ia), (Ud, Wd, t_id) = inits["nndsvd-authors"], inits["nndsvda"]
    adam = traced("adam", prob, Ua, Wa, caps["adam"], max_iter=ADAM_STEPS, tol=0.0)
    i_a = adam_stop(adam.obj)
    i_b = len(adam.obj) - 1
    obj_a = adam.obj[i_a] if i_a is not None else None
    obj_b = adam.obj[i_b]
    log(f"  adam: {i_b + 1} steps in {adam.wall[-1]:.0f} s, stop at {i_a}; hals ...")
    hals = traced("hals", prob, Ud, Wd, caps["hals"], max_iter=3000, tol=0.0)
    obj0 = {"nndsvda": evaluate(prob, Ud, Wd).total, "nndsvd-authors": evaluate(prob, Ua, Wa).total}
    ds = default_stop(obj0["nndsvda"], hals.obj)
    hals_a = traced("hals", prob, Ua, Wa, caps["aux"], max_iter=3000, tol=0.0)
    log(f"  hals: {len(hals.obj)} its; pgd continuation ...")
    pgd = traced("pgd", prob, hals.U, hals.W, caps["aux"], max_iter=3000, tol=0.0)
    face = None
    if e2e:
        est = FACE(head_module, n_concepts=R, kl_weight=lam)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _, t_face = timed(lambda: est.fit(A))
        face = (t_face, est.n_iter_, est.objective_, est.converged_)
    finals = [min(adam.obj), min(hals.obj), min(hals_a.obj), min(pgd.obj)]
    if face is not None:
        finals.append(face[2])
    best = min(finals)
    return dict(
        lam=lam, t_prob=t_prob, t_init={"adam": t_ia, "hals": t_id}, adam=adam, hals=hals,
        hals_a=hals_a, pgd=pgd, i_a=i_a, i_b=i_b, obj_a=obj_a, obj_b=obj_b, ds=ds, face=face,
        best=best, prob=prob, obj0=obj0,
    )  # fmt: skip


def _within(tr: Trace, target: float) -> str:
    j = tr.reach(target * 1.01)
    return "not reached" if j is None else f"iteration {j + 1} ({tr.wall[j]:.3g} s)"


def lambda_table(d: dict) -> list[str]:
    adam, hals, hals_a, pgd = d["adam"], d["hals"], d["hals_a"], d["pgd"]
    i_a, i_b, obj_a, obj_b, ds, best = (
        d["i_a"],
        d["i_b"],
        d["obj_a"],
        d["obj_b"],
        d["ds"],
        d["best"],
    )
    ta = adam.wall[i_a] if i_a is not None else None
    tb = adam.wall[i_b]
    b_label = f"after {i_b + 1} steps" + (" (time cap)" if i_b + 1 < ADAM_STEPS else "")
    out = [
        f"### λ = {d['lam']:g}",
        "",
        "- (a) adam's own stop: "
        + (f"step {i_a + 1}, objective {obj_a:.6g}" if i_a is not None else
           f"**not reached** in {i_b + 1} steps ({adam.wall[-1]:.0f} s)")
        + f"; (b) adam {b_label}: objective {obj_b:.6g}",
        f"- setup: target P and head norms {d['t_prob']:.2f} s; init SVD: nndsvd-authors "
        f"{d['t_init']['adam']:.2f} s, nndsvda {d['t_init']['hals']:.2f} s (not in the times below)",
        f"- best objective found by any run: {best:.6g}",
        f"- objective at the init: nndsvda {d['obj0']['nndsvda']:.6g}, nndsvd-authors "
        f"{d['obj0']['nndsvd-authors']:.6g}; hals (nndsvda) objective after iterations 1–8: "
        + ", ".join(f"{v:.4g}" for v in hals.obj[:8]),
        f"- hals (nndsvda) within 1 % of the best: {_within(hals, best)}; "
        f"within 1 % of adam's (b): {_within(hals, obj_b)}",
        "",
        "| solver (init) | time to (a) | ratio | time to (b) | ratio | final objective | vs best | iterations (time) |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip

    def row(name, tr, upto=None, final_i=None, note=""):
        ja = tr.reach(obj_a, upto) if obj_a is not None else None
        jb = tr.reach(obj_b, upto)
        fi = len(tr.obj) - 1 if final_i is None else final_i
        fo = tr.obj[fi]
        out.append(
            f"| {name} | {fmt_t(tr, ja)} | {ratio(ta, tr.wall[ja] if ja is not None else None)} "
            f"| {fmt_t(tr, jb)} | {ratio(tb, tr.wall[jb] if jb is not None else None)} "
            f"| {fo:.6g} | {100 * (fo - best) / best:+.2f} % | {fi + 1} ({tr.wall[fi]:.3g} s){note} |"
        )
        return ja, jb, fo

    row("adam (nndsvd-authors), authors' solver", adam, note=" (capped)" if adam.capped else "")
    if ds is not None:
        d["default"] = row(
            "**hals (nndsvda), default settings**", hals, ds[0] + 1, ds[0],
            "" if ds[1] else " (max_iter, not converged)",
        )  # fmt: skip
    else:
        d["default"] = row("**hals (nndsvda), default settings**", hals,
                           note=f" (had not stopped at the {hals.wall[-1]:.0f} s cap)")  # fmt: skip
    row("hals (nndsvda), long run tol 0", hals, note=" (capped)" if hals.capped else "")
    row("hals (nndsvd-authors), tol 0", hals_a, note=" (capped)" if hals_a.capped else "")
    out.append(
        f"| pgd continued from the long hals run | | | | | {pgd.obj[-1]:.6g} "
        f"| {100 * (pgd.obj[-1] - best) / best:+.2f} % | {len(pgd.obj)} ({pgd.wall[-1]:.0f} s) |"
    )
    if d["face"] is not None:
        t, n_it, obj, conv = d["face"]
        out.append(
            f"| `FACE(head, 25, kl_weight={d['lam']:g}).fit(A)` end to end (init, solver, code "
            f"polish): {t:.1f} s | | | | | {obj:.6g} | {100 * (obj - best) / best:+.2f} % "
            f"| {n_it}{'' if conv else ' (not converged)'} |"
        )
    return [*out, ""]


def sklearn_section(A, inits: dict, cap: float) -> tuple[list[str], dict]:
    """λ = 0: scikit-learn NMF (cd) against our NMF / hals."""
    A_np = A.numpy()
    sk = SkNMF(R, init="nndsvda", solver="cd", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Usk, t_sk = timed(lambda: sk.fit_transform(A_np))
    diff = A_np.astype(np.float64) - Usk.astype(np.float64) @ sk.components_.astype(np.float64)
    obj_sk = float((diff**2).mean())
    prob = make_problem(A, None, 0.0)
    Ud, Wd, t_init = inits["nndsvda"]
    tr = traced("hals", prob, Ud, Wd, cap, max_iter=3000, tol=0.0)
    ds = default_stop(evaluate(prob, Ud, Wd).total, tr.obj)
    j = tr.reach(obj_sk)
    in_default = j is not None and ds is not None and j <= ds[0]
    t_ours = t_init + tr.wall[j] if in_default else None
    est = NMF(R)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, t_nmf = timed(lambda: est.fit(A))
    if j is None:
        why = (
            f"within the {tr.wall[-1]:.0f} s cap"
            if tr.capped
            else f"before it stops decreasing ({len(tr.obj)} iterations)"
        )
        reach = f"does **not** reach it {why} (best {min(tr.obj):.6g})"
    else:
        reach = (
            f"reaches it after {tr.wall[j]:.2f} s of solver ({j + 1} iterations; "
            f"{tr.cpu[j]:.2f} cpu-s) + {t_init:.2f} s init = {t_init + tr.wall[j]:.2f} s: "
            f"{t_sk / (t_init + tr.wall[j]):.2f}× sooner than scikit-learn "
            f"(solver alone {t_sk / tr.wall[j]:.1f}×)"
        )
    if ds is None:
        stop = "the default rule does not stop within the cap"
    else:
        stop = (
            f"with default settings it stops after {ds[0] + 1} iterations ({tr.wall[ds[0]]:.2f} s) "
            f"at {tr.obj[ds[0]]:.6g} ({100 * (tr.obj[ds[0]] - obj_sk) / obj_sk:+.2f} % vs "
            f"scikit-learn), so the default run "
            + ("reaches" if in_default else "does **not** reach")
            + " scikit-learn's objective"
        )
    lines = [
        "### λ = 0: scikit-learn NMF",
        "",
        f"- scikit-learn {sklearn.__version__} `NMF(25, init='nndsvda', solver='cd', random_state=0)` (its randomized SVD init is seeded; defaults "
        f"tol 1e-4, max_iter 200) on `A.numpy()` (float32; numpy's BLAS, 2 cores): {t_sk:.2f} s "
        f"including its init, {sk.n_iter_} iterations, objective in our scaling (mean squared "
        f"error) {obj_sk:.6g}",
        f"- ours, hals from nndsvda (float32), tol 0: {reach}; {stop}",
        f"- ours, `NMF(25).fit(A)` end to end with defaults: {t_nmf:.2f} s, {est.n_iter_} "
        f"iterations, objective {est.objective_:.6g} "
        f"({100 * (est.objective_ - obj_sk) / obj_sk:+.2f} % vs scikit-learn)",
        "",
    ]
    return lines, dict(t_sk=t_sk, t_ours=t_ours, reach=j, obj_sk=obj_sk, prob=prob, tr=tr)


# tol < 0 makes hals/pgd run exactly max_iter iterations (their rule stops on a relative
# decrease below tol); used only where a fixed number of iterations is measured.
FIXED_ITERS_TOL = -1.0


def count_flops(name: str, prob, U, W, max_iter: int) -> int:
    """Matmul flops of ``max_iter`` iterations of ``SOLVERS[name]`` from ``(U, W)``."""
    with warnings.catch_warnings(), FlopCounterMode(display=False) as fc:
        warnings.simplefilter("ignore", ConvergenceWarning)
        SOLVERS[name](prob, U.clone(), W.clone(), max_iter=max_iter, tol=FIXED_ITERS_TOL)
    return fc.get_total_flops()


def nominal_flops(n: int, p: int, r: int, C: int, lam: float) -> float:
    """Matmul flops of one hals iteration (one try per block, extrapolation step included)."""
    base = 3 * 2 * n * p * r  # A Wᵀ (U step), Uᵀ A (W step), Uᵀ A (extrapolation test)
    if lam == 0:
        return base
    return base + 5 * 2 * n * r * C + 5 * 2 * r * p * C  # logits / gradients through M = W Vᵀ


def gflops_section(
    A, C: int, probs: dict, starts: dict, runs: list[dict], n_its: int = 4
) -> list[str]:
    """Achieved GFLOP/s of one hals iteration against measured matmul rates."""
    n, p = A.shape
    sq = matmul_gflops(2048, 2048, 2048)
    tall = matmul_gflops(n, p, R)
    wide = matmul_gflops(R, n, p)
    lines = [
        "### GFLOP/s",
        "",
        f"- machine matmul rate (float32, best of 5, measured in this run): 2048³ {sq:.1f} "
        f"GFLOP/s; (n×p)@(p×r) = ({n}×{p})@({p}×{R}) {tall:.1f} GFLOP/s; (r×n)@(n×p) {wide:.1f} GFLOP/s",
        "- one hals iteration, in steady state (continuing from the end of the long run), "
        f"median over {n_its} iterations; flops counted by `FlopCounterMode` (matmuls only) and by "
        "the formula 3·2npr + 5·2nrC + 5·2rpC (λ > 0) or 3·2npr (λ = 0); the softmax / log-softmax "
        "/ exp passes over the n×C logits are not flops in this count but take time",
        "",
        "| λ | time / iteration | matmul GFLOP (counted / formula) | achieved GFLOP/s | % of 2048³ rate |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for lam, prob in probs.items():
        U, W = starts[lam]
        tr = traced("hals", prob, U, W, 1e9, max_iter=n_its, tol=FIXED_ITERS_TOL)
        dt = statistics.median(np.diff([0.0, *tr.wall]).tolist())
        f1 = count_flops("hals", prob, U, W, n_its)
        f0 = count_flops("hals", prob, U, W, 0)  # the evaluation at the start, not an iteration
        per = (f1 - f0) / n_its
        rate = per / dt / 1e9
        lines.append(
            f"| {lam:g} | {1e3 * dt:.0f} ms | {per / 1e9:.2f} / {nominal_flops(n, p, R, C, lam) / 1e9:.2f} "
            f"| {rate:.1f} | {100 * rate / sq:.0f} % |"
        )  # fmt: skip
    lines += [*adam_gflops_rows(runs, sq), ""]
    lam = LAMBDAS[1]
    return lines + breakdown_lines(probs[lam], *starts[lam])


def adam_gflops_rows(runs: list[dict], sq: float) -> list[str]:
    """Same numbers for one step of the authors' solver (materialised ``U W`` and ``h(U W)``)."""
    lines = []
    for d in runs:
        adam = d["adam"]
        dt = statistics.median(np.diff([0.0, *adam.wall]).tolist())
        U, W, _ = d["init_adam"]
        per = count_flops("adam", d["prob"], U, W, 1)
        rate = per / dt / 1e9
        lines.append(
            f"| {d['lam']:g}, adam step (for comparison) | {1e3 * dt:.0f} ms | {per / 1e9:.2f} "
            f"| {rate:.1f} | {100 * rate / sq:.0f} % |"
        )  # fmt: skip
    return lines


def _median_ms(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def breakdown_lines(prob, U, W) -> list[str]:
    """Where one hals iteration's time goes (λ > 0): the pieces it is made of, timed alone."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = prob.head.code_logits(U, W)
        WWt, AWt = W @ W.T, prob.A @ W.T
        items = {
            "one hals iteration (`solve_hals`, max_iter 1)": lambda: SOLVERS["hals"](
                prob, U, W, max_iter=1, tol=FIXED_ITERS_TOL
            ),
            "U block update (`u_step`, one try)": lambda: u_step(prob, U, W, Z, 10),
            "W block update (`w_step`, one try)": lambda: w_step(prob, U, W, Z, 10),
            "HALS sweeps on U alone (`_hals_sweeps`, ≤ 10 sweeps × r rows)": lambda: _hals_sweeps(
                U.T.contiguous(), WWt, AWt.T.contiguous(), 10
            ),
            "`kl_rows(log P, Z)` on the n×C logits": lambda: kl_rows(prob.logP, Z),
            "`softmax(Z)` on the n×C logits": lambda: torch.softmax(Z, dim=1),
            "logits `U (W Vᵀ) + b`": lambda: prob.head.code_logits(U, W),
            "`A Wᵀ` (n×p)(p×r)": lambda: prob.A @ W.T,
        }
        rows = [f"| {k} | {_median_ms(f):.1f} ms |" for k, f in items.items()]
    return [
        f"Pieces of one iteration at λ = {prob.kl_weight:g}, each timed alone (median of 5), "
        "from the end point of the long run:",
        "",
        "| piece | time |",
        "|---|---|",
        *rows,
        "",
    ]


def _speed_line(d: dict, label: str, i_adam: int | None, j: int | None) -> str:
    """One "≥ 100× sooner" verdict; also the ratio with the setup of each side included."""
    lam, adam, hals = d["lam"], d["adam"], d["hals"]
    head = f"- λ = {lam:g}, {label} ≥ 100× sooner"
    if i_adam is None:
        why = "time cap" if len(adam.obj) < ADAM_STEPS else "the 1,500-step limit"
        return (f"{head}: **not measured** — adam did not stop by its rule within "
                f"{len(adam.obj)} steps ({adam.wall[-1]:.0f} s, {why})")  # fmt: skip
    if label == "(b)" and i_adam + 1 < ADAM_STEPS:
        head += f" (b = adam's objective after {i_adam + 1} steps at its time cap, not 1,500)"
    if j is None:
        where = "default run" if d["ds"] is not None else f"{hals.wall[-1]:.0f} s cap"
        return f"{head}: **missed** — not reached within the {where}"
    r = adam.wall[i_adam] / hals.wall[j]
    sa = d["t_prob"] + d["t_init"]["adam"]
    sh = d["t_prob"] + d["t_init"]["hals"]
    rs = (sa + adam.wall[i_adam]) / (sh + hals.wall[j])
    return (f"{head}: {r:.0f}× ({adam.wall[i_adam]:.1f} s vs {hals.wall[j]:.2f} s) -> "
            f"**{'met' if r >= 100 else 'missed'}** for the solvers; with each side's setup "
            f"(init SVD + target P) counted: {rs:.0f}× ({sa + adam.wall[i_adam]:.1f} s vs "
            f"{sh + hals.wall[j]:.1f} s) -> {'met' if rs >= 100 else 'missed'}")  # fmt: skip


def _quality_line(d: dict) -> str:
    """Default-settings final objective within 1 % of the best objective found."""
    lam, best, ds, hals = d["lam"], d["best"], d["ds"], d["hals"]
    head = f"- λ = {lam:g}, default final objective within 1 % of the best ({best:.6g})"
    if d["face"] is not None:
        gap = 100 * (d["face"][2] - best) / best
        src = "`FACE(...).fit` with defaults, `objective_`"
    elif ds is not None:
        gap = 100 * (hals.obj[ds[0]] - best) / best
        src = "the default stop on the hals trace"
    else:
        # hals never increases the objective, so the default run ends at or below its value
        # at the cap: a gap ≤ 1 % there is a valid "met"; a larger one is not decided.
        gap = 100 * (hals.obj[-1] - best) / best
        if gap <= 1:
            return (
                f"{head}: ≤ {gap:+.2f} % (bound: its value at the cap; monotone solver) -> **met**"
            )
        return (f"{head}: **missed within the time cap** — the default run had not stopped after "
                f"{len(hals.obj)} iterations ({hals.wall[-1]:.0f} s) and was at {gap:+.2f} %")  # fmt: skip
    return f"{head}: {gap:+.2f} % ({src}) -> **{'met' if gap <= 1 else 'missed'}**"


def targets_section(runs: list[dict], sk: dict) -> list[str]:
    out = ["## Targets", ""]
    for d in runs:
        ja, jb, _ = d["default"]
        out.append(_speed_line(d, "(a)", d["i_a"], ja))
        out.append(_speed_line(d, "(b)", d["i_b"], jb))
        out.append(_quality_line(d))
    if sk["t_ours"] is None:
        out.append(
            "- λ = 0, scikit-learn's final objective ≥ 2× sooner: **missed** — the default run "
            "stops before reaching it" + (" (a longer run does)" if sk["reach"] is not None else "")
        )
    else:
        r = sk["t_sk"] / sk["t_ours"]
        out.append(f"- λ = 0, scikit-learn's final objective ≥ 2× sooner (init included): {r:.2f}× "
                   f"-> **{'met' if r >= 2 else 'missed'}**")  # fmt: skip
    return [*out, ""]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/solver.md")
    ap.add_argument("--adam-caps", default="480,240,240",
                    help="time cap (s) of the 1,500-step adam run, per λ in 1e-5,1,100")  # fmt: skip
    ap.add_argument("--hals-cap", type=float, default=150.0, help="long hals run cap (s)")
    ap.add_argument("--aux-cap", type=float, default=30.0, help="cap (s) of the diagnostic runs")
    ap.add_argument("--e2e", default="1e-5", help="λ values at which FACE.fit runs end to end")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(2)
    load0, t0 = load_average(), time.perf_counter()
    acts = mobilenet_crop_activations()
    A, head = acts.A, acts.head
    n, p = A.shape
    C = head[-1].out_features
    inits = {}
    for k in ("nndsvd-authors", "nndsvda"):
        (U, W), t = timed(lambda: initialize(A, R, k))  # noqa: B023
        inits[k] = (U, W, t)
    adam_caps = [float(x) for x in args.adam_caps.split(",")]
    e2e = {float(x) for x in args.e2e.split(",") if x}
    runs = []
    for lam, cap in zip(LAMBDAS, adam_caps):
        caps = {"adam": cap, "hals": args.hals_cap, "aux": args.aux_cap}
        runs.append(run_lambda(A, head, lam, inits, caps, lam in e2e))
        runs[-1]["init_adam"] = inits["nndsvd-authors"]
    tables = [line for d in runs for line in lambda_table(d)]
    log("λ = 0 vs scikit-learn ...")
    sk_lines, sk = sklearn_section(A, inits, min(args.hals_cap, 60.0))
    log("GFLOP/s ...")
    probs = {0.0: sk["prob"], **{d["lam"]: d["prob"] for d in runs}}
    starts = {0.0: (sk["tr"].U, sk["tr"].W), **{d["lam"]: (d["hals"].U, d["hals"].W) for d in runs}}
    gf = gflops_section(A, C, probs, starts, runs)
    cmd = "python benchmarks/solver.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        "# Solver benchmark: default solver vs the authors' Adam loop",
        "",
        f"- command: `{cmd.strip()}` (from the repository root, in the project venv)",
        *machine_lines(),
        f"- load average (1/5/15 min) at start {load0}, at end {load_average()}; "
        f"total run {(time.perf_counter() - t0) / 60:.1f} min",
        f"- data: {acts.description}; n = {n}, p = {p}, r = {R}, C = {C} "
        "(head: the model's classifier, Dropout + Linear in eval mode), float32",
        f"- adam: lr 5e-4, authors' init, 1,500 steps or time caps {args.adam_caps} s per λ; "
        f"hals long run: tol 0 (until the objective stops decreasing), capped at "
        f"{args.hals_cap:g} s; diagnostic runs capped at {args.aux_cap:g} s",
        "- times: wall seconds from the solver call to the first iteration at or below the "
        "target (to 1e-5 relative; CPU seconds of this process in brackets); setup (init SVD, target P) excluded "
        "and listed per λ; ratio = adam's time / this solver's time. For adam, the loss at step t "
        "is the one its loop computes before step t's update, timed at the end of step t",
        "- the default-settings row is read off the long hals run (same iterates; the default "
        "rule, relative decrease < 1e-5 or 1,000 iterations, is applied to its trace)",
        "",
        "## Results",
        "",
        *tables,
        *sk_lines,
        *gf,
        *targets_section(runs, sk),
    ]
    text = "\n".join(md)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
