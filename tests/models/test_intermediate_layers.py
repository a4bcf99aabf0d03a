"""Heads of intermediate layers (issue 18, item 1): only the rest of the network runs, batched,
with the same numbers as the former head (the whole model on zero images with a hook), and the
approximation is stated (warning, ``ModelSplit.approximation``, saved runs).

Memory and time are measured by ``benchmarks/intermediate_layer.py``, not here.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from face_concepts.models import split_model
from face_concepts.models._modules import PosNegHead, RestOfNetwork
from face_concepts.models.split import ApproximateSplitWarning

INPUT = 64


class HookHead(nn.Module):
    """The former head of an intermediate layer, kept as the oracle: the whole model runs on
    zero images while a hook replaces the layer's output (first call) by the constant map."""

    def __init__(self, model: nn.Module, layer: str, input_shape: tuple, map_size: tuple) -> None:
        super().__init__()
        self.model, self.layer = model, layer
        self.input_shape, self.map_size = tuple(input_shape), tuple(map_size)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        state = {"done": False}
        h, w = self.map_size

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if state["done"]:
                return None
            state["done"] = True
            return a[:, :, None, None].expand(-1, -1, h, w).to(output.dtype).contiguous()

        dummy = torch.zeros((a.shape[0], *self.input_shape), dtype=a.dtype)
        handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            return self.model(dummy)
        finally:
            handle.remove()


def _split(model: nn.Module, layer: str, **kwargs: Any):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximateSplitWarning)
        return split_model(model, layer, input_size=kwargs.pop("input_size", INPUT), **kwargs)


def _inner(split) -> RestOfNetwork:
    return split.head.head if isinstance(split.head, PosNegHead) else split.head


def _oracle(split) -> nn.Module:
    head = HookHead(split.model, split.layer, (3, split.probe_size, split.probe_size),
                    _inner(split).map_size)  # fmt: skip
    return PosNegHead(head) if isinstance(split.head, PosNegHead) else head


def _rows(n: int, p: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, p), generator=torch.Generator().manual_seed(seed)) * 2


def _resnet18() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None).eval()


class Branchy(nn.Module):
    """A model whose forward is not a chain (a skip concatenated before the head)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.ReLU())
            self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = self.b(y)
        return self.fc(torch.cat([z.mean((2, 3)), y.amax((2, 3))], 1))


def _chain() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        ).eval()  # fmt: skip


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    ("build", "layer", "signed", "mode"),
    [
        (_chain, "1", None, "tail"),  # a tiny chain: conv, relu after the layer
        (Branchy, "b.1", None, "hooked block"),  # unknown structure: the whole model, hooked
        (_resnet18, "layer3", None, "tail"),  # layer4, avgpool, flatten, fc
        (_resnet18, "layer2.1", None, "tail"),  # layer3, layer4, ... after a block in a chain
        (_resnet18, "layer3.0.relu", None, "hooked block"),  # inside a residual block
        (_resnet18, "layer3.1.conv2", "posneg", "hooked block"),
    ],
)
def test_head_equals_the_former_whole_model_hook_head(build, layer, signed, mode):
    split = _split(build().eval(), layer, signed=signed)
    assert not split.exact and _inner(split).mode == mode
    a = _rows(23, split.n_features)
    with torch.no_grad():
        got, expected = split.head(a), _oracle(split)(a)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


CROP = 32  # a native-size crop of the INPUT-px probe images


@pytest.mark.parametrize(
    ("build", "layer", "signed"),
    [
        (_chain, "1", None),
        (Branchy, "b.1", None),
        (_resnet18, "layer3", None),
        (_resnet18, "layer3.0.relu", None),
        (_resnet18, "layer3.1.conv2", "posneg"),
    ],
)
def test_head_for_a_crop_runs_the_rest_on_a_constant_map_of_the_crops_size(build, layer, signed):
    """The model itself on a zero crop whose layer output is replaced by the constant map."""
    split = _split(build().eval(), layer, signed=signed)
    head = split.head_for_input(CROP)
    with torch.no_grad():
        crop_map = tuple(split.features(torch.zeros(1, 3, CROP, CROP)).shape[-2:])
    inner = head.head if isinstance(head, PosNegHead) else head
    assert inner.map_size == crop_map != _inner(split).map_size
    assert inner.mode == _inner(split).mode
    oracle = HookHead(split.model, split.layer, (3, CROP, CROP), crop_map)
    oracle = PosNegHead(oracle) if signed else oracle
    a = _rows(11, split.n_features)
    with torch.no_grad():
        torch.testing.assert_close(head(a), oracle(a), rtol=1e-5, atol=1e-5)
    assert split.head_for_input(CROP) is head  # built once per size
    assert split.head_for_input(INPUT) is split.head  # the probe's own size: the split's head


def test_head_for_input_of_an_exact_split_is_its_head():
    split = _split(_resnet18(), "layer4.1")
    assert split.head_for_input(CROP) is split.head


def test_rows_are_processed_in_chunks_with_the_same_result():
    split = _split(_resnet18(), "layer3")
    a = _rows(11, split.n_features, seed=3)
    with torch.no_grad():
        whole = split.head(a)
        split.head.chunk_rows = 4
        chunked = split.head(a)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    # gradients flow through the chunks (the solver differentiates non-affine heads)
    x = a.clone().requires_grad_(True)
    split.head(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.shape == a.shape and bool(x.grad.abs().sum() > 0)


def _tail(depthwise: bool) -> RestOfNetwork:
    """A 4-channel constant map through a depthwise (memory-bound) or a dense 3×3 tail."""
    torch.manual_seed(0)
    width = 8 if depthwise else 128
    mid = nn.Conv2d(width, width, 3, padding=1, groups=width if depthwise else 1)
    rest = [nn.Conv2d(4, width, 1), mid, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3)]
    return RestOfNetwork([m.eval() for m in rest], (6, 6))


@pytest.mark.parametrize("depthwise", [True, False])
def test_chunks_are_sized_from_the_largest_activation(depthwise):
    import face_concepts.models._modules as mods

    head = _tail(depthwise)
    largest = (8 if depthwise else 128) * 6 * 6  # the convolutions' outputs, one row
    budget = 50 * largest
    head.size_chunks(budget, 4)
    # a depthwise tail does few multiply-adds per element (memory-bound): cache-sized chunks;
    # the dense one (4 and 1,152 multiply-adds per element of its convolutions' outputs) more
    assert (head.macs_per_element < mods.DENSE_MACS) == depthwise
    assert head.chunk_rows == 50 * (1 if depthwise else mods.DENSE_CHUNK_FACTOR)
    a = _rows(2 * head.chunk_rows + 3, 4, seed=5)
    with torch.no_grad():
        chunked = head(a)
        head.chunk_rows = a.shape[0]
        whole = head(a)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    # a resized head (a crop's map) is sized by the same rule for its own map
    small = head.resized((2, 2))
    assert small.chunk_rows == max(1, budget * (1 if depthwise else 8) // (largest // 9))


def test_an_intermediate_split_sizes_its_chunks():
    split = _split(_resnet18(), "layer3")
    assert _inner(split).macs_per_element is not None  # measured when the head was built


def _mobilenet_tail() -> nn.Sequential:
    """Two torchvision inverted-residual blocks (Conv2dNormActivation inside) and a classifier,
    random weights and random batch-norm statistics, in eval mode."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    torch.manual_seed(0)
    tail = nn.Sequential(
        InvertedResidual(8, 8, 1, 4), InvertedResidual(8, 12, 2, 3), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(12, 5),
    )  # fmt: skip
    for m in tail.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return tail.eval()


def test_batch_norms_fold_into_the_convolutions_before_them_as_a_view():
    from face_concepts.models._modules import FoldedConvBN, fold_batch_norms

    tail = _mobilenet_tail()
    view = fold_batch_norms(tail)
    folded = [m for m in view.modules() if isinstance(m, FoldedConvBN)]
    assert len(folded) == 6  # every conv → bn pair of the two blocks (3 each)
    assert not any(isinstance(m, FoldedConvBN) for m in tail.modules())  # the model unchanged
    assert {id(p) for p in view.parameters()} == {id(p) for p in tail.parameters()}  # shared
    x = torch.rand(3, 8, 6, 6, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    ref = tail(x)
    got = view(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # (float rounding only)
    (g_ref,) = torch.autograd.grad(ref.logsumexp(1).sum(), x)
    (g_got,) = torch.autograd.grad(got.logsumexp(1).sum(), x)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-6)
    # the folded weights come from the live modules: a changed statistic is seen at once
    bn = folded[0].bn
    bn.running_mean.add_(0.3)
    torch.testing.assert_close(view(x), tail(x), rtol=1e-5, atol=1e-5)
    # a batch norm in training mode is not folded: the same computation as the model's
    tail.train()
    assert torch.equal(view(x.detach()), tail(x.detach()))


def test_the_head_of_a_depthwise_tail_runs_its_batch_norms_folded(monkeypatch):
    from face_concepts.models._modules import FoldedConvBN

    tail = _mobilenet_tail()
    head = RestOfNetwork(list(tail), (6, 6)).size_chunks(2**20, 8)
    calls = []
    forward = FoldedConvBN.forward

    def counted(self, x):
        calls.append(self.bn)
        return forward(self, x)

    monkeypatch.setattr(FoldedConvBN, "forward", counted)
    a = _rows(4, 8, seed=2)
    with torch.no_grad():
        ref = tail(a[:, :, None, None].expand(-1, -1, 6, 6).contiguous())
        got = head(a)
    assert len(calls) == 6 and all(isinstance(bn, nn.BatchNorm2d) for bn in calls)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the head follows the model as it is now: a batch norm put in training mode runs unfolded
    calls.clear()
    calls_bn = []
    for m in tail.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.register_forward_hook(lambda *_: calls_bn.append(1))
    with torch.no_grad():
        head(a)
    assert len(calls) == 6 and len(calls_bn) == 6  # folded pairs fall back to bn(conv(x))


def test_head_runs_only_the_rest_of_the_network():
    model = _resnet18()
    split = _split(model, "layer3")
    called: list[str] = []
    handles = [
        m.register_forward_hook(lambda *_, name=name: called.append(name))
        for name, m in model.named_children()
    ]
    try:
        with torch.no_grad():
            split.head(_rows(3, 256))
    finally:
        for h in handles:
            h.remove()
    # before: conv1, bn1, relu, maxpool, layer1..3 ran on zero images for every call
    assert called == ["layer4", "avgpool", "fc"]


def test_layer_followed_by_the_global_pool_is_an_exact_affine_split(tol):
    model = _resnet18()
    split = _split(model, "layer4.1")
    assert split.exact and split.is_affine and split.approximation is None
    x = torch.randn((2, 3, INPUT, INPUT), generator=torch.Generator().manual_seed(1))
    assert split.verify(x) <= tol["split_logits"]


def test_approximation_is_warned_recorded_and_described():
    with pytest.warns(ApproximateSplitWarning, match=r"layer 'layer3'.*constant 4×4 map") as rec:
        split = split_model(_resnet18(), "layer3", input_size=INPUT)
    assert len(rec) == 1 and "max |model(x) - head(pool(features(x)))|" in str(rec[0].message)
    assert split.approximation == str(rec[0].message)
    d = split.description()
    assert d["exact"] is False and d["approximation"] == split.approximation
    exact = split_model(_resnet18(), input_size=INPUT)  # the default split warns nothing
    assert exact.approximation is None and exact.description()["approximation"] is None
