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
    """The refusal of a signed layer under ``check_non_negative=True`` (a Python-only setting:
    the command line keeps signed layers and fits the signed concept bank)."""
    msg = (
        f"layer {layer!r} of {type(model).__name__} has negative activations (min {minimum:.3g} "
        "on a probe batch), and check_non_negative=True refuses signed layers. Drop "
        "check_non_negative=True to keep the layer as it is (signed concept bank: codes >= 0, "
        "concepts are signed directions), or pass signed='posneg' (exact: features "
        "[relu(f), relu(-f)], p doubles, non-negative bank) or signed='relu' (approximate)."
    )
    nxt = following_non_negative(model, layer, x) if x is not None else None
    if nxt is not None:
        msg += f" The next layer whose output is non-negative is layer={nxt!r}."
    return ValueError(msg)


def unknown_layer_error(model: nn.Module, layer: str, names: list[str], hint: str) -> ValueError:
    """``layer`` is not a module name: Python points at ``named_modules()``, the CLI does not."""
    head = f"layer={layer!r} is not a module of {type(model).__name__}; {hint}"
    py = head + " (all names: [n for n, _ in model.named_modules()])"
    cli = f"--layer {layer!r} is not a module of {type(model).__name__}; {hint} ({len(names)} modules)"
    return with_cli_message(ValueError(py), cli)  # type: ignore[return-value]


def unpoolable_error(model: nn.Module, layer: str, out: Any) -> TypeError:
    """A layer whose output is not an (N, p, H, W) map: nothing a spatial mean pool turns into
    (n, p) activations. Names the layer and the explicit way (``ModelSplit``)."""
    if isinstance(out, torch.Tensor):
        what = f"a tensor of shape {('N', *tuple(out.shape[1:]))}".replace("'N'", "N")
    else:
        what = f"a {type(out).__name__}"
    where = f"layer {layer!r} of {type(model).__name__} outputs {what}"
    py = (
        f"{where}, which a spatial mean pool cannot turn into (n, p) activations (that needs an "
        "(N, p, H, W) feature map); choose a layer with such an output, or pass the features "
        "and the head explicitly: ModelSplit(features, head, pool=<callable to (N, p)>, "
        "model=model)"
    )
    cli = (
        f"{where.replace(f'layer {layer!r}', f'--layer {layer}')}, not an (N, p, H, W) feature "
        "map that can be mean-pooled; choose another --layer, or split the model in Python "
        "with ModelSplit(features, head)"
    )
    return with_cli_message(TypeError(py), cli)  # type: ignore[return-value]


def no_head_error(model: nn.Module, supported: str) -> TypeError:
    """A model of unknown structure: its classifier head cannot be found without a layer."""
    name = type(model).__name__
    py = (
        f"no default split for {name}: its classifier head cannot be found (supported: "
        f"{supported}); pass layer=<module name> (the head then runs the rest of the network) "
        "or pass the features and the head explicitly: ModelSplit(features, head, model=model)"
    )
    cli = (
        f"no default split for {name}: its classifier head cannot be found (supported: "
        f"{supported}); pass --layer <module name>"
    )
    return with_cli_message(TypeError(py), cli)  # type: ignore[return-value]
