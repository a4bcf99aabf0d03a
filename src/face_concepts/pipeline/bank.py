"""The saved-run artefact: a concept bank and everything needed to trust and reuse it.

A run directory holds two files:

``bank.safetensors``
    The tensors: ``"W"`` (n_concepts, n_features) always; optionally ``"importance"``
    (n_concepts,), ``"codes"`` (n_samples, n_concepts), ``"importance_local"``, ``"crops"``
    (uint8 thumbnails, (M, 3, h, w)) and anything else a caller wants to keep.
``bank.json``
    Human-readable: ``format_version``, a manifest of every tensor (shape, dtype, sha256), the
    sha256 of the tensor file, and ``metadata`` (model id and fingerprint, layer, preprocessing,
    patch settings, method and hyper-parameters, seed, class, metrics, library versions, time).

Loading never unpickles anything: tensors come from safetensors and metadata from JSON. Every
checksum is verified, so a truncated or edited file is reported by name instead of silently
producing a wrong explanation. The tensor file's header also records the sha256 of the metadata,
so editing ``bank.json`` by hand (for example its fingerprint) is detected too.

Saving is atomic: both files are written to fsync-ed temporary files next to their destinations
and renamed into place, ``bank.json`` last; a run exists once its JSON is in place. If the final
rename fails, the previous tensor file is put back; if the process dies between the two renames,
the previous tensor file survives as ``.bank.safetensors.prev`` and :meth:`ConceptBank.load`
uses it, because it is the one the (previous) JSON describes.

Examples
--------
>>> import tempfile, torch
>>> bank = ConceptBank({"W": torch.rand(3, 8)}, {"layer": "features", "method": "face"})
>>> run = bank.save(tempfile.mkdtemp())
>>> ConceptBank.load(run).n_concepts
3
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from face_concepts._core.atomic_pair import atomic_write_pair, backup_path
from face_concepts._core.io import (
    json_bytes,
    safetensors_bytes,
    sha256_bytes,
    tensor_sha256,
)
from face_concepts.models.fingerprint import model_fingerprint

__all__ = ["FORMAT_VERSION", "BankError", "ConceptBank", "model_fingerprint"]

FORMAT_VERSION = 1
TENSOR_FILE = "bank.safetensors"
JSON_FILE = "bank.json"
_FORMAT = "face-concepts.bank"


class BankError(RuntimeError):
    """A saved run that cannot be trusted: corrupt, edited, from a newer version or a different
    model. The message names the file and what to do."""


def _versions() -> dict[str, str]:
    """Versions of what wrote the run, for anyone reproducing or debugging it."""
    from importlib import metadata as md

    import numpy
    import safetensors

    try:
        own = md.version("face-concepts")
    except md.PackageNotFoundError:  # running from a source tree that was never installed
        own = "unknown"
    return {
        "face_concepts": own,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": getattr(safetensors, "__version__", "unknown"),
        "python": platform.python_version(),
    }


def _canonical_sha(metadata: Any) -> str:
    """sha256 of metadata in a canonical JSON form (sorted keys, no whitespace)."""
    return sha256_bytes(json_bytes(metadata, indent=None))


def _lookup(metadata: Mapping[str, Any], *names: str) -> Any:
    """First of ``names`` found at the top level or under a ``"model"`` mapping."""
    for scope in (metadata, metadata.get("model")):
        if isinstance(scope, Mapping):
            for name in names:
                if scope.get(name) is not None:
                    return scope[name]
    return None


@dataclass(eq=False)
class ConceptBank:
    """A fitted concept bank with its tensors and JSON-able metadata.

    Parameters
    ----------
    tensors : dict of str to Tensor
        At least ``"W"`` (n_concepts, n_features). Conventional optional entries:
        ``"importance"`` (n_concepts,), ``"codes"`` (n_samples, n_concepts),
        ``"importance_local"``, ``"crops"`` (uint8, (M, 3, h, w)).
    metadata : dict
        JSON-serialisable description of the run. The model fingerprint is read from
        ``"fingerprint"`` (as in ``ModelSplit.description()``) or ``"model_fingerprint"``, and the
        layer from ``"layer"``, at the top level or under ``"model"``. :meth:`save` adds
        ``"versions"`` (of what writes it) and ``"created"`` (now) where they are absent, so
        a loaded run saved again keeps its own.

    Examples
    --------
    >>> import torch
    >>> bank = ConceptBank({"W": torch.rand(4, 6), "importance": torch.rand(4)})
    >>> bank.n_concepts, bank.n_features, bank.importance.shape
    (4, 6, torch.Size([4]))
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, Mapping):
            raise TypeError(f"tensors must be a dict of str to Tensor, got {type(self.tensors)}")
        for name, t in self.tensors.items():
            if not isinstance(name, str) or not isinstance(t, torch.Tensor):
                raise TypeError(f"tensors must map str to Tensor, got {name!r}: {type(t).__name__}")
        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        self.tensors, self.metadata = dict(self.tensors), dict(self.metadata)
        W = self.tensors.get("W")
        if W is None:
            raise ValueError(
                f"tensors must contain 'W' (the concept bank), got {sorted(self.tensors)}"
            )
        if W.ndim != 2 or not W.is_floating_point():
            raise ValueError(
                f"tensors['W'] must be a 2-D float tensor, got {W.dtype} {tuple(W.shape)}"
            )
        r = W.shape[0]
        imp = self.tensors.get("importance")
        if imp is not None and tuple(imp.shape) != (r,):
            raise ValueError(
                f"tensors['importance'] must have shape ({r},), got {tuple(imp.shape)}"
            )
        codes = self.tensors.get("codes")
        if codes is not None and (codes.ndim != 2 or codes.shape[1] != r):
            raise ValueError(f"tensors['codes'] must have shape (n, {r}), got {tuple(codes.shape)}")
        crops = self.tensors.get("crops")
        if crops is not None and (crops.dtype != torch.uint8 or crops.ndim != 4):
            raise ValueError(
                f"tensors['crops'] must be a uint8 (M, 3, h, w) tensor, got {crops.dtype} "
                f"{tuple(crops.shape)}"
            )

    def __repr__(self) -> str:
        extra = sorted(k for k in self.tensors if k != "W")
        method = self.metadata.get("method")
        return (
            f"ConceptBank(n_concepts={self.n_concepts}, n_features={self.n_features}, "
            f"method={method!r}, layer={self.layer!r}, tensors={['W', *extra]})"
        )

    # ------------------------------------------------------------------ views
    @property
    def W(self) -> torch.Tensor:
        """The concept bank, (n_concepts, n_features)."""
        return self.tensors["W"]

    @property
    def n_concepts(self) -> int:
        """Number of concepts r."""
        return int(self.W.shape[0])

    @property
    def n_features(self) -> int:
        """Number of activation channels p."""
        return int(self.W.shape[1])

    @property
    def importance(self) -> torch.Tensor | None:
        """Global concept importance (n_concepts,), or ``None`` if not stored."""
        return self.tensors.get("importance")

    @property
    def fingerprint(self) -> str | None:
        """The recorded model fingerprint, or ``None``."""
        return _lookup(self.metadata, "fingerprint", "model_fingerprint")

    @property
    def layer(self) -> str | None:
        """The recorded layer name, or ``None``."""
        return _lookup(self.metadata, "layer")

    # ------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the run directory ``path`` (``bank.safetensors`` + ``bank.json``) atomically.

        Returns
        -------
        pathlib.Path
            The run directory.

        Raises
        ------
        TypeError
            If metadata is not JSON-serialisable (nothing is written).
        OSError
            Naming the path and the reason (permission denied, disk full); the previous run in
            ``path``, if any, still loads and no temporary files remain.

        Examples
        --------
        >>> import tempfile, torch
        >>> ConceptBank({"W": torch.ones(2, 3)}).save(tempfile.mkdtemp()).is_dir()
        True
        """
        run = Path(path)
        if run.exists() and not run.is_dir():
            raise NotADirectoryError(f"path must be a run directory, but {run} is a file")
        metadata = dict(self.metadata)
        metadata.setdefault("versions", _versions())
        metadata.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        # Normalise through JSON now, so what we hash is exactly what load() will read back.
        metadata = json.loads(json_bytes(metadata))
        header = {"format": _FORMAT, "format_version": str(FORMAT_VERSION)}
        header["metadata_sha256"] = _canonical_sha(metadata)
        data = safetensors_bytes(self.tensors, header)
        document = {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "file": TENSOR_FILE,
            "file_sha256": sha256_bytes(data),
            "tensors": {
                name: {
                    "shape": list(t.shape),
                    "dtype": str(t.dtype).removeprefix("torch."),
                    "sha256": tensor_sha256(t),
                }
                for name, t in sorted(self.tensors.items())
            },
            "metadata": metadata,
        }
        atomic_write_pair(run / TENSOR_FILE, data, run / JSON_FILE, json_bytes(document))
        return run

    # ------------------------------------------------------------------ load
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expected_fingerprint: str | None = None,
        expected_layer: str | None = None,
    ) -> ConceptBank:
        """Read and verify a run directory written by :meth:`save` (no pickle).

        Parameters
        ----------
        path : path-like
            The run directory (or its ``bank.json`` / ``bank.safetensors``).
        expected_fingerprint, expected_layer : str, optional
            When given, the run must have been fitted on this model fingerprint and layer.

        Raises
        ------
        FileNotFoundError
            No ``bank.json`` in ``path``.
        BankError
            A file was truncated or edited, the format is newer than this library, or the run
            belongs to another model or layer.

        Examples
        --------
        >>> import tempfile, torch
        >>> run = ConceptBank({"W": torch.ones(2, 3)}, {"fingerprint": "ab"}).save(tempfile.mkdtemp())
        >>> ConceptBank.load(run, expected_fingerprint="ab").n_features
        3
        """
        for name, value in (
            ("expected_fingerprint", expected_fingerprint),
            ("expected_layer", expected_layer),
        ):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
        run = Path(path)
        if run.is_file() and run.name in (JSON_FILE, TENSOR_FILE):
            run = run.parent
        document = _read_document(run / JSON_FILE)
        data, tensor_path = _read_tensor_file(run, document)
        tensors = _decode_tensors(data, document, tensor_path, run / JSON_FILE)
        bank = cls(tensors, document["metadata"])
        bank._check_expected(run, expected_fingerprint, expected_layer)
        return bank

    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a saved run (its ``bank.json`` is in place)."""
        return (Path(path) / JSON_FILE).is_file()

    def _check_expected(self, run: Path, fingerprint: str | None, layer: str | None) -> None:
        saved_fp, saved_layer = self.fingerprint, self.layer
        fp_bad = fingerprint is not None and saved_fp != fingerprint
        layer_bad = layer is not None and saved_layer != layer
        if fp_bad or layer_bad:
            raise BankError(
                f"run {run} was fitted on model fingerprint {saved_fp!r} at layer {saved_layer!r}, "
                f"but the current model has fingerprint {fingerprint!r} at layer {layer!r}; "
                "load the weights the run was fitted on, or fit a new run"
            )


# ---------------------------------------------------------------------- verified reading
def _read_document(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise FileNotFoundError(
            f"no saved run at {json_path.parent}: {json_path} does not exist (a run exists once "
            f"its {JSON_FILE} is written; was the save interrupted or the path mistyped?)"
        )
    try:
        document = json.loads(json_path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BankError(
            f"{json_path} is not valid JSON: the file was truncated or edited ({exc})"
        ) from exc
    if not isinstance(document, dict):
        raise BankError(f"{json_path} does not hold a concept bank: the file was edited")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BankError(
            f"{json_path} has no valid format_version ({version!r}): the file was edited"
        )
    if version > FORMAT_VERSION:
        raise BankError(
            f"{json_path} uses bank format {version}, but this face-concepts reads format "
            f"{FORMAT_VERSION} at most; upgrade face-concepts to load it"
        )
    missing = [k for k in ("file_sha256", "tensors", "metadata") if k not in document]
    if (
        missing
        or not isinstance(document["tensors"], dict)
        or not isinstance(document["metadata"], dict)
    ):
        raise BankError(
            f"{json_path} lacks or mangles {missing or 'tensors/metadata'}: the file was edited"
        )
    return document


def _read_tensor_file(run: Path, document: Mapping[str, Any]) -> tuple[bytes, Path]:
    tensor_path = run / TENSOR_FILE
    backup = backup_path(tensor_path)
    recorded = document["file_sha256"]
    data = tensor_path.read_bytes() if tensor_path.is_file() else None
    if data is not None and sha256_bytes(data) == recorded:
        return data, tensor_path
    # A save that died between its two renames: the JSON still describes the previous file.
    if backup.is_file():
        old = backup.read_bytes()
        if sha256_bytes(old) == recorded:
            return old, backup
    if data is None:
        raise BankError(f"{tensor_path} is missing, but {run / JSON_FILE} refers to it")
    raise BankError(
        f"{tensor_path} does not match the checksum recorded in {run / JSON_FILE}: the file was "
        "truncated, edited or replaced after saving"
    )


def _decode_tensors(
    data: bytes, document: Mapping[str, Any], tensor_path: Path, json_path: Path
) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as load_safetensors  # no pickle: raw buffers + JSON header

    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        tensors = load_safetensors(data)
    except Exception as exc:  # any parse failure means the bytes are not a safetensors file
        raise BankError(f"{tensor_path} is not a valid safetensors file: {exc}") from exc
    if header.get("metadata_sha256") != _canonical_sha(document["metadata"]):
        raise BankError(f"the metadata in {json_path} was edited after saving (checksum mismatch)")
    manifest = document["tensors"]
    if sorted(manifest) != sorted(tensors):
        raise BankError(
            f"{json_path} lists tensors {sorted(manifest)} but {tensor_path} holds "
            f"{sorted(tensors)}: a file was edited"
        )
    for name, t in tensors.items():
        entry = manifest[name]
        actual = {
            "shape": list(t.shape),
            "dtype": str(t.dtype).removeprefix("torch."),
            "sha256": tensor_sha256(t),
        }
        if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in actual.items()):
            raise BankError(
                f"tensor {name!r} in {tensor_path} does not match its entry in {json_path}: "
                "a file was edited"
            )
    return tensors
