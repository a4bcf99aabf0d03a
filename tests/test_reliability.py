"""Reliability and security: wrong inputs, broken files and hostile weights (docs/reliability.md).

Cases already proven elsewhere are cited in docs/reliability.md; the tests here cover the rest:
odd images through preprocessing, non-finite and all-zero activations, dead concepts, a full
(real, tiny tmpfs) disk, an unwritable output directory and a corrupt bank through the command
line, a malicious pickle as weights, and a scan of the source tree for unsafe deserialisation.
Everything runs on a seeded 6-channel conv net and images of at most 20 x 20 pixels.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import _tiny
import face_concepts._core.io as fio
from face_concepts import ConceptExplainer
from face_concepts._core.validation import dead_concepts
from face_concepts.activations.cache import ActivationCache
from face_concepts.activations.extract import extract_activations
from face_concepts.cli.main import main
from face_concepts.data import load_images, preprocess_images
from face_concepts.data.preprocess import Preprocess
from face_concepts.decomposition import FACE, NMF
from face_concepts.models import ModelSplit, load_model
from face_concepts.pipeline.bank import BankError, ConceptBank

ROOT = Path(__file__).resolve().parents[1]
TINY = "test:reliability"
MARKER_NAME = "pwned.txt"
SMALL_TORCHVISION = "torchvision:squeezenet1_1"  # 1.2 M parameters: cheap to build


# ----------------------------------------------------------------------------- helpers
def tiny_split(*, dtype: torch.dtype = torch.float32, scale: float = 0.5) -> ModelSplit:
    return _tiny.tiny_split(TINY, seed=1, dtype=dtype, scale=scale)


def write_images(folder: Path, n: int = 6, size: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def tiny(monkeypatch):
    """``load_model("test:reliability")`` returns the tiny model wherever the CLI looks."""
    return _tiny.patch_load_model(monkeypatch, tiny_split())


@pytest.fixture
def images(tmp_path) -> Path:
    # Spaces and non-ASCII characters: every command-line test below reads from such a folder.
    return write_images(tmp_path / "photos été 写真")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> ConceptExplainer:
    """One tiny fit shared by the tests that only need a fitted explainer or a saved run."""
    folder = write_images(tmp_path_factory.mktemp("fit") / "imgs")
    ex = ConceptExplainer(
        tiny_split(), n_concepts=2, patch_size=8, n_designs=8, max_iter=20, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ex.fit(str(folder), class_id=1)


FIT_ARGS = ["--n-concepts", "2", "--patch-size", "8", "--n-designs", "8", "--max-iter", "20"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fit_argv(images: Path, out: Path, *extra: str) -> list[str]:
    base = ["fit", "--model", TINY, "--images", str(images), "--class-id", "1", *FIT_ARGS]
    return [*base, "--out", str(out), "-q", *extra]


def assert_one_line_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if "warning:" not in line]
    assert code == expected_code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ----------------------------------------------------------------------------- images
@pytest.mark.parametrize("size", [(1, 1), (3, 2), (1, 40)])
def test_tiny_images_are_resized_not_refused(tmp_path, size):
    # A 1x1 image is a valid (if useless) photo: preprocessing resizes it like any other.
    Image.new("RGB", size, (200, 30, 10)).save(tmp_path / "tiny.png")
    x = preprocess_images(load_images(tmp_path), Preprocess(resize_size=16, crop_size=16))
    assert x.shape == (1, 3, 16, 16) and bool(torch.isfinite(x).all())


def test_images_smaller_than_the_patch_exit_1(capsys, tiny, images, tmp_path):
    code, _, err = run_cli(capsys, *fit_argv(images, tmp_path / "r", "--patch-size", "64"))
    assert_one_line_error(code, err, 1, "--patch-size 64", "16x16")
    assert not (tmp_path / "r").exists()


def test_empty_folder_and_no_usable_image_exit_1(capsys, tiny, tmp_path):
    empty = tmp_path / "empty folder"
    empty.mkdir()
    code, _, err = run_cli(capsys, *fit_argv(empty, tmp_path / "r"))
    assert_one_line_error(code, err, 1, "empty folder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "zero.png").write_bytes(b"")
    (broken / "fake.jpg").write_text("not an image")
    code, _, err = run_cli(capsys, *fit_argv(broken, tmp_path / "r"))
    assert code == 1 and "broken" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_activations_are_refused_by_the_fit(bad):
    A = torch.rand(12, 5, generator=torch.Generator().manual_seed(0))
    A[3, 2] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        FACE(nn.Linear(5, 3), 2, kl_weight=1.0).fit(A)


def test_half_precision_overflow_is_refused_at_extraction():
    # Weights x 1e4 overflow float16 (max 65504): the features hold inf and NaN.
    split = tiny_split(dtype=torch.float16, scale=1e4)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).half()
    with pytest.raises(ValueError, match=r"layer .* NaN or infinite.*float32"):
        extract_activations(split, x, progress=False)


def test_half_precision_overflow_never_reaches_the_cache(tmp_path):
    split = tiny_split(dtype=torch.float16, scale=1e4)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).half()
    cache = ActivationCache(tmp_path / "cache", shard_size=2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        extract_activations(split, x, cache=cache, progress=False)
    assert not list((tmp_path / "cache").rglob("shard_*"))


def test_half_precision_activations_that_fit_are_accepted():
    A = torch.rand(12, 5, generator=torch.Generator().manual_seed(0)).half()
    W = NMF(2, random_state=0, max_iter=50).fit(A).concept_bank_
    assert W.dtype == torch.float32 and bool(torch.isfinite(W).all())


@pytest.mark.parametrize("estimator", [NMF(2), FACE(nn.Linear(5, 3), 2, kl_weight=1.0)])
def test_all_zero_activations_are_a_clear_error(estimator):
    with pytest.raises(ValueError, match=r"A is all zeros \(12 x 5\).*another layer"):
        estimator.fit(torch.zeros(12, 5))


@pytest.mark.parametrize(
    ("flags", "exit_code", "needle"),
    [
        # wrong whatever the model and images: usage errors, refused before loading anything
        (["--kl-weight", "-1"], 2, "--kl-weight must be >= 0"),
        (["--kl-weight", "nan"], 2, "--kl-weight must be a finite number"),
        (["--kl-weight", "inf"], 2, "--kl-weight must be a finite number"),
        (["--class-id", "-1"], 2, "--class-id must be >= 0"),
        # wrong for this model or these images: found once they are loaded
        (["--n-concepts", "500"], 1, "--n-concepts 500 must be <="),
        (["--class-id", "3"], 1, "--class-id must be <= 2"),
    ],
)
def test_bad_numbers_on_the_command_line(capsys, tiny, images, tmp_path, flags, exit_code, needle):
    code, _, err = run_cli(capsys, *fit_argv(images, tmp_path / "r", *flags))
    assert_one_line_error(code, err, exit_code, needle)
    assert not (tmp_path / "r").exists()


def test_dead_concepts_oracle():
    U = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    W = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    # concept 1: zero codes; concept 2: zero direction
    assert dead_concepts(U, W) == [1, 2]
    assert dead_concepts(torch.rand(4, 2) + 0.1, torch.rand(2, 3) + 0.1) == []
    with pytest.raises(ValueError, match="agree in r"):
        dead_concepts(U, W.T)


def test_dead_concept_is_warned_and_recorded_when_saved(fitted, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy fit saves without a warning
        fitted.save(tmp_path / "alive")
    assert ConceptBank.load(tmp_path / "alive").metadata["dead_concepts"] == []
    codes = fitted.row_codes_.clone()
    codes[:, 1] = 0.0  # as if concept 1 had died during the fit
    monkeypatch.setattr(fitted, "row_codes_", codes)
    with pytest.warns(UserWarning, match=r"1 of 2 concepts are dead .*\[1\].*smaller n_concepts"):
        fitted.save(tmp_path / "dead")
    assert ConceptBank.load(tmp_path / "dead").metadata["dead_concepts"] == [1]


# ----------------------------------------------------------------------------- files
def test_unwritable_output_directory_exit_1(capsys, tiny, images, tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):  # root ignores permission bits: refuse every open
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(fio, "open", refuse, raising=False)
    code, _, err = run_cli(capsys, *fit_argv(images, tmp_path / "out"))
    assert_one_line_error(code, err, 1, "cannot write", "permission denied")
    assert not ConceptBank.exists(tmp_path / "out")


def test_output_path_under_a_file_exit_1(capsys, tiny, images, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli(capsys, *fit_argv(images, tmp_path / "afile" / "run"))
    assert_one_line_error(code, err, 1, "afile")


@pytest.mark.parametrize("damage", ["truncate", "edit_json"])
def test_damaged_bank_through_the_cli_exit_1(capsys, tiny, fitted, tmp_path, damage):
    run = fitted.save(tmp_path / "run")
    assert tiny.fingerprint == fitted.split.fingerprint  # only the damage can fail the load
    if damage == "truncate":
        data = (run / "bank.safetensors").read_bytes()
        (run / "bank.safetensors").write_bytes(data[: len(data) // 2])
    else:
        doc = json.loads((run / "bank.json").read_text())
        doc["metadata"]["class_id"] = 2
        (run / "bank.json").write_text(json.dumps(doc))
    code, out, err = run_cli(capsys, "evaluate", str(run), "-q")
    assert_one_line_error(code, err, 1, "bank.")
    assert out == ""
    with pytest.raises(BankError):
        ConceptBank.load(run)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 96 KiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "tiny_disk"
    mnt.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_full_disk_is_reported_and_the_previous_run_survives(tiny_disk):
    g = torch.Generator().manual_seed(0)
    old = ConceptBank({"W": torch.rand(3, 8, generator=g)}, {"layer": "x"})
    run = old.save(tiny_disk / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    big = ConceptBank({"W": torch.rand(3, 8, generator=g), "codes": torch.rand(40_000, 3)})
    with pytest.raises(OSError, match="no space left on device") as info:
        big.save(run)
    assert info.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # no temporary files
    assert torch.equal(ConceptBank.load(run).W, old.W)


def test_full_disk_during_activation_caching_is_reported(tiny_disk):
    split = tiny_split()
    x = torch.rand(600, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cache = ActivationCache(tiny_disk / "cache", shard_size=1)
    with pytest.raises(OSError, match="no space left on device"):
        extract_activations(split, x, cache=cache, progress=False, data_hash="d")
    assert not list((tiny_disk / "cache").rglob("*.tmp"))


def test_unwritable_cache_directory_is_reported(tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(fio, "open", refuse, raising=False)
    cache = ActivationCache(tmp_path / "cache")
    with pytest.raises(PermissionError, match=r"cannot write .*permission denied"):
        extract_activations(tiny_split(), torch.rand(2, 3, 16, 16), cache=cache, progress=False)


# ----------------------------------------------------------------------------- security
class _Exploit:
    """Unpickling this object would create the marker file (arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _evil_weights(folder: Path) -> tuple[Path, Path]:
    marker = folder / MARKER_NAME
    path = folder / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": _Exploit(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_malicious_pickle_is_refused_by_load_model(tmp_path):
    path, marker = _evil_weights(tmp_path)
    with pytest.raises(ValueError, match=r"could not be loaded safely.*weights_only=True"):
        load_model(SMALL_TORCHVISION, weights=path)
    assert not marker.exists()


def test_malicious_pickle_is_refused_by_the_cli(capsys, images, tmp_path):
    path, marker = _evil_weights(tmp_path)
    argv = ["fit", "--model", SMALL_TORCHVISION, "--weights", str(path), "--images", str(images)]
    code, _, err = run_cli(capsys, *argv, "--class-id", "1", "--out", str(tmp_path / "r"), "-q")
    assert_one_line_error(code, err, 1, "could not be loaded safely")
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "dynamic"
    return None


def _unsafe_deserialisation(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node, owner, name in _calls(tree):
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if owner in {"pickle", "dill", "cloudpickle", "joblib"} and name in {"load", "loads"}:
            found.append(f"{where} {owner}.{name}")
        if name == "Unpickler":
            found.append(f"{where} Unpickler")
        if owner == "torch" and name == "load" and _keyword(node, "weights_only") is not True:
            found.append(f"{where} torch.load without weights_only=True")
        if owner in {"np", "numpy"} and name == "load" and _keyword(node, "allow_pickle") is True:
            found.append(f"{where} np.load(allow_pickle=True)")
    return found


def test_scanner_finds_unsafe_calls(tmp_path):
    sample = ROOT / "tests" / "_scan_sample.py"
    try:
        sample.write_text(
            "import pickle, torch, numpy as np\n"
            "pickle.load(f)\ntorch.load('w')\ntorch.load('w', weights_only=False)\n"
            "torch.load('w', weights_only=True)\nnp.load('a', allow_pickle=True)\nnp.load('a')\n"
        )
        found = _unsafe_deserialisation(sample)
    finally:
        sample.unlink()
    assert [f.split(" ", 1)[1] for f in found] == [
        "pickle.load",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "np.load(allow_pickle=True)",
    ]


def test_no_unsafe_deserialisation_in_the_project():
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) > 20
    found = [hit for path in files for hit in _unsafe_deserialisation(path)]
    assert found == []


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    import face_concepts.cli.main as cli

    def interrupted(settings):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.HANDLERS, "evaluate", interrupted)
    code, out, err = run_cli(capsys, "evaluate", "some_run")
    assert code == 130 and out == "" and err.strip() == "face-concepts: interrupted"


def test_unknown_layer_on_the_command_line_suggests_close_names(capsys, images, tmp_path):
    import torchvision

    weights = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), weights)
    argv = ["fit", "--model", SMALL_TORCHVISION, "--weights", str(weights), "--layer", "featurs"]
    argv += ["--images", str(images), "--class-id", "1", "--out", str(tmp_path / "r"), "-q"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, 1, "'featurs'", "close names", "'features'")


def test_fit_warns_and_records_a_concept_that_died():
    # A zero code column with a zero row of W is a fixed point of every solver step (its
    # curvature is zero), so concept 2 stays dead: an exact, constructed case.
    g = torch.Generator().manual_seed(0)
    A = torch.rand(30, 6, generator=g)
    U0, W0 = torch.rand(30, 3, generator=g), torch.rand(3, 6, generator=g)
    U0[:, 2], W0[2] = 0.0, 0.0
    est = FACE(None, 3, kl_weight=0.0, init="custom", max_iter=20, random_state=0)
    with pytest.warns(RuntimeWarning, match=r"1 of 3 concepts died .*\[2\]"):
        est.fit(A, U0=U0, W0=W0)
    assert est.dead_concepts_ == [2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        healthy = FACE(None, 3, kl_weight=0.0, max_iter=20, random_state=0).fit(A)
    assert healthy.dead_concepts_ == []
