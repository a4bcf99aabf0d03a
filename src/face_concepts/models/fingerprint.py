"""The model fingerprint: which weights a run was fitted on (saved runs and caches check it)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["model_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """Short sha256 (16 hex digits) over the names, dtypes, shapes and values of
    ``model.state_dict()``.

    Keys are sorted, so the fingerprint does not depend on registration order. It is
    ``ModelSplit.fingerprint`` (of the full model when the split has one) and what
    ``ConceptBank.load(expected_fingerprint=...)`` and the activation cache compare.

    Examples
    --------
    >>> len(model_fingerprint(torch.nn.Linear(2, 3)))
    16
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
