"""Vision transformers as ``head ∘ mean-pool ∘ features``: patch tokens are the spatial positions.

Supported (the default split of :func:`~face_concepts.models.split_model`, verified exact):

=========================================  ===============================  ======================
model                                      features (after the final norm)  head
=========================================  ===============================  ======================
torchvision ``VisionTransformer`` (vit_*)  ``encoder.ln``: class-token map  ``heads`` (affine)
timm ViT / DeiT, ``global_pool="token"``   ``norm``: class-token map        ``fc_norm`` → ``head``
timm ViT, ``global_pool="avg"``            ``norm``: the patch tokens       ``fc_norm`` → ``head``
timm DeiT distilled                        class + distillation token maps  mean of both heads
torchvision / timm Swin (NHWC map)         last stage after ``norm``        ``head`` (affine)
=========================================  ===============================  ======================

The token sequence after the final norm is ``(N, T, D)``: ``k`` prefix tokens (class token,
distillation token, register tokens) and ``h·w`` patch tokens, the grid being the input side over
the patch size. The patch tokens, reshaped to ``(N, D, h, w)``, are the feature map: each patch is
a spatial position, so spatial concept maps, input-faithful maps, top crops and ICE work as on a
CNN.

**Other input sizes.** Position embeddings fix a ViT's grid (torchvision always; timm unless built
with ``dynamic_img_size=True``), so an input of another size — a crop of an image, for FACE's
rows — is resized to the model's input size first (bilinear, exactly as CRAFT resizes crops:
:func:`~face_concepts.data.patches.resize_patches`). At the model's own size nothing changes.

**How the head reads the map.** FACE needs ``head(mean over positions) == model(x)``.

* *Mean-pool models* (timm ``global_pool="avg"``; Swin): the model itself averages the patch
  tokens, so the map is the patch tokens, unchanged, and the head is what follows the pool
  (``fc_norm`` where present, then the classifier: affine without ``fc_norm``).
* *Class-token models* (torchvision ViT, timm ``global_pool="token"``, DeiT): the classifier reads
  the class token ``c``, which attention computes from all tokens; no mean of the patch tokens
  equals it. Position ``j`` of the map is ``c + (t_j − t̄)``: the class token plus patch ``j``'s
  deviation from the mean patch token. Its spatial mean is ``c`` exactly, so the head is the
  model's own (``heads`` / ``fc_norm`` → ``head``), affine where the classifier is, and the split
  reproduces ``model(x)`` to float rounding. The pooled activations ``A`` — what FACE factorises and
  what the KL term keeps faithful — are therefore the class token itself; the map spreads it over
  the patches by where the patch tokens differ. Codes at a position say which concepts the class
  token plus that patch's deviation holds; they are a spatial *reading* of the class token, not a
  causal attribution of it to patches (attention, not a mean, made the class token).
* *Mean over all tokens* (timm ``pool_include_prefix=True``): position ``j`` is the mean of all
  tokens plus patch ``j``'s deviation, so the spatial mean is what the model pools.
* *DeiT distilled*: the logits are the mean of two linear heads on the class and distillation
  tokens; the map holds both re-centred tokens on ``2·D`` channels and the head is the averaged
  affine map ``[V_cls / 2, V_dist / 2]``.

Other token pools (timm ``"map"`` attention pool, ``"max"``, ``"avgmax"``) and heads that are
not found are refused with a message saying how to build the split by hand.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from face_concepts.data.patches import resize_patches
from face_concepts.models.head import affine_parameters

__all__ = ["TokenMap", "TransformerParts", "transformer_parts"]

_READS = ("patches", "token", "distilled", "all")


class TransformerParts(NamedTuple):
    """``features``, ``head``, the layer name and the model's native input side (or ``None``)."""

    features: nn.Module
    head: nn.Module
    layer: str
    input_size: int | None


class TorchvisionViTTokens(nn.Module):
    """torchvision ``VisionTransformer.forward`` up to ``encoder`` (incl. ``encoder.ln``): (N, T, D)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a torchvision VisionTransformer: its own methods

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        tokens = m._process_input(x)
        cls = m.class_token.expand(tokens.shape[0], -1, -1)
        return m.encoder(torch.cat([cls, tokens], dim=1))


class TimmTokens(nn.Module):
    """timm's ``forward_features`` (blocks, then the final ``norm``): (N, T, D)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a timm model (forward_features): its own methods

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class TokenMap(nn.Module):
    """Token sequence (N, T, D) → map (N, D', h, w) whose spatial mean is what the head reads.

    Parameters
    ----------
    tokens : nn.Module
        Maps images (N, 3, H, W) to tokens (N, T, D) after the final norm.
    patch_size : (int, int)
        The grid is ``(H // ph, W // pw)``; ``T`` must be ``n_prefix + h·w``.
    n_prefix : int
        Leading non-patch tokens (class, distillation, register tokens).
    read : "patches", "token" or "distilled"
        ``"patches"``: the patch tokens as they are (mean-pool models). ``"token"``: position
        ``j`` is ``t_0 + (t_j − t̄)`` (mean ``t_0``, the class token). ``"distilled"``: the same
        for ``t_0`` and ``t_1`` stacked on 2·D channels. ``"all"``: the mean of all tokens
        (prefix ones included) plus patch ``j``'s deviation (timm ``pool_include_prefix``).
        See the module docstring.
    input_size : (int, int) or None
        The only input size the model accepts; other inputs are resized to it first.
    """

    def __init__(
        self,
        tokens: nn.Module,
        patch_size: tuple[int, int],
        n_prefix: int,
        read: str,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if read not in _READS:
            raise ValueError(f"read must be one of {_READS}, got {read!r}")
        self.tokens = tokens
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.n_prefix = int(n_prefix)
        self.read = read
        self.input_size = None if input_size is None else _pair(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None:
            x = resize_patches(x, self.input_size)
        t = self.tokens(x)
        n, total = t.shape[:2]
        h, w = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
        patches = t[:, self.n_prefix :]
        if patches.shape[1] != h * w:
            raise ValueError(
                f"{total} tokens with {self.n_prefix} prefix tokens do not form the {h}×{w} patch "
                f"grid of a {x.shape[-2]}×{x.shape[-1]} input (patch size {self.patch_size})"
            )
        if self.read != "patches":
            deviation = patches - patches.mean(dim=1, keepdim=True)
            readers = {
                "token": [t[:, :1]],
                "distilled": [t[:, :1], t[:, 1:2]],
                "all": [t.mean(dim=1, keepdim=True)],
            }[self.read]
            patches = torch.cat([r + deviation for r in readers], dim=2)
        return patches.transpose(1, 2).reshape(n, patches.shape[2], h, w)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, n_prefix={self.n_prefix}, read={self.read!r}"


class NHWCMap(nn.Module):
    """``body(x)`` of shape (N, H, W, C) (Swin's last stage after its norm) as (N, C, H, W).

    ``input_size``: the only input size the model accepts (timm Swin); others are resized to it.
    """

    def __init__(self, body: nn.Module, input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.body = body
        self.input_size = None if input_size is None else _pair(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None:
            x = resize_patches(x, self.input_size)
        return self.body(x).permute(0, 3, 1, 2)


class TorchvisionSwinBody(nn.Module):
    """torchvision ``SwinTransformer``: ``norm(features(x))``, (N, H, W, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a torchvision SwinTransformer: its own methods

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(self.model.features(x))


class DistilledHead(nn.Module):
    """DeiT distilled in eval mode: ``(head(a[:, :D]) + head_dist(a[:, D:])) / 2``."""

    def __init__(self, head: nn.Module, head_dist: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.head_dist = head_dist

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        d = a.shape[1] // 2
        return (self.head(a[:, :d]) + self.head_dist(a[:, d:])) / 2

    def affine_parameters(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        one, two = affine_parameters(self.head), affine_parameters(self.head_dist)
        if one is None or two is None:
            return None
        return torch.cat([one[0], two[0]], dim=1) / 2, (one[1] + two[1]) / 2


class TimmNHWCHead(nn.Module):
    """timm's ``forward_head`` on a pooled vector given as a 1×1 NHWC map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a timm model (forward_head): its own methods

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(a[:, None, None, :])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _fixed_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size a timm model accepts (strict patch embedding), or ``None``."""
    embed = getattr(model, "patch_embed", None)
    if getattr(model, "dynamic_img_size", False) or not getattr(embed, "strict_img_size", False):
        return None
    size = getattr(embed, "img_size", None)
    return None if size is None else _pair(size)


def _refuse(model: nn.Module, what: str) -> TypeError:
    return TypeError(
        f"{type(model).__name__} {what}, so no mean of its patch tokens feeds the classifier; "
        "build the split by hand: ModelSplit(features, head, model=model) with features "
        "returning an (N, p, H, W) map whose spatial mean the head maps to the logits"
    )


def _torchvision_parts(model: nn.Module) -> TransformerParts | None:
    from torchvision import models as tvm

    if isinstance(model, tvm.VisionTransformer):
        size = int(model.image_size)
        tokens = TorchvisionViTTokens(model)
        features = TokenMap(tokens, _pair(model.patch_size), 1, "token", (size, size))
        return TransformerParts(features, model.heads, "encoder.ln", size)
    if isinstance(model, tvm.SwinTransformer):
        return TransformerParts(NHWCMap(TorchvisionSwinBody(model)), model.head, "norm", None)
    return None


def _timm_vit_parts(model: nn.Module) -> TransformerParts | None:
    try:
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    if not isinstance(model, VisionTransformer):
        return None
    if getattr(model, "attn_pool", None) is not None:
        raise _refuse(model, "pools its tokens with an attention pool (global_pool='map')")
    pool = model.global_pool
    n_prefix = int(model.num_prefix_tokens)
    size = _fixed_size(model)
    input_size = size[0] if size is not None and size[0] == size[1] else None
    patch = _pair(model.patch_embed.patch_size)
    tokens = TimmTokens(model)
    if isinstance(model, VisionTransformerDistilled):
        head: nn.Module = DistilledHead(nn.Sequential(model.head_drop, model.head), model.head_dist)
        features = TokenMap(tokens, patch, n_prefix, "distilled", size)
        return TransformerParts(features, head, "norm", input_size)
    if pool == "token":
        read = "token"
    elif pool == "avg":
        read = "all" if getattr(model, "pool_include_prefix", False) and n_prefix else "patches"
    else:
        raise _refuse(model, f"pools its tokens with global_pool={pool!r}")
    head = nn.Sequential(model.fc_norm, model.head_drop, model.head)
    return TransformerParts(TokenMap(tokens, patch, n_prefix, read, size), head, "norm", input_size)


def _timm_nhwc_parts(model: Any) -> TransformerParts | None:  # any model; timm's methods
    """timm models whose ``forward_features`` is an NHWC map (Swin, Swin V2, …)."""
    if getattr(model, "output_fmt", None) != "NHWC" or not hasattr(model, "forward_head"):
        return None
    pool = model.global_pool
    pool = getattr(pool, "pool_type", pool)
    if pool != "avg":
        raise _refuse(model, f"pools its map with global_pool={pool!r}, not the mean")
    head: nn.Module = TimmNHWCHead(model)
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    p = getattr(model, "num_features", None)
    if isinstance(clf, nn.Module) and isinstance(p, int):
        # the bare classifier when it equals forward_head on pooled vectors: (V, b) exposed
        a = torch.rand((2, p), generator=torch.Generator().manual_seed(0)).to(_device_of(model))
        with torch.inference_mode():
            if torch.equal(clf(a), head(a)):
                head = clf
    size = _fixed_size(model)
    input_size = size[0] if size is not None and size[0] == size[1] else None
    return TransformerParts(NHWCMap(TimmTokens(model), size), head, "norm", input_size)


def transformer_parts(model: nn.Module) -> TransformerParts | None:
    """The default split of a supported vision transformer, or ``None`` for other models.

    Raises ``TypeError`` (one line, saying how to split by hand) for a transformer whose pool
    is neither the mean of its patch tokens nor a prefix token.
    """
    parts = _torchvision_parts(model)
    if parts is None and type(model).__module__.startswith("timm."):
        parts = _timm_vit_parts(model) or _timm_nhwc_parts(model)
    return parts
