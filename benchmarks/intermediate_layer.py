"""Cost of an intermediate layer's head and fit against the last layer's (issue 18, item 1).

Target: a fit of 12 images at ResNet-18's ``layer3`` costs at most 3x the fit at its last layer
and stays under 2 GB (peak RSS). Also timed: one head call on 192 rows (12 images x 16 crops)
with the head that runs only the rest of the network (the tail) and with the former head (the
whole model on zero images with a hook), forward and forward + backward.

Offline weights: torchvision ResNet-18 with random weights (seed 0) and the bundled MobileNetV2
(real ImageNet weights; its ``features.14`` is signed and split with ``signed="posneg"``). The
12 images are the first 12 photos bundled with installed packages, at 224 px.

Every case runs in its own subprocess, which reports its wall time and its peak RSS
(``resource.getrusage``); a case stops itself at its time limit (a fit at 3x the last-layer
fit's time or FIT_LIMIT_S, whichever is longer, so that a missed target still has its ratio)
and reports how far it got.

    python benchmarks/intermediate_layer.py [--threads 2] [--out benchmarks/results/intermediate_layer.md]

One case alone prints its JSON line: ``--case '{"kind": "fit", "model": M, "layer": L,
"threads": 2, "limit": 900, "images": K}'``, with ``"solver": S`` to force FACE's solver and
``"old_codes_stop": true`` to give the codes' solve (the encoder and the fit's final polish) the
stop it had before session 24 (500 iterations, tol 1e-7, for every head), ``"no_joint": true``
to fit without ``hals``'s joint steps (``decomposition/joint.py``; also in ``jacobian``'s inner
solves), ``"image_size_crops": true`` to fit the native-size crops with the image-size constant
map (the split's head) instead of their own size (``ModelSplit.head_for_input``, since session 26).
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_IMAGES = 12
N_ROWS = 192  # 12 images x 16 crops of 64 px (stride 51) at 224 px
TARGET_RATIO = 3.0
TARGET_MB = 2048.0
HEAD_LIMIT_S = 600
FIT_LIMIT_S = 900


class _TimeUp(Exception):
    pass


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _split(model: str, layer: str | None):
    import torch
    import torchvision

    from face_concepts.models import load_model, split_model

    if model == "mobilenet_v2":
        signed = "posneg" if layer == "features.14" else None
        return load_model("bundled:mobilenet_v2", layer=layer, signed=signed)
    from face_concepts.data.preprocess import Preprocess

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None).eval()
    pre = Preprocess(resize_size=256, crop_size=224)
    return split_model(net, layer, preprocess=pre, name="torchvision:resnet18 (random weights)")


def _hook_head(split):
    """The former head of an intermediate layer (whole model on zero images, hooked)."""
    import torch
    from torch import nn

    from face_concepts.models._modules import PosNegHead

    inner = split.head.head if isinstance(split.head, PosNegHead) else split.head
    h, w = inner.map_size
    side = split.probe_size

    class HookHead(nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            state = {"done": False}

            def hook(_m: Any, _i: Any, out: torch.Tensor) -> torch.Tensor | None:
                if state["done"]:
                    return None
                state["done"] = True
                return a[:, :, None, None].expand(-1, -1, h, w).to(out.dtype).contiguous()

            dummy = torch.zeros((a.shape[0], 3, side, side), dtype=a.dtype)
            handle = split.model.get_submodule(split.layer).register_forward_hook(hook)
            try:
                return split.model(dummy)
            finally:
                handle.remove()

    head = HookHead()
    return PosNegHead(head) if isinstance(split.head, PosNegHead) else head


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(float(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS"))


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(float(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM"))


def _time_phases() -> dict[str, dict[str, float]]:
    """Wrap the fit's three phases (the FACE fit, the encoder of the images, their Sobol
    importance) to record each one's wall time and peak RSS (Linux: the peak is reset before
    each phase through ``/proc/self/clear_refs``); returns the dict they fill."""
    from face_concepts.pipeline import explainer

    phases: dict[str, dict[str, float]] = {}

    def timed(owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = _hwm_mb()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                phases[label] = {"s": time.perf_counter() - t0, "peak_mb": _hwm_mb()}
                phases.setdefault("_before", {"s": 0.0, "peak_mb": before})

        setattr(owner, name, wrapper)

    timed(explainer, "factorize", "FACE fit")
    timed(explainer.ConceptExplainer, "encode_activations", "encoder")
    timed(explainer.ConceptExplainer, "_local_importance", "importance")
    return phases


def _sobol_case(split: Any, case: dict[str, Any]) -> dict[str, Any]:
    """The chunk table's case: Sobol importance of 12 images with the split's image head."""
    import torch

    from face_concepts.importance.sobol import sobol_indices
    from face_concepts.models._modules import PosNegHead

    inner = split.head.head if isinstance(split.head, PosNegHead) else split.head
    if case.get("chunk_rule") == "input":  # the rule before: 2**23 elements of the input map
        p, (h, w) = inner_channels(split), inner.map_size
        inner.chunk_rows = max(1, 2**23 // (p * h * w))
    g = torch.Generator().manual_seed(0)
    U = torch.rand(N_IMAGES, 10, generator=g)
    W = torch.rand(10, split.n_features, generator=g) / split.n_features**0.5
    before = _rss_mb()
    t0 = time.perf_counter()
    sobol_indices(U, W, split.head, 285)
    return {
        "sobol_s": time.perf_counter() - t0,
        "chunk_rows": inner.chunk_rows,
        "sobol_extra_mb": _peak_mb() - before,
    }


def inner_channels(split: Any) -> int:
    """Channels of the constant map the tail receives (half the features for posneg)."""
    from face_concepts.models._modules import PosNegHead

    return split.n_features // 2 if isinstance(split.head, PosNegHead) else split.n_features


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One case, in this process (the subprocess side)."""
    import torch

    torch.set_num_threads(case["threads"])
    warnings.simplefilter("ignore")
    out: dict[str, Any] = {"case": case}
    limit = int(case.get("limit") or 0)

    def alarm(*_: Any) -> None:
        raise _TimeUp

    t0 = time.perf_counter()
    split = _split(case["model"], case["layer"])
    out["split_s"] = time.perf_counter() - t0
    out["head"] = getattr(split.head, "mode", None) or type(split.head).__name__
    out["approximation"] = split.approximation
    signal.signal(signal.SIGALRM, alarm)
    if limit:
        signal.alarm(limit)
    t0 = time.perf_counter()
    try:
        if case["kind"] == "sobol":
            out.update(_sobol_case(split, case))
        elif case["kind"] == "head":
            head = split.head if case["head"] == "tail" else _hook_head(split)
            a = torch.rand((N_ROWS, split.n_features), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                head(a)
            out["forward_s"] = time.perf_counter() - t0
            x = a.clone().requires_grad_(True)
            head(x).logsumexp(1).sum().backward()
            out["forward_backward_s"] = time.perf_counter() - t0 - out["forward_s"]
        else:
            from face_concepts import ConceptExplainer
            from face_concepts.decomposition import estimators

            if case.get("old_codes_stop"):  # the codes' stop before session 24: 500, 1e-7
                from face_concepts.decomposition import encoder

                encoder.code_stop = lambda prob, max_iter=None, tol=None: (
                    encoder.CODES_STOP[0] if max_iter is None else max_iter,
                    encoder.CODES_STOP[1] if tol is None else tol,
                )
            if case.get("image_size_crops"):  # crops on the image-size map (before session 26)
                from face_concepts.models.base import ModelSplit

                ModelSplit.head_for_input = lambda self, size: self.head  # type: ignore[method-assign]
            if case.get("no_joint"):  # hals (and jacobian's inner solves) without joint steps
                from face_concepts.decomposition.hals import solve_hals

                solve_hals.__kwdefaults__["joint"] = False
            if case.get("solver"):  # force FACE's solver for a head that is not affine
                forced = case["solver"]
                estimators.auto_solver = lambda lam, affine: (
                    "hals" if (lam == 0 or affine) else forced
                )
            from face_concepts.data import bundled_photos, load_images, preprocess_images

            paths = [p.path for p in bundled_photos()][: case.get("images", N_IMAGES)]
            x = preprocess_images(load_images(paths), split.preprocess)
            calls = [0]
            by_map: dict[str, int] = {}
            from face_concepts.models._modules import RestOfNetwork

            forward = RestOfNetwork.forward

            def counted(self: RestOfNetwork, *args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                size = "×".join(map(str, self.map_size))
                by_map[size] = by_map.get(size, 0) + 1
                return forward(self, *args, **kwargs)

            # head calls of the fit, encoder and importance, on crops and on images
            RestOfNetwork.forward = counted  # type: ignore[method-assign]
            if case.get("phases"):
                out["phases"] = _time_phases()
            t0 = time.perf_counter()
            ex = ConceptExplainer(split, n_concepts=10, progress=False, random_state=0)
            ex.fit(x, class_id=285)
            out["n_rows"] = int(ex.row_codes_.shape[0])
            out["n_iter"] = ex.fit_info_.get("n_iter")
            out["solver"] = ex.fit_info_.get("solver")
            out["head_calls"] = calls[0]
            out["head_calls_by_map"] = by_map
        out["wall_s"] = time.perf_counter() - t0
        out["finished"] = True
    except _TimeUp:
        out["wall_s"] = time.perf_counter() - t0
        out["finished"] = False
    finally:
        signal.alarm(0)
    out["peak_mb"] = max(
        _peak_mb(), _hwm_mb(), *[p["peak_mb"] for p in out.get("phases", {}).values()]
    )
    return out


def spawn(case: dict[str, Any], src: Path | None = None) -> dict[str, Any]:
    """Run ``case`` in a fresh interpreter (importing ``face_concepts`` from ``src``, default
    the installed one) and return its report."""
    from _common import env_importing

    cmd = [sys.executable, __file__, "--case", json.dumps(case)]
    env = None if src is None else env_importing(src)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {case} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    print(
        f"{case['kind']} {case['model']} {case['layer']} {case.get('head', '')}: "
        f"{result['wall_s']:.1f} s, {result['peak_mb']:.0f} MB"
        + ("" if result["finished"] else " (stopped at its time limit)"),
        file=sys.stderr,
        flush=True,
    )
    return result


def _fmt_s(r: dict[str, Any], key: str = "wall_s") -> str:
    if r.get(key) is None:
        return "—"
    return f"{r[key]:.1f}" + ("" if r["finished"] or key != "wall_s" else " (stopped)")


def phase_table(args: argparse.Namespace, load_before: str) -> int:
    """``--phases``: the whole fit of 12 images at each intermediate layer, split into its
    phases (wall time, peak RSS of each), today's code and ``--before``'s alternating."""
    from _common import load_average, machine_lines, source_of

    rows = []
    with source_of(None) as now, source_of(args.before) as before:
        for model, layer in (("mobilenet_v2", "features.14"), ("resnet18", "layer3")):
            codes = [("today", now)] + ([(args.before, before)] if args.before else [])
            for _ in range(args.repeats):
                for code, src in codes:
                    case = {"kind": "fit", "model": model, "layer": layer, "phases": True}
                    r = spawn({**case, "threads": args.threads, "limit": FIT_LIMIT_S}, src)
                    rows.append((code, r))
    command = f"python benchmarks/intermediate_layer.py --phases --threads {args.threads}"
    command += f" --repeats {args.repeats}" + (f" --before {args.before}" if args.before else "")
    lines = [
        "## The phases of a fit at an intermediate layer (12 images)",
        "",
        f"- command: `{command} --out FILE`",
        *machine_lines(),
        f"- load average (1/5/15 min) before: {load_before}; after: {load_average()}",
        "- each fit in its own process, the codes alternating; a phase's peak is the process's "
        "peak RSS during it (reset before it through `/proc/self/clear_refs`)",
        "",
        "| model, layer | code | whole fit (s) | FACE fit (s) | encoder (s) | importance (s) "
        "| peak RSS (MB): whole, FACE fit, encoder, importance | head calls | FACE iterations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for code, r in rows:
        c, ph = r["case"], r.get("phases", {})

        def part(name: str, key: str, fmt: str, ph: dict = ph) -> str:
            return format(ph[name][key], fmt) if name in ph else "—"

        peaks = ", ".join(part(n, "peak_mb", ".0f") for n in ("FACE fit", "encoder", "importance"))
        lines.append(
            f"| {c['model']} `{c['layer']}` | {code} | {_fmt_s(r)} | {part('FACE fit', 's', '.1f')} "
            f"| {part('encoder', 's', '.1f')} | {part('importance', 's', '.1f')} "
            f"| {r['peak_mb']:.0f}: {peaks} | {r.get('head_calls', '—')} | {r.get('n_iter', '—')} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def chunk_table(args: argparse.Namespace, load_before: str) -> int:
    """``--chunks``: the module docstring's chunk table, written to ``args.out``."""
    from _common import load_average, machine_lines

    rows = []
    for model, layer in (("mobilenet_v2", "features.14"), ("resnet18", "layer3")):
        for rule in ("input", "largest"):
            for _ in range(args.repeats):
                case = {"kind": "sobol", "model": model, "layer": layer, "threads": args.threads}
                rows.append(spawn({**case, "chunk_rule": rule, "limit": HEAD_LIMIT_S}))
    lines = [
        "## Rows per chunk of an intermediate layer's head: Sobol importance of 12 images",
        "",
        f"- command: `python benchmarks/intermediate_layer.py --chunks --threads {args.threads}"
        f" --repeats {args.repeats} --out FILE`",
        *machine_lines(),
        f"- load average (1/5/15 min) before: {load_before}; after: {load_average()}",
        "- each row its own process; memory: peak RSS minus the RSS just before the importance",
        "",
        "| model, layer | chunk rule | rows per chunk | Sobol importance (s) | extra memory (MB) |",
        "|---|---|---|---|---|",
    ]
    names = {
        "input": "2**23 elements of the input map (before)",
        "largest": "largest activation ≤ `_CHUNK_ELEMENTS` (now)",
    }
    for r in rows:
        c = r["case"]
        lines.append(
            f"| {c['model']} `{c['layer']}` | {names[c['chunk_rule']]} | {r['chunk_rows']} | "
            f"{r['sobol_s']:.1f} | {r['sobol_extra_mb']:.0f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/intermediate_layer.md")
    parser.add_argument("--skip-hook", action="store_true", help="skip the former head's calls")
    parser.add_argument(
        "--hook-all", action="store_true", help="also MobileNetV2's former head (about 15 GB)"
    )
    parser.add_argument("--commit", help="the commit the code was at, for the record")
    parser.add_argument(
        "--compare-solver",
        metavar="NAME",
        help="also fit ResNet-18 layer3 with this FACE solver (e.g. linearised), side by side",
    )
    parser.add_argument("--chunks", action="store_true", help="only the chunk table")
    parser.add_argument(
        "--phases", action="store_true", help="only the phase table (with --before: side by side)"
    )
    parser.add_argument("--before", help="a commit whose code runs the phase table's fits too")
    parser.add_argument("--repeats", type=int, default=2, help="runs per chunk-table row")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0

    import torch

    from _common import load_average, machine_lines

    torch.set_num_threads(args.threads)
    load_before = load_average()
    t = args.threads
    if args.chunks:
        return chunk_table(args, load_before)
    if args.phases:
        return phase_table(args, load_before)
    heads = []
    for model, layer in (("resnet18", "layer3"), ("mobilenet_v2", "features.14")):
        # the former head of MobileNetV2's features.14 peaks near 15 GB: only with --hook-all
        hook = not args.skip_hook and (model == "resnet18" or args.hook_all)
        for head in ("tail", *(("hook",) if hook else ())):
            case = {"kind": "head", "model": model, "layer": layer, "head": head, "threads": t}
            heads.append(spawn({**case, "limit": HEAD_LIMIT_S}))
    fits = []
    for model, layer in (("resnet18", "layer3"), ("mobilenet_v2", "features.14")):
        last = spawn({"kind": "fit", "model": model, "layer": None, "threads": t})
        # run to the end (up to FIT_LIMIT_S) so that the ratio is measured, not only "> 3x"
        limit = max(FIT_LIMIT_S, int(TARGET_RATIO * last["wall_s"]) + 1)
        inter = spawn({"kind": "fit", "model": model, "layer": layer, "threads": t, "limit": limit})
        fits.append((model, layer, last, inter))
    compared = None
    if args.compare_solver:
        case = {"kind": "fit", "model": "resnet18", "layer": "layer3", "threads": t}
        compared = spawn({**case, "limit": FIT_LIMIT_S, "solver": args.compare_solver})
    load_after = load_average()

    lines = [
        "# Intermediate layers: the head runs only the rest of the network",
        "",
        f"- command: `python benchmarks/intermediate_layer.py --threads {t}`",
        *([f"- code: commit {args.commit}"] if args.commit else []),
        *machine_lines(),
        f"- load average (1/5/15 min) before: {load_before}; after: {load_after}",
        f"- {N_IMAGES} bundled photos at 224 px; ConceptExplainer defaults (face, 10 concepts, "
        "64-px crops: 192 rows); ResNet-18 with random weights (seed 0), MobileNetV2 with the "
        "bundled ImageNet weights (`features.14` split with `signed='posneg'`, p = 320)",
        "- every case in its own process; peak RSS from `resource.getrusage` in that process "
        "(it includes the ~1 GB of torch, torchvision and the model); a fit at an intermediate "
        f"layer stops itself after {FIT_LIMIT_S} s",
        "",
        f"## One head call on {N_ROWS} rows",
        "",
        "| model, layer | head | forward (s) | forward + backward (s) | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in heads:
        c = r["case"]
        name = "rest of the network (tail)" if c["head"] == "tail" else "whole model, hooked"
        if c["head"] == "tail":
            name += f" [{r['head']}]"
        lines.append(
            f"| {c['model']} {c['layer']} | {name} | {_fmt_s(r, 'forward_s')} | "
            f"{_fmt_s(r, 'forward_backward_s')} | {r['peak_mb']:.0f} |"
        )
    lines += [
        "",
        f"## Fit of {N_IMAGES} images: last layer vs intermediate layer",
        "",
        "| model | last layer: fit (s), solver, iterations, head calls, peak MB | intermediate "
        "layer | intermediate: fit (s), solver, iterations, head calls, peak MB | ratio | target (≤ "
        f"{TARGET_RATIO:g}x, < {TARGET_MB / 1024:g} GB) |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for model, layer, last, inter in fits:
        ratio = inter["wall_s"] / last["wall_s"]
        met = inter["finished"] and ratio <= TARGET_RATIO and inter["peak_mb"] < TARGET_MB
        verdicts.append(met)
        ratio_text = f"{ratio:.1f}" if inter["finished"] else f"> {ratio:.1f}"
        lines.append(
            f"| {model} | {_fmt_s(last)}, {last.get('solver')}, {last.get('n_iter')}, "
            f"{last.get('head_calls', '—')}, {last['peak_mb']:.0f} | {layer} | {_fmt_s(inter)}, "
            f"{inter.get('solver', '—')}, {inter.get('n_iter', '—')}, "
            f"{inter.get('head_calls', '—')}, {inter['peak_mb']:.0f} | {ratio_text} | "
            f"{'met' if met else 'missed'} |"
        )
    if compared is not None:
        lines.append(
            f"| resnet18 | (same) | layer3, solver forced to `{args.compare_solver}` | "
            f"{_fmt_s(compared)}, {compared.get('solver', '—')}, {compared.get('n_iter', '—')}, "
            f"{compared.get('head_calls', '—')}, {compared['peak_mb']:.0f} | — | — |"
        )
    approx = next((r["approximation"] for r in heads if r.get("approximation")), None)
    lines += [
        "",
        "A head call is one forward of the split's head (fit, encoder and Sobol importance "
        "together; a backward follows some of them).",
        "",
        f"Approximation stated by the split (first case): {approx}",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
