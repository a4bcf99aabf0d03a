"""face-concepts: faithful concept extraction (FACE) for image classifiers.

>>> from face_concepts import FACE, NMF, ConceptExplainer, split_model, ConceptBank

Public names are imported lazily (PEP 562) so that ``import face_concepts`` and
``face-concepts --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FACE": "face_concepts.decomposition",
    "NMF": "face_concepts.decomposition",
    "encode": "face_concepts.decomposition",
    "face_objective": "face_concepts.decomposition",
    "ConceptBank": "face_concepts.pipeline.bank",
    "ModelSplit": "face_concepts.models",
    "load_model": "face_concepts.models",
    "split_model": "face_concepts.models",
    "ConceptExplainer": "face_concepts.pipeline.explainer",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'face_concepts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
