"""Finding saved runs and reopening them with their model.

A run directory is a :class:`~face_concepts.pipeline.bank.ConceptBank` (``bank.json`` +
``bank.safetensors``). The command line adds ``command.json`` beside them: how the run was made
(model spec, weights file, images, flags), so that later commands can reload the same weights
and show heatmaps on the same images. Runs written by the Python API have no such file; what
they lack (custom weights, image paths) is then given on the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from face_concepts._core.io import atomic_write_json
from face_concepts.pipeline.bank import JSON_FILE, ConceptBank

SIDECAR = "command.json"


def find_runs(path: str | Path) -> list[Path]:
    """The run directories in ``path``: itself if it is a run, else every run below it (sorted).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist or holds no run.

    Examples
    --------
    >>> import tempfile, torch
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = ConceptBank({"W": torch.ones(1, 2)}).save(root / "b")
    >>> [p.name for p in find_runs(root)]
    ['b']
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"run directory {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is a file; give a run directory")
    if ConceptBank.exists(root):
        return [root]
    runs = sorted({p.parent for p in root.rglob(JSON_FILE) if ConceptBank.exists(p.parent)})
    # The per-class runs inside a shared bank are shown by the shared bank's own section.
    runs = [r for r in runs if not is_shared_member(r)]
    if not runs:
        raise FileNotFoundError(
            f"{str(root)!r} holds no saved run (no {JSON_FILE} in it or its subfolders)"
        )
    return runs


def is_shared_member(run: str | Path) -> bool:
    """Whether ``run`` is one class's run inside a shared bank (``SHARED/classes/<class>/``)."""
    from face_concepts.pipeline.shared import CLASSES_DIR

    parent = Path(run).parent
    return parent.name == CLASSES_DIR and ConceptBank.exists(parent.parent)


def read_sidecar(run: str | Path) -> dict[str, Any]:
    """The ``command.json`` record of a run, or ``{}`` when absent or unreadable."""
    path = Path(run) / SIDECAR
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_sidecar(run: str | Path, record: dict[str, Any]) -> Path:
    """Write ``command.json`` into the run directory atomically."""
    return atomic_write_json(Path(run) / SIDECAR, record)


def run_metadata(run: str | Path) -> dict[str, Any]:
    """The verified metadata of a saved run (raises ``ValueError`` naming the run if unreadable)."""
    return load_bank(run).metadata


def load_bank(run: str | Path) -> ConceptBank:
    """Load a run's bank; every failure becomes one ``ValueError`` line naming the run."""
    try:
        return ConceptBank.load(run)
    except FileNotFoundError:
        raise  # its message already names the missing bank.json
    except Exception as exc:
        raise ValueError(f"cannot read the run at {str(run)!r}: {exc}") from exc


class ModelCache:
    """Load each (model, weights, layer, device) once, for atlases of many runs on one model.

    Examples
    --------
    >>> cache = ModelCache(device="cpu")  # doctest: +SKIP
    >>> split = cache.get("bundled:mobilenet_v2")  # doctest: +SKIP
    """

    def __init__(self, *, device: Any = None) -> None:
        self.device = device
        self._splits: dict[tuple[Any, ...], Any] = {}

    def put(
        self,
        split: Any,
        spec: str,
        weights: str | None = None,
        layer: str | None = None,
        *,
        signed: str | None = None,
    ) -> None:
        """Use an already loaded ``split`` for ``(spec, weights, layer)`` (no second load)."""
        self._splits[(spec, weights, layer, signed, str(self.device))] = split

    def get(
        self,
        spec: str,
        weights: str | None = None,
        layer: str | None = None,
        *,
        signed: str | None = None,
    ) -> Any:
        from face_concepts.models import load_model

        key = (spec, weights, layer, signed, str(self.device))
        if key not in self._splits:
            self._splits[key] = load_model(
                spec, weights, device=self.device, layer=layer, signed=signed
            )
        return self._splits[key]


def run_model_spec(run: str | Path, metadata: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """``(spec, weights, layer)`` recorded for a run (weights from ``command.json``)."""
    model = metadata.get("model") or {}
    spec = model.get("model") if isinstance(model, dict) else None
    if not spec:
        raise ValueError(f"the run at {str(run)!r} records no model id; it cannot be reloaded")
    weights = read_sidecar(run).get("weights") or metadata.get("weights")
    return str(spec), weights, model.get("layer")


def load_run(
    run: str | Path,
    *,
    weights: str | None = None,
    device: Any = None,
    cache: ModelCache | None = None,
    progress: bool = False,
) -> Any:
    """A working :class:`~face_concepts.ConceptExplainer` for a saved run, with its model.

    ``weights`` overrides the weights file recorded in ``command.json``.
    """
    from face_concepts.pipeline.explainer import ConceptExplainer

    metadata = run_metadata(run)
    if metadata.get("shared"):
        from face_concepts.pipeline.shared import CLASSES_DIR

        ids = [c.get("class_id") for c in metadata.get("classes", [])]
        raise ValueError(
            f"the run at {str(run)!r} is a concept bank shared by classes {ids}; give one class's "
            f"run from {str(Path(run) / CLASSES_DIR)!r} instead"
        )
    spec, recorded, layer = run_model_spec(run, metadata)
    cache = cache or ModelCache(device=device)
    # a signed layer's transform (--signed posneg/relu) is recorded with the model
    signed = (metadata.get("model") or {}).get("transform")
    split = cache.get(spec, weights or recorded, layer, signed=signed)
    try:
        explainer = ConceptExplainer.load(run, split=split)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the run at {str(run)!r} is incomplete: missing {exc}") from exc
    explainer.progress = progress
    if device is not None:
        explainer.device = device
    return explainer


def run_images(run: str | Path, metadata: dict[str, Any]) -> Any:
    """The images a run was fitted on, as recorded (a folder, a file list) or ``None``."""
    images = read_sidecar(run).get("images")
    return images if images else metadata.get("images")
