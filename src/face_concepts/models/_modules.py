"""Small modules that glue a split together: heads on pooled vectors, truncated networks, and the
exact positive/negative transform for signed layers.

They are private building blocks of :func:`face_concepts.models.split_model`; each one is an
``nn.Module`` so that ``.to(device)``, ``.eval()`` and ``state_dict`` keep working.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from face_concepts.models._advice import unpoolable_error
from face_concepts.models.head import affine_parameters


class OnMap(nn.Module):
    """Apply a head that expects a (N, p, 1, 1) map to a pooled (N, p) vector.

    ConvNeXt's classifier starts with ``LayerNorm2d`` and timm's ``forward_head`` starts with a
    global pool: both act on a map. Global average pooling of a 1×1 map is the identity, so
    feeding the pooled vector as a 1×1 map reproduces the model exactly.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(a[:, :, None, None])


class TimmHead(nn.Module):
    """timm's ``forward_head`` applied to a pooled vector (given as a 1×1 map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a timm model (forward_head): its own methods

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(a[:, :, None, None])


class TimmFeatures(nn.Module):
    """timm's ``forward_features`` as a module (it must return an (N, p, H, W) map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a timm model (forward_features): its own methods

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_features(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(
                f"timm forward_features returned {shape}, not an (N, p, H, W) feature map; "
                "token-based models (ViT, …) need an explicit ModelSplit"
            )
        return out


class Reshape4d(nn.Module):
    """Run ``body`` and view its (N, p) output as an (N, p, 1, 1) map (VGG's split)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out.reshape(out.shape[0], -1, 1, 1)


class PosNegFeatures(nn.Module):
    """Map a signed feature map ``f`` to ``[relu(f), relu(-f)]`` (2p non-negative channels).

    Mean pooling commutes with the difference, so ``mean(relu(f)) - mean(relu(-f)) = mean(f)``
    and :class:`PosNegHead` recovers the model exactly.
    """

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return torch.cat([torch.relu(f), torch.relu(-f)], dim=1)


class PosNegHead(nn.Module):
    """``head(a[:, :p] - a[:, p:])``; affine (``V' = [V, -V]``) whenever ``head`` is affine."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        p = a.shape[1] // 2
        return self.head(a[:, :p] - a[:, p:])

    def affine_parameters(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        inner = affine_parameters(self.head)
        if inner is None:
            return None
        V, b = inner
        return torch.cat([V, -V], dim=1), b


class ReluFeatures(nn.Module):
    """``relu(features(x))``: makes a signed layer non-negative but changes the model."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(x))


class _StopForward(Exception):
    """Raised by a hook to end the forward pass once the wanted layer has run."""


class Truncated(nn.Module):
    """The network up to and including the named module (its output at the first call).

    A forward hook captures the module's output and stops the pass; the hook is removed in
    ``finally``, so an error inside the model never leaves it behind.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: dict[str, Any] = {}

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured["out"] = output
            raise _StopForward

        handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "out" not in captured:
            raise RuntimeError(f"layer {self.layer!r} was not called by the model's forward pass")
        out = captured["out"]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise unpoolable_error(self.model, self.layer, out)
        return out


class MeanPool(nn.Module):
    """``x.mean([2, 3])``: the global pool that ShuffleNetV2 and MNASNet write inline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


# Multiply-adds per activation element written above which a tail counts as compute-bound
# (``RestOfNetwork.size_chunks``): ResNet-18 after layer3 does about 1,200, MobileNetV2 after
# features.14 about 70. Such a tail runs faster in larger chunks (its convolutions are large matrix
# products): DENSE_CHUNK_FACTOR times the cache-sized chunk (intermediate_layer.md, chunk table).
DENSE_MACS = 300
DENSE_CHUNK_FACTOR = 8
# Rows per chunk off the CPU, as a multiple of ``RestOfNetwork.chunk_rows`` (whose CPU size keeps
# a chunk's activations in cache): an accelerator wants large batches. A guess, not measured.
ACCELERATOR_CHUNK_FACTOR = 64


def _first_dtype(modules: Any, default: torch.dtype) -> torch.dtype:
    for m in modules:
        for t in m.parameters():
            return t.dtype
    return default


class FoldedConvBN(nn.Module):
    """``bn(conv(x))`` as one convolution with the batch norm folded into its weights.

    In eval mode a batch norm is a per-channel affine map, so ``bn(conv(x))`` is the convolution
    with weights ``w · s`` and bias ``(b − μ) · s + β``, ``s = γ / √(σ² + ε)``: the same function
    up to float rounding, with one pass over the activations instead of two (forward and
    backward). The folded weights are computed from the shared, live modules at each call (never
    stale, nothing copied); a batch norm in training mode runs as it is.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv, self.bn
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return bn(conv(x))
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
        bias = shift * scale + (bn.bias if bn.bias is not None else 0.0)
        return conv._conv_forward(x, conv.weight * scale.reshape(-1, 1, 1, 1), bias)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.num_features == conv.out_channels
        and bn.track_running_stats
    )


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A view of ``module`` whose sequential ``Conv2d → BatchNorm2d`` pairs run as
    :class:`FoldedConvBN` (the batch norm's place taken by an identity); ``module`` itself is
    unchanged, and the view shares its parameters, buffers and hooks (forward hooks on a folded
    convolution or batch norm itself do not run).

    Only pairs that follow each other in an ``nn.Sequential`` (or a subclass with its forward,
    e.g. torchvision's ``Conv2dNormActivation``) are folded: there the order of the calls is
    known. A module with its own forward keeps it, with its children folded the same way.
    Returns ``module`` itself when nothing folds.
    """
    names = list(module._modules)
    children = [module._modules[n] for n in names]
    if not names:
        return module
    new: list[nn.Module | None] = [None if c is None else fold_batch_norms(c) for c in children]
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if conv is not None and bn is not None and _foldable(conv, bn):
                new[i], new[i + 1] = FoldedConvBN(conv, bn), nn.Identity()  # type: ignore[arg-type]
    if all(a is b for a, b in zip(new, children, strict=True)):
        return module
    view = copy.copy(module)  # the same __dict__ entries: parameters, buffers, hooks, flags
    view._modules = dict(zip(names, new, strict=True))
    return view


class RestOfNetwork(nn.Module):
    """The network after an intermediate layer, fed a constant map equal to the pooled vector.

    An approximation of the true model: the rest of the network sees a map of ``map_size``
    whose every position is the pooled vector ``a`` (not the layer's real, varying map).

    Two ways to run it, chosen by :func:`~face_concepts.models.split_model`:

    * a *tail*: when the layer sits in a plain chain of modules (the model's top-level forward
      as a sequence, then ``nn.Sequential`` containers), the map goes through ``rest`` only:
      the modules after the layer (e.g. ResNet's ``layer4, avgpool, flatten, fc`` after
      ``layer3``);
    * a *hooked block*: when the layer is inside a block with its own forward (a residual
      block), ``block`` runs on its recorded input for a zero image (``block_input``, batch 1,
      broadcast over rows where the block allows it) with a hook that replaces the layer's
      output (first call) by the constant map; then ``rest``. For models of unknown structure
      the block is the whole model and its input the zero image.

    Both give what the model itself computes on a zero image whose layer output is replaced by
    the constant map. Rows are processed ``chunk_rows`` at a time on the CPU (so memory does not
    grow with the number of rows beyond the output), ``ACCELERATOR_CHUNK_FACTOR`` times as many
    on other devices; :meth:`size_chunks` sets ``chunk_rows`` from the largest activation.
    """

    block_input: torch.Tensor | None  # a buffer (registered in __init__)

    def __init__(
        self,
        rest: list[nn.Module],
        map_size: tuple[int, int],
        *,
        block: nn.Module | None = None,
        inner: str | None = None,
        block_input: torch.Tensor | None = None,
        chunk_rows: int = 64,
    ) -> None:
        super().__init__()
        if (block is None) != (block_input is None) or (block is None) != (inner is None):
            raise ValueError("block, inner and block_input go together")
        self.rest = nn.ModuleList(rest)
        self.block = block
        self.inner = inner
        self.register_buffer("block_input", block_input, persistent=False)
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.chunk_rows = max(1, int(chunk_rows))
        self._broadcast = True  # batch-1 block input, until the block refuses it
        self._sized: tuple[int, int] | None = None  # size_chunks's (budget, channels)
        self.macs_per_element: float | None = None  # measured by size_chunks

    def size_chunks(self, budget: int, channels: int) -> RestOfNetwork:
        """Set ``chunk_rows`` from one forward of one zero row of ``channels`` features; returns
        ``self``. A tail that does little arithmetic per activation element (fewer than
        ``DENSE_MACS`` multiply-adds, as in depthwise-separable blocks) is bound by memory
        traffic: its chunks are sized for the cache, with about ``budget`` elements in the
        largest activation; a denser one keeps ``DENSE_CHUNK_FACTOR`` times as many rows."""
        largest, macs, written = [1], [0], [0]

        def hook(m: nn.Module, _i: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                return
            largest[0] = max(largest[0], out.numel())
            written[0] += out.numel()
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                macs[0] += out.numel() * k * m.in_channels // m.groups
            elif isinstance(m, nn.Linear):
                macs[0] += out.numel() * m.in_features

        leaves = [m for m in self.modules() if m is not self and not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.inference_mode():
                dev, dtype = self._device(), self._dtype(torch.float32)
                probe = torch.zeros((1, channels), dtype=dtype, device=dev)
                largest[0] = max(largest[0], channels * self.map_size[0] * self.map_size[1])
                self._rows(probe, list(self.rest))
        finally:
            for h in handles:
                h.remove()
        self.macs_per_element = macs[0] / max(1, written[0])
        dense = self.macs_per_element >= DENSE_MACS
        self.chunk_rows = max(1, budget * (DENSE_CHUNK_FACTOR if dense else 1) // largest[0])
        self._sized = (budget, channels)
        return self

    def _modules_run(self) -> list[nn.Module]:
        return [*self.rest, *([self.block] if self.block is not None else [])]

    def _dtype(self, default: torch.dtype) -> torch.dtype:
        return _first_dtype(self._modules_run(), default)

    def _device(self) -> torch.device:
        for m in self._modules_run():
            for t in [*m.parameters(), *m.buffers()]:
                return t.device
        return torch.device("cpu")

    def resized(
        self, map_size: tuple[int, int], block_input: torch.Tensor | None = None
    ) -> RestOfNetwork:
        """The same head on a constant map of ``map_size`` (sharing the modules); a hooked block
        needs its recorded input for an input of that size, ``block_input``. Its chunks are
        sized as this head's were (:meth:`size_chunks`), else scaled by the map's area."""
        h, w = self.map_size
        chunk = max(1, self.chunk_rows * h * w // max(1, map_size[0] * map_size[1]))
        if self.block is None:
            out = RestOfNetwork(list(self.rest), map_size, chunk_rows=chunk)
        elif block_input is None:
            raise ValueError("a hooked block needs its input for the new size")
        else:
            out = RestOfNetwork(
                list(self.rest), map_size, block=self.block, inner=self.inner,
                block_input=block_input, chunk_rows=chunk,
            )  # fmt: skip
        return out if self._sized is None else out.size_chunks(*self._sized)

    @property
    def mode(self) -> str:
        """``"tail"`` (the modules after the layer only) or ``"hooked block"``."""
        return "tail" if self.block is None else "hooked block"

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.dim() != 2:
            raise ValueError(f"the head takes pooled rows (n, p), got shape {tuple(a.shape)}")
        rows = self.chunk_rows
        if a.device.type != "cpu":  # (not measured: no accelerator was lent)
            rows *= ACCELERATOR_CHUNK_FACTOR
        # (a fresh view per call, cheap against the call itself: it follows the model's
        # modules and flags as they are now)
        rest = [fold_batch_norms(m) for m in self.rest]
        outs = [self._rows(chunk, rest) for chunk in a.split(rows)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _rows(self, a: torch.Tensor, rest: list[nn.Module]) -> torch.Tensor:
        """The rows ``a`` through the block (if any) and ``rest`` (``self.rest``, folded)."""
        h, w = self.map_size
        dtype = self._dtype(a.dtype)
        # contiguous: in-place ops (ReLU(inplace=True)) cannot write into an expanded view
        x = a[:, :, None, None].expand(-1, -1, h, w).to(dtype).contiguous()
        if self.block is not None:
            x = self._through_block(x)
        for module in rest:
            x = module(x)
        return x

    def _through_block(self, x: torch.Tensor) -> torch.Tensor:
        assert self.block_input is not None  # set with block
        if self._broadcast:
            try:
                out = self._run_block(x, self.block_input.clone())
                if isinstance(out, torch.Tensor) and out.shape[:1] == x.shape[:1]:
                    return out
            except RuntimeError:
                pass
            self._broadcast = False  # e.g. torch.cat of a batch-1 skip with the rows
        n = x.shape[0]
        inp = self.block_input.expand(n, *self.block_input.shape[1:]).contiguous()
        return self._run_block(x, inp)

    def _run_block(self, x: torch.Tensor, inp: torch.Tensor) -> Any:
        state = {"done": False}

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor | None:
            if state["done"]:
                return None
            state["done"] = True
            return x

        assert self.block is not None and self.inner is not None  # _through_block's caller checks
        handle = self.block.get_submodule(self.inner).register_forward_hook(hook)
        try:
            out = self.block(inp)
        finally:
            handle.remove()
        if not state["done"]:
            raise RuntimeError(f"layer {self.inner!r} was not called by the forward pass")
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, map_size={self.map_size}, chunk_rows={self.chunk_rows}"
