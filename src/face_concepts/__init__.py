"""face-concepts: faithful concept extraction (FACE) for image classifiers.

>>> from face_concepts import FACE, NMF, ConceptExplainer, split_model, ConceptBank
"""

from __future__ import annotations

__version__ = "0.1.0"

from .bank import ConceptBank
from .decomposition import FACE, NMF, encode, face_objective
from .models import ModelSplit, load_model, split_model
from .pipeline import ConceptExplainer

__all__ = [
    "FACE",
    "NMF",
    "ConceptBank",
    "ConceptExplainer",
    "ModelSplit",
    "__version__",
    "encode",
    "face_objective",
    "load_model",
    "split_model",
]
