"""Activations: a layer's outputs for a set of images, extracted in batches and cached on disk."""

from face_concepts.activations.cache import ActivationCache, CachedActivations
from face_concepts.activations.extract import extract_activations
from face_concepts.activations.inputs import content_hash

__all__ = ["ActivationCache", "CachedActivations", "content_hash", "extract_activations"]
