"""The inputs of activation extraction: batches of preprocessed images, regrouped and hashed.

``Inputs`` is a tensor (N, 3, H, W) or an iterable of such batches; :func:`content_hash` hashes
their values independently of how they are cut into batches (the data part of a cache key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["Inputs", "content_hash"]

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
