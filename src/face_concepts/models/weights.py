"""Weight files read safely: ``torch.load(weights_only=True)`` or safetensors, never arbitrary
pickle; a state dict (optionally wrapped in ``state_dict`` / ``model``, or saved from
DataParallel) loaded into a given module with a clear message on missing or misshapen keys.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["load_state_dict_file"]

M = TypeVar("M", bound=nn.Module)  # load_state_dict_file returns the module it was given


# ----------------------------------------------------------------------------- weight files
def _few(keys: Any, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(map(repr, keys[:n])) + more


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _unsafe_cause(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without PyTorch's advice.

    PyTorch's message suggests loading with ``weights_only=False`` or allow-listing the
    object, i.e. running the file's code; we never repeat that advice.
    """
    text = _ANSI.sub("", str(exc))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"the file holds the Python object {found.group(1)}, not only tensors"
    for line in (t.strip() for t in text.splitlines()):
        if line and not re.search(r"weights_only|trust|safe_globals|can still be loaded", line):
            return line
    return f"{type(exc).__name__} while unpickling"


def _read_weights(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(
            f"weights={str(path)!r} could not be loaded safely: only plain state dicts of tensors "
            f"are accepted (torch.load weights_only=True, no arbitrary pickle). "
            f"Cause: {_unsafe_cause(exc)}"
        ) from exc


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"weights={str(path)!r} is not a state dict of tensors (nor a dict with a "
            "'state_dict' or 'model' entry holding one)"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(model: M, weights: str | os.PathLike[str]) -> M:
    """Load a state-dict file into ``model`` safely, with a clear message on any mismatch.

    Examples
    --------
    >>> import tempfile, torchvision
    >>> net = torchvision.models.resnet18()
    >>> path = tempfile.mktemp(suffix=".pth"); torch.save(net.state_dict(), path)
    >>> load_state_dict_file(torchvision.models.resnet18(), path).fc.out_features
    1000
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights={str(path)!r}: no such file")
    sd = _unwrap_state_dict(_read_weights(path), path)
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        raise ValueError(
            f"weights={str(path)!r} does not match {type(model).__name__}: "
            f"{len(missing)} missing keys [{_few(missing)}], {len(unexpected)} unexpected keys "
            f"[{_few(unexpected)}]; is it a checkpoint of another architecture?"
        )
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in sd.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(
            f"weights={str(path)!r}: {len(wrong)} tensors have the wrong shape, e.g. {'; '.join(wrong[:3])}"
        )
    model.load_state_dict(sd)
    return model
