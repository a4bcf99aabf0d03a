"""Batched, no-grad activation extraction, optionally through the on-disk cache (``cache.py``).

``extract_activations(split, inputs)`` runs ``split.pooled`` (or ``split.features`` with
``spatial=True``) over preprocessed batches under ``torch.inference_mode()`` and returns a
float32 CPU tensor ``A`` (N, p) — or (N, p, H, W).

With ``cache=ActivationCache(root)`` (``activations/cache.py``) the result is stored on disk as
checksummed shards, resumable after an interruption; its key hashes the model fingerprint,
layer, preprocessing, patch settings and a content hash of the inputs (``inputs.py``).
"""

from __future__ import annotations

from typing import Any, Literal, overload

import torch

from face_concepts._core.device import resolve_device
from face_concepts._core.progress import Progress
from face_concepts._core.validation import check_int
from face_concepts.activations.cache import ActivationCache, CachedActivations
from face_concepts.activations.inputs import Inputs, _batches, _rechunk, _total, content_hash
from face_concepts.models.modes import ensure_eval

__all__ = ["extract_activations"]


# ----------------------------------------------------------------------------- extraction
def _check_finite(out: torch.Tensor, split: Any) -> torch.Tensor:
    """Refuse NaN/inf activations here, before they are cached or factorised."""
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise ValueError(
            f"the activations of layer {getattr(split, 'layer', None)!r} contain {bad} NaN or "
            f"infinite value(s) out of {out.numel()}: the model overflowed or its weights are "
            "broken (half precision is a common cause; run the model in float32)"
        )
    return out


def _check_stream(
    inputs: Inputs,
    cache: ActivationCache | None,
    spatial: bool,
    data_hash: str | None,
    stream: bool,
) -> bool:
    """Refuse ``stream=True`` where it cannot work; return whether ``inputs`` is a one-shot
    iterator (it then has to be held to be read twice)."""
    one_shot = not isinstance(inputs, torch.Tensor) and iter(inputs) is inputs
    if stream and (cache is None or spatial):
        raise ValueError("stream=True needs a cache (cache=ActivationCache(...)) and pooled rows")
    if stream and one_shot and data_hash is None:
        raise TypeError(
            "stream=True reads inputs twice (hash, then compute): pass a tensor or a re-iterable "
            "(a list, a DataLoader), or give data_hash; a one-shot iterator would have to be "
            "held in memory"
        )
    return one_shot


def _cache_key(
    cache: ActivationCache,
    split: Any,
    inputs: Inputs,
    spatial: bool,
    cache_key_extra: dict[str, Any] | None,
    data_hash: str | None,
) -> str:
    """The cache entry of these activations: model fingerprint, layer, preprocessing, patch
    settings, the inputs' content hash (or the given ``data_hash``) and the extra fields."""
    extra = dict(cache_key_extra or {})
    pool = split.pool if isinstance(split.pool, str) else type(split.pool).__qualname__
    return cache.key(
        fingerprint=split.fingerprint,
        layer=split.layer,
        preprocess=split.preprocess.to_dict() if split.preprocess is not None else None,
        patch=extra.pop("patch", None),
        data_hash=data_hash or content_hash(inputs),
        extra={"spatial": bool(spatial), "transform": split.transform, "pool": pool, **extra},
    )


# The return type follows ``stream``: a tensor, or the cache entry's re-iterable source.
@overload
def extract_activations(
    split: Any,
    inputs: Inputs,
    *,
    batch_size: int = ...,
    device: Any = ...,
    progress: bool = ...,
    spatial: bool = ...,
    cache: ActivationCache | None = ...,
    cache_key_extra: dict[str, Any] | None = ...,
    data_hash: str | None = ...,
    stream: Literal[False] = ...,
    unit: str = ...,
) -> torch.Tensor: ...
@overload
def extract_activations(
    split: Any,
    inputs: Inputs,
    *,
    batch_size: int = ...,
    device: Any = ...,
    progress: bool = ...,
    spatial: bool = ...,
    cache: ActivationCache | None = ...,
    cache_key_extra: dict[str, Any] | None = ...,
    data_hash: str | None = ...,
    stream: Literal[True],
    unit: str = ...,
) -> CachedActivations: ...
@overload
def extract_activations(
    split: Any,
    inputs: Inputs,
    *,
    batch_size: int = ...,
    device: Any = ...,
    progress: bool = ...,
    spatial: bool = ...,
    cache: ActivationCache | None = ...,
    cache_key_extra: dict[str, Any] | None = ...,
    data_hash: str | None = ...,
    stream: bool = ...,
    unit: str = ...,
) -> torch.Tensor | CachedActivations: ...


def extract_activations(
    split: Any,
    inputs: Inputs,
    *,
    batch_size: int = 64,
    device: Any = None,
    progress: bool = True,
    spatial: bool = False,
    cache: ActivationCache | None = None,
    cache_key_extra: dict[str, Any] | None = None,
    data_hash: str | None = None,
    stream: bool = False,
    unit: str = "image",
) -> torch.Tensor | CachedActivations:
    """Activations of preprocessed images: pooled (N, p), or (N, p, H, W) with ``spatial=True``.

    Parameters
    ----------
    split : ModelSplit
        The split model (moved to ``device`` when one is given).
    inputs : tensor (N, 3, H, W) or iterable of such batches
        Preprocessed images (e.g. patches).
    batch_size : int
        Images per forward pass.
    device : str, torch.device or None
        Where to compute; defaults to the split's device. Results always come back on the CPU.
    progress : bool
        Show progress on stderr (``face_concepts._core.progress``: a live bar on a terminal, one
        summary line at the end).
    spatial : bool
        Return the feature maps instead of their spatial means.
    cache : ActivationCache or None
        Reuse/stores results on disk (see the module docstring).
    cache_key_extra : dict or None
        More JSON-able fields for the cache key; its ``"patch"`` entry fills the key's patch
        settings (e.g. ``{"patch": {"patch_size": 64, "stride": 51}}``).
    data_hash : str or None
        A known hash of the inputs (skips hashing them; the caller vouches for it).
    stream : bool
        With ``cache``: write the entry shard by shard without holding it, and return a
        :class:`CachedActivations` over it (for ``FACE(batch_size=...).fit``) instead of the
        tensor; memory then holds one shard. ``inputs`` must then be a tensor or a re-iterable
        (e.g. a DataLoader): it is read twice, once to hash it and once to compute.
    unit : str
        What one input is, for the progress line (``"image"``, or ``"patch"`` for crops).

    Examples
    --------
    >>> import torchvision
    >>> from face_concepts.models import split_model
    >>> split = split_model(torchvision.models.mobilenet_v2().eval(), input_size=64)
    >>> extract_activations(split, torch.randn(5, 3, 64, 64), batch_size=2, progress=False).shape
    torch.Size([5, 1280])
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    dev = resolve_device(device, like=split)
    if device is not None and split.device != dev:
        split.to(dev)
    fn = split.features if spatial else split.pooled
    ensure_eval(split, "the model split")

    def compute(chunk: torch.Tensor) -> torch.Tensor:
        outs = []
        for b in _rechunk([chunk], batch_size):
            with torch.inference_mode():
                outs.append(_check_finite(fn(b.to(dev)).float().cpu(), split))
            bar.update(b.shape[0])
        # concatenated outside inference mode: a normal tensor, usable later under autograd
        return torch.cat(outs)

    one_shot = _check_stream(inputs, cache, spatial, data_hash, stream)
    if cache is not None and one_shot and not stream:
        inputs = list(inputs)  # a one-shot iterator is read twice (hash, then compute)
    bar = Progress(_total(inputs), "activations", unit=unit, enabled=progress)
    try:
        if cache is None:
            out = [compute(c) for c in _rechunk(_batches(inputs), batch_size)]
            if not out:
                raise ValueError("inputs is empty")
            return out[0] if len(out) == 1 else torch.cat(out)
        key = _cache_key(cache, split, inputs, spatial, cache_key_extra, data_hash)
        if stream:
            cache.run(key, inputs, compute, bar, keep=False)
            return CachedActivations(cache, key)
        entry = cache.run(key, inputs, compute, bar)
        assert entry is not None  # keep=True: run returns the entry
        return entry
    finally:
        bar.close()
