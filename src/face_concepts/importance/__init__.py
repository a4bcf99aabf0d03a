"""Concept importance: QMC designs, Sobol estimators, Sobol and Gradient×Input drivers.

``sobol_indices(U, W, head, class_id)`` gives local (per-image) total indices, shape
(n_images, n_concepts); ``sobol_importance`` their mean over images (the global ranking of
docs/method.md §8.1). ``gradient_input`` is the cheap alternative, exact for affine heads.
"""

from __future__ import annotations

from face_concepts.importance.designs import DESIGNS, replicated_design, sobol_design
from face_concepts.importance.estimators import ESTIMATORS, get_estimator, jansen, saltelli
from face_concepts.importance.gradient import gradient_input
from face_concepts.importance.sobol import (
    PRECISIONS,
    importance_precision,
    sobol_importance,
    sobol_indices,
)

__all__ = [
    "DESIGNS",
    "ESTIMATORS",
    "PRECISIONS",
    "get_estimator",
    "gradient_input",
    "importance_precision",
    "jansen",
    "replicated_design",
    "saltelli",
    "sobol_design",
    "sobol_importance",
    "sobol_indices",
]
