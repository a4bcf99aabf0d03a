"""The on-disk, resumable, checksummed activation cache.

``ActivationCache(root)`` stores an entry as safetensors shards of ``shard_size`` rows plus a
JSON manifest (format version, per-shard sha256). The entry key hashes the model fingerprint,
layer, preprocessing, patch settings and a content hash of the inputs. Each shard and the
manifest are written atomically (temporary file + ``os.replace``), so an interrupted run resumes
from its finished shards; a shard that is missing, unreadable or fails its checksum is reported
with a warning and recomputed, never used; a manifest of another format version is ignored and
the entry rebuilt. One writer per entry is assumed. :class:`CachedActivations` streams a
complete entry shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from face_concepts._core.io import atomic_write_bytes, clear_stale_temporaries
from face_concepts._core.progress import Progress
from face_concepts._core.validation import check_int
from face_concepts.activations.inputs import Inputs, _batches, _rechunk

__all__ = ["FORMAT_VERSION", "ActivationCache", "CachedActivations"]

FORMAT_VERSION = 1
_MANIFEST = "manifest.json"


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
            _say_cached(bar)
            return None
        loaded = self._load_all(key, manifest) if manifest.get("complete") else {}
        if loaded and all(t is not None for t in loaded.values()):
            hit = torch.cat([loaded[i] for i in range(len(loaded))])  # type: ignore[misc]  # none is None (checked)
            if hit.shape[0] == manifest.get("n_samples"):
                bar.update(hit.shape[0])
                _say_cached(bar)
                return hit
        manifest["complete"] = False
        out, count, rows, cached = [], 0, 0, 0
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
                cached += chunk.shape[0]
            count += 1
            rows += t.shape[0]
            if keep:
                out.append(t)
        if not count:
            raise ValueError("inputs is empty")
        manifest["shards"] = {str(i): manifest["shards"][str(i)] for i in range(count)}
        manifest.update(complete=True, n_samples=rows)
        self._write_manifest(key, manifest)
        if cached:
            _say_cached(bar, None if cached == rows else cached)
        return torch.cat(out) if keep else None


def _say_cached(bar: Any, rows: int | None = None) -> None:
    """Tell the progress line that rows came from the cache (all of them, or ``rows``), so a
    retry shows that nothing, or only the missing shards, was extracted again."""
    if isinstance(bar, Progress):
        bar.set_postfix(
            "all read from the cache" if rows is None else f"{rows:,} read from the cache"
        )


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
