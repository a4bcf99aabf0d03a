"""Concepts of many classes: one bank per class, or one bank shared by all of them.

``SharedConceptExplainer`` fits **one** concept bank ``W`` on the pooled crops of several
classes. The objective is FACE's own (docs/method.md §2.1): its KL term already compares the full
softmax of the model's prediction on the activations, ``softmax(h(A))``, with that of the
reconstruction, so pooling rows of several classes asks ``W`` to keep every class's prediction.
Each class then gets its own codes, Sobol importance relative to *its* logit and metrics, through
an ordinary fitted :class:`~face_concepts.ConceptExplainer` that holds the shared ``W``
(:meth:`SharedConceptExplainer.explainer`).

:func:`fit_classes` runs many classes through an executor (:mod:`face_concepts.pipeline.executors`):
one task per class (its own bank), or one task for the shared bank. Tasks return their run
directories as bytes, which the caller writes: workers on other machines need no shared disk.

Examples
--------
>>> from face_concepts import load_model  # doctest: +SKIP
>>> shared = SharedConceptExplainer(load_model("bundled:mobilenet_v2"), n_concepts=12)  # doctest: +SKIP
>>> shared.fit({285: "photos/cats", 207: "photos/dogs"}).importance().shape  # doctest: +SKIP
torch.Size([2, 12])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from face_concepts._core.device import resolve_device
from face_concepts._core.names import slug
from face_concepts._core.warn import recording
from face_concepts.methods.registry import factorize, get_method
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.config import DEFAULTS as _D
from face_concepts.pipeline.config import ExplainerConfig, config_attributes
from face_concepts.pipeline.explainer import ConceptExplainer
from face_concepts.pipeline.persist import _to_uint8
from face_concepts.pipeline.views import N_TOP_CROPS

__all__ = [
    "CLASSES_DIR",
    "SharedConceptExplainer",
    "class_run_name",
]

CLASSES_DIR = "classes"  # sub-runs of a shared bank: one ordinary run per class
SHARED_DIR = "shared"


def class_run_name(class_id: int, class_name: str | None) -> str:
    """Folder name of a class's run: ``"285_egyptian_cat"`` (or ``"285"`` without a name).

    Examples
    --------
    >>> class_run_name(285, "Egyptian cat")
    '285_egyptian_cat'
    """
    name = slug(class_name or "")
    return f"{class_id}_{name}" if name else str(class_id)


@config_attributes
class SharedConceptExplainer:
    """One concept bank for several classes, with per-class importance and metrics.

    Parameters are those of :class:`~face_concepts.ConceptExplainer` (model in the constructor,
    data in :meth:`fit`); ``n_concepts`` is the size of the one shared bank.

    Examples
    --------
    >>> shared = SharedConceptExplainer(split, n_concepts=6, progress=False)  # doctest: +SKIP
    >>> shared.fit({0: images_a, 2: images_c}).importance().shape  # doctest: +SKIP
    torch.Size([2, 6])
    """

    # The settings are properties added by @config_attributes, which mypy cannot see.
    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...

    def __init__(
        self,
        split: Any,
        method: str = _D.method,
        *,
        n_concepts: int = _D.n_concepts,
        kl_weight: float | str = _D.kl_weight,  # the config's type; fit refuses "auto"
        target_agreement: float = _D.target_agreement,  # kl_weight="auto" only (not shared)
        patch_size: int = _D.patch_size,
        stride: int | None = _D.stride,
        resize_patches: bool | None = _D.resize_patches,
        encoder_kl_weight: str | float = _D.encoder_kl_weight,
        n_designs: int = _D.n_designs,
        importance_precision: str = _D.importance_precision,
        filter_correct: bool = _D.filter_correct,
        batch_size: int = _D.batch_size,
        max_iter: int | None = _D.max_iter,
        tol: float | None = _D.tol,
        fit_batch_size: int | None = _D.fit_batch_size,
        random_state: int = _D.random_state,
        device: Any = _D.device,
        progress: bool = _D.progress,
        cache_dir: Any = _D.cache_dir,
        verbose: bool = _D.verbose,
    ) -> None:
        self.split = split
        self.config = ExplainerConfig(
            method=method, n_concepts=n_concepts, kl_weight=kl_weight, patch_size=patch_size,
            stride=stride, resize_patches=resize_patches, encoder_kl_weight=encoder_kl_weight,
            n_designs=n_designs, importance_precision=importance_precision,
            filter_correct=filter_correct, batch_size=batch_size,
            max_iter=max_iter, tol=tol, random_state=random_state, device=device,
            progress=progress, cache_dir=cache_dir, verbose=verbose,
            target_agreement=target_agreement, fit_batch_size=fit_batch_size,
        )  # fmt: skip

    @classmethod
    def from_config(cls, split: Any, config: ExplainerConfig) -> SharedConceptExplainer:
        """A shared explainer of ``split`` with the settings of ``config``."""
        if not isinstance(config, ExplainerConfig):
            raise TypeError(f"config must be an ExplainerConfig, got {type(config).__name__}")
        self = cls.__new__(cls)
        self.split, self.config = split, config
        return self

    def _new_explainer(self) -> ConceptExplainer:
        # every class reads (and caches) its activations with the same settings, cache_dir too
        return ConceptExplainer.from_config(self.split, self.config)

    def fit(self, images_by_class: Mapping[int, Any]) -> SharedConceptExplainer:
        """Fit one bank on the crops of every class; then codes, importance per class.

        ``images_by_class`` maps class ids to what ``ConceptExplainer.fit`` accepts.
        """
        if not isinstance(images_by_class, Mapping) or not images_by_class:
            raise ValueError(
                "images_by_class must be a non-empty dict of class id to images, got "
                f"{type(images_by_class).__name__} of length {len(images_by_class or ())}"
            )
        explainers = {int(c): self._new_explainer() for c in images_by_class}
        if len(explainers) != len(images_by_class):
            raise ValueError(f"class ids must be distinct, got {list(images_by_class)}")
        self.warnings_: list[str] = []
        with recording(self.warnings_):
            self._fit(explainers, images_by_class)
        for ex in explainers.values():  # each class's run keeps the fit's warnings
            ex.warnings_ = list(self.warnings_)
        return self

    def _fit(
        self, explainers: dict[int, ConceptExplainer], images_by_class: Mapping[int, Any]
    ) -> None:
        next(iter(explainers.values()))._check_fit_batch()  # before any image is read
        prepared = {
            c: explainers[c]._prepare_fit(images, c)
            for c, images in zip(explainers, images_by_class.values())
        }
        base = next(iter(explainers.values()))
        rows = torch.cat([p["rows"] for p in prepared.values()])
        U, W, info = factorize(
            get_method(self.method),
            rows.to(resolve_device(self.device)),
            base._row_head(),
            n_concepts=next(iter(prepared.values()))["n_concepts"],
            kl_weight=base.effective_kl_weight,
            random_state=self.random_state,
            max_iter=self.max_iter,
            tol=self.tol,
            verbose=self.verbose,
            batch_size=self.fit_batch_size,
        )
        counts = [int(p["rows"].shape[0]) for p in prepared.values()]
        for (c, ex), U_c in zip(explainers.items(), U.cpu().split(counts)):
            ex._adopt_fit(prepared[c], U_c, W, info)
        self.explainers_ = explainers
        self.classes_ = list(explainers)
        self.loaded_run_: ConceptBank | None = None  # a fit replaces any run this was loaded from
        self.concept_bank_ = W.cpu()
        self.row_codes_ = U.cpu()
        self.row_class_ = torch.repeat_interleave(torch.tensor(self.classes_), torch.tensor(counts))
        precision = next(iter(explainers.values())).fit_info_.get("importance_precision")
        self.fit_info_ = {**info, "importance_precision": precision}

    def _check_fitted(self) -> None:
        if not hasattr(self, "explainers_"):
            raise RuntimeError("this SharedConceptExplainer is not fitted yet; call fit first")

    def explainer(self, class_id: int) -> ConceptExplainer:
        """The fitted ConceptExplainer of one class (the shared ``W``, that class's importance)."""
        self._check_fitted()
        if class_id not in self.explainers_:
            raise ValueError(f"class_id must be one of {self.classes_}, got {class_id!r}")
        return self.explainers_[class_id]

    def importance(self) -> torch.Tensor:
        """Importance per class and concept, (n_classes, n_concepts), rows in ``classes_`` order."""
        self._check_fitted()
        return torch.stack([ex.importance_ for ex in self.explainers_.values()])

    def evaluate(self, images_by_class: Mapping[int, Any] | None = None) -> dict[int, Any]:
        """``{class id: MetricReport}`` on the fitting images or on the given held-out ones."""
        self._check_fitted()
        if images_by_class is None:
            return {c: ex.evaluate() for c, ex in self.explainers_.items()}
        return {int(c): self.explainer(int(c)).evaluate(x) for c, x in images_by_class.items()}

    def save(self, path: Any, *, metrics: Mapping[int, dict[str, Any]] | None = None) -> Path:
        """Write the shared run: its bank in ``path``, one ordinary run per class below it.

        ``path/classes/<id>_<name>/`` are complete runs (``ConceptExplainer.load`` reads them);
        ``path`` holds ``W``, ``class_importance`` (n_classes, r), ``importance`` (their mean
        over classes), the top crops over all classes and the per-class metrics.
        """
        self._check_fitted()
        out, metrics = Path(path), dict(metrics or {})
        loaded = getattr(self, "loaded_run_", None)
        if loaded is not None:
            return self._save_loaded(loaded, out, metrics)
        classes = []
        for c, ex in self.explainers_.items():
            name = class_run_name(c, ex.class_name())
            ex.save(out / CLASSES_DIR / name, metrics=metrics.get(c))
            entry = {"class_id": c, "class_name": ex.class_name(), "n_images": ex.n_images_}
            classes.append({**entry, "run": f"{CLASSES_DIR}/{name}", "metrics": metrics.get(c)})
        ConceptBank(self._tensors(), self._metadata(classes)).save(out)
        return out

    def _save_loaded(
        self, loaded: ConceptBank, out: Path, metrics: dict[int, dict[str, Any]]
    ) -> Path:
        """A loaded shared run (not refitted since), written again whole: every class run and
        what the shared bank holds (crops, example images, metadata), new metrics per class
        where given."""
        from face_concepts.pipeline.persist import save_loaded

        meta = loaded.metadata
        entries = {int(c["class_id"]): dict(c) for c in meta.get("classes") or []}
        for c, ex in self.explainers_.items():
            ex.save(out / entries[c]["run"], metrics=metrics.get(c))
            if c in metrics:
                entries[c]["metrics"] = metrics[c]
        extra: dict[str, Any] = {"classes": list(entries.values())}
        saved = meta.get("warnings") or []
        shown = [w for e in self.explainers_.values() for w in getattr(e, "warnings_", [])]
        if any(w not in saved for w in shown):  # shown while evaluating after loading
            extra["warnings"] = list(dict.fromkeys([*saved, *shown]))
        return save_loaded(loaded, out, {"W": self.concept_bank_}, metadata=extra)

    def _tensors(self) -> dict[str, torch.Tensor]:
        imp = self.importance()
        tensors = {"W": self.concept_bank_, "importance": imp.mean(0), "class_importance": imp}
        tensors["classes"] = torch.tensor(self.classes_)
        crops = [ex.crops_ for ex in self.explainers_.values()]
        pre = getattr(self.split, "preprocess", None)
        if all(c is not None for c in crops):
            k = min(N_TOP_CROPS, self.row_codes_.shape[0])
            idx = self.row_codes_.topk(k, dim=0).indices.T.contiguous()
            top = torch.cat(crops)[idx.reshape(-1)]
            tensors["crops"] = _to_uint8(pre.denormalize(top) if pre is not None else top)
            tensors["top_crop_index"], tensors["top_crop_class"] = idx, self.row_class_[idx]
            tensors["top_crop_codes"] = self.row_codes_[idx.reshape(-1)]
        if pre is not None:  # two example images per class, for the atlas's heatmaps
            ex = torch.cat([e.example_images_[:2] for e in self.explainers_.values()])
            tensors["example_images"] = _to_uint8(pre.denormalize(ex))
        return tensors

    def _metadata(self, classes: list[dict[str, Any]]) -> dict[str, Any]:
        base = next(iter(self.explainers_.values()))
        split, info = self.split, dict(self.fit_info_)
        model = split.description() if hasattr(split, "description") else {"name": "?"}
        return {
            "shared": True,
            "model": model,
            "class_id": None,
            "class_name": None,
            "classes": classes,
            "config": base.run_config(),
            "patch_settings": getattr(base, "patch_settings_", None),
            "n_images": sum(c["n_images"] for c in classes),
            "n_rows": int(self.row_codes_.shape[0]),
            "fit": {k: v for k, v in info.items() if k != "history"},
            "loss_history": info.get("history"),
            "metrics": {},
            "warnings": list(
                dict.fromkeys(
                    [
                        *getattr(self, "warnings_", []),
                        *(
                            w
                            for e in self.explainers_.values()
                            for w in getattr(e, "warnings_", [])
                        ),
                    ]
                )
            ),
        }

    @classmethod
    def load(cls, path: Any, split: Any = None) -> SharedConceptExplainer:
        """A working shared explainer from :meth:`save`'s directory (no refit)."""
        from face_concepts.models import load_model

        root = Path(path)
        bank = ConceptBank.load(root)
        meta = bank.metadata
        if not meta.get("shared"):
            raise ValueError(f"the run at {root} is not a shared bank; use ConceptExplainer.load")
        if split is None:
            model = meta.get("model") or {}
            spec = model.get("model")
            if not spec:
                raise ValueError(
                    f"the run at {root} does not record its model; pass split=load_model(...)"
                )
            split = load_model(spec, layer=model.get("layer"), signed=model.get("transform"))
        self = cls.from_config(split, ExplainerConfig.from_dict(meta["config"], progress=False))
        self.explainers_ = {
            int(c["class_id"]): ConceptExplainer.load(root / c["run"], split=split)
            for c in meta["classes"]
        }
        self.classes_ = list(self.explainers_)
        self.concept_bank_ = bank.W
        self.fit_info_ = {**meta.get("fit", {}), "history": meta.get("loss_history")}
        self.metadata_ = meta
        self.loaded_run_ = bank
        return self
