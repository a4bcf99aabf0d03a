"""Mini-batch / streaming FACE (decomposition/minibatch.py) against full-batch oracles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import NMF as SkNMF
from sklearn.exceptions import ConvergenceWarning

from face_concepts.activations.cache import ActivationCache, CachedActivations
from face_concepts.decomposition import FACE, NMF, face_objective
from face_concepts.decomposition import minibatch as mb
from face_concepts.decomposition import surrogate as sg
from face_concepts.decomposition._head import Head
from face_concepts.decomposition.losses import kl_rows
from face_concepts.decomposition.streams import total_rows

# Mini-batch vs full-batch final objective on a small planted problem (relative).
MINIBATCH_GAP = 0.02
# batch_size >= n (exact alternating MM) vs the full-batch solver, both run to convergence.
FULL_BATCH_GAP = 2e-3
# Our online NMF objective / scikit-learn's batch NMF objective at most this.
SKLEARN_RATIO = 1.02
# objective_ (capped encoder, per batch) vs the converged encoder's objective (relative).
CODE_CAP_GAP = 0.01
# Quantities that are equal in exact arithmetic, computed in float64 in another order.
EXACT_F64 = 1e-9


def planted(n=400, p=16, r=4, C=5, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(n, r, generator=g, dtype=torch.float64)
    W = torch.rand(r, p, generator=g, dtype=torch.float64)
    A = U @ W + noise * torch.rand(n, p, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    head = torch.nn.Linear(p, C).double()
    return A, head


def quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", ConvergenceWarning)
    return ctx


# ----------------------------------------------------------------------------- the surrogate
def test_kl_bound_majorises_and_touches():
    g = torch.Generator().manual_seed(1)
    Z0 = 3 * torch.randn(50, 7, generator=g, dtype=torch.float64)
    Z = Z0 + 2 * torch.randn(50, 7, generator=g, dtype=torch.float64)
    logP = torch.log_softmax(torch.randn(50, 7, generator=g, dtype=torch.float64), dim=1)
    true = kl_rows(logP, Z)
    assert bool((sg.kl_bound(Z, Z0, logP) >= true - EXACT_F64).all())
    assert torch.allclose(sg.kl_bound(Z0, Z0, logP), kl_rows(logP, Z0), atol=EXACT_F64)


def test_statistics_surrogate_majorises_face_objective():
    A, head = planted(n=60, p=10, r=3, C=4)
    lam, n = 2.0, A.shape[0]
    g = torch.Generator().manual_seed(2)
    U = torch.rand(n, 3, generator=g, dtype=torch.float64)
    W0 = torch.rand(3, 10, generator=g, dtype=torch.float64)
    h = Head(head, dtype=A.dtype, device=A.device)
    logP = torch.log_softmax(head(A), dim=1).detach()
    st = sg.batch_statistics(A, U, W0, h, logP.exp())
    Vc = h.V - h.V.mean(dim=0, keepdim=True)
    Q = sg.Surrogate(st, h.V, 0.5 * Vc.T @ Vc, lam)

    def bound(W):  # per-row majoriser of the objective, built the obvious way
        kl = sg.kl_bound(h.code_logits(U, W), h.code_logits(U, W0), logP).mean()
        return float(((A - U @ W) ** 2).mean() + lam * kl)

    def f(W):
        return face_objective(A, U, W, head, lam)

    assert abs(bound(W0) - f(W0)) <= EXACT_F64 * f(W0)
    for _ in range(5):
        W1 = torch.rand(3, 10, generator=g, dtype=torch.float64) * 2
        W2 = torch.rand(3, 10, generator=g, dtype=torch.float64) * 2
        assert bound(W1) >= f(W1) - EXACT_F64
        # Q (from statistics) differs from the row-wise bound by a W-independent constant (× n).
        lhs = (Q.value(W1) - Q.value(W2)) / n
        assert abs(lhs - (bound(W1) - bound(W2))) <= EXACT_F64 * (1 + abs(lhs))


def test_statistics_of_batches_sum_to_those_of_all_rows():
    A, head = planted(n=90, p=8, r=3, C=4)
    g = torch.Generator().manual_seed(3)
    U = torch.rand(90, 3, generator=g, dtype=torch.float64)
    W = torch.rand(3, 8, generator=g, dtype=torch.float64)
    h = Head(head, dtype=A.dtype, device=A.device)
    P = torch.softmax(head(A), dim=1).detach()
    whole = sg.batch_statistics(A, U, W, h, P)
    parts = sg.batch_statistics(A[:25], U[:25], W, h, P[:25])
    for s in (slice(25, 61), slice(61, 90)):
        parts.add(sg.batch_statistics(A[s], U[s], W, h, P[s]))
    assert parts.rows == whole.rows == 90
    for a, b in zip(parts.tensors(), whole.tensors(), strict=True):
        assert torch.allclose(a, b, rtol=EXACT_F64, atol=EXACT_F64)


# ----------------------------------------------------------------------------- the fits
def test_batch_size_at_least_n_matches_full_batch():
    A, head = planted(n=120, p=8, r=3, C=4, noise=0.5)
    ctx = quiet()
    full = FACE(head, 3, kl_weight=1.0).fit(A)
    one = FACE(head, 3, kl_weight=1.0, batch_size=500, tol=1e-9, max_iter=150).fit(A)
    ctx.__exit__(None, None, None)
    assert abs(one.objective_ - full.objective_) <= FULL_BATCH_GAP * full.objective_


def test_minibatch_objective_close_to_full_batch():
    A, head = planted()
    lam = 1.0
    ctx = quiet()
    full = FACE(head, 4, kl_weight=lam).fit(A)
    mini = FACE(head, 4, kl_weight=lam, batch_size=100, max_iter=25, tol=1e-6).fit(A)
    ctx.__exit__(None, None, None)
    assert mini.objective_ <= (1 + MINIBATCH_GAP) * full.objective_
    # objective_ is the true objective at the (capped) encoder's codes: at most 1 % above the
    # value at fully converged codes (transform), never below it.
    ref = face_objective(A, mini.transform(A), mini.concept_bank_, head, lam)
    assert ref * (1 - 1e-6) <= mini.objective_ <= ref * (1 + CODE_CAP_GAP)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_online_nmf_against_sklearn():
    A, _ = planted(n=400, p=16, r=4)
    ctx = quiet()
    ours = NMF(4, batch_size=100, max_iter=40, tol=1e-7).fit(A)
    ctx.__exit__(None, None, None)
    sk = SkNMF(4, init="nndsvda", max_iter=1000, tol=1e-6, random_state=0).fit(A.numpy())
    Ask = sk.transform(A.numpy()) @ sk.components_
    sk_obj = float(np.mean((A.numpy() - Ask) ** 2))
    assert ours.objective_ <= SKLEARN_RATIO * sk_obj


def test_fit_transform_codes_carry_the_reported_objective():
    A, head = planted(n=150, p=10, r=3)
    ctx = quiet()
    est = FACE(head, 3, kl_weight=1.0, batch_size=40, max_iter=3)
    U = est.fit_transform(A)
    ctx.__exit__(None, None, None)
    assert U.shape == (150, 3) and bool((U >= 0).all())
    f = face_objective(A, U, est.concept_bank_, head, 1.0)
    assert abs(f - est.objective_) <= EXACT_F64 * f + 1e-7 * f
    assert est.solver_ == "minibatch" and est.n_iter_ == 3 and len(est.loss_history_["total"]) == 3


def test_dead_concept_is_revived_from_a_batch_row():
    A, head = planted(n=60, p=8, r=3)
    est = FACE(head, 3, kl_weight=1.0, batch_size=60, random_state=0).partial_fit(A)
    state = est._online
    state.W[1] = 0.0
    with pytest.warns(RuntimeWarning, match="concept 1 died"):
        mb._revive_dead(state, A)
    assert any(torch.equal(state.W[1], row) for row in A)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_partial_fit_continues_from_a_full_batch_fit():
    A, head = planted(n=120, p=8, r=3)
    est = FACE(head, 3, kl_weight=1.0, max_iter=5).fit(A)
    W = est.concept_bank_.clone()
    est.partial_fit(A[:60])
    assert est.init_ == "custom" and est.concept_bank_.shape == W.shape
    f_before = face_objective(A[:60], mb.encode(A[:60], W, head, kl_weight=1.0), W, head, 1.0)
    assert est.batch_objective_ >= f_before * (1 - 1e-9)  # capped codes, same W: not lower


def test_partial_fit_sequence_equals_one_epoch_fit():
    A, head = planted(n=230, p=10, r=3)
    ctx = quiet()
    fit = FACE(head, 3, kl_weight=1.0, batch_size=60, max_iter=1).fit(A)
    pf = FACE(head, 3, kl_weight=1.0, batch_size=60)
    for s in range(0, 230, 60):
        pf.partial_fit(A[s : s + 60])
    ctx.__exit__(None, None, None)
    assert torch.allclose(pf.concept_bank_, fit.concept_bank_, rtol=1e-12, atol=1e-12)
    assert pf.n_iter_ == 4 and not hasattr(pf, "objective_")


def test_streaming_from_activation_cache_equals_in_memory(tmp_path):
    A, head = planted(n=150, p=8, r=3)
    A = A.float()
    head = head.float()
    cache = ActivationCache(tmp_path, shard_size=37)  # shards not aligned with batches
    key = "entry"
    cache.run(key, A[:, :, None, None], lambda c: c.flatten(1), _NoBar())
    ctx = quiet()
    mem = FACE(head, 3, kl_weight=1.0, batch_size=50, max_iter=3).fit(A)
    disk = FACE(head, 3, kl_weight=1.0, batch_size=50, max_iter=3)
    disk.fit(CachedActivations(cache, key))
    ctx.__exit__(None, None, None)
    assert torch.equal(mem.concept_bank_, disk.concept_bank_)
    assert mem.objective_ == disk.objective_


def test_verbose_fit_shows_row_progress_with_the_known_total(tmp_path, capsys, monkeypatch):
    from face_concepts._core import progress

    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)  # a progress line at every batch
    A, head = planted(n=150, p=8, r=3)
    A = A.float()
    cache = ActivationCache(tmp_path, shard_size=37)
    cache.run("entry", A[:, :, None, None], lambda c: c.flatten(1), _NoBar())
    source = CachedActivations(cache, "entry")
    assert len(source) == 150
    assert total_rows(A) == 150 and total_rows([A[:40], A[40:]]) == 150
    assert total_rows(iter([A])) is None  # unknown without reading it
    ctx = quiet()
    FACE(head.float(), 3, kl_weight=1.0, batch_size=50, max_iter=2, verbose=True).fit(source)
    ctx.__exit__(None, None, None)
    out = capsys.readouterr()
    assert out.out == ""  # progress goes to stderr only
    # each epoch and the objective pass, with the total from the manifest, then one summary line
    # per pass carrying the epoch's objective
    assert "epoch 1: 150 rows in " in out.err and "objective (online estimate)" in out.err
    assert "epoch 2" in out.err and "objective pass: 150 rows in " in out.err
    assert "/150 rows" in out.err


def test_iter_shards_refuses_a_corrupt_shard(tmp_path):
    cache = ActivationCache(tmp_path, shard_size=4)
    cache.run("k", torch.rand(10, 3, 1, 1), lambda c: c.flatten(1), _NoBar())
    assert sum(t.shape[0] for t in cache.iter_shards("k")) == 10
    shard = next(iter(sorted(tmp_path.glob("k/shard_*"))))
    shard.write_bytes(shard.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ValueError, match="cannot be used"):
        list(cache.iter_shards("k"))
    with pytest.raises(ValueError, match="missing"):
        list(cache.iter_shards("absent"))


class _NoBar:
    def update(self, n):
        pass


class _Stream:
    """Re-iterable generated batches; refuses to say its length or hand out all rows."""

    def __init__(self, n, p=8, size=70, seed=0):
        self.n, self.p, self.size, self.seed = n, p, size, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for s in range(0, self.n, self.size):
            yield torch.rand(min(self.size, self.n - s), self.p, generator=g)

    def __len__(self):
        raise AssertionError("the driver asked for the number of rows")

    def __getitem__(self, i):
        raise AssertionError("the driver asked for rows by index")


@pytest.mark.parametrize("n", [500, 2000])
def test_driver_holds_at_most_one_batch(monkeypatch, n):
    seen = []
    real_step, real_encode = mb.step, mb.encode

    def step(state, A, *args):
        seen.append(A.shape[0])
        return real_step(state, A, *args)

    def encode(A, *args, **kw):
        seen.append(A.shape[0])
        return real_encode(A, *args, **kw)

    monkeypatch.setattr(mb, "step", step)
    monkeypatch.setattr(mb, "encode", encode)
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 3)
    ctx = quiet()
    est = FACE(head, 3, kl_weight=1.0, batch_size=64, max_iter=2).fit(_Stream(n))
    ctx.__exit__(None, None, None)
    assert max(seen) <= 64 and sum(seen) == 3 * n  # two epochs + the objective pass
    assert est.n_iter_ == 2 and np.isfinite(est.objective_)


# ----------------------------------------------------------------------------- the contract
def test_get_params_and_clone():
    head = torch.nn.Linear(8, 3)
    est = FACE(head, 3, batch_size=32, forget_factor=0.5)
    params = est.get_params()
    assert params["batch_size"] == 32 and params["forget_factor"] == 0.5
    c = clone(est)
    assert c.batch_size == 32 and c.forget_factor == 0.5 and c is not est
    nmf = NMF(3, batch_size=16)
    assert clone(nmf).get_params()["batch_size"] == 16


@pytest.mark.parametrize("bad", [0, -5])
def test_bad_batch_size_names_the_parameter(bad):
    A, head = planted(n=50, p=8, r=3)
    with pytest.raises(ValueError, match="batch_size"):
        FACE(head, 3, batch_size=bad).fit(A)


def test_bad_inputs_are_refused():
    A, head = planted(n=50, p=8, r=3)
    with pytest.raises(ValueError, match="batch_size"):
        FACE(head, 4, batch_size=2).fit(A)  # first batch smaller than n_concepts
    with pytest.raises(TypeError, match="batch_size"):
        FACE(head, 3, batch_size=2.5).fit(A)
    with pytest.raises(TypeError, match="one-shot"):
        FACE(head, 3, batch_size=10).fit(iter([A[:25], A[25:]]))
    with pytest.raises(ValueError, match="forget_factor"):
        FACE(head, 3, batch_size=10, forget_factor=1.5).fit(A)
    nonaffine = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="affine"):
        FACE(nonaffine.double(), 3, kl_weight=1.0, batch_size=10).fit(A)


# ----------------------------------------------------------------------------- codes between passes
def test_code_store_starts_known_rows_from_their_last_codes_and_others_cold():
    A, _ = planted(n=40, p=8, r=3)
    A = A.float()
    W = torch.rand(3, 8, generator=torch.Generator().manual_seed(1))
    store = mb.CodeStore()
    # (the oracle of a cold start is the clamped least squares of the same batch: a product's
    # bits may depend on its number of rows)
    try:
        assert torch.equal(store.start(0, A[:10], W), mb._warm_start(A[:10], W))  # none stored
        U = torch.rand(30, 3, generator=torch.Generator().manual_seed(2))
        store.put(0, A[:20], U[:20])
        store.put(20, A[20:30], U[20:30])
        assert torch.equal(store.start(0, A[:30], W), U)  # bit for bit (float64 on disk)
        # a batch that runs past the stored rows: the rest starts cold
        got = store.start(25, A[25:40], W)
        cold = mb._warm_start(A[25:40], W)
        assert torch.equal(got[:5], U[25:30]) and torch.equal(got[5:], cold[5:])
        # other rows at those positions (a reshuffled source): cold start for them only
        B = A[:10].clone()
        B[3] = A[33]
        got = store.start(0, B, W)
        assert torch.equal(got[3], mb._warm_start(B, W)[3])
        assert torch.equal(got[:3], U[:3]) and torch.equal(got[4:], U[4:10])
    finally:
        store.close()


@pytest.mark.parametrize("reshuffle", [False, True])
def test_minibatch_fit_with_codes_kept_between_passes(monkeypatch, reshuffle):
    # Each batch's codes start from that batch's codes of the last pass (the store keeps them
    # on disk); a source that yields its rows in another order each pass starts them cold, as
    # before. Either way the fit matches one that restarts every batch cold (to 1e-3 here).
    A, head = planted(n=600, p=16, r=4, seed=3)
    A, head = A.float(), head.float()

    class Source:
        def __init__(self):
            self.passes = 0

        def __iter__(self):
            order = torch.arange(A.shape[0])
            if reshuffle:
                order = torch.randperm(
                    A.shape[0], generator=torch.Generator().manual_seed(self.passes)
                )
            self.passes += 1
            yield from A[order].split(100)

    calls = []
    real = mb.solve_codes

    def recorded(prob, W, U0, **kw):
        U, it = real(prob, W, U0, **kw)
        calls.append((U0.clone(), U.clone(), mb._warm_start(prob.A, W), prob.A.clone()))
        return U, it

    monkeypatch.setattr(mb, "solve_codes", recorded)
    objective = {}
    for warm in (False, True):
        monkeypatch.setattr(mb, "WARM_CODES", warm)
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = FACE(head, 4, kl_weight=1.0, batch_size=100, max_iter=3, tol=0, random_state=0)
            objective[warm] = est.fit(Source()).objective_
    assert len(calls) == 18  # 3 passes of 6 batches
    for k, (start, _, cold, rows) in enumerate(calls):
        if k < 6:
            assert torch.equal(start, cold)
            continue
        _, last_codes, _, last_rows = calls[k - 6]  # the same positions, last pass
        same = (rows == last_rows).all(dim=1)
        assert bool(same.all()) != reshuffle  # (a reshuffle may leave a few rows in place)
        assert torch.equal(start[same], last_codes[same]) and torch.equal(start[~same], cold[~same])
    assert objective[True] == pytest.approx(objective[False], rel=1e-3)


@pytest.mark.parametrize("fails", ["create", "write"])
def test_a_temporary_file_that_fails_costs_the_warm_starts_not_the_fit(monkeypatch, fails):
    # No space left (or no writable temporary directory): one warning, and the fit goes on with
    # cold starts, giving exactly the fit without the store.
    import tempfile

    A, head = planted(n=300, p=8, r=3, seed=4)
    A, head = A.float(), head.float()
    real = tempfile.TemporaryFile

    class Full:
        def __init__(self):
            self.inner = real()

        def write(self, data):
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def broken():
        if fails == "create":
            raise OSError(13, "Permission denied")
        return Full()

    def fit():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est = FACE(head, 3, kl_weight=1.0, batch_size=50, max_iter=2, tol=0, random_state=0)
            return est.fit(A.split(50)).objective_, [str(w.message) for w in caught]

    monkeypatch.setattr(mb, "WARM_CODES", False)
    cold, _ = fit()
    monkeypatch.setattr(mb, "WARM_CODES", True)
    monkeypatch.setattr(tempfile, "TemporaryFile", broken)
    objective, messages = fit()
    assert objective == cold
    assert sum("can no longer be kept" in m for m in messages) == 1
