"""Save and load a fitted :class:`~face_concepts.pipeline.explainer.ConceptExplainer` as a run directory.

A run holds a :class:`~face_concepts.pipeline.bank.ConceptBank` (tensors in safetensors, metadata in
JSON; no pickle anywhere): the concept bank ``W``, global and local importance, image codes and
activations, the top crops per concept, and metadata with the model description (id,
fingerprint, layer, preprocessing), every setting, the fit's loss history and metrics.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from face_concepts._core.validation import dead_concepts
from face_concepts._core.warn import one_line, recording
from face_concepts.pipeline.bank import ConceptBank


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _dead(explainer: Any) -> list[int]:
    """Concepts unused on the fit's rows, warned about once, so that a saved run says so."""
    rows = getattr(explainer, "row_codes_", None)
    codes = rows if rows is not None else explainer.image_codes_
    dead = dead_concepts(codes, explainer.concept_bank_)
    if dead:
        warnings.warn(
            f"{len(dead)} of {explainer.concept_bank_.shape[0]} concepts are dead (zero on "
            f"every training patch): {dead}; their importance is 0. The data holds fewer "
            "patterns than n_concepts: refit with a smaller n_concepts or more images",
            UserWarning,
            stacklevel=3,
        )
    return dead


def save_explainer(explainer: Any, path: Any, *, metrics: dict[str, Any] | None = None) -> Path:
    explainer._check_fitted()
    loaded = getattr(explainer, "loaded_run_", None)
    if loaded is not None:
        shown = list(getattr(explainer, "warnings_", None) or [])  # saved, and shown since
        extra = {"warnings": shown} if shown != (loaded.metadata.get("warnings") or []) else {}
        tensors = explainer_tensors(explainer)
        return save_loaded(loaded, path, tensors, metrics=metrics, metadata=extra)
    tensors = {
        "W": explainer.concept_bank_,
        "importance": explainer.importance_,
        "importance_local": explainer.local_importance_,
        "codes": explainer.image_codes_,
        "image_activations": explainer.image_activations_,
    }
    if explainer.crops_ is not None:
        idx, crops = explainer.top_crops()
        tensors["top_crop_index"] = idx
        tensors["crops"] = _to_uint8(crops)
        tensors["top_crop_codes"] = explainer.row_codes_[idx.reshape(-1)]
    split = explainer.split
    examples = getattr(explainer, "example_images_", None)
    pre = getattr(split, "preprocess", None)
    if examples is not None and pre is not None:
        tensors["example_images"] = _to_uint8(pre.denormalize(examples))
    info = dict(explainer.fit_info_)
    shown = getattr(explainer, "warnings_", None) or []
    with recording(shown):
        dead = _dead(explainer)
    approximation = getattr(split, "approximation", None)  # warned when the model was loaded
    if approximation and one_line(approximation) not in shown:
        shown.insert(0, one_line(approximation))
    metadata = {
        "model": split.description()
        if hasattr(split, "description")
        else {"name": type(split).__name__},
        "class_id": explainer.class_id_,
        "class_name": explainer.class_name(),
        "config": explainer.run_config(),
        "patch_settings": getattr(explainer, "patch_settings_", None),
        "n_images": explainer.n_images_,
        "n_skipped": getattr(explainer, "n_skipped_", 0),
        "images": [str(Path(p).resolve()) for p in getattr(explainer, "image_paths_", [])],
        "fit": {k: v for k, v in info.items() if k != "history"},
        "loss_history": info.get("history"),
        "metrics": metrics or {},
        "dead_concepts": dead,
        "warnings": list(shown),
    }
    out = Path(path)
    ConceptBank(tensors, metadata).save(out)
    return out


def explainer_tensors(explainer: Any) -> dict[str, torch.Tensor]:
    """The fit's tensors that every run holds, from the explainer's attributes."""
    return {
        "W": explainer.concept_bank_,
        "importance": explainer.importance_,
        "importance_local": explainer.local_importance_,
        "codes": explainer.image_codes_,
        "image_activations": explainer.image_activations_,
    }


def save_loaded(
    loaded: ConceptBank,
    path: Any,
    tensors: dict[str, torch.Tensor],
    *,
    metrics: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a run that was loaded (and not refitted) again: every tensor and every metadata
    entry it holds (crops, example images, creation time, metrics, warnings), with ``tensors``
    over the loaded ones, ``metadata`` over its entries and ``metrics`` replacing the saved
    metrics when given. What did not change is written as it was read, so the files are
    bit-identical to the loaded ones, in any environment: the ``versions`` of what wrote the
    run are kept too, unless a tensor or an entry changed (then they name this writer)."""
    meta = {**loaded.metadata, **(metadata or {})}
    if metrics is not None:
        meta["metrics"] = metrics
    merged = {**loaded.tensors, **tensors}
    same = meta == loaded.metadata and all(
        t is loaded.tensors.get(k) or _same(t, loaded.tensors.get(k)) for k, t in tensors.items()
    )
    if not same:
        meta.pop("versions", None)
    out = Path(path)
    ConceptBank(merged, meta).save(out)
    return out


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def load_explainer(cls: Any, path: Any, split: Any = None) -> Any:
    from face_concepts.models import load_model

    bank = ConceptBank.load(path)
    meta = bank.metadata
    model_meta = meta.get("model", {})
    if split is None:
        name = model_meta.get("model")
        if not name:
            raise ValueError(f"the run at {path} records no model id; pass split= explicitly")
        split = load_model(name, layer=model_meta.get("layer"), signed=model_meta.get("transform"))
    fp = getattr(split, "fingerprint", None)
    if model_meta.get("fingerprint") and fp and fp != model_meta["fingerprint"]:
        raise ValueError(
            f"the run at {path} was made with model fingerprint {model_meta['fingerprint']} "
            f"(layer {model_meta.get('layer')}), but the given model has fingerprint {fp} "
            f"(layer {getattr(split, 'layer', None)})"
        )
    from face_concepts.pipeline.config import ExplainerConfig

    ex = cls.from_config(split, ExplainerConfig.from_dict(meta["config"]))
    t = bank.tensors
    ex.concept_bank_ = t["W"]
    ex.importance_ = t["importance"]
    ex.local_importance_ = t["importance_local"]
    ex.image_codes_ = t["codes"]
    ex.image_activations_ = t["image_activations"]
    ex.class_id_ = meta["class_id"]
    ex.n_images_ = meta["n_images"]
    ex.fit_info_ = {**meta.get("fit", {}), "history": meta.get("loss_history")}
    ex.patch_settings_ = meta.get("patch_settings")
    ex.n_skipped_ = meta.get("n_skipped", 0)
    ex.image_paths_ = list(meta.get("images") or [])
    ex.dead_concepts_ = list(meta.get("dead_concepts") or [])
    ex.warnings_ = list(meta.get("warnings") or [])
    # What a fresh fit keeps in memory but a run does not hold (the crops of every row, their
    # codes, the rows themselves) is replaced by what the run saved: the top crops per concept
    # with their codes, and the example images.
    ex.crops_ = None
    ex.saved_crops_ = t.get("crops")
    ex.saved_top_crop_index_ = t.get("top_crop_index")
    ex.saved_top_crop_codes_ = t.get("top_crop_codes")
    examples = t.get("example_images")
    pre = getattr(split, "preprocess", None)
    if examples is not None and pre is not None:
        ex.example_images_ = pre.normalize(examples.float() / 255.0)
    ex.metadata_ = meta
    ex.loaded_run_ = bank
    return ex
