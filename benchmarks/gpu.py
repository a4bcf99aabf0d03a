"""GPU check of the engine: CPU/GPU parity, then full-batch and mini-batch timings on the device.

One prepared script for a lent accelerator (never needed by the tests). It needs the activation
file written by ``--export`` on a machine that has the bundled MobileNetV2 weights (the device
machine has no internet and not this project's venv)::

    python benchmarks/gpu.py --export .bench-data/mnv2.safetensors      # here, on the CPU
    PYTHONPATH=src python benchmarks/gpu.py --data .bench-data/mnv2.safetensors --out gpu.md

Data: MobileNetV2 (real ImageNet weights) pooled features of 77 random 64-px crops of each
bundled real photo (n = 3,311, p = 1,280) and its real classifier (C = 1,000) as the head, as in
``solver.py``; larger n by resampling real rows and multiplying each entry by exp(0.25·N(0, 1))
(seeded, non-negative), generated on the device.

1. Parity: the same nndsvda init, ``solve_hals`` for 50 iterations (tol 0, λ = 1) on the CPU and
   on the GPU in float32; the objectives must agree to 1e-4 relative (target).
2. Full batch: ``FACE(head, 25, kl_weight=1).fit(A)`` with defaults on the device, n = 10⁴, 10⁵:
   wall time (synchronised), iterations, objective.
3. Mini-batch: ``FACE(head, 25, kl_weight=1, batch_size=B, max_iter=2, tol=0).fit(A)`` on 10⁶ rows
   held on the device (2 passes, as ``scale.py``'s 10⁶ row on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings

import torch

R, LAM, SIGMA = 25, 1.0, 0.25


def export(path: str) -> None:
    """Write A, V, b of the benchmark data (needs the project's venv and bundled weights)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from safetensors.torch import save_file

    from _common import mobilenet_crop_activations

    act = mobilenet_crop_activations()
    lin = act.head[1]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_file(
        {
            "A": act.A.contiguous(),
            "V": lin.weight.detach().contiguous(),
            "b": lin.bias.detach().contiguous(),
        },
        path,
    )
    print(f"wrote {path}: A {tuple(act.A.shape)}")


def grow(A: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n rows: resampled real rows times exp(σ·N(0, 1)), generated where ``A`` lives."""
    g = torch.Generator(device=A.device).manual_seed(seed)
    idx = torch.randint(0, A.shape[0], (n,), generator=g, device=A.device)
    noise = torch.randn(n, A.shape[1], generator=g, device=A.device, dtype=A.dtype)
    return A[idx] * torch.exp(SIGMA * noise)


def head_module(V: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
    head = torch.nn.Linear(V.shape[1], V.shape[0]).to(V.device)
    with torch.no_grad():
        head.weight.copy_(V)
        head.bias.copy_(b)
    return head.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parity(A: torch.Tensor, V: torch.Tensor, b: torch.Tensor, dev: torch.device) -> dict:
    from face_concepts.decomposition._head import Head
    from face_concepts.decomposition.hals import solve_hals
    from face_concepts.decomposition.init import initialize
    from face_concepts.decomposition.problem import make_problem

    U0, W0 = initialize(A, R, "nndsvda")
    out = {}
    for where in ("cpu", "cuda"):
        d = torch.device("cpu") if where == "cpu" else dev
        Ad, Vd, bd = A.to(d), V.to(d), b.to(d)
        prob = make_problem(Ad, Head(head_module(Vd, bd), dtype=Ad.dtype, device=d), LAM)
        sync(d)
        t0 = time.perf_counter()
        res = solve_hals(prob, U0.to(d), W0.to(d), max_iter=50, tol=0.0)
        sync(d)
        out[where] = {"objective": res.history["total"][-1], "seconds": time.perf_counter() - t0}
    cpu, gpu = out["cpu"]["objective"], out["cuda"]["objective"]
    out["relative_difference"] = abs(cpu - gpu) / abs(cpu)
    return out


def full_batch(A: torch.Tensor, V: torch.Tensor, b: torch.Tensor, n: int) -> dict:
    from face_concepts import FACE

    X = grow(A, n)
    head = head_module(V, b)
    sync(A.device)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = FACE(head, R, kl_weight=LAM, random_state=0).fit(X)
    sync(A.device)
    return {
        "n": n,
        "seconds": time.perf_counter() - t0,
        "iterations": est.n_iter_,
        "warm_iterations": getattr(est, "n_warm_iter_", 0),
        "objective": est.objective_,
        "warnings": sorted({type(w.message).__name__ for w in caught}),
    }


def mini_batch(A: torch.Tensor, V: torch.Tensor, b: torch.Tensor, n: int, batch: int) -> dict:
    from face_concepts import FACE

    X = grow(A, n, seed=1)
    head = head_module(V, b)
    sync(A.device)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        est = FACE(head, R, kl_weight=LAM, batch_size=batch, max_iter=2, tol=0.0, random_state=0)
        est.fit(X)
    sync(A.device)
    peak = torch.cuda.max_memory_allocated(A.device) / 2**30 if A.device.type == "cuda" else 0.0
    return {
        "n": n,
        "batch_size": batch,
        "seconds": time.perf_counter() - t0,
        "objective": est.objective_,
        "peak_gpu_gib": peak,
    }


def report(rows: dict, args: argparse.Namespace) -> str:
    par = rows["parity"]
    lines = [
        "# GPU benchmark: CPU/GPU parity and device timings",
        "",
        f"- command: `PYTHONPATH=src python benchmarks/gpu.py --data {args.data} --out ...`"
        " (on the lent device machine, through the session's device tool)",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
        f"- device: {rows['device']}; host {platform.machine()} with {os.cpu_count()} cores; "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- load average at start: {rows['load']}",
        "- data: MobileNetV2 pooled crop features (n = 3,311 real rows, p = 1,280) and its real "
        "classifier (C = 1,000); larger n by resampling real rows × exp(0.25·N(0, 1))",
        "",
        "## Parity (same init, `solve_hals` 50 iterations, λ = 1, float32)",
        "",
        "| where | objective after 50 iterations | seconds |",
        "|---|---|---|",
        f"| CPU | {par['cpu']['objective']:.7g} | {par['cpu']['seconds']:.2f} |",
        f"| GPU | {par['cuda']['objective']:.7g} | {par['cuda']['seconds']:.2f} |",
        "",
        f"Relative difference {par['relative_difference']:.2e}: "
        + ("**met** (≤ 1e-4)" if par["relative_difference"] <= 1e-4 else "**missed** (> 1e-4)"),
        "",
        "## Full batch, `FACE(head, 25, kl_weight=1, random_state=0).fit(A)` defaults",
        "",
        "| n | wall s | warm-start NMF iterations | FACE iterations | objective | warnings |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows["full"]:
        lines.append(
            f"| {r['n']:,} | {r['seconds']:.2f} | {r['warm_iterations']} | {r['iterations']} | "
            f"{r['objective']:.6g} | {', '.join(r['warnings']) or 'none'} |"
        )
    mb = rows["mini"]
    lines += [
        "",
        "## Mini-batch, 2 passes",
        "",
        "| n | batch | wall s | objective | peak GPU memory |",
        "|---|---|---|---|---|",
        f"| {mb['n']:,} | {mb['batch_size']} | {mb['seconds']:.1f} | {mb['objective']:.6g} | "
        f"{mb['peak_gpu_gib']:.2f} GiB |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", help="write the benchmark data to this file and exit")
    ap.add_argument("--data", default=".bench-data/mnv2.safetensors")
    ap.add_argument("--out", default="benchmarks/results/gpu.md")
    ap.add_argument("--ns", default="1e4,1e5")
    ap.add_argument("--mini-n", type=float, default=1e6)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--device", default="cuda", help="'cpu' for a dry run of this script")
    args = ap.parse_args(argv)
    if args.export:
        export(args.export)
        return 0
    from safetensors.torch import load_file

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this script is for a lent accelerator", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    d = load_file(args.data)
    A, V, b = d["A"], d["V"], d["b"]
    rows = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (dry run)",
        "load": "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg()),
    }
    t0 = time.perf_counter()
    rows["parity"] = parity(A, V, b, dev)
    print("parity", json.dumps(rows["parity"]), flush=True)
    Ad, Vd, bd = A.to(dev), V.to(dev), b.to(dev)
    rows["full"] = []
    for n in (int(float(x)) for x in args.ns.split(",")):
        rows["full"].append(full_batch(Ad, Vd, bd, n))
        print("full", json.dumps(rows["full"][-1]), flush=True)
    rows["mini"] = mini_batch(Ad, Vd, bd, int(args.mini_n), args.batch_size)
    print("mini", json.dumps(rows["mini"]), flush=True)
    rows["total_seconds"] = time.perf_counter() - t0
    text = report(rows, args)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + f"- total run {rows['total_seconds']:.0f} s\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
