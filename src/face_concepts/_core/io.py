"""Crash-safe file writing and checksums shared by saved runs, caches, metrics and figures.

Every writer goes through a temporary file in the destination's own directory that is flushed
and ``fsync``-ed before ``os.replace`` moves it into place, so a reader sees the old file or the
new one and never half of one (``os.replace`` is atomic within a file system, which is why the
temporary file must live next to its destination rather than in ``/tmp``). A failed write
removes its temporary file and raises an :class:`OSError` whose message names the path and says
what went wrong in words (disk full, permission denied, ...).

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = atomic_write_json(d / "metrics.json", {"acc": 0.9})
>>> (d / "metrics.json").read_text().startswith("{")
True
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Mapping
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "clear_stale_temporaries",
    "describe_os_error",
    "fsync_directory",
    "json_bytes",
    "publish",
    "remove_quietly",
    "safetensors_bytes",
    "sha256_bytes",
    "tensor_sha256",
    "write_temporary",
]

# Reasons a user can act on, keyed by errno; anything else falls back to the system's wording.
_REASONS = {
    errno.ENOSPC: "no space left on device; free some space or choose another output directory",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another output directory",
    errno.EACCES: "permission denied; choose a writable output directory",
    errno.EPERM: "operation not permitted; choose a writable output directory",
    errno.EROFS: "read-only file system; choose a writable output directory",
}


def describe_os_error(exc: OSError, path: str | os.PathLike[str], action: str = "write") -> OSError:
    """Return a new :class:`OSError` saying ``cannot {action} {path}: {reason}``.

    The errno is kept, so ``OSError(errno.EACCES, ...)`` still arrives as ``PermissionError``
    and callers (the CLI) can branch on it.
    """
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    message = f"cannot {action} {os.fspath(path)}: {reason}"
    if exc.errno is None:
        return OSError(message)
    return OSError(exc.errno, message)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hex sha256 of a tensor's raw bytes in C order (dtype and shape are recorded separately)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    # A uint8 view works for every dtype, including bfloat16 that numpy cannot represent.
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def _jsonable(obj: Any, where: str) -> Any:
    """Plain-Python copy of ``obj`` for :mod:`json`; raise ``TypeError`` naming the key path."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}; JSON keys must be str")
            out[key] = _jsonable(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return _jsonable(item(), where)
    raise TypeError(
        f"{where} is not JSON-serialisable: {type(obj).__name__} {obj!r:.80}; "
        "store tensors in the tensor file and only plain values in metadata"
    )


def json_bytes(obj: Any, *, name: str = "metadata", indent: int | None = 2) -> bytes:
    """Serialise ``obj`` to UTF-8 JSON, converting numpy/torch scalars, tuples and paths.

    Keys are sorted; ``indent=None`` gives the compact canonical form used for checksums.
    Non-finite floats are written as ``NaN``/``Infinity`` (Python's json reads them back) rather
    than failing a save, because a degenerate metric should not cost a user their run.

    Raises
    ------
    TypeError
        Naming the key path of the first value that cannot be represented.

    Examples
    --------
    >>> json_bytes({"b": (1, 2), "a": 0.5}, indent=None)
    b'{"a":0.5,"b":[1,2]}'
    """
    plain = _jsonable(obj, name)
    if indent is None:  # canonical form, stable for hashing
        return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return (json.dumps(plain, indent=indent, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write_all(handle: BinaryIO, data: bytes) -> None:
    """Write, flush and fsync: the data is on disk before any rename can publish it."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def remove_quietly(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` if it exists; cleanup must never hide the error that caused it."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_temporary(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a new fsync-ed temporary file next to ``path`` and return its path.

    The caller publishes it with ``os.replace``. The parent directory is created if needed. On
    failure nothing is left behind and an :class:`OSError` naming ``path`` is raised.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise describe_os_error(exc, path.parent, "create directory") from exc
    # The pid lets a later writer recognise (and delete) what a killed writer left behind.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    try:
        # "xb": never clobber a file we did not create; mode 0o666 & ~umask like any new file.
        handle = open(tmp, "xb")
    except OSError as exc:
        raise describe_os_error(exc, path) from exc
    try:
        with handle:
            _write_all(handle, data)
    except OSError as exc:
        remove_quietly(tmp)
        raise describe_os_error(exc, path) from exc
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def clear_stale_temporaries(
    directory: str | os.PathLike[str], name: str | None = None
) -> list[Path]:
    """Delete temporary files in ``directory`` left by writers that died (killed mid-write).

    Only temporaries whose writer process no longer exists are removed, so a concurrent writer
    on this machine keeps its own; ``name`` limits the cleanup to one destination file's
    temporaries. Returns the deleted paths.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ".a.json.999999999-ab.tmp").write_bytes(b"half")
    >>> [p.name for p in clear_stale_temporaries(d)]
    ['.a.json.999999999-ab.tmp']
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = ".*.tmp" if name is None else f".{glob_escape(name)}.*.tmp"
    removed = []
    for tmp in directory.glob(pattern):
        # ".{name}.{pid}-{token}.tmp", see write_temporary
        pid = tmp.name[: -len(".tmp")].rsplit(".", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove_quietly(tmp)
            removed.append(tmp)
    return removed


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """``os.replace(tmp, path)``; on failure remove ``tmp`` and raise an OSError naming ``path``."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise describe_os_error(exc, path) from exc
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Parameters
    ----------
    path : path-like
        Destination; its parent directory is created if missing.
    data : bytes
        The complete new content.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OSError
        Naming ``path`` and the reason (e.g. disk full); the old file, if any, is untouched.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = atomic_write_bytes(pathlib.Path(tempfile.mkdtemp()) / "a.bin", b"abc")
    >>> p.read_bytes()
    b'abc'
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = Path(path)
    publish(write_temporary(path, bytes(data)), path)
    fsync_directory(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; see :func:`json_bytes` and
    :func:`atomic_write_bytes`.

    Serialisation happens before anything touches the disk, so an unserialisable value raises
    ``TypeError`` and leaves the old file as it was.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> p = atomic_write_json(pathlib.Path(tempfile.mkdtemp()) / "m.json", {"kl": 0.5})
    >>> json.loads(p.read_text())
    {'kl': 0.5}
    """
    return atomic_write_bytes(path, json_bytes(obj, name=Path(path).name, indent=indent))


def safetensors_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise tensors (detached, on CPU, contiguous, unshared) with safetensors."""
    from safetensors.torch import save  # local: keep `import face_concepts` light

    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of str to Tensor, got {type(tensors).__name__}")
    plain: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(
                f"tensors must map str to torch.Tensor, got {name!r}: {type(t).__name__}"
            )
        # clone: safetensors refuses tensors that share storage (views of one buffer).
        plain[name] = t.detach().cpu().contiguous().clone()
    if metadata is not None:
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise TypeError(f"safetensors metadata must map str to str, got {bad!r:.120}")
        metadata = dict(metadata)
    return _canonical_header(save(plain, metadata=metadata))


def _canonical_header(data: bytes) -> bytes:
    """The same file with its ``__metadata__`` entries in sorted order.

    safetensors writes that map from a Rust ``HashMap``, whose order changes from one save to
    the next; sorted, the same tensors and metadata always give the same bytes (a run loaded
    and saved again is bit-identical). Reordering keeps the header's length; if it would not,
    the file is returned unchanged.
    """

    (n,) = struct.unpack("<Q", data[:8])
    raw = data[8 : 8 + n]
    header = json.loads(raw)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        return data
    ordered = {"__metadata__": dict(sorted(meta.items()))}
    ordered.update((k, v) for k, v in header.items() if k != "__metadata__")
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (n - len(text))  # the writer pads the header with spaces
    if len(text) != n or json.loads(text) != header:
        return data
    return data[:8] + text + data[8 + n :]


def atomic_save_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Save ``tensors`` to a ``.safetensors`` file atomically (no pickle anywhere).

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from safetensors.torch import load_file
    >>> p = atomic_save_safetensors(pathlib.Path(tempfile.mkdtemp()) / "t.safetensors",
    ...                             {"W": torch.ones(2, 3)})
    >>> load_file(p)["W"].shape
    torch.Size([2, 3])
    """
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
