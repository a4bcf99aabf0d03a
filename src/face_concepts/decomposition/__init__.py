"""The maths of face-concepts: FACE (KL-regularised NMF), NMF, and the single encoder.

Notation (used everywhere in the project, following the paper):

- ``A ∈ R^{n×p}_{≥0}`` — activations, one row per sample (image patch), ``(n_samples, n_features)``.
- ``U ∈ R^{n×r}_{≥0}`` — codes (concept coefficients), ``(n_samples, n_concepts)``.
- ``W ∈ R^{r×p}_{≥0}`` — the concept bank, one concept per row, ``(n_concepts, n_features)``.
- ``h`` — the classifier head mapping ``(n, p)`` features to ``(n, C)`` logits.
- ``P = softmax(h(A))``, ``Q = softmax(h(U W))`` row-wise.

Objective (docs/method.md §2.1, the authors' code scaling so that their λ values transfer)::

    L(U, W) = mean_ij (A − U W)²_ij + λ · (1/n) Σ_i KL(P_i ‖ Q_i)

``FACE(..., batch_size=B)`` fits the same objective by mini-batches streamed from a tensor or a
re-iterable source (``CachedActivations(cache, key)``) in memory independent of n; the method is
described in :mod:`face_concepts.decomposition.minibatch`.
"""

from __future__ import annotations

from face_concepts.activations.cache import CachedActivations
from face_concepts.decomposition.encoder import encode
from face_concepts.decomposition.estimators import FACE
from face_concepts.decomposition.init import initialize, nndsvd
from face_concepts.decomposition.losses import face_objective, objective_and_grads
from face_concepts.decomposition.nmf import NMF
from face_concepts.decomposition.registry import SOLVERS

__all__ = [
    "FACE",
    "NMF",
    "SOLVERS",
    "CachedActivations",
    "encode",
    "face_objective",
    "initialize",
    "nndsvd",
    "objective_and_grads",
]
