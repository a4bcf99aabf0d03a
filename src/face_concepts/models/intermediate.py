"""The head of an intermediate-layer split: the rest of the network, run on a constant map.

``split_model(model, layer=...)`` below the last map needs a head from pooled activations to
logits; :func:`_rest_of_network` builds it from the modules after ``layer`` when the model is a
plain chain of them (checked on a probe batch), else falls back to running the whole model with
the layer's output replaced. It is exact only when a global mean pool follows the layer;
otherwise the map it sees is constant over space (equal to the pooled activations), which is why
such splits are approximate (``split.py``'s docstring).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from face_concepts.models._modules import MeanPool, OnMap, PosNegHead, RestOfNetwork

# Elements of the largest activation per chunk of rows in an intermediate layer's head on the CPU
# (2**20 float32 values = 4 MiB: the chunk's activations stay in cache). MobileNetV2 split at
# features.14 (7×7 map): 16 rows per chunk, where 2**23 elements of the input map per chunk (the
# rule before) gave 1,069; its Sobol importance on 12 images then runs in less than half the
# time with a tenth of the memory; ResNet-18's layer3 is about the same either way
# (benchmarks/results/intermediate_layer.md, the chunk table).
_CHUNK_ELEMENTS = 2**20
# Rows per chunk when the fallback runs the whole model on zero images.
_WHOLE_MODEL_CHUNK = 16


# ---------------------------------------------------------------------- intermediate heads
def _forward_chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The model's forward as a plain sequence of (name, module) steps, for known families.

    Names are those of the model's own modules; glue written inline in a forward
    (``torch.flatten``, ``x.mean([2, 3])``) gets a module with a name no layer has.
    """
    from torchvision import models as tvm

    if type(model).forward is nn.Sequential.forward:
        return list(model.named_children())
    flat = ("<flatten>", nn.Flatten(1))
    pool = ("<pool>", nn.AdaptiveAvgPool2d(1))

    def seq(*names: str) -> list[tuple[str, nn.Module]]:
        return [(n, getattr(model, n)) for n in names]

    if isinstance(model, tvm.ResNet):
        body = seq("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return [*body, *seq("avgpool"), flat, *seq("fc")]
    if isinstance(model, tvm.MobileNetV2):
        return [*seq("features"), pool, flat, *seq("classifier")]
    if isinstance(model, (tvm.MobileNetV3, tvm.EfficientNet, tvm.VGG)):
        return [*seq("features", "avgpool"), flat, *seq("classifier")]
    if isinstance(model, tvm.DenseNet):
        return [*seq("features"), ("<relu>", nn.ReLU()), pool, flat, *seq("classifier")]
    if isinstance(model, tvm.ConvNeXt):
        return seq("features", "avgpool", "classifier")
    if isinstance(model, tvm.RegNet):
        return [*seq("stem", "trunk_output", "avgpool"), flat, *seq("fc")]
    if isinstance(model, tvm.ShuffleNetV2):
        body = seq("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")
        return [*body, ("<mean>", MeanPool()), *seq("fc")]
    if isinstance(model, tvm.MNASNet):
        return [*seq("layers"), ("<mean>", MeanPool()), *seq("classifier")]
    return None


def _is_chain(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _tail_plan(
    model: nn.Module, layer: str
) -> tuple[nn.Module | None, str | None, list[nn.Module]] | None:
    """Where ``layer`` sits in the model's chain: ``(block, inner, rest)`` or ``None``.

    ``rest`` is every module after the layer, innermost chain first. ``block`` is ``None`` when
    the layer is itself a step of a chain; otherwise the block with its own forward that holds
    it, and ``inner`` the layer's name inside that block.
    """
    chain = _forward_chain(model)
    if chain is None:
        return None
    parts = layer.split(".")
    steps = chain
    tails: list[list[nn.Module]] = []
    current: nn.Module | None = None
    depth = 0
    while depth < len(parts):
        names = [n for n, _ in steps]
        if parts[depth] not in names:
            return None
        i = names.index(parts[depth])
        tails.insert(0, [m for _, m in steps[i + 1 :]])
        current, depth = steps[i][1], depth + 1
        if depth < len(parts) and not _is_chain(current):
            break
        steps = list(current.named_children())
    rest = [m for tail in tails for m in tail]
    if depth == len(parts):
        return None, None, rest
    return current, ".".join(parts[depth:]), rest


def _block_input(model: nn.Module, block: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """What ``block`` receives when the model runs on ``x`` (its first call), or ``None``."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if "x" not in captured and len(inputs) == 1 and isinstance(inputs[0], torch.Tensor):
            captured["x"] = inputs[0].detach().clone()

    handle = block.register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    return captured.get("x")


def _chain_matches(model: nn.Module, probe: torch.Tensor, tol: float) -> bool:
    """Whether :func:`_forward_chain` run in order reproduces ``model`` on ``probe``."""
    chain = _forward_chain(model)
    if chain is None:
        return False
    try:
        with torch.inference_mode():
            got, ref = nn.Sequential(*[m for _, m in chain])(probe), model(probe)
        return got.shape == ref.shape and float((got - ref).abs().max()) <= tol
    except Exception:  # a forward that is not the chain we assumed
        return False


def _is_global_mean(module: nn.Module) -> bool:
    if isinstance(module, MeanPool):
        return True
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def _rest_of_network(
    model: nn.Module, layer: str, probe: torch.Tensor, shape: tuple[int, ...], tol: float
) -> tuple[nn.Module, bool]:
    """The head of an intermediate layer whose map has ``shape`` (p, h, w); and whether exact."""
    p, h, w = shape
    plan = _tail_plan(model, layer)
    if plan is not None and not _chain_matches(model, probe, tol):
        plan = None
    if plan is not None:
        block, inner, rest = plan
        if block is None and rest and _is_global_mean(rest[0]):
            # pool(constant map) is the pooled vector itself: the model's own head, exactly
            after = rest[1:]
            flat = bool(after) and isinstance(after[0], nn.Flatten)
            pooled = isinstance(rest[0], MeanPool) or flat
            return (nn.Sequential(*after) if pooled else OnMap(nn.Sequential(*after))), True
        if block is None:
            return RestOfNetwork(rest, (h, w)).size_chunks(_CHUNK_ELEMENTS, p), False
        block_input = _block_input(model, block, torch.zeros_like(probe[:1]))
        if block_input is not None:
            head = RestOfNetwork(rest, (h, w), block=block, inner=inner, block_input=block_input)
            return head.size_chunks(_CHUNK_ELEMENTS, p), False
    zero = torch.zeros_like(probe[:1])
    head = RestOfNetwork(
        [], (h, w), block=model, inner=layer, block_input=zero, chunk_rows=_WHOLE_MODEL_CHUNK
    )
    return head, False


def head_for_input(
    head: nn.Module, features: nn.Module, model: nn.Module | None, size: int
) -> nn.Module:
    """``head`` for activations pooled from ``size`` × ``size`` inputs (e.g. native-size crops).

    Only an intermediate layer's head (:class:`RestOfNetwork`, possibly inside a ``PosNegHead``)
    depends on it: its constant map takes the size that such an input gives at the layer (a 64-px
    crop's 4×4 at ResNet-18's ``layer3``, not the 14×14 of a 224-px image), as the model itself
    would see the crop. Any other head is returned as it is.
    """
    inner = head.head if isinstance(head, PosNegHead) else head
    if not isinstance(inner, RestOfNetwork):
        return head
    param = next(iter(inner.parameters()), None)
    like = param if param is not None else torch.zeros(())
    x = torch.zeros((1, 3, size, size), dtype=like.dtype, device=like.device)
    with torch.inference_mode():
        map_size = tuple(int(s) for s in features(x).shape[-2:])
    if map_size == inner.map_size:
        return head
    block_input = None
    if inner.block is not None:
        if inner.block is model:  # the whole model as the block: its input is the image
            block_input = x
        elif model is not None:
            block_input = _block_input(model, inner.block, x)
        if block_input is None:
            return head
    resized = inner.resized((map_size[0], map_size[1]), block_input)
    return PosNegHead(resized) if isinstance(head, PosNegHead) else resized
