"""Mini-batch (streaming) FACE: memory independent of the number of rows ``n``.

This module is the driver (state, per-batch step, passes, the objective pass); the running
statistics and the surrogate ``Q`` of steps 2–4 below are in ``surrogate.py``, the batch
sources in ``streams.py``.

Algorithm — a stochastic majorise–minimise scheme (Mairal et al. 2010, online dictionary
learning / online NMF) extended to the KL term. Per row the objective of docs/method.md §2.1 is
``ℓ_i(W) = (1/p)‖a_i − u_i W‖² + λ KL(P_i ‖ softmax(z_i))`` with ``z_i = u_i W Vᵀ + b`` for an
affine head, and ``L = (1/n) Σ_i ℓ_i``. For each mini-batch ``A_b``:

1. **codes**: ``U_b`` from the encoder's solver with the current ``W`` (same λ; a capped number
   of iterations, see ``CODE_MAX_ITER``/``CODE_TOL``). For λ > 0 that is the projected Newton
   method of ``newton.py``: ~10 iterations bring a batch's codes within 0.1 % of their optimum,
   where the majorise–minimise sweeps used before needed hundreds. These take Bertsekas' plain
   step (``solvers.FIT_CODES_RESOLVES``); the objective pass takes the encoder's re-solved one.
2. **majorise** each row's KL at the current logits ``z⁰_i`` with Böhning's bound
   ``∇² logsumexp ≼ B = ½(I − 11ᵀ/C)``::

       KL(z) ≤ KL(z⁰) + g_iᵀ(z − z⁰) + ½ (z − z⁰)ᵀ B (z − z⁰),   g_i = softmax(z⁰_i) − P_i.

   With ``d = z − b = u_i W Vᵀ`` the W-dependent part is ``½ dᵀBd + (g_i − B d⁰_i)ᵀ d``. Summed
   over rows (the reconstruction term is exact)::

       Q(W) = (1/p)(⟨S_uu, WWᵀ⟩ − 2⟨S_ua, W⟩) + λ (½ ⟨S_uu, W K Wᵀ⟩ + ⟨S_ux V, W⟩)

   with the running statistics ``S_uu = Σ u_iᵀu_i`` (r×r), ``S_ua = Σ u_iᵀa_i`` (r×p),
   ``S_ux = Σ u_iᵀ(g_i − B d⁰_i)`` (r×C; ``B x = ½(x − mean(x))``) and the fixed
   ``K = Vᵀ B V = ½ V_cᵀV_c`` (p×p, ``V_c`` = class-centred ``V``). The factor ``1/n`` of L does
   not move the minimiser and is dropped. All statistics are O(r(p + C)) memory.
3. **forget**: in the first pass (and in ``partial_fit``, which knows no passes) the statistics
   are multiplied by ``ρ = forget_factor^{m/n_seen}`` before adding the batch (m rows in the
   batch, ``n_seen`` rows seen so far including it): Mairal-style decaying forgetting that needs
   no ``n`` (default ``forget_factor`` 0.1: the KL statistics are expanded at past logits, and
   a slow decay, e.g. 0.7, keeps misleading early batches — measured in the estimator's
   docstring). From the second pass on, each batch instead *replaces its share of the previous
   pass*: ``S ← S − (m/n_epoch)·S_prev + S_b`` with ``S_prev`` the statistics frozen at the end
   of the previous pass (an O(r(p + C)) copy). At the end of every pass ``S`` is then exactly the
   sum of that pass's batch statistics, so stale codes and expansion points never linger, and
   with one batch per pass the method is exact alternating MM on L (full-batch behaviour).
4. **update W** by minimising ``Q`` over ``W ≥ 0``. Böhning's curvature ``B`` is far steeper
   than the softmax's when predictions are confident, which makes the exact majoriser very
   timid; as in the full-batch solver, the curvature is scaled to ``s·B`` with ``s ∈ (0, 1]``
   adaptive: ``Q_s`` keeps the sums ``S_ug = Σ u_iᵀg_i`` and ``S_ud = Σ u_iᵀ B d⁰_i`` apart so
   that ``s`` can change after they were accumulated, and a W update is redone with a larger
   ``s`` (×4, up to 1 = the true majoriser) when it would raise the objective of the current
   batch at its codes; ``s`` halves after each update. ``Q_s`` itself is minimised by a few MM
   steps, each linearising the ``K`` term at the current ``W`` and bounding its curvature by
   ``κ = λ_max(K) = ½‖V_c‖₂²`` (scaled adaptively, backtracked on ``Q_s``, evaluated exactly in
   O(r p²)), then HALS sweeps on the resulting r×r quadratic. A concept whose row of ``W``
   becomes zero is re-initialised from a random row of the batch (``RuntimeWarning``).

Passes (epochs) repeat until the relative change of the epoch objective (the mean, over the
pass, of each batch's objective at its codes before the W update — an online estimate) is below
``tol`` or ``max_iter`` passes. ``objective_`` is then the true §2 objective on all rows with the
final ``W`` and codes from the single encoder (``encode``, capped at ``FINAL_CODE_MAX_ITER``
iterations per batch), computed batch by batch. Only affine heads (or λ = 0) are supported:
the statistics above need ``h(x) = x Vᵀ + b``; other heads are refused with a ValueError (fit
them with ``batch_size=None``). Batches are taken in the source's order: shuffle rows that are
sorted (e.g. by image) beforehand.

Guarantees and status: with ``s = 1`` every W update lowers ``Q`` (an upper bound of the loss
of the rows behind the statistics, at their codes); with ``s < 1`` the update is kept only if
the current batch's objective does not rise. Solving the codes dominates the cost at λ > 0 (the
Hessian GEMM of the Newton iterations); each row's codes of the last pass are kept on disk
(:class:`CodeStore`, RAM still flat in n) and start that row's codes in the next pass and in the
objective pass, where they are close to the answer (first pass and unknown rows: the clamped
least-squares start). Measured on MobileNetV2 features at λ = 1
(``benchmarks/results/scale.md``): 10⁶ rows, batches of 1024, two passes: 12.6 min on 2 cores
(15.8 min with the codes started cold every pass),
1.06 GB peak (flat in n), time per row flat from 10⁵ to 10⁶; at n = 10⁴, ten passes of 512-row
batches end 0.46 % above the converged full-batch fit in an eleventh of its time.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from typing import IO, Any

import torch
from sklearn.exceptions import ConvergenceWarning

from face_concepts._core.progress import Progress
from face_concepts._core.seeding import make_generator
from face_concepts._core.validation import as_float_tensor
from face_concepts.decomposition import solvers
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.encoder import _warm_start, encode, solve_codes
from face_concepts.decomposition.init import initialize
from face_concepts.decomposition.losses import Terms
from face_concepts.decomposition.problem import make_problem
from face_concepts.decomposition.semi_nmf import eig_of, minimise_surrogate_signed
from face_concepts.decomposition.solvers import (
    Problem,
    _Curvature,
    centred_spectral_norm_sq,
    evaluate,
    small_problem_threads,
)
from face_concepts.decomposition.streams import rechunk, total_rows
from face_concepts.decomposition.surrogate import (
    Statistics,
    Surrogate,
    batch_statistics,
    forget_rate,
    minimise_surrogate,
)

CODE_MAX_ITER = 10  # Newton iterations per batch during the fit (start: clamped LS)
CODE_TOL = 1e-5  # their relative-decrease stop
# The objective pass: the encoder's solver with this cap per batch. The encoder's own defaults
# (500 iterations, tol 1e-7) cost ~30× more per row on a 1000-class head; the cap only makes
# objective_ an upper bound of the value at fully converged codes.
FINAL_CODE_MAX_ITER = 50
FINAL_CODE_TOL = 1e-6
WARM_CODES = True  # start each batch's codes from that row's codes of the last pass (CodeStore)
TRUST_START = 1.0 / 64  # first s of the curvature s·B (backtracked up to 1 when needed)
DEFAULTS = {"max_iter": 50, "tol": 1e-4, "forget_factor": 0.1}


# ----------------------------------------------------------------------------- the driver
@dataclass
class OnlineState:
    """Everything the stream updates: ``W``, the statistics and the bookkeeping."""

    W: torch.Tensor
    stats: Statistics
    head: Head | None
    lam: float
    forget_factor: float
    generator: torch.Generator
    K: torch.Tensor | None = None
    kappa: float = 0.0
    n_seen: int = 0
    n_epoch: int | None = None
    previous: Statistics | None = None  # statistics at the end of the previous pass
    curv: _Curvature = field(default_factory=_Curvature)  # inner isotropic bound of K
    trust: _Curvature = field(default_factory=lambda: _Curvature(TRUST_START))  # s of s·B
    signed: bool = False  # the signed bank (semi_nmf.py): W unconstrained, Q_s minimised exactly
    K_eig: tuple[torch.Tensor, torch.Tensor] | None = None  # eigenpairs of K (signed, λ > 0)


def start(
    A0: torch.Tensor, r: int, head: Head | None, lam: float, init: str, options: dict[str, Any]
) -> OnlineState:
    """Initialise ``W`` from the first batch ``A0`` (``options``: random_state, forget_factor,
    W0, signed)."""
    if A0.shape[0] < r:
        raise ValueError(
            f"batch_size gives a first batch of {A0.shape[0]} rows, fewer than n_concepts={r}; "
            "use batch_size >= n_concepts"
        )
    W0 = options.get("W0")
    signed = bool(options.get("signed", False))
    if W0 is not None and init != "custom":
        raise ValueError("W0 is only used with init='custom'")
    if init == "custom":
        if W0 is None:
            raise ValueError("init='custom' with batch_size needs W0 passed to fit")
        W0 = as_float_tensor(W0, "W0", non_negative=not signed, dtype=A0.dtype, device=A0.device)
        if W0.shape != (r, A0.shape[1]):
            raise ValueError(f"W0 must have shape {(r, A0.shape[1])}, got {tuple(W0.shape)}")
        W = W0.clone()
    else:
        _, W = initialize(A0, r, init, random_state=options.get("random_state"), signed=signed)
    p = A0.shape[1]
    C = head.V.shape[0] if head is not None and lam > 0 else 0
    z: dict[str, Any] = {"dtype": torch.float64, "device": A0.device}
    stats = Statistics(torch.zeros(r, r, **z), torch.zeros(r, p, **z))
    if lam > 0:
        stats.UtG, stats.UtD = torch.zeros(r, C, **z), torch.zeros(r, C, **z)
    state = OnlineState(
        W, stats, head, lam, options["forget_factor"], make_generator(options.get("random_state"))
    )
    state.signed = signed
    if lam > 0:
        prob = make_problem(A0[:2], head, lam)
        Vc = prob.centred_V
        state.K = 0.5 * (Vc.T @ Vc)
        state.kappa = 0.5 * centred_spectral_norm_sq(prob)
        if signed:
            state.K_eig = eig_of(state.K)
    return state


def _revive_dead(state: OnlineState, A: torch.Tensor) -> None:
    dead = (state.W.abs().sum(dim=1) <= 0).nonzero().flatten().tolist()
    for k in dead:
        i = int(torch.randint(A.shape[0], (1,), generator=state.generator))
        state.W[k] = A[i]
        warnings.warn(
            f"concept {k} died (its row of W became zero); re-initialised from a random batch row",
            RuntimeWarning,
            stacklevel=4,
        )


class CodeStore:
    """Each row's codes from its last visit, in a temporary file (RAM flat in ``n``; the file
    holds ``n·(r + 1)`` float64 values, 208 MB at 10⁶ rows and r = 25), to start the codes of
    the next visit of the same row: pass after pass, and in the objective pass.

    Rows are addressed by their position in the pass; a row's float64 sum is stored beside its
    codes and must match, so a source that yields other rows there (reshuffled, or shorter)
    costs only the warm start: such rows start from the clamped least squares as before.
    """

    def __init__(self) -> None:
        self.file: IO[bytes] | None = None
        self.rows = 0  # rows written so far (the file's length in rows)
        try:
            self.file = tempfile.TemporaryFile()  # removed by the OS when closed, even on Ctrl-C
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        """A temporary file that cannot be made, written or read costs the warm starts, never
        the fit: the rest of the fit starts every batch's codes cold."""
        warnings.warn(
            f"mini-batch FACE: the codes of the last pass can no longer be kept in a temporary "
            f"file ({exc}); the fit goes on, starting each batch's codes afresh (slower)",
            RuntimeWarning,
            stacklevel=5,
        )
        self.close()

    def start(self, offset: int, A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Codes to start the rows ``offset …`` of batch ``A`` from (clamped LS where unknown)."""
        m, r = A.shape[0], W.shape[0]
        known = min(m, max(0, self.rows - offset))
        if known == 0 or self.file is None:
            return _warm_start(A, W)
        try:
            self.file.seek(offset * (r + 1) * 8)
            data = self.file.read(known * (r + 1) * 8)
        except OSError as exc:
            self._give_up(exc)
            return _warm_start(A, W)
        block = torch.frombuffer(bytearray(data), dtype=torch.float64)
        block = block.view(known, r + 1).to(device=A.device)
        same = block[:, r] == A[:known].double().sum(dim=1)
        stored = block[:, :r].to(A.dtype).contiguous()
        if known == m and bool(same.all()):  # the usual case from the second pass on
            return stored
        cold = _warm_start(A, W)  # the least-squares start only where it is needed
        cold[:known] = torch.where(same[:, None], stored, cold[:known])
        return cold

    def put(self, offset: int, A: torch.Tensor, U: torch.Tensor) -> None:
        if self.file is None:
            return
        rows = torch.cat([U.double(), A.double().sum(dim=1, keepdim=True)], dim=1).cpu()
        try:
            self.file.seek(offset * rows.shape[1] * 8)
            self.file.write(rows.numpy().tobytes())
        except OSError as exc:  # e.g. no space left on the temporary directory's disk
            self._give_up(exc)
            return
        self.rows = max(self.rows, offset + U.shape[0])

    def close(self) -> None:
        if self.file is not None:
            file, self.file, self.rows = self.file, None, 0
            try:
                file.close()
            except OSError:  # flushing codes nobody will read: nothing is lost
                pass


def step(
    state: OnlineState, A: torch.Tensor, store: CodeStore | None = None, offset: int = 0
) -> Terms:
    """One MM update on batch ``A``; returns the batch objective at its codes before the update.

    ``store``: where the rows' codes of the last pass are (``offset``: the batch's first row in
    the pass); their codes are started from there and stored back.
    """
    W = state.W
    guard = small_problem_threads(Problem(A=A, head=state.head, kl_weight=state.lam), W.shape[0])
    with torch.no_grad(), guard:
        prob = make_problem(A, state.head, state.lam)
        U0 = _warm_start(A, W) if store is None else store.start(offset, A, W)
        U, _ = solve_codes(
            prob, W, U0, max_iter=CODE_MAX_ITER, tol=CODE_TOL, resolves=solvers.FIT_CODES_RESOLVES
        )
        if store is not None:
            store.put(offset, A, U)
        terms = evaluate(prob, U, W)
        batch = batch_statistics(A, U, W, state.head, prob.P)
        state.n_seen += A.shape[0]
        if state.previous is None or state.n_epoch is None:  # set together, after a pass
            state.stats.decay(forget_rate(A.shape[0], state.n_seen, state.forget_factor))
        else:  # replace this batch's share of the previous pass (module docstring, step 3)
            state.stats.add(state.previous, -A.shape[0] / state.n_epoch)
        state.stats.add(batch)
        state.W = _update_w(state, prob, U, terms.total)
        _revive_dead(state, A)
    return terms


def _update_w(state: OnlineState, prob: Problem, U: torch.Tensor, f0: float) -> torch.Tensor:
    """Minimise ``Q_s``; ``s`` backtracks towards 1 while the batch objective would rise."""
    V = state.head.V if state.head is not None and state.lam > 0 else None
    while True:
        Q = Surrogate(state.stats, V, state.K, state.lam, state.trust.s)
        if state.signed:
            W = minimise_surrogate_signed(Q, state.K_eig, state.W.shape[1], state.W.dtype)
        else:
            W = minimise_surrogate(state.W, Q, state.kappa, state.curv)
        if state.lam == 0 or evaluate(prob, U, W).total <= f0 or not state.trust.next_try():
            break
    state.trust.relax()
    return W


@dataclass
class StreamResult:
    """What a mini-batch fit hands to the estimator."""

    W: torch.Tensor
    n_epochs: int
    converged: bool
    history: dict[str, list[float]]
    objective: Terms
    U: torch.Tensor | None = None


def run_epochs(
    state: OnlineState,
    source: Any,
    batch_size: int,
    max_iter: int,
    tol: float,
    verbose: bool,
    store: CodeStore | None = None,
) -> tuple[int, bool, dict[str, list[float]]]:
    """Passes over ``source`` until the epoch objective's relative change is below ``tol``
    (``store``: see :func:`step`)."""
    history: dict[str, list[float]] = {"total": [], "recon": [], "kl": []}
    prev, converged, epoch = None, False, 0
    p = state.W.shape[1]
    total = total_rows(source)
    for epoch in range(1, max_iter + 1):
        sums, rows = [0.0, 0.0, 0.0], 0
        bar = _bar(total, f"epoch {epoch}", verbose)
        for A in rechunk(source, batch_size, p, non_negative=not state.signed):
            A = A.to(device=state.W.device, dtype=state.W.dtype)
            t = step(state, A, store, rows)
            m = A.shape[0]
            sums = [sums[0] + m * t.total, sums[1] + m * t.recon, sums[2] + m * t.kl]
            rows += m
            bar.update(m)
            bar.set_postfix(f"objective (online estimate) {sums[0] / rows:.6g}")
        bar.close()
        state.n_epoch, state.previous = rows, state.stats.copy()
        cur = sums[0] / rows
        for name, s in zip(("total", "recon", "kl"), sums, strict=True):
            history[name].append(s / rows)
        if prev is not None and abs(prev - cur) <= tol * abs(prev):
            converged = True
            break
        prev = cur
    return epoch, converged, history


def _bar(total: int | None, desc: str, verbose: bool) -> Progress:
    """Progress over rows on stderr (shown when ``verbose``): one summary line per pass."""
    return Progress(total, desc, unit="row", enabled=verbose)


def streaming_objective(
    source: Any,
    batch_size: int,
    W: torch.Tensor,
    head: Any,
    lam: float,
    keep_codes: bool = False,
    verbose: bool = False,
    signed: bool = False,
    store: CodeStore | None = None,
) -> tuple[Terms, torch.Tensor | None]:
    """The §2 objective on all rows with ``W`` and the single encoder's codes, batch by batch
    (``store``: the last pass's codes, to start from)."""
    sums, rows, codes = [0.0, 0.0], 0, []
    p = W.shape[1]
    h = Head(head, dtype=W.dtype, device=W.device) if lam > 0 else None
    bar = _bar(total_rows(source), "objective pass", verbose)
    for A in rechunk(source, batch_size, p, non_negative=not signed):
        A = A.to(device=W.device, dtype=W.dtype)
        U = encode(
            A,
            W,
            head,
            kl_weight=lam,
            max_iter=FINAL_CODE_MAX_ITER,
            tol=FINAL_CODE_TOL,
            U0=None if store is None else store.start(rows, A, W),
            signed=signed,
        )
        t = evaluate(make_problem(A, h, lam), U, W)
        m = A.shape[0]
        sums = [sums[0] + m * t.recon, sums[1] + m * t.kl]
        rows += m
        if keep_codes:
            codes.append(U)
        bar.update(m)
    bar.close()
    recon, kl = sums[0] / rows, sums[1] / rows
    return Terms(recon + lam * kl, recon, kl), (torch.cat(codes) if keep_codes else None)


def fit_stream(
    state: OnlineState, source: Any, batch_size: int, settings: dict[str, Any], head: Any
) -> StreamResult:
    """Epochs, then the exact streaming objective (codes kept when ``settings['keep_codes']``)."""
    store = CodeStore() if WARM_CODES else None
    try:
        return _fit_stream(state, source, batch_size, settings, head, store)
    finally:
        if store is not None:
            store.close()


def _fit_stream(
    state: OnlineState,
    source: Any,
    batch_size: int,
    settings: dict[str, Any],
    head: Any,
    store: CodeStore | None,
) -> StreamResult:
    n_epochs, converged, history = run_epochs(
        state, source, batch_size, settings["max_iter"], settings["tol"], settings["verbose"], store
    )
    if not converged and settings["max_iter"] > 1:
        warnings.warn(
            f"mini-batch FACE stopped at max_iter={settings['max_iter']} epochs before the epoch "
            "objective changed by less than tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    obj, U = streaming_objective(
        source,
        batch_size,
        state.W,
        head,
        state.lam,
        settings.get("keep_codes", False),
        settings["verbose"],
        state.signed,
        store,
    )
    return StreamResult(state.W, n_epochs, converged, history, obj, U)


def default_setting(value: Any, name: str) -> Any:
    """Mini-batch default for ``max_iter`` (epochs), ``tol`` or ``forget_factor`` when None."""
    return DEFAULTS[name] if value is None else value


__all__ = ["fit_stream", "step"]
