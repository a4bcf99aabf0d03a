"""Metrics of docs/method.md §9, as pure functions on tensors, plus :class:`MetricReport`.

All metrics take codes ``U_hat`` produced by the single non-negative encoder (they never
encode), pooled whole-image activations ``A_bar`` (n, p), the concept bank ``W`` (r, p), the
head ``h`` ((n, p) -> (n, C) logits), the class of interest and the global importance (r,).

- faithfulness: :func:`accuracy_on_reconstruction` (Acc, agreement), :func:`kl_divergence`,
  :func:`certified_agreement` (agreement certified by the KL, Pinsker),
  :func:`deletion_curve` / :func:`c_deletion` / :func:`c_deletion_paper`,
  :func:`insertion_curve` / :func:`c_insertion`, :func:`c_mu_fidelity`
- reconstruction: :func:`mse`, :func:`relative_l2`
- sparsity: :func:`gini` (C-Gini), :func:`density` (the authors' "sparsity"), :func:`hoyer`
- stability: :func:`stability`, :func:`stability_folds` (C-Stab), :func:`matched_cosine`
- :func:`compute_metrics` -> :class:`MetricReport`; :func:`train_test_split_indices` for a
  seeded fit / held-out split.

Examples
--------
>>> import torch
>>> from face_concepts.metrics import compute_metrics
>>> A = torch.rand(10, 6); W = torch.rand(3, 6); U = torch.rand(10, 3)
>>> report = compute_metrics(A, U, W, torch.nn.Linear(6, 4), 1, torch.tensor([0.2, 0.5, 0.3]))
>>> sorted(report.to_dict())[:3]
['acc', 'acc_original', 'agreement']
"""

from __future__ import annotations

from face_concepts.metrics.curves import (
    c_deletion,
    c_deletion_paper,
    c_insertion,
    concept_order,
    deletion_curve,
    insertion_curve,
)
from face_concepts.metrics.faithfulness import (
    DEFAULT_BATCH_SIZE,
    accuracy_on_reconstruction,
    certified_agreement,
    head_logits,
    kl_divergence,
    reconstruction_logits,
)
from face_concepts.metrics.mu_fidelity import (
    DEFAULT_N_SUBSETS,
    c_mu_fidelity,
    default_subset_size,
    mu_fidelity_subsets,
)
from face_concepts.metrics.reconstruction import mse, relative_l2
from face_concepts.metrics.report import CURVE_KEYS, METRIC_KEYS, MetricReport, compute_metrics
from face_concepts.metrics.sparsity import density, gini, hoyer
from face_concepts.metrics.split import train_test_split_indices
from face_concepts.metrics.stability import fold_indices, matched_cosine, stability, stability_folds

__all__ = [
    "CURVE_KEYS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_N_SUBSETS",
    "METRIC_KEYS",
    "MetricReport",
    "accuracy_on_reconstruction",
    "c_deletion",
    "c_deletion_paper",
    "c_insertion",
    "c_mu_fidelity",
    "certified_agreement",
    "compute_metrics",
    "concept_order",
    "default_subset_size",
    "deletion_curve",
    "density",
    "fold_indices",
    "gini",
    "head_logits",
    "hoyer",
    "insertion_curve",
    "kl_divergence",
    "matched_cosine",
    "mse",
    "mu_fidelity_subsets",
    "reconstruction_logits",
    "relative_l2",
    "stability",
    "stability_folds",
    "train_test_split_indices",
]
