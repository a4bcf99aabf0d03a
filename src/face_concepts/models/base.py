"""``ModelSplit``: a classifier written as ``f = h ∘ pool ∘ g`` (docs/method.md §1).

``features`` (g) maps images to a non-negative (N, p, H, W) map, ``pool`` averages it over space
to the activations ``A`` (N, p), and ``head`` (h) maps ``A`` to logits (N, C). ``verify`` checks
that the composition reproduces the full model on a seeded probe batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from face_concepts._core.seeding import make_generator
from face_concepts.data.preprocess import Preprocess
from face_concepts.models.fingerprint import model_fingerprint
from face_concepts.models.head import affine_parameters
from face_concepts.models.modes import ensure_eval

log = logging.getLogger(__name__)

_DEFAULT_INPUT_SIZE = 224
_PROBE_SEED = 0


def _mean_pool(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.mean(dim=(2, 3))


class ModelSplit(nn.Module):
    """A classifier split into ``features`` → spatial mean pool → ``head``.

    Parameters
    ----------
    features : nn.Module
        Maps an input batch (N, 3, H, W) to a feature map (N, p, H', W').
    head : nn.Module
        Maps pooled activations (N, p) to logits (N, C).
    pool : "mean" or callable
        Spatial pooling of the feature map to (N, p). FACE assumes the mean.
    preprocess : Preprocess or None
        How raw images become model inputs (from the weights' own metadata).
    name : str or None
        Model id for records (e.g. ``"torchvision:mobilenet_v2"``).
    layer : str or None
        Name of the layer whose output ``features`` returns.
    categories : sequence of str or None
        Class names, indexed like the logits.
    model : nn.Module or None
        The full model, the reference for :meth:`verify` and the source of :attr:`fingerprint`.
    input_size : int or None
        Side of the probe images; defaults to ``preprocess.crop_size``, else 224.
    exact : bool
        Whether ``head(pool(features(x)))`` is meant to equal ``model(x)``. Splits at
        intermediate layers (or with a ``relu`` transform) are approximations: :meth:`verify`
        then reports the discrepancy instead of raising.
    transform : str or None
        Label of a transform applied to a signed layer (``"posneg"`` or ``"relu"``), recorded
        by :meth:`description`.
    approximation : str or None
        For a split that is not exact, one sentence saying how it differs from the model
        (set by :func:`~face_concepts.models.split_model` with the measured difference);
        recorded by :meth:`description`, so saved runs and the atlas state it.

    Examples
    --------
    >>> import torchvision
    >>> net = torchvision.models.mobilenet_v2().eval()
    >>> split = ModelSplit(net.features, net.classifier, model=net, input_size=64)
    >>> split.verify() < 1e-4
    True
    >>> split.affine[0].shape
    torch.Size([1000, 1280])
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module,
        *,
        pool: str | Callable[[torch.Tensor], torch.Tensor] = "mean",
        preprocess: Preprocess | None = None,
        name: str | None = None,
        layer: str | None = None,
        categories: Sequence[str] | None = None,
        model: nn.Module | None = None,
        input_size: int | None = None,
        exact: bool = True,
        transform: str | None = None,
        approximation: str | None = None,
    ) -> None:
        super().__init__()
        for pname, mod in (("features", features), ("head", head)):
            if not callable(mod):
                raise TypeError(
                    f"{pname} must be an nn.Module or callable, got {type(mod).__name__}"
                )
        if pool != "mean" and not callable(pool):
            raise ValueError(f"pool must be 'mean' or a callable, got {pool!r}")
        if preprocess is not None and not isinstance(preprocess, Preprocess):
            raise TypeError(
                f"preprocess must be a Preprocess or None, got {type(preprocess).__name__}"
            )
        if input_size is not None and (not isinstance(input_size, int) or input_size < 1):
            raise ValueError(f"input_size must be a positive int or None, got {input_size!r}")
        self.features = features
        self.head = head
        self.model = model
        self.pool = pool
        self.preprocess = preprocess
        self.name = name
        self.layer = layer
        self.categories = list(categories) if categories is not None else None
        self.input_size = input_size
        self.exact = bool(exact)
        self.transform = transform
        self.approximation = approximation
        self._fingerprint: str | None = None
        self._shapes: tuple[int, int] | None = None
        self.training = False  # itself; the user's modules only if eval mode changes them
        ensure_eval(self, "a module given to ModelSplit")

    # ------------------------------------------------------------------ forward passes
    def _pool(self, fmap: torch.Tensor) -> torch.Tensor:
        # a str pool is "mean" (the only one __init__ accepts)
        return _mean_pool(fmap) if isinstance(self.pool, str) else self.pool(fmap)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled activations ``A`` (N, p) of an input batch (N, 3, H, W)."""
        return self._pool(self.features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``head(pool(features(x)))``, logits (N, C)."""
        return self.head(self.pooled(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    # ------------------------------------------------------------------ probing and checks
    @property
    def device(self) -> torch.device:
        """Device of the first parameter or buffer (CPU for parameter-free splits)."""
        for t in self.parameters():
            return t.device
        for buf in self.buffers():
            return buf.device
        return torch.device("cpu")

    @property
    def probe_size(self) -> int:
        """Side of the probe images used by :meth:`verify`."""
        if self.input_size is not None:
            return self.input_size
        if self.preprocess is not None and self.preprocess.crop_size is not None:
            return int(self.preprocess.crop_size)
        return _DEFAULT_INPUT_SIZE

    def head_for_input(self, size: int) -> nn.Module:
        """The head for activations pooled from ``size`` × ``size`` inputs (native-size crops).

        ``head`` itself, except at an intermediate layer: there the rest of the network runs on
        a constant map of the size such an input gives at the layer (a 64-px crop's, not the
        probe image's), as the model would see it (``models/intermediate.py``).
        """
        from face_concepts.models.intermediate import head_for_input

        key = (int(size), str(self.device))
        cache = self.__dict__.setdefault("_heads_for_input", {})
        if key not in cache:
            cache[key] = head_for_input(self.head, self.features, self.model, int(size))
        return cache[key]

    def probe(self, n: int = 2) -> torch.Tensor:
        """A seeded standard-normal batch (n, 3, S, S) at the model's input size, on its device."""
        s = self.probe_size
        g = make_generator(_PROBE_SEED)
        return torch.randn((n, 3, s, s), generator=g).to(self.device)

    def verify(self, probe: torch.Tensor | None = None, tol: float = 1e-4) -> float:
        """Max abs difference between ``head(pool(features(x)))`` and ``model(x)``.

        Raises ``ValueError`` when an exact split differs by more than ``tol`` (or in shape);
        for approximate splits (``exact=False``) the difference is only reported (logged).

        Examples
        --------
        >>> import torchvision
        >>> net = torchvision.models.resnet18().eval()
        >>> from face_concepts.models import split_model
        >>> split_model(net, input_size=64).verify() <= 1e-4
        True
        """
        if self.model is None:
            raise ValueError(
                "verify needs the full model: build the ModelSplit with model=<nn.Module>"
            )
        if not (isinstance(tol, (int, float)) and tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {tol!r}")
        x = self.probe() if probe is None else probe.to(self.device)
        with torch.inference_mode():
            return self._compare(x, self.logits(x), tol)

    def fidelity(
        self,
        x: torch.Tensor,
        A: torch.Tensor | None = None,
        batch_size: int = 32,
        head: Any = None,
    ) -> dict[str, float | int]:
        """How well the split's head stands in for the model on real images ``x``.

        ``agreement``: the share of images whose top-1 class of ``head(A)`` (``A`` the pooled
        activations of ``x``, computed when not given) is the model's top-1 class; ``kl``: the
        mean ``KL(softmax(model(x)) ‖ softmax(head(A)))``; ``n_images``. An exact split gives
        agreement 1 and KL 0 (up to rounding); for an approximate one (an intermediate layer)
        this is what FACE's faithfulness is relative to: FACE keeps the head's prediction.
        ``head``: another head to measure (default ``self.head``), e.g.
        :meth:`head_for_input`'s for native-size crops ``x``.
        """
        if self.model is None:
            raise ValueError("fidelity needs the full model: build the ModelSplit with model=<nn.Module>")  # fmt: skip
        agree, kl, n = 0.0, 0.0, int(x.shape[0])
        with torch.inference_mode():
            for i in range(0, n, max(1, int(batch_size))):
                xb = x[i : i + batch_size].to(self.device)
                ab = self.pooled(xb) if A is None else A[i : i + batch_size].to(self.device)
                ref = self.model(xb).double().log_softmax(dim=1)
                got = (self.head if head is None else head)(ab).double().log_softmax(dim=1)
                agree += float((ref.argmax(dim=1) == got.argmax(dim=1)).sum())
                kl += float((ref.exp() * (ref - got)).sum())
        return {"n_images": n, "agreement": agree / max(n, 1), "kl": kl / max(n, 1)}

    def _compare(self, x: torch.Tensor, got: torch.Tensor, tol: float) -> float:
        """Check ``got`` (the split's logits on ``x``) against ``model(x)``; see :meth:`verify`."""
        assert self.model is not None  # verify checks it
        with torch.inference_mode():
            ref = self.model(x)
        where = f"{self.name or type(self.model).__name__} at layer {self.layer!r}"
        if ref.shape != got.shape:
            raise ValueError(
                f"split of {where} gives logits of shape {tuple(got.shape)} but the model gives "
                f"{tuple(ref.shape)}: head(pool(features(x))) is not the model"
            )
        diff = float((ref.float() - got.float()).abs().max())
        if not self.exact:
            log.info(
                "approximate split of %s: max |model(x) - head(pool(features(x)))| = %.3g",
                where,
                diff,
            )
            return diff
        if not diff <= tol:  # also catches NaN
            raise ValueError(
                f"split of {where} does not reproduce the model: max |model(x) - "
                f"head(pool(features(x)))| = {diff:.3g} > tol={tol:g} on a probe batch of "
                f"shape {tuple(x.shape)}; the pooled vector is not what the head receives"
            )
        return diff

    def _probe_shapes(self) -> tuple[int, int]:
        if self._shapes is None:
            with torch.inference_mode():
                a = self.pooled(self.probe(1))
                z = self.head(a)
            self._shapes = (int(a.shape[1]), int(z.shape[1]))
        return self._shapes

    @property
    def n_features(self) -> int:
        """p, the number of pooled activations."""
        aff = self.affine
        return int(aff[0].shape[1]) if aff is not None else self._probe_shapes()[0]

    @property
    def n_classes(self) -> int:
        """C, the number of logits."""
        aff = self.affine
        return int(aff[0].shape[0]) if aff is not None else self._probe_shapes()[1]

    @property
    def affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(V (C, p), b (C,))`` when the head is affine in eval mode, else ``None``."""
        return affine_parameters(self.head)

    @property
    def is_affine(self) -> bool:
        """Whether :attr:`affine` is available."""
        return self.affine is not None

    @property
    def fingerprint(self) -> str:
        """Short sha256 over the names, dtypes, shapes and values of the model's state_dict.

        Computed once and cached (weights are assumed frozen while the split is in use).
        """
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model if self.model is not None else self)
        return self._fingerprint

    def description(self) -> dict[str, Any]:
        """JSON-able record of what was split and how (for saved runs and cache keys)."""
        return {
            "model": self.name,
            "layer": self.layer,
            "fingerprint": self.fingerprint,
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else None,
            "affine": self.is_affine,
            "pool": "mean"
            if self.pool == "mean"
            else getattr(self.pool, "__name__", type(self.pool).__name__),
            "transform": self.transform,
            "exact": self.exact,
            "approximation": self.approximation,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, layer={self.layer!r}, exact={self.exact}, transform={self.transform!r}"
