"""The one model fingerprint (models/fingerprint.py), against a hand-built byte stream."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from face_concepts.models.base import ModelSplit
from face_concepts.models.fingerprint import model_fingerprint
from face_concepts.pipeline.bank import model_fingerprint as bank_fingerprint


def test_fingerprint_is_the_sha256_of_the_sorted_state_dict():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6.0).reshape(3, 2))
        lin.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    h = hashlib.sha256()
    # "bias" sorts before "weight"; each entry: "name|dtype|shape|" then the raw float32 bytes.
    h.update(b"bias|torch.float32|(3,)|")
    h.update(lin.bias.detach().numpy().tobytes())
    h.update(b"weight|torch.float32|(6,)|")
    h.update(lin.weight.detach().numpy().tobytes())
    assert model_fingerprint(lin) == h.hexdigest()[:16]


def test_one_fingerprint_for_banks_and_splits():
    torch.manual_seed(0)
    features, head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)
    assert bank_fingerprint is model_fingerprint
    # Without the full model, a split is fingerprinted by its own weights (features + head).
    split = ModelSplit(features, head, input_size=8)
    assert split.fingerprint == model_fingerprint(split)
    assert split.fingerprint != model_fingerprint(nn.Sequential(features, head))  # other names
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        model_fingerprint("resnet18")
