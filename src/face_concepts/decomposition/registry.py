"""The solver registry: every full-batch solver by name, with its default ``max_iter`` / ``tol``.

``solvers.py`` holds ``hals``, ``autograd_solvers.py`` ``pgd`` and ``adam``; ``linearised.py``,
``jacobian.py`` and ``quasi_newton.py`` (``lbfgs``) the solvers for heads that are not affine. ``FACE(solver=...)`` looks names up
here (``estimators.py``); ``"auto"`` picks ``hals`` for an affine head (or λ = 0) and
``jacobian`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from face_concepts.decomposition.autograd_solvers import solve_adam, solve_pgd
from face_concepts.decomposition.hals import MAX_ITER as HALS_MAX_ITER
from face_concepts.decomposition.hals import solve_hals
from face_concepts.decomposition.jacobian import TOL as JACOBIAN_TOL
from face_concepts.decomposition.jacobian import solve_jacobian
from face_concepts.decomposition.linearised import solve_linearised
from face_concepts.decomposition.quasi_newton import TOL as LBFGS_TOL
from face_concepts.decomposition.quasi_newton import solve_lbfgs
from face_concepts.decomposition.solvers import SolverResult

SOLVERS: dict[str, Callable[..., SolverResult]] = {
    "hals": solve_hals,
    "pgd": solve_pgd,
    "adam": solve_adam,
    "linearised": solve_linearised,
    "jacobian": solve_jacobian,
    "lbfgs": solve_lbfgs,
}
DEFAULTS: dict[str, dict[str, float]] = {
    "hals": {"max_iter": HALS_MAX_ITER, "tol": 1e-5},
    "pgd": {"max_iter": 1000, "tol": 1e-5},
    "adam": {"max_iter": 22000, "tol": 1e-3},
    "linearised": {"max_iter": 1000, "tol": 1e-5},
    "jacobian": {"max_iter": 200, "tol": JACOBIAN_TOL},
    "lbfgs": {"max_iter": 1000, "tol": LBFGS_TOL},
}


def auto_solver(kl_weight: float, affine: bool) -> str:
    """``solver="auto"``: ``hals`` for plain NMF or an affine head, else ``jacobian``."""
    return "hals" if (kl_weight == 0 or affine) else "jacobian"
