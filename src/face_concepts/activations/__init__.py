"""Activations: a layer's outputs for a set of images, extracted in batches and cached on disk."""

from face_concepts.activations.extract import (
    ActivationCache,
    CachedActivations,
    content_hash,
    extract_activations,
)

__all__ = ["ActivationCache", "CachedActivations", "content_hash", "extract_activations"]
