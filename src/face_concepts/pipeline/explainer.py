"""``ConceptExplainer``: images → patches → activations → factorise → encode → importance → metrics.

One pipeline for every method (see :mod:`face_concepts.methods.registry`); every code that a metric or
figure sees comes from the single non-negative encoder (:func:`face_concepts.decomposition.encode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from face_concepts._core.device import resolve_device
from face_concepts._core.validation import check_float, check_int
from face_concepts._core.warn import recording
from face_concepts.activations.extract import extract_activations
from face_concepts.data import (
    ImageSet,
    extract_patches,
    load_images,
    preprocess_images,
    resize_patches,
)
from face_concepts.decomposition import FACE, encode
from face_concepts.methods.registry import check_batch_fit, factorize, get_method
from face_concepts.models.metadata import class_index
from face_concepts.models.split import check_fidelity
from face_concepts.pipeline.config import DEFAULTS as _D
from face_concepts.pipeline.config import ExplainerConfig, config_attributes
from face_concepts.pipeline.views import ExplainerViews


@config_attributes
class ConceptExplainer(ExplainerViews):
    """Extract, rank and evaluate the concepts a classifier uses for one class.

    Parameters
    ----------
    split : ModelSplit
        The model as features → mean pool → head (:func:`face_concepts.split_model`).
    method : str
        "face" (default), "face-paper", "nmf", "craft" or "ice".
    n_concepts : int
        r.
    kl_weight : float or "auto"
        λ for FACE (ignored by methods that fix it: nmf/craft/ice use 0, face-paper 1e-5).
        "auto": ``fit`` picks the smallest λ on a grid whose top-1 agreement on held-out
        fitting images reaches ``target_agreement`` (:mod:`face_concepts.pipeline.auto_lambda`;
        the search is in ``fit_info_["auto_kl_weight"]``, saved with the run).
        Default 1.0, unlike the engine ``FACE(kl_weight=1e-5)``, whose default is the authors'
        demo value: at this objective's scale λ ≤ 1e-2 gives about the same concepts as λ = 0
        (plain NMF), while λ = 1 changes them (C-Deletion 0.60 → 0.74 on MobileNetV2, the recommended
        λ on Fashion-MNIST; ``benchmarks/results/reproduction.md``). The CLI uses 1.0 too.
    patch_size, stride : int
        Grid crops (docs/method.md §7.3); stride defaults to ``int(0.8 · patch_size)``.
    resize_patches : bool or None
        Resize crops to the model input size (CRAFT) or not (FACE code); None: the method's.
    encoder_kl_weight : "fit" or float
        λ of the single encoder used for image codes and all metrics; "fit" uses the fit's λ.
        Benchmarks comparing methods set one value for all methods.
    n_designs : int
        Sobol designs (docs/method.md §8.1).
    importance_precision : {"auto", "full", "bfloat16"}
        What a head that is not a linear layer runs in for the Sobol importance: "auto" uses
        bfloat16 where the hardware multiplies it natively (a CPU with AMX, a CUDA GPU), "full"
        the activations' precision. ``fit_info_["importance_precision"]`` says which ran.
    filter_correct : bool
        Keep only images the model assigns to ``class_id`` (the authors' protocol).
    batch_size : int
        Images per forward pass.
    max_iter, tol : optional
        Passed to the solver.
    fit_batch_size : int or None
        Rows (crops) per mini-batch of the FACE factorisation (``FACE(batch_size=)``); None
        (default): every row at once. For more rows than fit in memory; methods face and nmf
        only (a ValueError otherwise, and for ``kl_weight="auto"``); ``max_iter``/``tol`` then
        count epochs (defaults 50 and 1e-4) and ``fit_info_["solver"]`` is "minibatch".
    random_state : int
    device : str or None
        Where the factorisation runs (default: CPU, or the model's device).
    progress : bool
        Progress bars on stderr.
    verbose : bool
        The solver's progress on stderr while fitting (iteration, objective, elapsed time).
    cache_dir : path or None
        On-disk activation cache (safetensors shards, checksummed, resumable); reused by later
        runs on the same model, layer, preprocessing, patch settings and images.

    Every setting is declared (default, type, help, bound) in
    :class:`~face_concepts.pipeline.config.ExplainerConfig`; the explainer holds one as
    ``config`` (validated when made), and the attributes of the same names read it (setting one
    replaces it with a validated copy). ``ConceptExplainer.from_config(split, config)`` makes an
    explainer from one.

    Examples
    --------
    >>> from face_concepts import ConceptExplainer, load_model  # doctest: +SKIP
    >>> explainer = ConceptExplainer(load_model("bundled:mobilenet_v2"), n_concepts=10)  # doctest: +SKIP
    >>> explainer.fit("photos/cats", class_id=285).importance()  # doctest: +SKIP
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
        kl_weight: float | str = _D.kl_weight,
        target_agreement: float = _D.target_agreement,
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
        # The one copy of every setting (validated); the attributes below read and write it.
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
    def from_config(cls, split: Any, config: ExplainerConfig) -> ConceptExplainer:
        """An explainer of ``split`` with the settings of ``config``."""
        if not isinstance(config, ExplainerConfig):
            raise TypeError(f"config must be an ExplainerConfig, got {type(config).__name__}")
        self = cls.__new__(cls)
        self.split, self.config = split, config
        return self

    # ------------------------------------------------------------------ configuration
    @property
    def spec(self):
        return get_method(self.method)

    @property
    def effective_kl_weight(self) -> float:
        spec = self.spec
        lam = spec.kl_weight if spec.kl_weight is not None else self.kl_weight
        if lam == "auto":  # the λ that fit chose
            from face_concepts.pipeline.auto_lambda import chosen_kl_weight

            return chosen_kl_weight(self)
        return check_float(lam, "kl_weight", minimum=0.0)

    @property
    def effective_encoder_kl_weight(self) -> float:
        if self.encoder_kl_weight == "fit":
            return self.effective_kl_weight
        return check_float(self.encoder_kl_weight, "encoder_kl_weight", minimum=0.0)

    def run_config(self) -> dict[str, Any]:
        """Every setting of this fit, as a run records it (JSON; the method's λ and resizing
        resolved; :meth:`ExplainerConfig.from_dict` reads it back)."""
        spec = self.spec
        return {
            "method": self.method,
            "method_spec": spec.to_dict(),
            "n_concepts": self.n_concepts,
            "kl_weight": self.effective_kl_weight,
            "patch_size": self.patch_size,
            "stride": self.stride,
            "resize_patches": self._resize(),
            "encoder": self.encoder_settings(),
            "n_designs": self.n_designs,
            "importance_precision": self.importance_precision,
            "filter_correct": self.filter_correct,
            "batch_size": self.batch_size,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "fit_batch_size": self.fit_batch_size,
            "random_state": self.random_state,
        }

    def encoder_settings(self) -> dict[str, Any]:
        return {
            "name": "face_concepts.decomposition.encode",
            "kl_weight": self.effective_encoder_kl_weight,
        }

    def _resize(self) -> bool:
        return (
            self.spec.resize_patches if self.resize_patches is None else bool(self.resize_patches)
        )

    # ------------------------------------------------------------------ images in
    def _as_batch(self, images: Any) -> tuple[torch.Tensor, ImageSet | None]:
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            return images.float(), None
        imageset = images if isinstance(images, ImageSet) else load_images(images)
        if imageset.tensor is not None:
            return imageset.tensor.float(), imageset
        pre = getattr(self.split, "preprocess", None)
        if pre is None:
            raise ValueError(
                "the model split has no preprocessing recorded; pass a preprocessed tensor (N, 3, H, W)"
            )
        return preprocess_images(imageset, pre), imageset

    def _cache(self) -> Any:
        if self.cache_dir is None:
            return None
        from face_concepts.activations.cache import ActivationCache

        return ActivationCache(self.cache_dir)

    def _pooled(self, x: torch.Tensor, patch: dict[str, Any] | None = None) -> torch.Tensor:
        return extract_activations(
            self.split,
            x,
            batch_size=self.batch_size,
            progress=self.progress,
            cache=self._cache(),
            cache_key_extra={"patch": patch} if patch else None,
            unit="patch" if patch else "image",
        )

    def _head(self) -> Any:
        return self.split.head

    def _row_head(self) -> Any:
        """The head for the rows this method factorises. For native-size crops it is the split's
        head for inputs of the crop's size: at an intermediate layer the rest of the network then
        runs on a constant map of the crop's own size, as the model would see the crop
        (docs/method.md §7.1). Whole images (encoder, importance, metrics) keep ``_head()``."""
        for_input = getattr(self.split, "head_for_input", None)
        if self.spec.rows == "patches" and not self._resize() and for_input is not None:
            return for_input(self.patch_size)
        return self._head()

    def _rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows to factorise, the image index of each row, and the crops (None for spatial)."""
        if self.spec.rows == "spatial":
            fmap = extract_activations(
                self.split, x, batch_size=self.batch_size, progress=self.progress, spatial=True
            )
            n, p, h, w = fmap.shape
            rows = fmap.permute(0, 2, 3, 1).reshape(-1, p)
            return rows, torch.arange(n).repeat_interleave(h * w), None
        patches = extract_patches(x, self.patch_size, self.stride)
        self.patch_settings_ = {
            **patches.settings,
            "resize_to": self._input_size() if self._resize() else None,
        }
        crops = patches.patches
        if self._resize():
            size = self._input_size()
            inputs = (resize_patches(b, size) for b in crops.split(self.batch_size))
            A = extract_activations(
                self.split, inputs, batch_size=self.batch_size, progress=self.progress, unit="patch"
            )
        else:
            A = self._pooled(crops, patch=self.patch_settings_)
        return A, patches.image_index, crops

    def _input_size(self) -> int:
        pre = getattr(self.split, "preprocess", None)
        return int(pre.crop_size) if pre is not None and pre.crop_size else 224

    # ------------------------------------------------------------------ fitting
    def fit(self, images: Any, class_id: int | str) -> ConceptExplainer:
        """Extract concepts of ``class_id`` from ``images`` (paths, folder, PIL images or tensor).

        ``class_id``: the class index (285), or its name in the model's class names (``"tabby"``,
        ``"Egyptian cat"``, ``"egyptian_cat"``), as ``--class-id`` takes on the command line.

        The warnings shown while fitting (and later evaluating) are kept in ``warnings_`` and
        saved with the run, so that the atlas shows them too.
        """
        self.warnings_: list[str] = []
        with recording(self.warnings_):
            self._check_fit_batch()
            prepared = self._prepare_fit(images, class_id)
            dev = resolve_device(self.device)
            if self.spec.kl_weight is None and self.kl_weight == "auto":
                from face_concepts.pipeline import auto_lambda

                U, W, info = auto_lambda.fit_explainer(self, prepared, dev)
                return self._adopt_fit(prepared, U, W, info)
            U, W, info = factorize(
                self.spec,
                prepared["rows"].to(dev),
                self._row_head(),
                n_concepts=prepared["n_concepts"],
                kl_weight=self.effective_kl_weight,
                random_state=self.random_state,
                max_iter=self.max_iter,
                tol=self.tol,
                verbose=self.verbose,
                batch_size=self.fit_batch_size,
            )
            return self._adopt_fit(prepared, U, W, info)

    def _check_fit_batch(self) -> None:
        """Refuse a ``fit_batch_size`` this method or head cannot run, before any image is read."""
        if self.fit_batch_size is not None:
            check_batch_fit(
                self.spec, self._row_head(), self.effective_kl_weight, self.fit_batch_size
            )

    # The two halves of ``fit``, also used by ``multiclass.SharedConceptExplainer``, which
    # factorises the rows of several classes at once and then adopts the shared bank per class.
    def _prepare_fit(self, images: Any, class_id: int | str) -> dict[str, Any]:
        """Images → the rows to factorise (and what ``_adopt_fit`` needs besides the factors)."""
        self.spec  # noqa: B018 -- an unknown method fails before any image is read
        r = check_int(self.n_concepts, "n_concepts", minimum=1)
        n_classes = getattr(self.split, "n_classes", None)
        self.class_id_ = check_int(
            class_index(self.split, class_id), "class_id", minimum=0,
            maximum=(n_classes - 1) if n_classes else None,
        )  # fmt: skip
        x, imageset = self._as_batch(images)
        self.n_skipped_ = len(imageset.skipped) if imageset is not None else 0
        self.image_paths_ = [str(p) for p in imageset.paths if p] if imageset is not None else []
        if self.filter_correct:
            x = self._filter_correct(x)
        A_img = self._pooled(x)
        rows, index, crops = self._rows(x)
        head = self._row_head()
        return {
            "x": x,
            "A_img": A_img,
            "rows": rows,
            "index": index,
            "crops": crops,
            "n_concepts": r,
            "split_fidelity": check_fidelity(self.split, x, A_img, self.batch_size),
            # the head the crops are fitted with, when it is not the images' (docs/method.md §7.1)
            "split_fidelity_crops": None
            if head is self._head() or crops is None
            else check_fidelity(
                self.split, crops, rows, self.batch_size, head=head, what="fitting crops"
            ),
        }

    def _adopt_fit(
        self, prepared: dict[str, Any], U: torch.Tensor, W: torch.Tensor, info: dict[str, Any]
    ) -> ConceptExplainer:
        """Take ``W`` (and the rows' codes ``U``) as this explainer's fit; encode, rank."""
        x, A_img, rows = prepared["x"], prepared["A_img"], prepared["rows"]
        self.concept_bank_ = W.cpu()
        self.row_codes_, self.row_index_ = U.cpu(), prepared["index"]
        self.crops_ = prepared["crops"]
        self.fit_info_ = info
        for key in ("split_fidelity", "split_fidelity_crops"):
            if prepared.get(key) is not None:
                self.fit_info_ = {**self.fit_info_, key: prepared[key]}
        self.n_images_ = int(x.shape[0])
        self.example_images_ = x[:8].clone()  # for heatmaps in reports
        # a fit replaces whatever run this explainer was loaded from
        self.loaded_run_ = self.saved_crops_ = None
        self.saved_top_crop_index_ = self.saved_top_crop_codes_ = None
        self.image_activations_ = A_img
        self._encode_fitting_images()
        self._rows_cache = rows
        return self

    def _filter_correct(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            pred = torch.cat([self.split.logits(b).argmax(1) for b in x.split(self.batch_size)])
        keep = pred == self.class_id_
        self.n_filtered_ = int((~keep).sum())
        if not bool(keep.any()):
            raise ValueError(
                f"the model assigns none of the {x.shape[0]} images to class {self.class_id_}; nothing to explain"
            )
        return x[keep]

    def _check_fitted(self) -> None:
        if not hasattr(self, "concept_bank_"):
            raise RuntimeError(
                "this ConceptExplainer is not fitted yet; call fit(images, class_id) first"
            )

    # ------------------------------------------------------------------ using a fit
    def encode_activations(self, A: torch.Tensor) -> torch.Tensor:
        """Codes of pooled activations with the single encoder (W fixed)."""
        self._check_fitted()
        return encode(
            A, self.concept_bank_, self._head(), kl_weight=self.effective_encoder_kl_weight
        )

    def transform(self, images: Any) -> torch.Tensor:
        """Codes (n, r) of whole images."""
        x, _ = self._as_batch(images)
        return self.encode_activations(self._pooled(x))

    def importance(self) -> torch.Tensor:
        """Global importance (r,): mean over the fitting images of the local indices."""
        self._check_fitted()
        return self.importance_

    def class_name(self) -> str | None:
        cats = getattr(self.split, "categories", None)
        return cats[self.class_id_] if cats and hasattr(self, "class_id_") else None

    # ------------------------------------------------------------------ persistence
    def save(self, path: Any, *, metrics: dict[str, Any] | None = None) -> Any:
        """Write the run (ConceptBank: safetensors + JSON) to directory ``path``.

        A loaded run (not refitted since) is written again whole: its top crops, example images
        and metadata, and its saved metrics unless ``metrics`` is given.
        """
        from face_concepts.pipeline.persist import save_explainer

        return save_explainer(self, path, metrics=metrics)

    @classmethod
    def load(cls, path: Any, split: Any = None) -> ConceptExplainer:
        """A working explainer from a saved run (no refit); ``split`` defaults to the recorded model."""
        from face_concepts.pipeline.persist import load_explainer

        return load_explainer(cls, path, split)


__all__ = ["FACE", "ConceptExplainer"]
