"""FACE fits of heads that are not affine (intermediate layers): the default solver against the
code at an earlier commit, and each solver by name, on the same rows (docs/method.md §4.9, §4.10).

The rows are what ``ConceptExplainer(split, n_concepts=10).fit(12 bundled photos, class_id=285)``
factorises (native 64-px crops, 16 per image, pooled at the layer; λ = 1), with the head it fits
them with (the rest of the network on the crops' own map size): each fit's process runs the
explainer up to its FACE fit, then times that fit alone. Cases: MobileNetV2 (real weights) at ``features.14`` (signed, ``posneg``) and
ResNet-18 (random weights, seed 0) at ``layer3``, as in ``intermediate_layer.py``.

Each fit runs in a fresh process (``FACE(head, 10, kl_weight=1, random_state=0, solver=S)``,
defaults otherwise) and reports its wall time, objective, iterations, whether it converged,
head calls and the warnings it raised. ``--before COMMIT`` also runs the default fit with the
``src/`` of that commit (a temporary ``git worktree``), the two alternating in one run.

    python benchmarks/nonaffine_solvers.py [--before 802cc54] [--solvers auto,lbfgs] [--threads 2]
        [--cases mobilenet_v2,resnet18] [--memories 10,50]
        [--out benchmarks/results/intermediate_layer.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import env_importing, load_average, machine_lines, source_of

CASES = {"mobilenet_v2": "features.14", "resnet18": "layer3"}
N_IMAGES = 12


def capture(model: str, layer: str, threads: int) -> tuple[Any, Any, float]:
    """The rows, the crops' head and λ that the explainer's FACE fit gets (in this process)."""
    import torch

    from face_concepts import ConceptExplainer
    from face_concepts.data import bundled_photos, load_images, preprocess_images
    from face_concepts.decomposition import estimators
    from intermediate_layer import _split

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    split = _split(model, layer)
    paths = [p.path for p in bundled_photos()][:N_IMAGES]
    x = preprocess_images(load_images(paths), split.preprocess)
    got: dict[str, Any] = {}

    class _Captured(Exception):
        pass

    def grab(self: Any, A: Any, U0: Any = None, W0: Any = None) -> Any:
        got.update(A=A, head=self.head, kl_weight=self.kl_weight)
        raise _Captured

    real = estimators.FACE._fit
    estimators.FACE._fit = grab  # type: ignore[method-assign]
    try:
        ConceptExplainer(split, n_concepts=10, progress=False, random_state=0).fit(x, class_id=285)
    except _Captured:
        return got["A"], got["head"], got["kl_weight"]
    finally:
        estimators.FACE._fit = real  # type: ignore[method-assign]
        warnings.resetwarnings()
    raise RuntimeError("the explainer did not reach its FACE fit")


def fit(model: str, layer: str, solver: str, threads: int, memory: int | None) -> dict[str, Any]:
    """One default FACE fit on the explainer's rows, in this process (timed: the fit alone);
    ``memory``: lbfgs's correction pairs instead of its default."""
    from face_concepts import FACE

    if memory is not None:
        from face_concepts.decomposition import quasi_newton

        quasi_newton.MEMORY = memory

    A, head, lam = capture(model, layer, threads)
    calls = [0]
    forward = head.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    head.forward = counted
    est = FACE(head, 10, kl_weight=lam, random_state=0, solver=solver)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        est.fit(A)
    wall = time.perf_counter() - t
    import face_concepts

    return {
        "src": str(Path(face_concepts.__file__).parents[1]),
        "wall_s": wall,
        "objective": float(est.objective_),
        "n_iter": int(est.n_iter_),
        "warm_iter": int(getattr(est, "n_warm_iter_", 0) or 0),
        "converged": bool(est.converged_),
        "head_calls": calls[0],
        "rows": int(A.shape[0]),
        # the fit's first point (after the plain-NMF warm start, where there is one)
        "start_recon": float(est.loss_history_["recon"][0]),
        "start_kl": float(est.loss_history_["kl"][0]),
        "warnings": sorted({w.category.__name__ for w in seen if "scalar" not in str(w.message)}),
    }


def spawn(args: list[str], src: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env_importing(src), check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{args} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", help=argparse.SUPPRESS)
    parser.add_argument("--solver", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memories", default="", help="also the default fit with lbfgs's memory M")
    parser.add_argument("--solvers", default="auto,lbfgs")
    parser.add_argument("--before", help="a commit whose default fit runs beside today's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default=None, help="append the markdown section to this file")
    a = parser.parse_args(argv)
    if a.fit:
        model, layer = a.fit.split("|")
        print(json.dumps(fit(model, layer, a.solver, a.threads, a.memory)))
        return 0

    started, load0 = datetime.datetime.now(datetime.UTC), load_average()
    rows = []
    with source_of(None) as src_now, source_of(a.before) as src_before:
        for model in a.cases.split(","):
            layer = CASES[model]
            runs: list[tuple[str, str, Path, str | None]] = [
                (s, "today", src_now, None) for s in a.solvers.split(",") if s
            ]
            if a.before:
                runs.insert(1, ("auto", a.before, src_before, None))
            runs += [
                ("auto", f"today, lbfgs memory {m}", src_now, m) for m in a.memories.split(",") if m
            ]
            for solver, code, src, memory in runs:
                case = [
                    "--fit",
                    f"{model}|{layer}",
                    "--solver",
                    solver,
                    "--threads",
                    str(a.threads),
                ]
                r = spawn(case + (["--memory", memory] if memory else []), src)
                rows.append((model, layer, solver, code, r))
                print(f"{model} {layer} {solver} ({code}, {r['src']}): {r['wall_s']:.1f} s, "
                      f"objective {r['objective']:.6g}", file=sys.stderr, flush=True)  # fmt: skip
    import torch

    torch.set_num_threads(a.threads)
    lines = [
        f"## Solvers for heads that are not affine ({started:%Y-%m-%d})",
        "",
        f"- command: `python benchmarks/nonaffine_solvers.py {' '.join(sys.argv[1:])}`".rstrip(),
        *machine_lines(),
        f"- load average (1/5/15 min) at start {load0}, at end {load_average()}",
        f"- rows: what `ConceptExplainer(split, n_concepts=10).fit` factorises on the first "
        f"{N_IMAGES} bundled photos (16 native 64-px crops each, λ = 1), with its crops' head; "
        "each fit in a fresh process, `FACE(head, 10, kl_weight=1, random_state=0, solver=S)`",
        "",
        "| model, layer | solver | code | wall | objective | iterations (warm + fit) | converged "
        "| head calls | warnings | first point: mse / KL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, layer, solver, code, r in rows:
        lines.append(
            f"| {model} `{layer}` ({r['rows']} rows) | {solver} | {code} | {r['wall_s']:.1f} s | "
            f"{r['objective']:.6g} | {r['warm_iter']} + {r['n_iter']} | {r['converged']} | "
            f"{r['head_calls']} | {', '.join(r['warnings']) or 'none'} | "
            f"{r['start_recon']:.3g} / {r['start_kl']:.3g} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
