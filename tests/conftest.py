"""Shared fixtures and the named tolerance table (design.md habit 3)."""

from __future__ import annotations

import os
import tempfile

import matplotlib
import pytest
import torch

# The skip policy (gpu-marked tests skip without CUDA; FACE_CONCEPTS_FORBID_SKIPS=1, set by
# .ci/run, makes any other skip fail the run): hooks defined in _skip_guard.py.
from _skip_guard import pytest_collection_modifyitems, pytest_configure  # noqa: F401

matplotlib.use("Agg")
# The command line caches activations by default (face_concepts._core.paths): tests, and the
# children they start, use a throw-away cache instead of the user's ~/.cache.
os.environ.setdefault("FACE_CONCEPTS_CACHE", tempfile.mkdtemp(prefix="face-concepts-test-cache-"))
# One intra-op thread: the suite's problems are tiny, where OpenMP barriers cost more than they
# save, and on a busy 2-core machine two spinning threads per process made tiny fits up to 28x
# slower (measured by the benchmark author). Bits also depend on the thread count
# (docs/reliability.md), so parent and child processes agree with one fixed count.
torch.set_num_threads(1)

# Named tolerances: every numeric comparison in the suite refers to one of these.
TOL = {
    "grad_f64": 1e-9,  # factored gradient vs autograd on the materialised objective (float64)
    "objective_f64": 1e-10,  # factored vs materialised objective value (relative, float64)
    "objective_f32": 1e-5,  # same in float32 (relative)
    "monotone": 1e-12,  # allowed objective increase per iteration (relative, float64 rounding)
    "sklearn_ratio": 1.05,  # our NMF objective / sklearn's at most this
    "adam_parity": 1e-6,  # authors' Adam loop vs our re-implementation, per step (float64)
    "transform_consistency": 1e-2,  # fit_transform vs fit().transform, relative Frobenius
    "split_logits": 1e-4,  # head(pool(features(x))) vs model(x), max abs on logits (float32)
    "sobol_craft": 1e-5,  # our Sobol vs Craft-xai's on identical masks
    "metric_naive": 1e-6,  # vectorised metric vs naive loop
}


@pytest.fixture
def tol() -> dict[str, float]:
    return TOL
