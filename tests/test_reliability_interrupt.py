"""Interruptions and determinism with real processes (docs/reliability.md).

Each kill test starts a child Python process that stops at a controlled point: it either blocks
after writing a marker file (the parent waits for the marker, then sends SIGKILL) or SIGKILLs
itself from inside a patched function (between the two renames of a save). Nothing depends on
timing: the parent only waits for files, with a generous timeout that fails the test instead of
hanging. Afterwards the parent checks that the previous good state is intact or that the work
resumes, and that no half-written result loads.

Determinism: the same fit in two separate processes must give bit-identical tensors.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import _tiny
from face_concepts import ConceptExplainer
from face_concepts.activations.cache import ActivationCache
from face_concepts.activations.extract import extract_activations
from face_concepts.pipeline.bank import BankError, ConceptBank

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")

# A child that never reaches its marker (a crash before it) fails the test after this long.
MARKER_TIMEOUT_S = 240

# Shared by the children and this module, so both build the same model (same fingerprint).
TINY_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn
    from face_concepts.data.preprocess import Preprocess
    from face_concepts.models import ModelSplit

    def tiny_split():
        g = torch.Generator().manual_seed(1)
        conv, head = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 3)
        with torch.no_grad():
            for p in (*conv.parameters(), *head.parameters()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        features = nn.Sequential(conv, nn.ReLU())
        model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
        return ModelSplit(features, head, preprocess=Preprocess(resize_size=16, crop_size=16),
                          name="test:tiny", categories=["ant", "bee", "cat"], model=model)

    def inputs():
        return torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def block_forever(marker):
        # Tell the parent where we are, then wait to be killed.
        open(marker, "w").close()
        while True:
            time.sleep(1)
    """
)
_NS: dict = {}
exec(TINY_MODEL, _NS)
tiny_split, tiny_inputs = _NS["tiny_split"], _NS["inputs"]


def _script(body: str, model: bool) -> str:
    head = "import json, os, signal, sys, time, warnings\n"
    return head + (TINY_MODEL if model else "") + textwrap.dedent(body)


def _start(body: str, *args: str, model: bool = True) -> subprocess.Popen:
    """Run ``body`` in a fresh interpreter (with the tiny model's code unless ``model=False``)."""
    return subprocess.Popen(
        [sys.executable, "-c", _script(body, model), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_at_marker(proc: subprocess.Popen, marker: Path) -> None:
    """Wait for ``marker`` (the child is blocked at its controlled point), then SIGKILL it."""
    deadline = time.monotonic() + MARKER_TIMEOUT_S
    while not marker.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before its marker:\n{err.decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("child never reached its marker")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=MARKER_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _bank(seed: int) -> ConceptBank:
    g = torch.Generator().manual_seed(seed)
    tensors = {"W": torch.rand(3, 8, generator=g), "codes": torch.rand(50, 3, generator=g)}
    return ConceptBank(tensors, {"layer": "features", "seed": seed})


# ----------------------------------------------------------------------------- extraction
def test_killed_extraction_resumes_from_finished_shards(tmp_path):
    cache_dir, marker = tmp_path / "cache", tmp_path / "blocked"
    child = _start(
        """
        from face_concepts.activations.cache import ActivationCache
        from face_concepts.activations.extract import extract_activations
        split, calls = tiny_split(), []
        def hook(module, args):
            calls.append(1)
            if len(calls) == 3:  # shards 0 and 1 are on disk; block inside shard 2
                block_forever(sys.argv[2])
        split.features.register_forward_pre_hook(hook)
        cache = ActivationCache(sys.argv[1], shard_size=2)
        extract_activations(split, inputs(), batch_size=2, cache=cache, progress=False)
        """,
        str(cache_dir),
        str(marker),
    )
    _kill_at_marker(child, marker)
    (entry,) = list(cache_dir.iterdir())
    manifest = json.loads((entry / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == ["0", "1"] and manifest["complete"] is False

    split, rows = tiny_split(), []
    split.features.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    cache = ActivationCache(cache_dir, shard_size=2)
    A = extract_activations(split, tiny_inputs(), batch_size=2, cache=cache, progress=False)
    assert sum(rows) == 8  # shards 2..5 only: the two finished shards were reused
    fresh = extract_activations(tiny_split(), tiny_inputs(), batch_size=2, progress=False)
    assert torch.equal(A, fresh)
    assert not list(entry.glob(".*.tmp"))  # a killed writer's temporary files are cleared


# ----------------------------------------------------------------------------- fitting
FIT_SETTINGS = {"n_concepts": 2, "patch_size": 8, "n_designs": 8, "max_iter": 30}


def _write_images(folder: Path) -> Path:
    return _tiny.write_png_folder(folder)


def _fit_and_save(images: Path, run: Path, seed: int) -> ConceptBank:
    ex = ConceptExplainer(tiny_split(), random_state=seed, progress=False, **FIT_SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.fit(str(images), class_id=1).save(run)
    return ConceptBank.load(run)


def test_killed_fit_leaves_the_previous_run_intact(tmp_path):
    images, run, marker = _write_images(tmp_path / "imgs"), tmp_path / "run", tmp_path / "blocked"
    good = _fit_and_save(images, run, seed=0)
    before = _snapshot(run)
    child = _start(
        """
        from face_concepts import ConceptExplainer
        from face_concepts.decomposition import registry
        real = registry.SOLVERS["hals"]
        def blocking(prob, U, W, callback=None, **kwargs):
            def cb(t, terms):
                if t == 3:  # in the middle of the iterations
                    block_forever(sys.argv[3])
            return real(prob, U, W, callback=cb, **kwargs)
        registry.SOLVERS["hals"] = blocking
        warnings.simplefilter("ignore")
        settings = json.loads(sys.argv[4])
        ex = ConceptExplainer(tiny_split(), random_state=1, progress=False, **settings)
        ex.fit(sys.argv[1], class_id=1).save(sys.argv[2])
        """,
        str(images),
        str(run),
        str(marker),
        json.dumps(FIT_SETTINGS),
    )
    _kill_at_marker(child, marker)
    assert _snapshot(run) == before  # nothing of the killed fit touched the run
    assert torch.equal(ConceptBank.load(run).W, good.W)
    # A fit keeps no partial state: resuming means running it again (as the first fit did).


# ----------------------------------------------------------------------------- saving
SAVE_BODY = """
    import torch
    import face_concepts._core.io as fio
    from face_concepts.pipeline.bank import ConceptBank
    run, seed, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "mid-write":  # the second temporary file (the JSON) is half written
        real_write, writes = fio._write_all, []
        def write_all(handle, data):
            writes.append(1)
            if len(writes) == 2:
                handle.write(data[: len(data) // 2]); handle.flush(); die()
            real_write(handle, data)
        fio._write_all = write_all
    else:  # just before the rename that publishes `where`
        real_replace = os.replace
        def replace(src, dst, *args, **kwargs):
            if os.path.basename(dst) == where:
                die()
            return real_replace(src, dst, *args, **kwargs)
        os.replace = replace
    g = torch.Generator().manual_seed(seed)
    tensors = {"W": torch.rand(3, 8, generator=g), "codes": torch.rand(50, 3, generator=g)}
    ConceptBank(tensors, {"layer": "features", "seed": seed}).save(run)
    """


KILL_POINTS = ["mid-write", "bank.safetensors", "bank.json"]


def test_save_killed_at_any_point_keeps_the_previous_run_or_none(tmp_path):
    old = _bank(0)
    cases = [(tmp_path / f"prev-{w}", w, True) for w in KILL_POINTS]
    cases += [(tmp_path / f"first-{w}", w, False) for w in ("mid-write", "bank.json")]
    children = []
    for run, where, has_previous in cases:
        if has_previous:
            old.save(run)
        children.append(_start(SAVE_BODY, str(run), "1", where, model=False))
    for proc in children:  # the five children run side by side
        _, err = proc.communicate(timeout=MARKER_TIMEOUT_S)
        assert proc.returncode == -signal.SIGKILL, err.decode()
    for run, where, has_previous in cases:
        if not has_previous:  # a first save that died never leaves a run that loads
            assert not ConceptBank.exists(run), where
            with pytest.raises(FileNotFoundError, match="was the save interrupted"):
                ConceptBank.load(run)
            continue
        loaded = ConceptBank.load(run)  # the previous bank, bit for bit
        assert loaded.metadata["seed"] == 0, where
        assert all(torch.equal(loaded.tensors[k], old.tensors[k]) for k in old.tensors)
        # The next save completes the interrupted one and leaves only the two files.
        _bank(2).save(run)
        assert sorted(p.name for p in run.iterdir()) == ["bank.json", "bank.safetensors"], where
        assert torch.equal(ConceptBank.load(run).W, _bank(2).W)


def test_a_mismatched_pair_never_loads(tmp_path):
    # Beyond process kills: a JSON and a tensor file from two different saves.
    a, b = _bank(0).save(tmp_path / "a"), _bank(1).save(tmp_path / "b")
    (a / "bank.safetensors").write_bytes((b / "bank.safetensors").read_bytes())
    with pytest.raises(BankError, match=r"bank\.safetensors"):
        ConceptBank.load(a)


# ----------------------------------------------------------------------------- determinism
DETERMINISM_BODY = """
    import hashlib, json
    import torch
    from torch import nn
    from face_concepts import ConceptExplainer
    from face_concepts.decomposition import FACE
    torch.set_num_threads(int(sys.argv[2]))
    warnings.simplefilter("ignore")
    digests = {}
    def sha(t):
        return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
    g = torch.Generator().manual_seed(0)
    A = torch.rand(80, 10, generator=g) * (torch.rand(80, 10, generator=g) > 0.3)
    head = nn.Linear(10, 4)
    with torch.no_grad():
        head.weight.copy_(torch.randn(4, 10, generator=g)); head.bias.zero_()
    for solver in ("hals", "pgd"):
        face = FACE(head, 4, kl_weight=0.5, solver=solver, max_iter=40, random_state=3,
                    init="random")
        digests[f"face-{solver}"] = sha(face.fit(A).concept_bank_)
    x = torch.rand(6, 3, 16, 16, generator=g)
    ex = ConceptExplainer(tiny_split(), n_concepts=2, patch_size=8, n_designs=8, max_iter=30,
                          random_state=5, progress=False).fit(x, class_id=1)
    digests["explainer-W"] = sha(ex.concept_bank_)
    digests["explainer-importance"] = sha(ex.importance_)
    digests["explainer-codes"] = sha(ex.image_codes_)
    ex.save(sys.argv[1])
    print(json.dumps(digests))
    """


def _tensor_digests(run: Path) -> dict[str, str]:
    bank = ConceptBank.load(run)
    return {
        name: hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()
        for name, t in bank.tensors.items()
    }


def test_same_seed_gives_bit_identical_banks_across_processes(tmp_path):
    # One thread each: two multi-threaded children oversubscribe a small shared machine. Other
    # thread counts are also bit-identical run to run, but differ from each other (see the doc).
    children = [_start(DETERMINISM_BODY, str(tmp_path / f"run{i}"), "1") for i in range(2)]
    first, second = (json.loads(_finish(c)) for c in children)
    assert first == second
    assert _tensor_digests(tmp_path / "run0") == _tensor_digests(tmp_path / "run1")
