"""The fitted explainer's views: metrics, top crops, concept maps, explanations, figures.

:class:`ExplainerViews` is a base of :class:`~face_concepts.pipeline.explainer.ConceptExplainer`;
its methods read the fit (``concept_bank_``, ``importance_``, ...) and the explainer's helpers.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from sklearn.exceptions import ConvergenceWarning

from face_concepts._core.validation import check_int
from face_concepts._core.warn import recording
from face_concepts.activations.extract import extract_activations
from face_concepts.importance import importance_precision, sobol_indices
from face_concepts.importance.sobol import head_device
from face_concepts.methods.registry import factorize, finite_difference_importance
from face_concepts.metrics import MetricReport, compute_metrics, stability_folds

N_TOP_CROPS = 8


class ExplainerViews:
    """Metrics, top crops, concept maps, explanations and figures of a fitted explainer."""

    # The fit's attributes and the explainer's helpers live on ConceptExplainer.
    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...
        def __setattr__(self, name: str, value: Any) -> None: ...

    def evaluate(
        self, images: Any = None, *, stability: bool = False, split: str | None = None
    ) -> MetricReport:
        """Metrics of docs/method.md §9 on ``images`` (default: the fitting images)."""
        self._check_fitted()
        if getattr(self, "warnings_", None) is None:
            self.warnings_: list[str] = []
        with recording(self.warnings_):
            return self._evaluate(images, stability=stability, split=split)

    def set_encoder(self, kl_weight: str | float) -> Any:
        """Encode with another λ from now on, without refitting the concept bank.

        Sets ``encoder_kl_weight`` ("fit" or a number ≥ 0) and re-encodes the fitting images:
        their codes, the importance and every later metric then come from the new encoder, as
        if the explainer had been fitted with it; the bank W is unchanged (docs/method.md §6).
        Benchmarks use it to report one fit under two encoders. Returns the explainer.
        """
        self._check_fitted()
        self.encoder_kl_weight = kl_weight  # validated by the config
        self._encode_fitting_images()
        return self

    def _encode_fitting_images(self) -> None:
        """Codes of the fitting images with the encoder, and the importance over them."""
        self.image_codes_ = self.encode_activations(self.image_activations_)
        self.local_importance_ = self._local_importance(self.image_codes_)
        self.importance_ = self.local_importance_.mean(dim=0)

    def _local_importance(self, U_img: torch.Tensor) -> torch.Tensor:
        if self.spec.importance == "finite-difference":
            return finite_difference_importance(
                U_img, self.concept_bank_, self._head(), self.class_id_
            )
        head = self._head()
        device = head_device(head, U_img.device)
        precision = importance_precision(self.importance_precision, head, device, U_img.dtype)
        try:
            local = sobol_indices(
                U_img, self.concept_bank_, head, self.class_id_, n_designs=self.n_designs,
                precision=precision,
            )  # fmt: skip
        except RuntimeError as exc:
            if precision != "bfloat16" or self.importance_precision != "auto":
                raise
            # a layer of the head without a bfloat16 kernel: "auto" was only a speed-up
            warnings.warn(
                "the head cannot run in bfloat16 here, so the Sobol importance runs in full "
                f"precision ({str(exc).splitlines()[0]})",
                RuntimeWarning,
                stacklevel=2,
            )
            precision = "full"
            local = sobol_indices(
                U_img, self.concept_bank_, head, self.class_id_, n_designs=self.n_designs,
                precision=precision,
            )  # fmt: skip
        self.fit_info_ = {**getattr(self, "fit_info_", {}), "importance_precision": precision}
        return local

    def _evaluate(self, images: Any, *, stability: bool, split: str | None) -> MetricReport:
        if images is None:
            A, U, name = self.image_activations_, self.image_codes_, split or "fit"
        else:
            x, _ = self._as_batch(images)
            A = self._pooled(x)
            U, name = self.encode_activations(A), split or "heldout"
        stab = self._stability() if stability else None
        return compute_metrics(
            A,
            U,
            self.concept_bank_,
            self._head(),
            self.class_id_,
            self.importance_,
            stability=stab,
            encoder=self.encoder_settings(),
            split=name,
            random_state=self.random_state,
        )

    def _stability(self) -> float:
        spec = self.spec
        stopped: list[bool] = []

        def fit_fn(rows: torch.Tensor) -> torch.Tensor:
            with warnings.catch_warnings():
                # one refit per fold: their non-convergence is counted and said once below
                warnings.simplefilter("ignore", ConvergenceWarning)
                _, W, info = factorize(
                    spec,
                    rows,
                    self._row_head(),
                    n_concepts=self.n_concepts,
                    kl_weight=self.effective_kl_weight,
                    random_state=self.random_state,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    batch_size=self.fit_batch_size,
                )
            stopped.append(not info["converged"])
            return W

        if getattr(self, "_rows_cache", None) is None:
            raise ValueError(
                "stability refits on the fit's rows (every crop's activations), which a saved run "
                "does not hold; fit again to compute C-Stab"
            )
        value = stability_folds(self._rows_cache, fit_fn, groups=self.row_index_.numpy())
        if any(stopped):
            warnings.warn(
                f"C-Stab: {sum(stopped)} of {len(stopped)} refits stopped at max_iter before "
                "converging; raise max_iter for a C-Stab of converged banks",
                ConvergenceWarning,
                stacklevel=4,
            )
        return value

    def top_crops(self, k: int = N_TOP_CROPS) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (r, k) of the crops with the largest codes per concept, and the crops in [0, 1].

        A loaded run returns the top crops it saved (8-bit, at most the ``k`` it saved).
        """
        idx, crops, _ = self._top_crops(k)
        return idx, crops

    def _top_crops(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``top_crops`` and the codes (r·k, r) of those crops."""
        self._check_fitted()
        k = check_int(k, "k", minimum=1)
        if self.crops_ is not None:
            k = min(k, self.row_codes_.shape[0])
            idx = self.row_codes_.topk(k, dim=0).indices.T.contiguous()
            crops = self.crops_[idx.reshape(-1)]
            pre = getattr(self.split, "preprocess", None)
            crops = pre.denormalize(crops) if pre is not None else crops
            return idx, crops, self.row_codes_[idx.reshape(-1)]
        saved = getattr(self, "saved_crops_", None)
        if saved is None:
            if self.spec.rows == "spatial":
                raise ValueError(
                    f"method {self.method!r} factorises spatial positions; it has no crops"
                )
            raise ValueError(
                "the saved run holds no crops (it was saved without them); fit again to see "
                "its top crops"
            )
        r = self.concept_bank_.shape[0]
        per = saved.shape[0] // r
        k = min(k, per)
        rows = (torch.arange(r)[:, None] * per + torch.arange(k)[None, :]).reshape(-1)
        index = getattr(self, "saved_top_crop_index_", None)
        idx = index[:, :k].contiguous() if index is not None else rows.reshape(r, k)
        codes = getattr(self, "saved_top_crop_codes_", None)
        if codes is None:  # a run without them: each concept's own crops, by rank
            codes = torch.zeros(r * k, r)
            codes[torch.arange(r * k), torch.arange(r).repeat_interleave(k)] = 1.0
        else:
            codes = codes[rows]
        return idx, saved[rows].float() / 255.0, codes

    def concept_maps(self, images: Any) -> torch.Tensor:
        """Where each concept is: spatial positions encoded, upsampled to the image (N, r, H, W)."""
        from face_concepts.importance.concept_maps import spatial_concept_maps

        x, _ = self._as_batch(images)
        fmap = extract_activations(
            self.split, x, batch_size=self.batch_size, progress=False, spatial=True
        )
        return spatial_concept_maps(
            fmap,
            self.concept_bank_,
            self._head(),
            kl_weight=self.effective_encoder_kl_weight,
            image_size=(int(x.shape[-2]), int(x.shape[-1])),
        )

    # ------------------------------------------------------------------ explanations, figures
    def explain(self, image: Any) -> Any:
        """How much each concept contributes to the prediction on one image (CLI ``explain``).

        ``image``: an image file, a PIL image or a preprocessed tensor (3, H, W) / (1, 3, H, W).
        Returns an :class:`~face_concepts.pipeline.explain.Explanation`: ``["concepts"]`` (per
        concept: code, contribution to the class logit, share, importance; by contribution),
        ``.table()`` (the CLI's text) and ``.figure()`` (heatmaps of the top concepts).
        """
        from face_concepts.pipeline.explain import Explanation, explain_image

        self._check_fitted()
        result, x, maps = explain_image(self, image)
        return Explanation(result, x, maps, self)

    def plot_top_crops(self, k: int = N_TOP_CROPS, **kwargs: Any) -> Any:
        """Figure: the ``k`` crops with the largest codes per concept, rows by importance.

        Keyword arguments go to :func:`face_concepts.viz.top_crops` (``n_concepts``, ``labels``).
        """
        from face_concepts import viz

        idx, crops, codes = self._top_crops(k)
        kwargs.setdefault("class_name", self.class_name())
        return viz.top_crops(crops, codes, self.importance(), k=idx.shape[1], **kwargs)

    def plot_importance(self, **kwargs: Any) -> Any:
        """Figure: the global importance of every concept (:func:`face_concepts.viz.importance_bar`)."""
        from face_concepts import viz

        kwargs.setdefault("class_name", self.class_name())
        return viz.importance_bar(self.importance(), **kwargs)

    def plot_heatmaps(self, images: Any, *, top: int = 6, **kwargs: Any) -> list[Any]:
        """Figures, one per image: where the ``top`` most important concepts are in it.

        ``images``: what :meth:`fit` accepts. Keyword arguments go to
        :func:`face_concepts.viz.heatmap_overlay` (``concepts``, ``labels``, ``alpha``, ...).
        """
        from face_concepts import viz

        self._check_fitted()
        top = check_int(top, "top", minimum=1)
        x, _ = self._as_batch(images)
        maps = self.concept_maps(x)
        order = torch.argsort(self.importance_, descending=True, stable=True)[:top].tolist()
        kwargs.setdefault("concepts", order)
        kwargs.setdefault("class_name", self.class_name())
        kwargs.setdefault("preprocess", getattr(self.split, "preprocess", None))
        return [
            viz.heatmap_overlay(x[i], maps[i], importance=self.importance_, **kwargs)
            for i in range(x.shape[0])
        ]

    def plot_curves(self, images: Any = None, **kwargs: Any) -> Any:
        """Figure: deletion and insertion curves on ``images`` (default: the fitting images)."""
        from face_concepts import viz

        report = self.evaluate(images)
        kwargs.setdefault("class_name", self.class_name())
        return viz.curves({self.method: (report.deletion_curve, report.insertion_curve)}, **kwargs)
