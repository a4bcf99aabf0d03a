"""Many-class tasks: one bank per class or one shared bank, fitted on an executor.

:func:`fit_classes` runs :class:`ClassJob` s (:func:`fit_class` per class, or :func:`fit_shared`
for a :class:`~face_concepts.pipeline.shared.SharedConceptExplainer`) and writes their runs.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from face_concepts._core.device import resolve_device
from face_concepts._core.io import atomic_write_bytes
from face_concepts.pipeline.config import ExplainerConfig
from face_concepts.pipeline.explainer import ConceptExplainer
from face_concepts.pipeline.shared import (
    CLASSES_DIR,
    SHARED_DIR,
    SharedConceptExplainer,
    class_run_name,
)

__all__ = ["ClassJob", "fit_class", "fit_classes", "fit_shared"]


@dataclass(frozen=True)
class ClassJob:
    """One class of a many-class run: its id, its images and optional held-out images.

    ``images`` / ``heldout`` are anything ``ConceptExplainer.fit`` accepts; pass decoded images
    (an ``ImageSet``) or tensors when workers cannot read the driver's files.
    """

    class_id: int
    images: Any
    heldout: Any = None


def _on_device(split: Any, device: Any) -> Any:
    # A task in the driver's process (LocalExecutor with one worker) holds the user's split:
    # a copy goes to the device, so that the user's model stays where it was.
    dev = None if device is None else resolve_device(device)
    if dev is None or getattr(split, "device", None) == dev:
        return split
    return copy.deepcopy(split).to(dev)


def _run_files(fit: Callable[[Path], Any]) -> tuple[Any, dict[str, bytes]]:
    """``fit(folder)`` into a temporary folder: its result and ``{relative path: bytes}``."""
    with tempfile.TemporaryDirectory(prefix="face-concepts-") as tmp:
        result = fit(Path(tmp))
        return result, {
            str(p.relative_to(tmp)): p.read_bytes()
            for p in sorted(Path(tmp).rglob("*"))
            if p.is_file()
        }


def _task_config(settings: ExplainerConfig | Mapping[str, Any]) -> ExplainerConfig:
    # a task has no terminal of its own: no progress bars (cache_dir and the rest are kept)
    return ExplainerConfig.coerce(settings).replace(progress=False)


def fit_class(
    job: ClassJob,
    *,
    split: Any,
    settings: ExplainerConfig | Mapping[str, Any],
    stability: bool = False,
) -> dict[str, Any]:
    """Task of per-class mode: fit, importance, metrics of one class; its run as bytes.

    ``settings``: an :class:`~face_concepts.pipeline.config.ExplainerConfig` or a dict of its
    settings; ``stability``: C-Stab in the fit's metrics. Returns a summary with ``"run"``
    (folder name), ``"files"`` (``{relative path: bytes}``) and the metrics.
    """
    from face_concepts.pipeline.jobs import fit_evaluate_save

    config = _task_config(settings)
    ex = ConceptExplainer.from_config(_on_device(split, config.device), config)
    result, files = _run_files(
        lambda d: fit_evaluate_save(
            ex, job.images, job.class_id, heldout=job.heldout, stability=stability, out=d
        )
    )
    info = ex.fit_info_
    return {
        "class_id": ex.class_id_, "class_name": ex.class_name(), "n_images": ex.n_images_,
        "run": class_run_name(ex.class_id_, ex.class_name()), "n_iter": info.get("n_iter"),
        "converged": info.get("converged"), "importance": ex.importance().tolist(),
        "metrics": result.metrics, "files": files,
    }  # fmt: skip


def fit_shared(
    jobs: Sequence[ClassJob],
    *,
    split: Any,
    settings: ExplainerConfig | Mapping[str, Any],
    stability: bool = False,
) -> dict[str, Any]:
    """Task of shared mode: one bank for all ``jobs``; per-class importance and metrics."""
    from face_concepts.pipeline.jobs import fit_evaluate_save

    config = _task_config(settings)
    shared = SharedConceptExplainer.from_config(_on_device(split, config.device), config)
    images = {j.class_id: j.images for j in jobs}
    heldout = {j.class_id: j.heldout for j in jobs if j.heldout is not None}
    result, files = _run_files(
        lambda d: fit_evaluate_save(shared, images, heldout=heldout, stability=stability, out=d)
    )
    metrics, info = result.metrics, shared.fit_info_
    classes = [
        {"class_id": c, "class_name": ex.class_name(), "n_images": ex.n_images_,
         "run": f"{SHARED_DIR}/{CLASSES_DIR}/{class_run_name(c, ex.class_name())}",
         "importance": ex.importance().tolist(), "metrics": metrics[c]}
        for c, ex in shared.explainers_.items()
    ]  # fmt: skip
    return {
        "run": SHARED_DIR, "n_iter": info.get("n_iter"), "converged": info.get("converged"),
        "classes": classes, "files": files,
    }  # fmt: skip


def _write(out: Path, result: dict[str, Any]) -> None:
    run = out / result.pop("run_dir_name")
    for rel, data in result.pop("files").items():
        atomic_write_bytes(run / rel, data)


def fit_classes(
    split: Any,
    jobs: Sequence[ClassJob],
    out: Any,
    *,
    settings: ExplainerConfig | Mapping[str, Any],
    shared: bool = False,
    stability: bool = False,
    executor: Any = None,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[dict[str, Any]]:
    """Fit many classes through ``executor`` and write their runs under ``out``.

    Per-class mode writes ``out/<id>_<name>/`` per class (one task each); shared mode writes
    ``out/shared/`` (one task). ``stability`` adds C-Stab to each class's fit metrics (per-class
    mode; a shared bank warns that it has none). Returns one summary per class (per-class mode) or one for the
    shared bank, with ``run_dir`` set and the file bytes dropped.

    Examples
    --------
    >>> fit_classes(split, [ClassJob(0, x0), ClassJob(2, x2)], "runs/atlas",
    ...             settings={"n_concepts": 5})  # doctest: +SKIP
    """
    from face_concepts.pipeline.executors import LocalExecutor

    jobs = list(jobs)
    if not jobs or not all(isinstance(j, ClassJob) for j in jobs):
        raise ValueError("jobs must be a non-empty list of ClassJob")
    ids = [j.class_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"class ids must be distinct, got {ids}")
    config = ExplainerConfig.coerce(settings)  # a typo fails here, before any work
    executor = executor if executor is not None else LocalExecutor()
    common = {"split": split, "settings": config, "stability": bool(stability)}
    if shared:
        results = executor.map(fit_shared, [jobs], shared=common, on_done=on_done)
    else:
        results = executor.map(fit_class, jobs, shared=common, on_done=on_done)
    root = Path(out)
    for r in results:
        r["run_dir_name"] = r["run"]
        _write(root, r)
        r["run_dir"] = str(root / r["run"])
    return results
