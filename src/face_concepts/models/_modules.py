"""Small modules that glue a split together: heads on pooled vectors, truncated networks, and the
exact positive/negative transform for signed layers.

They are private building blocks of :func:`face_concepts.models.split_model`; each one is an
``nn.Module`` so that ``.to(device)``, ``.eval()`` and ``state_dict`` keep working.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from face_concepts._affine import affine_parameters


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
        self.model = model

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(a[:, :, None, None])


class TimmFeatures(nn.Module):
    """timm's ``forward_features`` as a module (it must return an (N, p, H, W) map)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

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
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(
                f"layer {self.layer!r} outputs {shape}, not an (N, p, H, W) feature map"
            )
        return out


class RestOfNetwork(nn.Module):
    """The network after an intermediate layer, fed a constant map equal to the pooled vector.

    The model is run on a zero image whose layer output is replaced (first call only) by the
    pooled vector broadcast to ``map_size``: an approximation of the true model, because the
    rest of the network sees a spatially constant map. It costs one full forward per call.
    """

    def __init__(
        self, model: nn.Module, layer: str, input_shape: tuple[int, ...], map_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.input_shape = tuple(input_shape)
        self.map_size = tuple(map_size)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        state = {"done": False}
        h, w = self.map_size

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if state["done"]:
                return None
            state["done"] = True
            # contiguous: later in-place ops (ReLU(inplace=True)) cannot write into an expand view
            return a[:, :, None, None].expand(-1, -1, h, w).to(output.dtype).contiguous()

        param = next(self.model.parameters(), None)
        dtype = param.dtype if param is not None else a.dtype
        dummy = torch.zeros((a.shape[0], *self.input_shape), dtype=dtype, device=a.device)
        handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            return self.model(dummy)
        finally:
            handle.remove()
