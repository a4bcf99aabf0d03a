"""Device resolution: from the argument, else from the model/inputs; never default to CUDA."""

from __future__ import annotations

from typing import Any

import torch


def resolve_device(device: Any = None, *, like: Any = None) -> torch.device:
    """Return the device to compute on.

    ``device`` wins when given ("cpu", "cuda", "cuda:1", "auto" or a ``torch.device``);
    otherwise the device of ``like`` (a tensor or module); otherwise the CPU. "auto" picks
    CUDA only when it is available.
    """
    if device is None:
        if isinstance(like, torch.Tensor):
            return like.device
        if isinstance(like, torch.nn.Module):
            for t in list(like.parameters()) + list(like.buffers()):
                return t.device
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'cpu', 'cuda[:i]', 'auto' or a torch.device, got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine"
        )
    return dev


def native_bfloat16(device: Any) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware, much faster than float32.

    CUDA: the device supports bfloat16 without emulation. CPU: the core has AMX tiles (Intel
    Sapphire Rapids and later), where ResNet-18's tail after ``layer3`` runs the Sobol importance
    about 3× faster under bfloat16 autocast (``benchmarks/results/sobol_designs.md``). CPUs with
    only AVX-512 BF16 are not counted: not measured here.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except (RuntimeError, TypeError, AssertionError):
            return False
    if dev.type == "cpu":
        probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent in some builds
        try:
            return bool(probe()) if probe is not None else False
        except RuntimeError:
            return False
    return False
