"""Test helpers shared across files: the tiny seeded classifier and the real cat photo.

Conv (3 → 6) + ReLU features, global mean pool, one linear head; 16-px inputs. Files import it
as ``from _tiny import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import face_concepts
import face_concepts.models
from face_concepts.data.preprocess import Preprocess
from face_concepts.models import ModelSplit

CATEGORIES = ["ant", "bee", "cat", "dog"]


def tiny_split(
    name: str,
    *,
    seed: int = 0,
    n_classes: int = 3,
    scale: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> ModelSplit:
    """A seeded tiny model registered under ``name`` (a model spec such as ``"test:tiny"``)."""
    g = torch.Generator().manual_seed(seed)
    conv, head = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, n_classes)
    with torch.no_grad():
        for p in (*conv.parameters(), *head.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    features = nn.Sequential(conv, nn.ReLU()).to(dtype)
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return ModelSplit(
        features, head, preprocess=Preprocess(resize_size=16, crop_size=16), name=name,
        categories=CATEGORIES[:n_classes], model=model,
    )  # fmt: skip


def patch_load_model(monkeypatch: Any, split: ModelSplit) -> ModelSplit:
    """Make ``load_model(split.name)`` return ``split`` wherever the CLI looks it up."""
    real = face_concepts.models.load_model

    def fake(spec, weights=None, **kwargs):
        return split if spec == split.name else real(spec, weights, **kwargs)

    monkeypatch.setattr(face_concepts.models, "load_model", fake)
    monkeypatch.setattr(face_concepts, "load_model", fake)
    return split


def chelsea() -> Path:
    """scikit-image's real cat photo (ImageNet class 285 for MobileNetV2), or skip the test."""
    from face_concepts.data import bundled_photos

    for p in bundled_photos(["skimage"]):
        if p.path.endswith("chelsea.png"):
            return Path(p.path)
    pytest.skip("scikit-image's chelsea.png is not installed")


def write_png_folder(folder, n: int = 6, side: int = 20, seed: int = 0):
    """Create ``folder`` with ``n`` random RGB PNGs (``img{i}.png``); returns it."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


def affine_problem(seed: int, n=30, p=9, r=3, C=6, lam=2.0, scale=1.0):
    """``(A, U, W, head, Problem)``: seeded float64 data, codes, bank and a linear head of
    ``C`` classes (weights times ``scale``), for the solvers' tests."""
    from face_concepts.decomposition._head import Head
    from face_concepts.decomposition.problem import make_problem

    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, p, generator=g, dtype=torch.float64)
    U = torch.rand(n, r, generator=g, dtype=torch.float64)
    W = torch.rand(r, p, generator=g, dtype=torch.float64)
    lin = torch.nn.Linear(p, C).double()
    with torch.no_grad():
        lin.weight.copy_(scale * torch.randn(C, p, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
    return A, U, W, lin, make_problem(A, Head(lin, dtype=A.dtype, device=A.device), lam)
