"""``face-concepts atlas``: concepts of many classes, per class or one shared bank, one atlas.

::

    face-concepts atlas --model bundled:mobilenet_v2 --images photos/ --classes 285,207 \\
        [--shared] [--executor local|ray] [--address auto] [--workers N] --out runs/atlas

``--images DIR`` holds one subfolder per class, named after the class (``"tabby"``, ``"tabby_cat"``)
or its index (``"285"``); ``--bundled`` uses the real photos shipped with installed packages
(the demo's classes). Runs go to ``OUT/<id>_<name>/`` (or ``OUT/shared/``) and the atlas to
``OUT/report.html``. Progress on stderr, a summary on stdout (``--json``: one JSON document);
usage errors (bad flags, missing class folders, Ray not installed) exit with code 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

__all__ = ["add_atlas_parser", "cmd_atlas"]

SUMMARY_KEYS = ("acc", "kl", "c_deletion", "c_insertion", "c_gini")
BUNDLED_VIEWS, BUNDLED_HELDOUT = 16, 8


def add_atlas_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``atlas`` subcommand on the subparsers of ``face-concepts``."""
    from face_concepts.cli.common import _S, _model_flags, fit_flags

    p = sub.add_parser("atlas", help="concepts of many classes (per class or shared), one atlas")
    _model_flags(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", metavar="DIR", default=_S, help="one subfolder per class")
    src.add_argument(
        "--bundled", action="store_true", default=_S, help="the bundled real photos (as the demo)"
    )
    p.add_argument("--heldout", metavar="DIR", default=_S, help="held-out images, one folder/class")
    p.add_argument(
        "--classes", metavar="CLASSES", default=_S,
        help="class ids or names separated by commas, e.g. 285,207 or tabby,tiger_cat",
    )  # fmt: skip
    p.add_argument("--shared", action="store_true", default=_S, help="one bank for all classes")
    fit_flags(p)  # every explainer flag of `fit`, generated from ExplainerConfig
    p.add_argument(
        "--executor", choices=("local", "ray"), default=_S, help="local (default) or ray"
    )
    p.add_argument("--address", default=_S, help="ray: auto, HOST:6379 (default: start locally)")
    p.add_argument("--workers", type=int, default=_S, help="local: processes; ray: local CPUs")
    p.add_argument("--gpus-per-task", type=float, default=_S, help="ray: GPUs per task (0)")
    p.add_argument("--out", metavar="DIR", default=_S, help="output folder (required)")
    p.add_argument(
        "--overwrite", action="store_true", default=_S,
        help="write into an --out that is not empty; once the new atlas is built, what the old "
        "one left there and the new one did not rewrite (other classes' runs, ...) is removed",
    )  # fmt: skip
    return p


def _check_out(out: Path, overwrite: bool) -> list[Path]:
    """Refuse a non-empty --out without --overwrite (before anything is loaded); returns what is
    there, for :func:`_remove_stale` once the new atlas is built."""
    existing = (
        sorted(p for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    )
    if existing and not overwrite:
        names = ", ".join(repr(p.name) for p in existing[:3]) + (
            ", ..." if len(existing) > 3 else ""
        )
        raise _usage(
            f"--out {out} is not empty ({len(existing)} entries: {names}); pass --overwrite to "
            "replace the atlas there, or choose another --out"
        )
    return existing


def _remove_stale(existing: list[Path], since: float) -> list[Path]:
    """Remove the entries of the old --out that this atlas did not write (not modified since
    ``since``, a ``time.time()``): runs of classes no longer asked for, a shared bank replaced
    by per-class banks, ... Returns what was removed."""
    import shutil

    removed = []
    for path in existing:
        if not path.exists() or path.stat().st_mtime >= since:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


def _usage(message: str) -> Exception:
    from face_concepts.cli.common import UsageError

    return UsageError(message)


def parse_classes(text: Any) -> list[int | str]:
    """``"285, tabby"`` → ``[285, "tabby"]``: indices, or class names resolved once the model is
    loaded (:func:`face_concepts.cli.common.resolve_class`); anything else is a usage error.

    Examples
    --------
    >>> parse_classes("3,1")
    [3, 1]
    >>> parse_classes("285, tiger_cat")
    [285, 'tiger_cat']
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise _usage(
            f"--classes must be class ids or names separated by commas (e.g. 285,207 or "
            f"tabby,tiger_cat), got {text!r}"
        )
    items: list[int | str] = [int(p) if p.isdigit() else p for p in parts]
    _check_unique(items, text)
    return items


def _check_unique(items: list[Any], text: Any) -> None:
    if len(set(items)) != len(items):
        raise _usage(f"--classes lists a class twice: {text!r}")


def resolve_classes(items: list[int | str], split: Any, model: str, text: Any) -> list[int]:
    """The class indices of ``--classes`` (names looked up in the model's class names)."""
    from face_concepts.cli.common import resolve_class

    ids = [resolve_class(c, split, model, flag="--classes") for c in items]
    _check_unique(ids, text)
    return ids


def _folder_jobs(split: Any, images: str, heldout: str | None, classes: list[int]) -> list[Any]:
    from face_concepts.data import load_images, resolve_imagenet_class_folder
    from face_concepts.pipeline.classes import ClassJob

    if not Path(images).is_dir():
        raise _usage(f"--images {images!r} is not a folder with one subfolder per class")
    jobs = []
    for cid in classes:
        try:
            fit = load_images(resolve_imagenet_class_folder(images, cid, split.categories))
            held = (
                load_images(resolve_imagenet_class_folder(heldout, cid, split.categories))
                if heldout is not None
                else None
            )
        except (FileNotFoundError, ValueError) as exc:
            raise _usage(f"class {cid}: {' '.join(str(exc).split())}") from exc
        jobs.append(ClassJob(cid, fit, held))
    return jobs


def _bundled_jobs(split: Any, classes: list[int] | None, seed: int) -> list[Any]:
    from face_concepts.apps.demo import _views, choose_classes
    from face_concepts.pipeline.classes import ClassJob

    found = dict(choose_classes(split, max_classes=1000))
    if classes is None:
        classes = list(found)[:3]
    missing = [c for c in classes if c not in found]
    if missing:
        raise _usage(
            f"no bundled photo of class(es) {missing} is recognised by the model; "
            f"classes with photos: {sorted(found)}"
        )
    return [
        ClassJob(
            c,
            _views(found[c], BUNDLED_VIEWS, seed),
            _views(found[c], BUNDLED_HELDOUT, seed + 1000),  # the demo's held-out views
        )
        for c in classes
    ]


def _executor(s: SimpleNamespace) -> Any:
    from face_concepts.pipeline.executors import RAY_MISSING, get_executor

    kind = getattr(s, "executor", "local")
    address, workers = getattr(s, "address", None), getattr(s, "workers", None)
    gpus = getattr(s, "gpus_per_task", 0.0)
    if kind != "ray" and (address is not None or gpus):
        raise _usage("--address and --gpus-per-task need --executor ray")
    if workers is not None and workers < 1:
        raise _usage(f"--workers must be at least 1, got {workers}")
    if gpus < 0:
        raise _usage(f"--gpus-per-task must be non-negative, got {gpus}")
    if kind == "ray" and str(s.device or "").startswith("cuda") and not gpus:
        raise _usage(
            "--device cuda with --executor ray needs --gpus-per-task (Ray hides GPUs from tasks that ask for none)"
        )
    try:
        if kind == "ray":
            return get_executor("ray", n_workers=workers, address=address, num_gpus=gpus)
        return get_executor("local", n_workers=workers)
    except RuntimeError as exc:
        if str(exc) == RAY_MISSING:
            raise _usage(str(exc)) from None
        raise


def _progress(s: SimpleNamespace, jobs: list[Any], shared: bool, start: float) -> Any:
    from face_concepts.cli.common import _say

    def on_done(i: int, result: dict[str, Any]) -> None:
        what = "shared bank" if shared else f"class {jobs[i].class_id} ({result['class_name']})"
        n = 1 if shared else len(jobs)
        _say(
            s,
            f"[{i + 1}/{n}] {what}: {result['n_iter']} iterations, {time.perf_counter() - start:.1f} s",
        )

    return on_done


def _class_rows(out: Path, results: list[dict[str, Any]], shared: bool) -> list[dict[str, Any]]:
    rows = results[0]["classes"] if shared else results
    table = []
    for r in rows:
        metrics = r["metrics"]
        split = "heldout" if "heldout" in metrics else "fit"
        table.append({
            "class_id": r["class_id"], "class_name": r["class_name"], "n_images": r["n_images"],
            "run_dir": str(out / r["run"]), "split": split,
            **{k: metrics[split].get(k) for k in SUMMARY_KEYS}, "metrics": metrics,
        })  # fmt: skip
    return table


def _write_sidecars(
    s: SimpleNamespace, out: Path, rows: list[dict[str, Any]], shared: bool
) -> None:
    from face_concepts.report.runs import write_sidecar

    record = {"command": "atlas", "model": s.model, "layer": s.layer, "device": s.device}
    record["weights"] = _weights_record(s.weights)
    runs = [Path(r["run_dir"]) for r in rows]
    if shared:
        runs.append(out / "shared")
    for run in runs:
        write_sidecar(run, {**record, "out": str(run.resolve())})


def _weights_record(weights: str | None) -> str | None:
    """The weights as recorded: a resolved file path, or the keyword ``random`` as given."""
    from face_concepts.cli.common import RANDOM_WEIGHTS

    if not weights or weights == RANDOM_WEIGHTS:
        return weights or None
    return str(Path(weights).resolve())


def _check_args(s: SimpleNamespace) -> tuple[bool, list[int | str] | None, bool]:
    """Usage checks before anything is loaded: (bundled, classes, shared)."""
    from face_concepts.cli.common import _require
    from face_concepts.methods.registry import get_method

    _require(s, "out")
    bundled = bool(getattr(s, "bundled", False))
    if bundled == (s.images is not None):
        raise _usage("give exactly one of --images DIR (one subfolder per class) or --bundled")
    classes = parse_classes(s.classes) if getattr(s, "classes", None) is not None else None
    if classes is None and not bundled:
        raise _usage("missing --classes (class ids or names separated by commas)")
    if bundled and s.heldout is not None:
        raise _usage("--heldout goes with --images; --bundled holds out views of its photos")
    try:
        get_method(s.method)
    except ValueError as exc:
        raise _usage(str(exc)) from None
    return bundled, classes, bool(getattr(s, "shared", False))


def cmd_atlas(s: SimpleNamespace) -> int:
    """Run ``face-concepts atlas`` on resolved settings; returns the exit code."""
    from face_concepts.cli.common import _emit_json, _say, explainer_config
    from face_concepts.models import load_model
    from face_concepts.pipeline.classes import fit_classes
    from face_concepts.report import ModelCache, build_report

    bundled, given_classes, shared = _check_args(s)
    existing = _check_out(Path(s.out), bool(getattr(s, "overwrite", False)))
    started = time.time()
    images = s.images
    executor = _executor(s)  # before the model: a missing Ray fails fast
    with executor:
        _say(s, f"loading model {s.model} ...")
        # on CPU; tasks move it to --device
        split = load_model(s.model, s.weights, layer=s.layer, signed=s.signed)
        classes = (
            None
            if given_classes is None
            else resolve_classes(given_classes, split, s.model, s.classes)
        )
        jobs = (
            _bundled_jobs(split, classes, s.seed)
            if bundled
            else _folder_jobs(split, images, s.heldout, classes or [])  # set: checked above
        )
        mode = "one shared bank" if shared else "one bank per class"
        _say(s, f"fitting {len(jobs)} classes ({mode}) with the {executor.kind} executor ...")
        start = time.perf_counter()
        out = Path(s.out)
        # the tasks run without progress bars or solver output (their own stderr is not ours)
        config = explainer_config(s, progress=False)
        results = fit_classes(
            split, jobs, out, settings=config, shared=shared, executor=executor,
            stability=bool(s.stability), on_done=_progress(s, jobs, shared, start),
        )  # fmt: skip
        seconds = time.perf_counter() - start
        described = executor.describe()
    rows = _class_rows(out, results, shared)
    _write_sidecars(s, out, rows, shared)
    _say(s, "building the atlas ...")
    cache = ModelCache(device=s.device)
    cache.put(split, s.model, _weights_record(s.weights), split.layer, signed=s.signed)
    report = build_report(out, device=s.device, progress=s.progress, cache=cache)
    removed = _remove_stale(existing, started)
    if removed:
        _say(s, f"removed {len(removed)} entries of the previous atlas in {out}")
    summary = {
        "out": str(out), "report": str(report), "shared": shared, "executor": described,
        "model": s.model, "seconds": round(seconds, 2), "classes": rows,
    }  # fmt: skip
    if s.json:
        _emit_json(summary)
    else:
        _print(summary)
    return 0


def _print(summary: dict[str, Any]) -> None:
    head = f"{'class':28s} {'images':>6s} {'split':>7s} " + " ".join(
        f"{k:>11s}" for k in SUMMARY_KEYS
    )
    print(head)
    for r in summary["classes"]:
        name = f"{r['class_id']} {r['class_name'] or ''}"
        vals = " ".join(
            f"{v:11.4f}" if isinstance(v, float) else f"{v!s:>11s}"
            for v in (r[k] for k in SUMMARY_KEYS)
        )
        print(f"{name:28.28s} {r['n_images']:6d} {r['split']:>7s} {vals}")
    mode = "shared bank" if summary["shared"] else "per-class banks"
    print(
        f"\n{mode} in {summary['out']} ({summary['seconds']} s, {summary['executor']['kind']} executor)"
    )
    print(f"open {summary['report']} in a browser to see the concept atlas")
