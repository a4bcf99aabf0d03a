"""Batched, no-grad activation extraction with an on-disk, resumable, checksummed cache.

``extract_activations(split, inputs)`` runs ``split.pooled`` (or ``split.features`` with
``spatial=True``) over preprocessed batches under ``torch.inference_mode()`` and returns a
float32 CPU tensor ``A`` (N, p) — or (N, p, H, W).

With ``cache=ActivationCache(root)`` the result is stored as safetensors shards of
``shard_size`` rows plus a JSON manifest (format version, per-shard sha256). The entry key
hashes the model fingerprint, layer, preprocessing, patch settings and a content hash of the
inputs. Each shard and the manifest are written atomically (temporary file + ``os.replace``),
so an interrupted run resumes from its finished shards; a shard that is missing, unreadable or
fails its checksum is reported with a warning and recomputed, never used; a manifest of another
format version is ignored and the entry rebuilt. One writer per entry is assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, overload

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from face_concepts._core.device import resolve_device
from face_concepts._core.io import atomic_write_bytes, clear_stale_temporaries
from face_concepts._core.progress import Progress
from face_concepts._core.validation import check_int
from face_concepts.models.modes import ensure_eval

__all__ = [
    "FORMAT_VERSION",
    "ActivationCache",
    "CachedActivations",
    "content_hash",
    "extract_activations",
]

FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
Inputs = torch.Tensor | Iterable[torch.Tensor]


# ----------------------------------------------------------------------------- input handling
def _check_batch(b: Any) -> torch.Tensor:
    if not isinstance(b, torch.Tensor):
        raise TypeError(
            f"inputs must be a tensor (N, 3, H, W) or an iterable of such tensors, got {type(b).__name__}"
        )
    if b.dim() != 4 or not b.is_floating_point():
        raise ValueError(
            f"inputs must be floating (N, 3, H, W) batches (preprocessed), got {b.dtype} of shape {tuple(b.shape)}"
        )
    return b


def _batches(inputs: Inputs) -> Iterator[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        yield _check_batch(inputs)
        return
    for b in inputs:
        yield _check_batch(b)


def _rechunk(batches: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Regroup batches into chunks of exactly ``size`` rows (the last may be shorter)."""
    pending: list[torch.Tensor] = []
    n = 0
    for b in batches:
        while b.shape[0] > 0:
            take = min(size - n, b.shape[0])
            pending.append(b[:take])
            n += take
            b = b[take:]
            if n == size:
                yield pending[0] if len(pending) == 1 else torch.cat(pending)
                pending, n = [], 0
    if n:
        yield pending[0] if len(pending) == 1 else torch.cat(pending)


def _total(inputs: Inputs) -> int | None:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, (list, tuple)) and all(isinstance(b, torch.Tensor) for b in inputs):
        return sum(int(b.shape[0]) for b in inputs)
    return None


def content_hash(inputs: Inputs) -> str:
    """sha256 of the input values (independent of how they are cut into batches).

    Examples
    --------
    >>> x = torch.zeros(4, 3, 8, 8)
    >>> content_hash(x) == content_hash([x[:1], x[1:]])
    True
    """
    h = hashlib.sha256()
    n, sample_shape, dtype = 0, None, None
    for b in _batches(inputs):
        t = b.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]  # ndarray is a buffer
        n += t.shape[0]
        sample_shape, dtype = tuple(t.shape[1:]), str(t.dtype)
    h.update(f"|{n}|{sample_shape}|{dtype}".encode())
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------- the cache
class ActivationCache:
    """Directory of activation entries: ``root/<key>/manifest.json`` + ``shard_*.safetensors``.

    Parameters
    ----------
    root : path
        Cache directory (created on first write).
    shard_size : int
        Rows per shard: the unit of resumption after an interruption.

    Examples
    --------
    >>> import tempfile
    >>> cache = ActivationCache(tempfile.mkdtemp())
    >>> k = cache.key(fingerprint="ab12", layer="features", preprocess=None, patch=None, data_hash="00")
    >>> len(k)
    32
    """

    def __init__(self, root: str | os.PathLike[str], *, shard_size: int = 1024) -> None:
        self.root = Path(root)
        self.shard_size = check_int(shard_size, "shard_size", minimum=1)

    def key(
        self,
        *,
        fingerprint: str,
        layer: str | None,
        preprocess: dict[str, Any] | None,
        patch: dict[str, Any] | None,
        data_hash: str,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Entry key: a hash of everything that determines the activations."""
        fields = {
            "fingerprint": fingerprint,
            "layer": layer,
            "preprocess": preprocess,
            "patch": patch,
            "data": data_hash,
            "extra": extra,
        }
        try:
            blob = json.dumps({"format_version": FORMAT_VERSION, **fields}, sort_keys=True)
        except TypeError as exc:
            raise TypeError(f"cache key fields must be JSON-serialisable: {exc}") from exc
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        """Directory of one entry."""
        return self.root / key

    def clear(self, key: str | None = None) -> None:
        """Delete one entry, or the whole cache when ``key`` is None."""
        target = self.root if key is None else self.path(key)
        if target.exists():
            shutil.rmtree(target)

    # -- manifest ---------------------------------------------------------------------------
    def _fresh(self, key: str) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "key": key,
            "shard_size": self.shard_size,
            "shards": {},
            "complete": False,
            "n_samples": None,
        }

    def _read_manifest(self, key: str) -> dict[str, Any]:
        path = self.path(key) / _MANIFEST
        if not path.exists():
            return self._fresh(key)
        try:
            manifest = json.loads(path.read_text())
            version = manifest.get("format_version")
        except (OSError, ValueError, AttributeError) as exc:
            warnings.warn(
                f"activation cache manifest {path} is unreadable ({exc}); rebuilding the entry",
                RuntimeWarning,
                stacklevel=3,
            )
            return self._reset(key)
        if version != FORMAT_VERSION:
            warnings.warn(
                f"activation cache entry {path.parent} has format version {version!r}, not {FORMAT_VERSION}; rebuilding it",
                RuntimeWarning,
                stacklevel=3,
            )
            return self._reset(key)
        if manifest.get("shard_size") != self.shard_size or not isinstance(
            manifest.get("shards"), dict
        ):
            return self._reset(key)  # another shard layout: nothing to reuse
        return manifest

    def _reset(self, key: str) -> dict[str, Any]:
        self.clear(key)
        return self._fresh(key)

    def _write_manifest(self, key: str, manifest: dict[str, Any]) -> None:
        atomic_write_bytes(
            self.path(key) / _MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode()
        )

    # -- shards -----------------------------------------------------------------------------
    def _load_shard(
        self, key: str, info: dict[str, Any] | None, rows: int | None
    ) -> torch.Tensor | None:
        if info is None:
            return None
        path = self.path(key) / str(info.get("file", ""))
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != info.get("sha256"):
                raise ValueError("checksum mismatch")
            t = st_load(data)["activations"]
            if rows is not None and t.shape[0] != rows:
                raise ValueError(f"{t.shape[0]} rows, expected {rows}")
        except Exception as exc:  # any failure means the shard cannot be trusted
            warnings.warn(
                f"activation cache shard {path} is corrupt or missing ({exc}); recomputing it",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return t

    def _write_shard(self, key: str, index: int, t: torch.Tensor) -> dict[str, Any]:
        name = f"shard_{index:06d}.safetensors"
        data = st_save({"activations": t.contiguous()})
        # temporary file + fsync + os.replace: a killed run leaves whole shards or none
        atomic_write_bytes(self.path(key) / name, data)
        return {"file": name, "rows": int(t.shape[0]), "sha256": hashlib.sha256(data).hexdigest()}

    def iter_shards(self, key: str) -> Iterator[torch.Tensor]:
        """Yield the shards of a complete entry in order, each checked against its sha256.

        Read-only (for streaming fits, e.g. ``FACE(batch_size=...)``): one shard is in memory at a
        time; a missing/incomplete entry or a shard that fails verification raises ValueError
        (nothing is recomputed or deleted here).
        """
        path = self.path(key) / _MANIFEST
        try:
            manifest = json.loads(path.read_text())
            shards = manifest["shards"]
            ok = manifest.get("format_version") == FORMAT_VERSION and manifest.get("complete")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"activation cache entry {key!r} is missing or unreadable: {exc}"
            ) from exc
        if not ok:
            raise ValueError(f"activation cache entry {key!r} is incomplete or of another format")
        for i in range(len(shards)):
            info = shards.get(str(i)) or {}
            file = self.path(key) / str(info.get("file", ""))
            try:
                data = file.read_bytes()
                if hashlib.sha256(data).hexdigest() != info.get("sha256"):
                    raise ValueError("checksum mismatch")
                t = st_load(data)["activations"]
            except Exception as exc:  # any failure means the shard cannot be trusted
                raise ValueError(f"activation cache shard {file} cannot be used: {exc}") from exc
            yield t

    def _load_all(self, key: str, manifest: dict[str, Any]) -> dict[int, torch.Tensor | None]:
        shards = manifest["shards"]
        return {i: self._load_shard(key, shards.get(str(i)), None) for i in range(len(shards))}

    def run(
        self,
        key: str,
        inputs: Inputs,
        compute: Callable[[torch.Tensor], torch.Tensor],
        bar: Any,
        keep: bool = True,
    ) -> torch.Tensor | None:
        """Return the entry for ``key``, computing (and storing) only the shards it lacks.

        ``keep=False``: store the entry but hold at most one shard in memory, and return None
        (a complete entry is then not re-read here: its shards are verified when streamed).
        """
        manifest = self._read_manifest(key)
        # Temporary files of a killed writer are never read; drop them so they do not pile up.
        clear_stale_temporaries(self.path(key))
        if not keep and manifest.get("complete"):
            bar.update(int(manifest.get("n_samples") or 0))
            return None
        loaded = self._load_all(key, manifest) if manifest.get("complete") else {}
        if loaded and all(t is not None for t in loaded.values()):
            hit = torch.cat([loaded[i] for i in range(len(loaded))])  # type: ignore[misc]  # none is None (checked)
            if hit.shape[0] == manifest.get("n_samples"):
                bar.update(hit.shape[0])
                return hit
        manifest["complete"] = False
        out, count, rows = [], 0, 0
        for index, chunk in enumerate(_rechunk(_batches(inputs), self.shard_size)):
            if index in loaded:
                t = loaded[index]
            else:
                t = self._load_shard(key, manifest["shards"].get(str(index)), chunk.shape[0])
            if t is not None and t.shape[0] != chunk.shape[0]:
                t = None  # a stale layout; recompute
            if t is None:
                t = compute(chunk)
                manifest["shards"][str(index)] = self._write_shard(key, index, t)
                self._write_manifest(key, manifest)
            else:
                bar.update(chunk.shape[0])
            count += 1
            rows += t.shape[0]
            if keep:
                out.append(t)
        if not count:
            raise ValueError("inputs is empty")
        manifest["shards"] = {str(i): manifest["shards"][str(i)] for i in range(count)}
        manifest.update(complete=True, n_samples=rows)
        self._write_manifest(key, manifest)
        return torch.cat(out) if keep else None


class CachedActivations:
    """Re-iterable source over a complete :class:`ActivationCache` entry, shard by shard.

    Each pass re-reads the shards from disk (each verified against its checksum), so memory
    holds one shard at a time.

    ``extract_activations(..., cache=cache, stream=True)`` returns one.

    Examples
    --------
    >>> import tempfile
    >>> from tqdm import tqdm
    >>> tmp = tempfile.TemporaryDirectory()
    >>> cache = ActivationCache(tmp.name, shard_size=4)
    >>> A = torch.rand(10, 3)
    >>> _ = cache.run("key", A[:, :, None, None], lambda c: c.flatten(1), tqdm(disable=True))
    >>> source = CachedActivations(cache, "key")  # e.g. FACE(head, batch_size=4096).fit(source)
    >>> len(source), [shard.shape[0] for shard in source]
    (10, [4, 4, 2])
    >>> torch.equal(torch.cat(list(source)), A)
    True
    >>> tmp.cleanup()
    """

    def __init__(self, cache: ActivationCache, key: str) -> None:
        self.cache = cache
        self.key = key

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.cache.iter_shards(self.key))

    def __len__(self) -> int:
        """Number of rows of the entry (from its manifest; 0 when it cannot be read)."""
        try:
            manifest = json.loads((self.cache.path(self.key) / _MANIFEST).read_text())
            return int(sum(int(s["rows"]) for s in manifest["shards"].values()))
        except (OSError, ValueError, KeyError, TypeError):
            return 0


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

    one_shot = not isinstance(inputs, torch.Tensor) and iter(inputs) is inputs
    if stream and (cache is None or spatial):
        raise ValueError("stream=True needs a cache (cache=ActivationCache(...)) and pooled rows")
    if stream and one_shot and data_hash is None:
        raise TypeError(
            "stream=True reads inputs twice (hash, then compute): pass a tensor or a re-iterable "
            "(a list, a DataLoader), or give data_hash; a one-shot iterator would have to be "
            "held in memory"
        )
    if cache is not None and one_shot and not stream:
        inputs = list(inputs)  # a one-shot iterator is read twice (hash, then compute)
    bar = Progress(_total(inputs), "activations", unit=unit, enabled=progress)
    try:
        if cache is None:
            out = [compute(c) for c in _rechunk(_batches(inputs), batch_size)]
            if not out:
                raise ValueError("inputs is empty")
            return out[0] if len(out) == 1 else torch.cat(out)
        extra = dict(cache_key_extra or {})
        pool = split.pool if isinstance(split.pool, str) else type(split.pool).__qualname__
        key = cache.key(
            fingerprint=split.fingerprint,
            layer=split.layer,
            preprocess=split.preprocess.to_dict() if split.preprocess is not None else None,
            patch=extra.pop("patch", None),
            data_hash=data_hash or content_hash(inputs),
            extra={"spatial": bool(spatial), "transform": split.transform, "pool": pool, **extra},
        )
        if stream:
            cache.run(key, inputs, compute, bar, keep=False)
            return CachedActivations(cache, key)
        entry = cache.run(key, inputs, compute, bar)
        assert entry is not None  # keep=True: run returns the entry
        return entry
    finally:
        bar.close()
