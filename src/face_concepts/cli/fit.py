"""``face-concepts fit`` and ``evaluate``: fit and save a run, metrics of a saved run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from face_concepts.cli.common import (
    DERIVED,
    EVALUATIONS,
    OPTIONS,
    RANDOM_WEIGHTS,
    RUN_FILES,
    UsageError,
    _emit_json,
    _require,
    _say,
    explainer_config,
    resolve_class,
)


def _images_arg(value: Any, flag: str) -> Any:
    paths = value if isinstance(value, list) else [value]
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{flag} {str(p)!r} does not exist")
    return (
        [str(Path(p).resolve()) for p in paths]
        if isinstance(value, list)
        else str(Path(value).resolve())
    )


def _check_writable(out: Path) -> None:
    """Prove a file can be written where ``out`` will be, without creating ``out`` itself.

    The nearest existing ancestor must be a directory that accepts a (deleted) probe file;
    an OSError names the path, so a typo fails in seconds rather than after the fit.
    """
    import tempfile

    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        if not base.is_dir():
            raise NotADirectoryError(20, "not a directory", str(base))
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write to --out {out}: {exc.strerror or exc} ({base})") from None


def _run_contents(out: Path) -> list[Path]:
    """What in ``out`` belongs to a run: its files and what later commands derived from it."""
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    for pattern in DERIVED:
        found += sorted(out.glob(pattern))
    return found


def _check_overwrite(out: Path, overwrite: bool) -> list[Path]:
    """Refuse to write a run into a folder that holds one (or other files) without --overwrite.

    Returns what the old run left there, for removal once the new run is saved.
    """
    if not out.is_dir():
        return []
    found = _run_contents(out)
    others = [p for p in out.iterdir() if p not in found and not p.name.startswith(".")]
    if overwrite or not (found or others):
        return found
    if found:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise UsageError(
            f"--out {out} already holds a run ({names}); pass --overwrite to replace it (what "
            "was made from it, such as report.html, explain-*.png and saved evaluations, is "
            "removed too), or choose another --out"
        )
    raise UsageError(
        f"--out {out} is a folder with {len(others)} other entries (e.g. {others[0].name!r}) "
        "and no run; choose a new or empty folder, or pass --overwrite to write the run among them"
    )


def _remove_stale(found: list[Path]) -> None:
    """Remove what an overwritten run left, except the bank that the new save replaced."""
    for path in found:
        if path.name in ("bank.json", "bank.safetensors"):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def cmd_fit(s: SimpleNamespace) -> int:
    from face_concepts.models import load_model
    from face_concepts.pipeline.explainer import ConceptExplainer
    from face_concepts.pipeline.jobs import fit_evaluate_save
    from face_concepts.report.figures import write_fit_figures
    from face_concepts.report.runs import write_sidecar

    _require(s, "images", "class_id", "out")
    images = _images_arg(s.images, "--images")
    heldout = _images_arg(s.heldout, "--heldout") if s.heldout is not None else None
    out = Path(s.out)
    stale = _check_overwrite(out, s.overwrite)  # before any work, like the two checks around
    _check_writable(out)  # before the fit, not after minutes of work
    _say(s, f"loading model {s.model} ...")
    split = load_model(s.model, s.weights, device=s.device, layer=s.layer, signed=s.signed)
    class_id = resolve_class(s.class_id, split, s.model)
    config = explainer_config(s, verbose=s.progress)  # the solver's progress unless -q
    explainer = ConceptExplainer.from_config(split, config)
    named = f" ({s.class_id})" if isinstance(s.class_id, str) else ""
    _say(s, f"fitting {config.n_concepts} {s.method} concepts of class {class_id}{named} ...")
    result = fit_evaluate_save(
        explainer, images, class_id, heldout=heldout, stability=bool(s.stability), out=out,
        say=lambda message: _say(s, message),
    )  # fmt: skip
    metrics = result.metrics
    _remove_stale(stale)  # only now: a failed fit or save leaves the old run whole
    record = {k: getattr(s, k) for k in OPTIONS if k not in ("json", "progress", "quiet")}
    if record["cache_dir"] is None:  # recorded only when used: earlier records stay the same
        del record["cache_dir"]
    record.update(images=images, heldout=heldout, out=str(out.resolve()), command="fit")
    record["class_id"] = class_id
    if s.weights and s.weights != RANDOM_WEIGHTS:
        record["weights"] = str(Path(s.weights).resolve())
    files = [str(write_sidecar(out, record)), *map(str, write_fit_figures(explainer, out))]
    info = explainer.fit_info_
    summary = {
        "run_dir": str(out), "model": s.model, "method": s.method,
        "class_id": explainer.class_id_, "class_name": explainer.class_name(),
        "n_concepts": explainer.n_concepts, "n_images": explainer.n_images_,
        "n_iter": info.get("n_iter"), "converged": info.get("converged"),
        "solver": info.get("solver"), "handover_iter": info.get("handover_iter"),
        "importance_precision": info.get("importance_precision"),
        "objective": info.get("objective"), "importance": explainer.importance().tolist(),
        "metrics": metrics, "files": files,
    }  # fmt: skip
    if s.json:
        _emit_json(summary)
    else:
        _print_fit(summary)
    return 0


def _print_fit(summary: dict[str, Any]) -> None:
    from face_concepts.report.glossary import importance_fact, metric_table, solver_summary

    name = summary["class_name"] or ""
    print(
        f"run {summary['run_dir']}: {summary['n_concepts']} {summary['method']} concepts of "
        f"class {summary['class_id']} {name} from {summary['n_images']} images "
        f"({solver_summary(summary)})"
    )
    if importance_fact(summary):
        print(importance_fact(summary, setting="--importance-precision"))
    for split, values in summary["metrics"].items():
        print(f"\nmetrics on the {split} images ({values.get('n_images')}):")
        print(metric_table(values))
    print("\nwrote " + ", ".join(summary["files"]))


def evaluation_name(save: Any, images: Any) -> str:
    """``evaluate --save [NAME]``: NAME, else the name of the images' folder or file, else "fit".

    Examples
    --------
    >>> evaluation_name(True, "/data/cats heldout/"), evaluation_name("night", None)
    ('cats_heldout', 'night')
    """
    if isinstance(save, str):
        name = save
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,99}", name):
            raise UsageError(
                f"--save {name!r}: a name is letters, digits, '_', '-' or '.' (100 at most), "
                "starting with a letter or digit"
            )
        return name
    if images is None:
        return "fit"
    if isinstance(images, list):
        return "images"
    path = Path(images)
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^\w.-]+", "_", stem).strip("._-")
    return name or "images"


def cmd_evaluate(s: SimpleNamespace) -> int:
    from face_concepts._core.io import atomic_write_json
    from face_concepts.report.glossary import metric_table
    from face_concepts.report.runs import load_run

    images = _images_arg(s.images, "--images") if s.images is not None else None
    target = None
    if s.save is not False and s.save is not None:
        name = evaluation_name(s.save, images)
        target = Path(s.run) / EVALUATIONS / f"{name}.json"
        if target.exists() and not s.overwrite:
            raise UsageError(
                f"the run already has an evaluation named {name!r} ({target}); pass --overwrite "
                "to replace it, or --save OTHER_NAME to keep both"
            )
    explainer = load_run(s.run, weights=s.weights, device=s.device, progress=s.progress)
    report = explainer.evaluate(images)
    metrics = report.to_dict()
    split = metrics.get("split") or ("heldout" if images else "fit")
    meta = explainer.metadata_
    result = {
        "run_dir": str(s.run), "class_id": explainer.class_id_, "class_name": meta.get("class_name"),
        "method": explainer.method, "split": split, "n_images": metrics.get("n_images"),
        "metrics": metrics,
    }  # fmt: skip
    if target is not None:
        import time

        record = {
            "name": target.stem, "images": images,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result,
        }  # fmt: skip
        atomic_write_json(target, record)
        result["saved"] = str(target)
    if s.json:
        _emit_json(result)
    else:
        print(
            f"run {s.run}: class {result['class_id']} {result['class_name'] or ''}, "
            f"method {result['method']}, {result['n_images']} {split} images"
        )
        print(metric_table(metrics))
        if target is not None:
            print(f"\nsaved as {target} (the fit's own metrics are unchanged)")
    return 0
