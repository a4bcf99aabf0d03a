"""Patches (docs/method.md §7.3): grid vs naive loops and CRAFT's own code, random crops, resizing."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from face_concepts.data import (
    Patches,
    default_stride,
    extract_patches,
    grid_patches,
    random_patches,
    resize_patches,
)

# float32 bilinear weights vs a float64 loop.
BILINEAR_F32 = 1e-5


def _batch(n=2, h=224, w=224, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


def _naive_grid(x, ps, stride):
    """Obvious double loop: boxes and crops in image, row, column order."""
    crops, index, boxes = [], [], []
    n, _, h, w = x.shape
    for i in range(n):
        top = 0
        while top + ps <= h:
            left = 0
            while left + ps <= w:
                crops.append(x[i, :, top : top + ps, left : left + ps])
                index.append(i)
                boxes.append([top, left, top + ps, left + ps])
                left += stride
            top += stride
    return torch.stack(crops), torch.tensor(index), torch.tensor(boxes)


def test_default_grid_is_16_per_224_image():
    x = _batch(3)
    patches, index, boxes = grid_patches(x)
    assert default_stride(64) == 51
    assert patches.shape == (48, 3, 64, 64)
    assert torch.equal(torch.bincount(index), torch.tensor([16, 16, 16]))
    p0, i0, b0 = _naive_grid(x, 64, 51)
    assert torch.equal(patches, p0) and torch.equal(index, i0) and torch.equal(boxes, b0)


@pytest.mark.parametrize(
    ("h", "w", "ps", "stride"), [(100, 160, 32, 25), (64, 97, 64, None), (50, 30, 7, 3)]
)
def test_grid_non_square_matches_naive(h, w, ps, stride):
    x = _batch(2, h, w, seed=1)
    patches, index, boxes = grid_patches(x, ps, stride)
    p0, i0, b0 = _naive_grid(x, ps, stride or default_stride(ps))
    assert torch.equal(patches, p0) and torch.equal(index, i0) and torch.equal(boxes, b0)
    rows = (h - ps) // (stride or default_stride(ps)) + 1
    cols = (w - ps) // (stride or default_stride(ps)) + 1
    assert len(patches) == 2 * rows * cols


def test_grid_order_matches_craft_unfold():
    # The lines of Craft-xai 0.0.3 (craft_torch.Craft.fit) that cut the crops.
    x = _batch(2, 224, 224, seed=2)
    ref = F.unfold(x, kernel_size=64, stride=int(64 * 0.80))
    ref = ref.transpose(1, 2).contiguous().view(-1, 3, 64, 64)
    assert torch.equal(grid_patches(x)[0], ref)


@pytest.fixture
def craft_torch(monkeypatch):
    """Craft-xai's torch module. Its Sobol sampler imports TensorFlow at module level but only
    calls it when sampling, so a stub is enough for the crop code. The modules imported here
    are dropped afterwards so that no other test sees the stub."""
    pytest.importorskip("craft")
    before = set(sys.modules)
    if importlib.util.find_spec("tensorflow") is None:
        monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    try:
        yield importlib.import_module("craft.craft_torch")
    finally:
        for name in set(sys.modules) - before:
            if name.startswith("craft"):
                del sys.modules[name]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::sklearn.exceptions.ConvergenceWarning")
def test_grid_and_resize_match_craft_package(craft_torch):
    craft = craft_torch
    x = _batch(1, 96, 96, seed=3).abs()
    seen = []

    def g(batch):
        seen.append(batch.clone())
        return batch.mean(dim=(2, 3), keepdim=True)  # (n, 3, 1, 1), non-negative

    model = craft.Craft(g, number_of_concepts=2, batch_size=64, patch_size=32, device="cpu")
    crops, _, _ = model.fit(x)
    ours = extract_patches(x, patch_size=32, resize_to="image")
    assert torch.equal(grid_patches(x, 32)[0], torch.as_tensor(crops))
    assert torch.equal(ours.patches, torch.cat(seen))
    assert ours.settings["resize_to"] == [96, 96]


def _naive_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel bilinear (align_corners=False), edges clamped, float64 loops."""
    c, h, w = img.shape
    out = np.zeros((c, out_h, out_w))
    for i in range(out_h):
        sy = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(math.floor(sy), h - 1)
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(math.floor(sx), w - 1)
            x1, lx = min(x0 + 1, w - 1), sx - x0
            top = (1 - lx) * img[:, y0, x0] + lx * img[:, y0, x1]
            bot = (1 - lx) * img[:, y1, x0] + lx * img[:, y1, x1]
            out[:, i, j] = (1 - ly) * top + ly * bot
    return out


@pytest.mark.parametrize("size", [13, (11, 17), 4])
def test_resize_matches_bilinear_oracles(size):
    p = _batch(2, 7, 9, seed=4)
    out = resize_patches(p, size)
    hw = (size, size) if isinstance(size, int) else size
    assert out.shape == (2, 3, *hw)
    ref = F.interpolate(p, size=hw, mode="bilinear", align_corners=False)  # CRAFT's call
    assert torch.equal(out, ref)
    for k in range(2):
        naive = _naive_bilinear(p[k].double().numpy(), *hw)
        np.testing.assert_allclose(out[k].numpy(), naive, atol=BILINEAR_F32)
    assert resize_patches(p, (7, 9)) is p
    with pytest.raises(TypeError, match="float"):
        resize_patches(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 8)


def test_random_patches_seeded_and_within_bounds():
    x = _batch(3, 80, 120, seed=5)
    a = random_patches(x, 6, 24, random_state=0)
    b = random_patches(x, 6, 24, random_state=0)
    c = random_patches(x, 6, 24, random_state=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])
    patches, index, boxes = a
    assert patches.shape == (18, 3, 24, 24)
    assert torch.equal(index, torch.arange(3).repeat_interleave(6))
    for p, i, (t, l, bt, r) in zip(patches, index, boxes.tolist()):
        assert 0 <= t and bt <= 80 and 0 <= l and r <= 120 and bt - t == 24 and r - l == 24
        assert torch.equal(p, x[i, :, t:bt, l:r])


def test_random_patches_uniform_positions():
    # Positions should cover the whole admissible range, not cluster (coarse check, seeded).
    x = torch.zeros(1, 3, 40, 40)
    _, _, boxes = random_patches(x, 2000, 10, random_state=7)
    tops = boxes[:, 0]
    assert int(tops.min()) == 0 and int(tops.max()) == 30
    counts = torch.bincount(tops, minlength=31).double()
    assert counts.std() / counts.mean() < 0.3  # expected ≈ 0.12 for a uniform draw


def test_random_patches_with_scale_range():
    x = _batch(2, 60, 90, seed=6)
    patches, index, boxes = random_patches(x, 5, 16, min_scale=0.2, max_scale=0.9, random_state=3)
    assert patches.shape == (10, 3, 16, 16)
    sides = (boxes[:, 2] - boxes[:, 0]).tolist()
    assert sides == (boxes[:, 3] - boxes[:, 1]).tolist()
    assert all(round(0.2 * 60) <= s <= round(0.9 * 60) for s in sides)
    assert len(set(sides)) > 1
    for p, i, (t, l, bt, r) in zip(patches, index, boxes.tolist()):
        ref = (
            resize_patches(x[i : i + 1, :, t:bt, l:r], 16)[0]
            if bt - t != 16
            else x[i, :, t:bt, l:r]
        )
        assert torch.equal(p, ref)
    with pytest.raises(ValueError, match="together"):
        random_patches(x, 2, 16, min_scale=0.5)
    with pytest.raises(ValueError, match="min_scale"):
        random_patches(x, 2, 16, min_scale=0.9, max_scale=0.5)


def test_patch_larger_than_image_errors():
    x = _batch(1, 224, 100)
    with pytest.raises(ValueError, match=r"patch_size=128.*224x100"):
        grid_patches(x, 128)
    with pytest.raises(ValueError, match=r"patch_size=128.*224x100"):
        random_patches(x, 2, 128, random_state=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        grid_patches(torch.zeros(3, 8, 8), 4)
    with pytest.raises(ValueError, match="stride"):
        grid_patches(x, 8, 0)


def test_extract_patches_records_settings():
    x = _batch(2, 64, 64, seed=8)
    grid = extract_patches(x, 32)
    assert isinstance(grid, Patches) and len(grid) == 2 * 2 * 2
    assert grid.settings["mode"] == "grid" and grid.settings["stride"] == 25
    assert grid.settings["resize_to"] is None and grid.settings["n_per_image"] is None
    rnd = extract_patches(
        x, 16, mode="random", n_per_image=4, random_state=np.int64(5), resize_to=48
    )
    assert rnd.patches.shape == (8, 3, 48, 48)
    assert rnd.settings["random_state"] == 5 and rnd.settings["stride"] is None
    assert rnd.settings["resize_to"] == [48, 48] and rnd.settings["n_per_image"] == 4
    again = random_patches(x, 4, 16, random_state=5)
    assert torch.equal(rnd.boxes, again[2])
    with pytest.raises(ValueError, match="mode"):
        extract_patches(x, mode="sliding")
    with pytest.raises(ValueError, match="stride"):
        extract_patches(x, 16, 8, mode="random")
    with pytest.raises(ValueError, match="resize_to"):
        extract_patches(x, resize_to="model")
