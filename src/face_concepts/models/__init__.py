"""Model splitting ``f = h ∘ pool ∘ g`` and loading of real (bundled or downloaded) weights."""

from __future__ import annotations

from face_concepts.models.base import ModelSplit
from face_concepts.models.split import split_model
from face_concepts.models.weights import load_state_dict_file
from face_concepts.models.zoo import (
    WeightsUnavailableError,
    bundled_efficientnet_lite0,
    bundled_mobilenet_v2,
    list_bundled,
    load_model,
)

__all__ = [
    "ModelSplit",
    "WeightsUnavailableError",
    "bundled_efficientnet_lite0",
    "bundled_mobilenet_v2",
    "list_bundled",
    "load_model",
    "load_state_dict_file",
    "split_model",
]
