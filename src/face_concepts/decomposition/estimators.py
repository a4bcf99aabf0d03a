"""``FACE`` and ``NMF`` estimators with the scikit-learn contract.

Constructor arguments are stored verbatim and validated in ``fit``; ``fit`` returns ``self``;
fitted attributes end in ``_``.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from sklearn.base import BaseEstimator

from face_concepts._core.device import resolve_device
from face_concepts._core.heap import retains_heap
from face_concepts._core.validation import (
    as_float_tensor,
    check_choice,
    check_float,
    check_int,
    dead_concepts,
)
from face_concepts.decomposition import minibatch as mb
from face_concepts.decomposition import streams
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.encoder import encode, solve_codes
from face_concepts.decomposition.init import INITS, initialize
from face_concepts.decomposition.losses import HEAD_REQUIRED, SIGNED_HINT
from face_concepts.decomposition.problem import make_problem
from face_concepts.decomposition.registry import DEFAULTS, SOLVERS, auto_solver
from face_concepts.decomposition.semi_nmf import SOLVERS as SIGNED_SOLVERS
from face_concepts.decomposition.semi_nmf import check_bank
from face_concepts.decomposition.solvers import evaluate

SOLVER_CHOICES = ("auto", *SOLVERS)


class _Progress:
    """``verbose``'s lines on stderr: the first iteration and every tenth, with the objective,
    its two terms and the time since the start. A solver that hands the rest of a fit to
    another (``jacobian`` to ``lbfgs``) calls :meth:`handover`, and the lines say so."""

    def __init__(self, solver: str) -> None:
        self.solver, self.start = solver, time.perf_counter()

    def __call__(self, t: int, terms: Any) -> None:
        if t == 1 or t % 10 == 0:
            self._say(
                f"{self.solver} iteration {t}: objective {terms.total:.6g} (recon "
                f"{terms.recon:.4g}, KL {terms.kl:.4g}), {time.perf_counter() - self.start:.1f} s"
            )

    def stage(self, kl_weight: float | None) -> None:
        """``hals``'s λ continuation: the lines that follow are a start at ``kl_weight`` (None:
        the fit itself, its iterations counted afresh)."""
        if kl_weight is None:
            self._say(f"{self.solver}: the fit itself, from its start")
        else:
            self._say(f"{self.solver}: a start at kl_weight {kl_weight:g} (λ continuation)")

    def handover(self, solver: str, after: int, why: str) -> None:
        self._say(f"{self.solver} hands the fit to {solver} after iteration {after}: {why}")
        self.solver = solver

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)


class FACE(BaseEstimator):
    """Faithful concept extraction: ``A ≈ U W`` with the head's prediction kept (docs/method.md §2).

    Minimises ``mean (A − U W)² + kl_weight · (1/n) Σ_i KL(softmax h(A_i) ‖ softmax h((UW)_i))``
    over ``U, W ≥ 0`` (``bank="signed"``: over ``U ≥ 0`` and any ``W``).

    Parameters
    ----------
    head : nn.Module or callable
        Maps (n, p) features to (n, C) logits. Affine heads (``nn.Linear``, Dropout + Linear in
        eval mode) use the fast factored path; others go through autograd.
    n_concepts : int
        r, the number of concepts.
    kl_weight : float
        λ ≥ 0; 0 gives plain NMF. The default 1e-5 is the FACE authors' demo value, kept so
        that the estimator reproduces their setting. ``ConceptExplainer`` and the CLI default to
        1.0 instead: at this objective's scale λ ≤ 1e-2 gave about NMF's concepts in our λ sweeps
        (``benchmarks/results/reproduction.md``).
    solver : {"auto", "hals", "pgd", "adam", "linearised", "jacobian", "lbfgs"}
        "auto" picks "hals" (monotone block steps with factored logits) for affine heads and
        "jacobian" otherwise (between two head calls the head is replaced by its Jacobian,
        anchored at each row's true logits, and the FACE problem on that model is solved by
        the affine engine: about two head calls per iteration, monotone; see ``jacobian.py``;
        where that model misleads, the fit goes on with "lbfgs"). "lbfgs" is L-BFGS-B on the
        true objective (one head forward and backward per iteration, monotone; see
        ``quasi_newton.py``). "linearised" models the head by its gradient only (one forward and one backward per
        iteration, many more iterations). "pgd" is plain projected gradient through autograd
        (about 20 head calls per iteration). "adam" is the authors' solver, for parity.
    max_iter, tol : int, float, optional
        Defaults per solver: hals 2000 and 1e-5 (relative decrease of the objective per
        iteration, averaged over the last 10 iterations; the same for linearised); jacobian
        200 and 1e-4 (the same, over 3 outer iterations); lbfgs 1000 and 1e-3 (the same, over
        10 iterations, each one head call); pgd 1000 and
        1e-5 (relative decrease over one iteration); adam 22,000 and 1e-3 (absolute loss change, the authors' rule).
        They bound the fit at ``kl_weight``; its start (the plain-NMF warm start and, with hals
        at ``kl_weight ≥ 100``, the λ-continuation stages) has its own bound, 200 iterations
        each (``n_warm_iter_``).
    init : {"auto", "nndsvd", "nndsvda", "nndsvd-authors", "random", "custom", "signed-svd"}
        "auto" is "signed-svd" with ``bank="signed"``, "nndsvd-authors" for solver "adam" and
        "nndsvda" otherwise.
    random_state : int, torch.Generator or None
        Seeds the "random" init (local CPU generator).
    device : str or torch.device, optional
        Where to compute; default: the device of ``A``.
    verbose : bool
        Solver progress on stderr: iteration, objective and elapsed time at the first and
        every 10th iteration (row progress bars per epoch with ``batch_size``).
    batch_size : int or None
        None (default): full-batch fit. An int: mini-batch / streaming fit
        (:mod:`~face_concepts.decomposition.minibatch`) — ``A`` may then also be a re-iterable
        source of (m, p) batches (e.g. ``CachedActivations(cache, key)``), memory does not grow
        with n, ``max_iter``/``tol`` count epochs (defaults 50 and 1e-4). Needs an affine head
        when ``kl_weight > 0``.
    forget_factor : float
        Mini-batch only: decay of the running statistics over one epoch (in [0, 1]); the weight
        left to the first batch after b batches of the first pass is about ``b^{ln ff}``.
        Default 0.1: at n = 10⁵ (MobileNetV2 features, λ = 1, one pass of 2048-row batches)
        0.7, 0.3, 0.1, 0.03, 0.01 ended at objective 2.21, 1.40, 1.37, 1.38, 1.38 — the KL
        term's statistics are linearised at past logits, and old ones mislead.
    bank : {"nonnegative", "signed"}
        "nonnegative" (default): NMF, ``W ≥ 0`` and ``A ≥ 0`` required. "signed": Semi-NMF
        (:mod:`~face_concepts.decomposition.semi_nmf`), codes ``U ≥ 0`` but concepts are signed
        directions, for layers with signed activations (``A`` may then be signed); init "auto"
        is "signed-svd"; solvers "hals" and "pgd" (not "adam").

    Attributes
    ----------
    concept_bank_ : Tensor (r, p)
        W.
    n_iter_ : int
        Iterations of the solver on the FACE objective.
    n_warm_iter_ : int
        ``solver="hals"`` or ``"jacobian"`` with ``kl_weight > 0`` (and an init other than
        "custom"): iterations of the plain-NMF warm start that precedes them, and with
        ``hals`` at ``kl_weight ≥ 100`` those of its λ-continuation stages (fits at
        ``kl_weight/10``, ``/100``, … ≥ 1; docs/method.md §4.1); 0 otherwise.
    handover_iter_ : int or None
        ``solver="jacobian"``: the iteration after which its affine model misled and ``lbfgs``
        took the fit over (its later iterations are lbfgs's); None when it did not.
    objective_ : float
        Final value of the objective.
    loss_history_ : dict
        "total", "recon", "kl" per iteration (entry 0: the start of the FACE iterations, i.e.
        the initialisation, or the end of the plain-NMF warm start).
    converged_ : bool
    solver_ : str
        The solver actually used.
    dead_concepts_ : list of int
        Concepts that reconstruct nothing after a full-batch fit (zero codes on every row or a
        zero row of W); a RuntimeWarning names them.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> A = torch.rand(50, 8); head = torch.nn.Linear(8, 3)
    >>> U = FACE(head, n_concepts=3, kl_weight=1.0, random_state=0).fit_transform(A)
    >>> U.shape
    torch.Size([50, 3])
    """

    def __init__(
        self,
        head: Callable[[torch.Tensor], torch.Tensor] | None,
        n_concepts: int = 25,
        *,
        kl_weight: float = 1e-5,
        solver: str = "auto",
        max_iter: int | None = None,
        tol: float | None = None,
        init: str = "auto",
        random_state: Any = None,
        device: Any = None,
        verbose: bool = False,
        batch_size: int | None = None,
        forget_factor: float = 0.1,
        bank: str = "nonnegative",
    ) -> None:
        self.head = head
        self.n_concepts = n_concepts
        self.kl_weight = kl_weight
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.batch_size = batch_size
        self.forget_factor = forget_factor
        self.bank = bank

    def _signed(self) -> bool:
        """Whether the bank is signed (``bank="signed"``); validates ``bank``."""
        return check_bank(self.bank, self.solver)

    # -- validation -------------------------------------------------------------------------
    def _validate(self, A: Any) -> tuple[torch.Tensor, Head | None, str, int, float]:
        dev = resolve_device(self.device, like=A if isinstance(A, torch.Tensor) else None)
        A = as_float_tensor(
            A, "A", non_negative=not self._signed(), device=dev, sign_hint=SIGNED_HINT
        )
        n, p = A.shape
        if not bool(A.any()):
            # Every factorisation of 0 is W = 0: a silent, useless bank. Say why instead.
            raise ValueError(
                f"A is all zeros ({n} x {p}): the layer is inactive on these inputs (dead "
                "ReLUs, wrong layer or blank images); choose another layer or other images"
            )
        r = check_int(self.n_concepts, "n_concepts", minimum=1)
        if r > min(n, p):
            raise ValueError(
                f"n_concepts={r} must be <= min(n_samples, n_features) = min({n}, {p})"
            )
        lam = check_float(self.kl_weight, "kl_weight", minimum=0.0)
        check_choice(self.solver, "solver", SOLVER_CHOICES)
        check_choice(self.init, "init", ("auto", *INITS))
        head = None
        if self.head is not None:
            head = Head(self.head, dtype=A.dtype, device=dev)
            head.check(p)
        elif lam > 0:
            raise ValueError(HEAD_REQUIRED)
        solver = self.solver
        if solver == "auto":
            solver = auto_solver(lam, head is not None and head.is_affine)
        if solver == "hals" and lam > 0 and head is not None and not head.is_affine:
            raise ValueError(
                "solver='hals' needs an affine head; this head is not affine: use solver='auto' "
                "(or 'linearised' or 'pgd')"
            )
        max_iter = (
            DEFAULTS[solver]["max_iter"]
            if self.max_iter is None
            else check_int(self.max_iter, "max_iter", minimum=1)
        )
        tol = (
            DEFAULTS[solver]["tol"]
            if self.tol is None
            else check_float(self.tol, "tol", minimum=0.0)
        )
        self._settings = {"max_iter": max_iter, "tol": tol}
        return A, head, solver, r, lam

    # -- fitting ----------------------------------------------------------------------------
    @retains_heap
    def fit(self, A: Any, y: Any = None, *, U0: Any = None, W0: Any = None) -> FACE:
        """Fit the concept bank on activations ``A`` (n, p) ≥ 0. ``U0``/``W0`` for init="custom".

        With ``batch_size``, ``A`` may be a re-iterable source of batches and only ``W0`` is used.
        """
        if self.batch_size is not None:
            self._fit_minibatch(A, W0, keep_codes=False)
            return self
        self._fit(A, U0=U0, W0=W0)
        return self

    def _fit(self, A: Any, U0: Any = None, W0: Any = None) -> torch.Tensor:
        A, head, solver, r, lam = self._validate(A)
        init = self.init
        signed = self._signed()
        if init == "auto":
            init = "signed-svd" if signed else "nndsvd-authors" if solver == "adam" else "nndsvda"
        if (U0 is not None or W0 is not None) and init != "custom":
            raise ValueError("U0/W0 are only used with init='custom'")
        U, W = initialize(A, r, init, random_state=self.random_state, U0=U0, W0=W0, signed=signed)
        prob = make_problem(A, head, lam)
        callback = _Progress(solver) if self.verbose else None
        options = {"warm_start": init != "custom"} if solver in ("hals", "jacobian") else {}
        res = (SIGNED_SOLVERS if signed else SOLVERS)[solver](
            prob,
            U,
            W,
            max_iter=self._settings["max_iter"],
            tol=self._settings["tol"],
            callback=callback,
            **options,
        )
        # Polish the codes with the single encoder (W fixed, same objective): it can only lower
        # the objective, and makes fit_transform(A) agree with fit(A).transform(A).
        U, _ = solve_codes(prob, res.W, res.U)
        self.concept_bank_ = res.W
        self.n_iter_ = res.n_iter
        self.n_warm_iter_ = res.warm_iter
        self.handover_iter_ = res.handover_iter
        self.converged_ = res.converged
        self.loss_history_ = res.history
        self.solver_ = solver
        self.init_ = init
        self.n_features_in_ = A.shape[1]
        self.objective_ = evaluate(prob, U, res.W).total
        self.dead_concepts_ = dead_concepts(U, res.W)
        if self.dead_concepts_:
            warnings.warn(
                f"{len(self.dead_concepts_)} of {r} concepts died during the fit (indices "
                f"{self.dead_concepts_}): they reconstruct nothing and have zero importance; "
                "a smaller n_concepts, or another init or random_state, would avoid them",
                RuntimeWarning,
                stacklevel=3,
            )
        self._online: mb.OnlineState | None = None
        return U

    @retains_heap
    def fit_transform(
        self, A: Any, y: Any = None, *, U0: Any = None, W0: Any = None
    ) -> torch.Tensor:
        """Fit, then return the codes of ``A``: the solver's codes polished by the single encoder.

        ``objective_`` is the objective at exactly these codes and ``concept_bank_``. With
        ``batch_size`` the codes are the single encoder's, batch by batch (an (n, r) tensor).
        """
        if self.batch_size is not None:
            U = self._fit_minibatch(A, W0, keep_codes=True)
            assert U is not None  # keep_codes=True returns the codes
            return U
        return self._fit(A, U0=U0, W0=W0)

    # -- mini-batch -------------------------------------------------------------------------
    def _online_start(self, A0: Any, W0: Any = None, *, from_bank: bool = False) -> mb.OnlineState:
        dev = resolve_device(self.device, like=A0 if isinstance(A0, torch.Tensor) else None)
        signed = self._signed()
        A0 = as_float_tensor(A0, "A", non_negative=not signed, device=dev, sign_hint=SIGNED_HINT)
        head, r, lam, init = streams.validate(self, A0)
        init = "custom" if from_bank else init
        options = {
            "signed": signed,
            "random_state": self.random_state,
            "forget_factor": streams.check_forget_factor(self.forget_factor),
            "W0": W0,
        }
        self.init_, self.solver_ = init, "minibatch"
        return mb.start(A0, r, head, lam, init, options)

    def _fit_minibatch(self, A: Any, W0: Any, keep_codes: bool) -> torch.Tensor | None:
        source = streams.check_source(A)
        batch_size = streams.check_batch_size(self.batch_size)
        state = self._online_start(
            streams.first_batch(source, batch_size, non_negative=not self._signed()), W0
        )
        settings = {
            "max_iter": check_int(
                mb.default_setting(self.max_iter, "max_iter"), "max_iter", minimum=1
            ),
            "tol": check_float(mb.default_setting(self.tol, "tol"), "tol", minimum=0.0),
            "verbose": self.verbose,
            "keep_codes": keep_codes,
        }
        res = mb.fit_stream(state, source, batch_size, settings, self.head)
        self._online = state
        self.concept_bank_ = res.W
        self.n_iter_, self.converged_, self.loss_history_ = res.n_epochs, res.converged, res.history
        self.n_features_in_ = res.W.shape[1]
        self.objective_ = res.objective.total
        return res.U

    @retains_heap
    def partial_fit(self, A: Any, y: Any = None, *, W0: Any = None) -> FACE:
        """One mini-batch MM update of the bank on the batch ``A`` (m, p); the first call initialises.

        Continues from a previous ``fit``/``partial_fit``. Sets ``batch_objective_`` (the batch's
        objective at its codes before the update); ``objective_`` is not computed here.
        """
        state = getattr(self, "_online", None)
        if state is None:
            from_bank = hasattr(self, "concept_bank_")  # continue from a full-batch fit
            W0 = self.concept_bank_ if from_bank else W0
            state = self._online = self._online_start(A, W0, from_bank=from_bank)
        A = as_float_tensor(
            A, "A", non_negative=not state.signed, device=state.W.device, dtype=state.W.dtype
        )
        if A.shape[1] != state.W.shape[1]:
            raise ValueError(f"A has {A.shape[1]} features, expected {state.W.shape[1]}")
        self.batch_objective_ = mb.step(state, A).total
        self.concept_bank_ = state.W
        self.n_features_in_ = state.W.shape[1]
        self.n_iter_ = getattr(self, "n_iter_", 0) + 1
        self.__dict__.pop("objective_", None)
        return self

    # -- encoding ---------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "concept_bank_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(A) first")

    def _encode(self, A: torch.Tensor, kl_weight: float | None = None) -> torch.Tensor:
        lam = (
            float(self.kl_weight)
            if kl_weight is None
            else check_float(kl_weight, "kl_weight", minimum=0.0)
        )
        W = self.concept_bank_
        return encode(A.to(W.device, W.dtype), W, self.head, kl_weight=lam, signed=self._signed())

    @retains_heap
    def transform(self, A: Any, *, kl_weight: float | None = None) -> torch.Tensor:
        """Codes ``U ≥ 0`` for ``A`` with ``W`` fixed: the single encoder (docs/method.md §6).

        ``kl_weight`` defaults to the fit's λ; pass 0 for plain non-negative least squares.
        """
        self._check_fitted()
        A = as_float_tensor(
            A, "A", non_negative=not self._signed(), device=self.concept_bank_.device
        )
        if A.shape[1] != self.n_features_in_:
            raise ValueError(
                f"A has {A.shape[1]} features, but this model was fitted on {self.n_features_in_}"
            )
        return self._encode(A, kl_weight=kl_weight)

    def inverse_transform(self, U: Any) -> torch.Tensor:
        """Reconstruction ``U W``."""
        self._check_fitted()
        U = as_float_tensor(
            U, "U", device=self.concept_bank_.device, dtype=self.concept_bank_.dtype
        )
        if U.shape[1] != self.concept_bank_.shape[0]:
            raise ValueError(
                f"U has {U.shape[1]} columns but there are {self.concept_bank_.shape[0]} concepts"
            )
        return U @ self.concept_bank_

    @retains_heap
    def score(self, A: Any, y: Any = None) -> float:
        """Negative objective of ``A`` encoded with the fitted bank (higher is better)."""
        self._check_fitted()
        A = as_float_tensor(
            A, "A", non_negative=not self._signed(), device=self.concept_bank_.device
        )
        U = self.transform(A)
        head = (
            Head(self.head, dtype=A.dtype, device=A.device)
            if self.head is not None and float(self.kl_weight) > 0
            else None
        )
        return -evaluate(make_problem(A, head, float(self.kl_weight)), U, self.concept_bank_).total
