"""Eval mode for the modules a user hands in, never switched silently (issue 14, item 6).

Concepts need a fixed function: dropout in training mode makes a model random and batch norm
in training mode makes each output depend on the rest of its batch (and updates the running
statistics). :func:`ensure_eval` puts a module in eval mode only when one of its layers would
behave differently there, and then says so with a :class:`ModuleModeWarning`; a module whose
training flags change nothing (a ``Linear`` or ``Conv2d`` in training mode) is left as it is.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

from torch import nn

__all__ = ["ModuleModeWarning", "ensure_eval", "mode_dependent"]

# Every Dropout*/BatchNorm*/InstanceNorm* variant reads ``training`` (the private base classes).
_READS_MODE = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


_PACKAGE = str(Path(__file__).resolve().parents[1]) + "/"  # .../face_concepts/


class ModuleModeWarning(UserWarning):
    """A module that was handed in was put in eval mode (it was in training mode)."""


@functools.cache
def _forward_reads_mode(cls: type[nn.Module]) -> bool:
    """Whether ``cls.forward`` mentions ``training`` (torchvision's StochasticDepth, timm's
    DropPath, MultiheadAttention, LSTM, a user's own layer); without source, assume it does."""
    try:
        return "training" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return True


def _reads_mode(module: nn.Module) -> bool:
    return isinstance(module, _READS_MODE) or _forward_reads_mode(type(module))  # type: ignore[arg-type]  # a class is hashable


def mode_dependent(module: Any) -> list[str]:
    """Names of the layers of ``module`` that are in training mode and would compute something
    else in eval mode (their ``forward`` reads ``training``; ``""`` is the module itself);
    empty when eval mode changes nothing.

    Examples
    --------
    >>> mode_dependent(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    ['1']
    >>> mode_dependent(nn.Linear(2, 2)), mode_dependent(nn.Linear(2, 2).eval())
    ([], [])
    """
    if not isinstance(module, nn.Module):
        return []
    return [name for name, m in module.named_modules() if m.training and _reads_mode(m)]


def _user_stacklevel() -> int:
    """``stacklevel`` for a warning given in the caller: its first caller outside this package
    (the user's line, however deep inside face_concepts the module was switched)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def ensure_eval(module: Any, what: str) -> bool:
    """Put ``module`` in eval mode if that changes what it computes, with a warning naming
    ``what`` (how the user knows the module, e.g. ``"the model"``) and the layers, given at the
    user's line that led here; returns whether it did. Otherwise the module and its training
    flags are left untouched.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     ensure_eval(net, "the head"), net.training
    (True, False)
    >>> print(seen[0].message)  # doctest: +ELLIPSIS
    the head was in training mode, where layers 1 compute differently ...; it is now in eval mode...
    >>> ensure_eval(nn.Linear(2, 2), "the head")  # a Linear computes the same in both modes
    False
    """
    layers = mode_dependent(module)
    if not layers:
        return False
    module.eval()
    shown = ", ".join(name or "(itself)" for name in layers[:3])
    more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
    warnings.warn(
        f"{what} was in training mode, where layers {shown}{more} compute differently "
        "(dropout is random, batch norm uses the batch); it is now in eval mode: call .eval() "
        "on it first to avoid this message, or .train() afterwards to train it again",
        ModuleModeWarning,
        stacklevel=_user_stacklevel(),
    )
    return True
