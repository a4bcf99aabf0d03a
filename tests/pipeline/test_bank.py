"""Saved runs: round trips, tamper detection, atomic saves, clear errors, no pickle."""

from __future__ import annotations

import ast
import datetime as dt
import errno
import hashlib
import json
import os
import pickle
import platform
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import face_concepts._core.io as fio
from face_concepts.pipeline.bank import BankError, ConceptBank, model_fingerprint

SRC = Path(__file__).resolve().parents[2] / "src" / "face_concepts"


def _bank(seed: int = 0, **extra_meta) -> ConceptBank:
    g = torch.Generator().manual_seed(seed)
    r, p, n = 3, 5, 7
    codes = torch.rand(n, r, generator=g)
    tensors = {
        "W": torch.rand(p, r, generator=g).T,  # a non-contiguous view
        "importance": torch.rand(r, generator=g, dtype=torch.float64),
        "codes": codes,
        "importance_local": codes[:4],  # shares storage with "codes"
        "crops": torch.randint(0, 256, (2, 3, 4, 4), generator=g, dtype=torch.uint8),
        "labels": torch.arange(n, dtype=torch.int64),
        "half": torch.rand(r, generator=g).to(torch.bfloat16),
        "mask": torch.rand(n, generator=g) > 0.5,
    }
    metadata = {
        "model": "torchvision:mobilenet_v2",
        "fingerprint": "0123456789abcdef",
        "layer": "features",
        "preprocess": {"resize_size": 256, "crop_size": 224, "mean": [0.485, 0.456, 0.406]},
        "method": "face",
        "params": {"n_concepts": r, "kl_weight": 1.0, "max_iter": 50, "solver": "mu"},
        "seed": seed,
        "class_id": 285,
        "class_name": "Egyptian cat",
        "metrics": {"c_del": 0.25, "acc": 1.0},
        **extra_meta,
    }
    return ConceptBank(tensors, metadata)


def _listing(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir())


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir()}


def _assert_same(loaded: ConceptBank, bank: ConceptBank) -> None:
    assert sorted(loaded.tensors) == sorted(bank.tensors)
    for name, t in bank.tensors.items():
        assert loaded.tensors[name].dtype == t.dtype, name
        assert torch.equal(loaded.tensors[name], t), name
    for key, value in bank.metadata.items():
        assert loaded.metadata[key] == value, key


# ---------------------------------------------------------------------- round trip
def test_round_trip_keeps_tensors_dtypes_and_metadata(tmp_path):
    bank = _bank()
    run = bank.save(tmp_path / "run")
    assert _listing(run) == ["bank.json", "bank.safetensors"]
    loaded = ConceptBank.load(run)
    _assert_same(loaded, bank)
    assert (loaded.n_concepts, loaded.n_features) == (3, 5)
    assert torch.equal(loaded.importance, bank.importance)
    assert loaded.fingerprint == "0123456789abcdef" and loaded.layer == "features"
    # The tensor file is plain safetensors that any tool can read.
    assert torch.equal(load_file(run / "bank.safetensors")["W"], bank.W)


def test_save_records_versions_time_and_manifest(tmp_path):
    run = _bank().save(tmp_path)
    meta = ConceptBank.load(run).metadata
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["python"] == platform.python_version()
    assert {"face_concepts", "numpy", "safetensors"} <= set(meta["versions"])
    assert dt.datetime.fromisoformat(meta["created"]).tzinfo is not None
    document = json.loads((run / "bank.json").read_text())
    assert document["format_version"] == 1
    data = (run / "bank.safetensors").read_bytes()
    assert document["file_sha256"] == hashlib.sha256(data).hexdigest()
    entry = document["tensors"]["crops"]
    crops = _bank().tensors["crops"]
    assert entry["shape"] == [2, 3, 4, 4] and entry["dtype"] == "uint8"
    assert entry["sha256"] == hashlib.sha256(crops.numpy().tobytes()).hexdigest()


def test_resave_of_loaded_bank_round_trips(tmp_path):
    first = ConceptBank.load(_bank().save(tmp_path / "a"))
    second = ConceptBank.load(first.save(tmp_path / "b"))
    _assert_same(second, first)
    assert second.metadata["created"] == first.metadata["created"]


def test_load_accepts_the_json_path_and_exists(tmp_path):
    run = _bank().save(tmp_path)
    assert ConceptBank.exists(run) and not ConceptBank.exists(tmp_path / "nope")
    assert ConceptBank.load(run / "bank.json").n_concepts == 3


# ---------------------------------------------------------------------- tamper detection
def test_truncated_tensor_file_is_reported(tmp_path):
    run = _bank().save(tmp_path)
    data = (run / "bank.safetensors").read_bytes()
    (run / "bank.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BankError, match=r"bank\.safetensors.*truncated"):
        ConceptBank.load(run)


def test_flipped_byte_in_tensor_file_is_reported(tmp_path):
    run = _bank().save(tmp_path)
    data = bytearray((run / "bank.safetensors").read_bytes())
    data[-1] ^= 0x01
    (run / "bank.safetensors").write_bytes(bytes(data))
    with pytest.raises(BankError, match=r"bank\.safetensors"):
        ConceptBank.load(run)
    # Even with the file checksum "repaired", the per-tensor checksums catch it.
    document = json.loads((run / "bank.json").read_text())
    document["file_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (run / "bank.json").write_text(json.dumps(document))
    with pytest.raises(BankError, match="does not match its entry"):
        ConceptBank.load(run)


def test_edited_tensor_checksum_in_json_is_reported(tmp_path):
    run = _bank().save(tmp_path)
    document = json.loads((run / "bank.json").read_text())
    document["tensors"]["W"]["sha256"] = "0" * 64
    (run / "bank.json").write_text(json.dumps(document))
    with pytest.raises(BankError, match=r"'W'.*bank\.json"):
        ConceptBank.load(run)


def test_edited_metadata_is_reported(tmp_path):
    run = _bank().save(tmp_path)
    document = json.loads((run / "bank.json").read_text())
    document["metadata"]["fingerprint"] = "ffffffffffffffff"  # e.g. to silence a mismatch
    (run / "bank.json").write_text(json.dumps(document))
    with pytest.raises(BankError, match=r"metadata in .*bank\.json was edited"):
        ConceptBank.load(run)


def test_truncated_json_is_reported(tmp_path):
    run = _bank().save(tmp_path)
    text = (run / "bank.json").read_text()
    (run / "bank.json").write_text(text[: len(text) // 2])
    with pytest.raises(BankError, match=r"bank\.json.*truncated"):
        ConceptBank.load(run)


def test_newer_format_version_is_reported(tmp_path):
    run = _bank().save(tmp_path)
    document = json.loads((run / "bank.json").read_text())
    document["format_version"] = 2
    (run / "bank.json").write_text(json.dumps(document))
    with pytest.raises(BankError, match=r"format 2.*upgrade"):
        ConceptBank.load(run)


def test_missing_run_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved run"):
        ConceptBank.load(tmp_path / "missing")


def test_missing_tensor_file_is_reported(tmp_path):
    run = _bank().save(tmp_path)
    (run / "bank.safetensors").unlink()
    with pytest.raises(BankError, match="missing"):
        ConceptBank.load(run)


def test_fingerprint_and_layer_mismatch_name_both(tmp_path):
    run = _bank().save(tmp_path)
    ConceptBank.load(run, expected_fingerprint="0123456789abcdef", expected_layer="features")
    with pytest.raises(BankError) as info:
        ConceptBank.load(run, expected_fingerprint="fedcba9876543210")
    assert "0123456789abcdef" in str(info.value) and "fedcba9876543210" in str(info.value)
    with pytest.raises(BankError) as info:
        ConceptBank.load(run, expected_layer="features.17")
    assert "'features'" in str(info.value) and "features.17" in str(info.value)


# ---------------------------------------------------------------------- atomic saves
def _fail_on_json_replace(monkeypatch, name: str = "bank.json"):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.EIO, "simulated crash")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("name", ["bank.json", "bank.safetensors"])
def test_interrupted_save_keeps_previous_run(tmp_path, monkeypatch, name):
    old = _bank(seed=0)
    run = old.save(tmp_path)
    before = _snapshot(run)
    _fail_on_json_replace(monkeypatch, name)
    with pytest.raises(OSError, match=re.escape(name)):
        _bank(seed=1).save(run)
    monkeypatch.undo()
    assert _snapshot(run) == before  # no temporary or backup files, same bytes
    _assert_same(ConceptBank.load(run), old)


def test_interrupted_first_save_leaves_no_run(tmp_path, monkeypatch):
    _fail_on_json_replace(monkeypatch)
    with pytest.raises(OSError):
        _bank().save(tmp_path / "run")
    monkeypatch.undo()
    assert _listing(tmp_path / "run") == []
    assert not ConceptBank.exists(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        ConceptBank.load(tmp_path / "run")


def test_crash_between_renames_is_recovered(tmp_path):
    """A process killed after the tensor rename: old JSON, new tensor file, old kept as backup."""
    old, new = _bank(seed=0), _bank(seed=1)
    run = old.save(tmp_path / "run")
    other = new.save(tmp_path / "other")
    shutil.copy(run / "bank.safetensors", run / ".bank.safetensors.prev")
    shutil.copy(other / "bank.safetensors", run / "bank.safetensors")
    _assert_same(ConceptBank.load(run), old)  # the JSON still describes the backup
    latest = _bank(seed=2)
    latest.save(run)
    assert _listing(run) == ["bank.json", "bank.safetensors"]
    _assert_same(ConceptBank.load(run), latest)


def test_failed_save_after_a_crash_still_keeps_the_good_run(tmp_path, monkeypatch):
    old, new = _bank(seed=0), _bank(seed=1)
    run = old.save(tmp_path / "run")
    other = new.save(tmp_path / "other")
    shutil.copy(run / "bank.safetensors", run / ".bank.safetensors.prev")
    shutil.copy(other / "bank.safetensors", run / "bank.safetensors")
    _fail_on_json_replace(monkeypatch)
    with pytest.raises(OSError):
        _bank(seed=2).save(run)
    monkeypatch.undo()
    _assert_same(ConceptBank.load(run), old)


def test_unwritable_directory_is_reported(tmp_path, monkeypatch):
    old = _bank()
    run = old.save(tmp_path / "run")
    before = _snapshot(run)
    if os.geteuid() == 0:  # root ignores permission bits: simulate the refusal instead

        def refuse(path, *args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(fio, "open", refuse, raising=False)
    else:
        run.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=r"cannot write .*run.*permission denied"):
            _bank(seed=1).save(run)
    finally:
        run.chmod(0o700)
        monkeypatch.undo()
    assert _snapshot(run) == before
    _assert_same(ConceptBank.load(run), old)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_full_disk_is_reported_without_leftovers(tmp_path, monkeypatch, fail_at):
    old = _bank()
    run = old.save(tmp_path / "run")
    before = _snapshot(run)
    calls = []
    real = fio._write_all

    def write_all(handle, data):  # the fail_at-th write runs out of space half way
        calls.append(1)
        if len(calls) == fail_at:
            handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, data)

    monkeypatch.setattr(fio, "_write_all", write_all)
    with pytest.raises(OSError, match=r"cannot write .*no space left") as info:
        _bank(seed=1).save(run)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert _snapshot(run) == before
    _assert_same(ConceptBank.load(run), old)


def test_unserialisable_metadata_names_the_key_and_writes_nothing(tmp_path):
    bank = _bank(extra={"bad": object()})
    with pytest.raises(TypeError, match=r"\['extra'\]\['bad'\]"):
        bank.save(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_save_to_a_file_path_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        _bank().save(tmp_path / "f")


# ---------------------------------------------------------------------- generic helpers
def test_atomic_helpers_write_and_respect_umask(tmp_path):
    import numpy as np

    path = fio.atomic_write_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": (1, 2)})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [1, 2]}
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # readable like any new file
    fio.atomic_write_bytes(tmp_path / "sub" / "x.bin", b"abc")
    assert (tmp_path / "sub" / "x.bin").read_bytes() == b"abc"
    w = torch.arange(6.0).reshape(2, 3).T
    fio.atomic_save_safetensors(tmp_path / "t.safetensors", {"w": w}, {"k": "v"})
    assert torch.equal(load_file(tmp_path / "t.safetensors")["w"], w)
    assert _listing(tmp_path) == ["m.json", "sub", "t.safetensors"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = fio.atomic_write_bytes(tmp_path / "a.bin", b"old")

    def full(handle, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fio, "_write_all", full)
    with pytest.raises(OSError, match=r"a\.bin"):
        fio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and _listing(tmp_path) == ["a.bin"]


# ---------------------------------------------------------------------- validation
def test_invalid_banks_are_refused():
    with pytest.raises(ValueError, match="'W'"):
        ConceptBank({"importance": torch.ones(3)})
    with pytest.raises(ValueError, match="importance"):
        ConceptBank({"W": torch.ones(3, 4), "importance": torch.ones(4)})
    with pytest.raises(ValueError, match="codes"):
        ConceptBank({"W": torch.ones(3, 4), "codes": torch.ones(5, 4)})
    with pytest.raises(ValueError, match="crops"):
        ConceptBank({"W": torch.ones(3, 4), "crops": torch.ones(1, 3, 2, 2)})
    with pytest.raises(TypeError, match="metadata"):
        ConceptBank({"W": torch.ones(3, 4)}, metadata=[1])
    with pytest.raises(TypeError, match="expected_fingerprint"):
        ConceptBank.load("x", expected_fingerprint=123)


# ---------------------------------------------------------------------- no pickle
def test_modules_never_import_pickle_or_torch_load():
    for name in ("pipeline/bank.py", "_core/io.py", "_core/atomic_pair.py"):
        tree = ast.parse((SRC / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in {"pickle", "dill"} for a in node.names)
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in {"pickle", "dill"}
            if isinstance(node, ast.Attribute):
                assert node.attr not in {"load_state_dict", "Unpickler"}
                if isinstance(node.value, ast.Name) and node.value.id == "torch":
                    assert node.attr != "load", f"torch.load in {name}"


def test_load_runs_without_pickle(tmp_path, monkeypatch):
    run = _bank().save(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a bank")

    for attr in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, attr, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    _assert_same(ConceptBank.load(run), _bank())


# ---------------------------------------------------------------------- fingerprints
def test_model_fingerprint_stable_and_sensitive():
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    b.load_state_dict(a.state_dict())
    fp = model_fingerprint(a)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert model_fingerprint(b) == fp
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 1e-6
    assert model_fingerprint(b) != fp
    b.load_state_dict(a.state_dict())
    b[1].num_batches_tracked += 1  # buffers count too
    assert model_fingerprint(b) != fp
    assert model_fingerprint(a.double()) != fp  # same values, other dtype
    with pytest.raises(TypeError, match="model"):
        model_fingerprint("resnet")


def test_model_fingerprint_matches_model_split():
    from face_concepts.models.base import ModelSplit

    g = torch.Generator().manual_seed(0)
    features = nn.Conv2d(3, 4, 3)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        for p in [*features.parameters(), *head.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g))
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    split = ModelSplit(features, head, model=model, input_size=8)
    assert model_fingerprint(model) == split.fingerprint
