"""What the errors of :func:`~face_concepts.models.split_model` advise, in the caller's words.

A layer's *following* layer is found by running the model once with a forward hook on every
module and reading the calls in the order they happen, not the order the modules are
declared: torchvision's ResNet blocks declare one ``relu`` that runs twice (after ``bn1`` and
after the residual sum), so the declared order puts ``layer3.1.relu`` *before*
``layer3.1.conv2`` although its second call comes after it. A split can only take a module's
output at its first call (:class:`~face_concepts.models._modules.Truncated`), so a suggestion
is a module whose first call comes after the layer and gives a non-negative map there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from face_concepts._core.validation import with_cli_message


def following_non_negative(model: nn.Module, layer: str, x: torch.Tensor) -> str | None:
    """The first module run after ``layer`` whose first call outputs a non-negative map.

    Examples
    --------
    >>> import torchvision
    >>> net = torchvision.models.resnet18().eval()
    >>> following_non_negative(net, "layer3.1.conv2", torch.randn(1, 3, 64, 64))
    'layer3.1'
    >>> following_non_negative(net, "layer3.0.conv1", torch.randn(1, 3, 64, 64))
    'layer3.0.relu'
    """
    calls: list[tuple[str, bool, bool]] = []  # (name, first call, non-negative 4-d map)
    seen: set[str] = set()

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            is_map = isinstance(output, torch.Tensor) and output.dim() == 4
            ok = is_map and output.numel() > 0 and bool(output.min() >= 0)
            calls.append((name, name not in seen, ok))
            seen.add(name)

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode():
            model(x)
    except Exception:  # advice must never replace the error it decorates
        return None
    finally:
        for h in handles:
            h.remove()
    start = next((i for i, (n, _, _) in enumerate(calls) if n == layer), None)
    if start is None:
        return None
    for name, first, ok in calls[start + 1 :]:
        inside = name == layer or name.startswith(layer + ".")
        if first and ok and not inside:
            return name
    return None


def signed_layer_error(model: nn.Module, layer: str, minimum: float, x: Any) -> ValueError:
    """The refusal of a signed layer, with a Python message and a command-line message."""
    what = (
        f"layer {layer!r} of {type(model).__name__} has negative activations (min {minimum:.3g} "
        "on a probe batch), but concept extraction (NMF/FACE) needs non-negative activations."
    )
    nxt = following_non_negative(model, layer, x) if x is not None else None
    py = cli = what
    if nxt is not None:
        py += f" The next layer whose output is non-negative is layer={nxt!r}."
        cli += f" The next layer whose output is non-negative: --layer {nxt}."
    py += (
        " Or pass signed='posneg' (exact: features [relu(f), relu(-f)], p doubles), "
        "signed='relu' (approximate), or check_non_negative=False to skip this check."
    )
    cli += (
        " Or pass --signed posneg (exact: features [relu(f), relu(-f)], twice the channels) "
        "or --signed relu (approximate)."
    )
    return with_cli_message(ValueError(py), cli)  # type: ignore[return-value]


def unknown_layer_error(model: nn.Module, layer: str, names: list[str], hint: str) -> ValueError:
    """``layer`` is not a module name: Python points at ``named_modules()``, the CLI does not."""
    head = f"layer={layer!r} is not a module of {type(model).__name__}; {hint}"
    py = head + " (all names: [n for n, _ in model.named_modules()])"
    cli = f"--layer {layer!r} is not a module of {type(model).__name__}; {hint} ({len(names)} modules)"
    return with_cli_message(ValueError(py), cli)  # type: ignore[return-value]
