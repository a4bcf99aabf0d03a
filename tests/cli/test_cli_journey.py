"""A new user's journey through the command line, off the bundled model's beaten path (issue 18).

Every test runs ``face-concepts`` as a user does, in a child process (``python -m
face_concepts``), and reads its exit code, stdout and stderr. Children that fit use the tiny
seeded model of ``_tiny.py`` (the child patches ``load_model`` for the spec ``test:tiny``, then
runs the real ``main``), or a real torchvision architecture with ``--weights random``. Usage
errors must come before any model is loaded, so those children never import torch.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import _tiny
from face_concepts.pipeline.bank import ConceptBank

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
TINY = "test:tiny"
TINY_FIT = ["--n-concepts", "2", "--patch-size", "8", "--n-designs", "8", "--max-iter", "20"]
# A usage error is found from the flags alone: the child exits long before a model could load.
USAGE_SECONDS = 20
# Offline, a hub download must give up in seconds; before the probe it retried for about a
# minute (5 retries with back-off, per file). Generous: the child's imports take up to ~15 s
# on a busy 2-core machine.
OFFLINE_SECONDS = 40

TINY_CHILD = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import _tiny, face_concepts, face_concepts.models
split = _tiny.tiny_split({TINY!r}, seed=0)
real = face_concepts.models.load_model
def fake(spec, weights=None, **kwargs):
    return split if spec == {TINY!r} else real(spec, weights, **kwargs)
face_concepts.models.load_model = face_concepts.load_model = fake
from face_concepts.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def face(*args: object, cwd: Path, env: dict[str, str] | None = None, tiny: bool = False):
    """Run ``face-concepts ARGS`` in a child process; ``tiny=True`` knows ``--model test:tiny``."""
    head = ["-c", TINY_CHILD] if tiny else ["-m", "face_concepts"]
    return subprocess.run(
        [sys.executable, *head, *map(str, args)], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=600,
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def images(tmp_path) -> Path:
    return _tiny.write_png_folder(tmp_path / "photos", n=6)


def tiny_fit(images: Path, out: Path, *extra: object, cwd: Path):
    args = ["fit", "--model", TINY, "--images", images, "--class-id", "1", *TINY_FIT]
    return face(*args, "--out", out, *extra, cwd=cwd, tiny=True)


# ----------------------------------------------------------------------------- item 9: validation
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--kl-weight", "-1"], "--kl-weight must be >= 0"),
        (["--kl-weight", "nan"], "--kl-weight must be a finite number"),
        (["--n-concepts", "0"], "--n-concepts must be >= 1"),
        (["--patch-size", "0"], "--patch-size must be >= 1"),
        (["--n-designs", "1"], "--n-designs must be >= 2"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--max-iter", "0"], "--max-iter must be >= 1"),
        (["--tol=-1e-3"], "--tol must be >= 0"),
        (["--class-id", "-3"], "--class-id must be >= 0"),
        (["--method", "craftx"], "--method must be one of face, face-paper, nmf, craft, ice"),
        (
            ["--importance-precision", "half"],
            "--importance-precision must be one of auto, full, bfloat16, got 'half'",
        ),
    ],
)
def test_bad_flags_are_refused_before_anything_is_loaded(tmp_path, images, flags, needle):
    # torchvision:resnet18 without --weights would start a download: the error must come first.
    argv = ["fit", "--model", "torchvision:resnet18", "--images", images, "--class-id", "1"]
    start = time.perf_counter()
    proc = face(*argv, "--out", tmp_path / "run", *flags, cwd=tmp_path)
    seconds = time.perf_counter() - start
    line = one_error_line(proc, 2, "face-concepts fit: error: ", needle)
    assert "loading model" not in proc.stderr and seconds < USAGE_SECONDS, (seconds, line)
    assert not (tmp_path / "run").exists()


def test_a_method_typo_suggests_the_method(tmp_path):
    proc = face("fit", "--method", "craftx", cwd=tmp_path)
    one_error_line(proc, 2, "did you mean 'craft'?")


def test_the_cli_method_list_is_the_registry():
    from face_concepts.cli.common import METHOD_NAMES
    from face_concepts.methods.registry import METHODS

    assert sorted(METHOD_NAMES) == sorted(METHODS)


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["fit", "--n-concepts", "three"], "face-concepts fit"),
        (["fit", "--signed", "abs"], "face-concepts fit"),
        (["evaluate"], "face-concepts evaluate"),
        (["bogus"], "face-concepts"),
        ([], "face-concepts"),
    ],
)
def test_argparse_errors_are_one_line_with_a_hint(tmp_path, argv, prog):
    proc = face(*argv, cwd=tmp_path)
    line = one_error_line(proc, 2, f"{prog}: error: ")
    assert line.endswith(f"(see {prog} --help)") and "usage:" not in proc.stderr
    assert proc.stdout == ""


def test_quiet_silences_warnings_and_progress(tmp_path, images):
    (images / "broken.png").write_bytes(b"")  # skipped with a warning
    loud = tiny_fit(images, tmp_path / "loud", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "face-concepts: warning:" in loud.stderr and "broken.png" in loud.stderr
    # issue 18 item 2: the solver's progress (iteration, objective, time) while it runs
    assert re.search(r"iteration 1: objective [0-9.e+-]+ \(recon .*KL .*\), [0-9.]+ s", loud.stderr)
    quiet = tiny_fit(images, tmp_path / "quiet", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "run " in quiet.stdout  # results still go to stdout


# ----------------------------------------------------------------------------- item 10: docs and help
def test_config_keys_may_be_spelled_as_flags(tmp_path):
    cfg = tmp_path / "fit.toml"
    cfg.write_text("class-id = -1\n[fit]\nn-concepts = 3\n")
    proc = face("fit", "--config", cfg, cwd=tmp_path)
    # the key was read (before: "unknown key 'class-id'") and then checked like the flag
    one_error_line(proc, 2, "--class-id must be >= 0")
    from face_concepts.cli.main import build_parser
    from face_concepts.cli.settings import resolve_settings

    cfg.write_text('class-id = "tabby"\nkl-weight = 2\n[fit]\nn-concepts = 3\nmax_iter = 9\n')
    s = resolve_settings(build_parser().parse_args(["fit", "--config", str(cfg)]))
    assert (s.class_id, s.kl_weight, s.n_concepts, s.max_iter) == ("tabby", 2.0, 3, 9)
    cfg.write_text("n-concepts = 3\nn_concepts = 4\n")
    proc = face("fit", "--config", cfg, cwd=tmp_path)
    one_error_line(proc, 2, "'n-concepts' and 'n_concepts' are the same setting")


def test_help_states_the_defaults(tmp_path):
    from face_concepts.decomposition.registry import DEFAULTS

    proc = face("fit", "--help", cwd=tmp_path, env={"COLUMNS": "2000"})  # no wrapped lines
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "its default" not in text
    caps = DEFAULTS["hals"]["max_iter"], DEFAULTS["adam"]["max_iter"]
    for needle in (
        "default: bundled:mobilenet_v2",  # the default model
        "face and nmf {}, face-paper {}".format(*caps),  # --max-iter: the solvers' own
        "face and nmf 1e-5",  # --tol
        "default: 1.0",  # --kl-weight, and why it is not FACE()'s 1e-5
        "authors' 1e-5",
        "per forward pass of the model",  # --batch-size is not the factorisation's
        "Not a mini-batch of the factorisation",
        "--stability",
        "--signed {posneg,relu}",
        "--overwrite",
        "'random' for untrained",
        "its name in the model's categories",
    ):
        assert needle in text, needle


def test_help_speaks_in_flags_not_python_arguments(tmp_path):
    """Every command's --help names settings as flags (--target-agreement, --fit-batch-size), as
    its messages do; the explainer's help texts, shared with Python, name arguments."""
    from face_concepts.cli.common import OPTIONS

    identifiers = [k for k in OPTIONS if "_" in k]
    assert "target_agreement" in identifiers and "fit_batch_size" in identifiers
    for command in ("fit", "evaluate", "report", "explain", "atlas", "demo"):
        proc = face(command, "--help", cwd=tmp_path, env={"COLUMNS": "2000"})
        assert proc.returncode == 0, proc.stderr
        for key in identifiers:
            assert not re.search(rf"(?<![\w./-]){key}(?![\w/])", proc.stdout), (command, key)
    text = face("fit", "--help", cwd=tmp_path, env={"COLUMNS": "2000"}).stdout
    assert "reaches --target-agreement" in text and "with --kl-weight auto" in text
    assert "(that is --fit-batch-size)" in text


def test_kl_weight_defaults_are_explained_in_the_docstring():
    from face_concepts import ConceptExplainer

    doc = " ".join(ConceptExplainer.__doc__.split())
    assert "Default 1.0, unlike the engine ``FACE(kl_weight=1e-5)``" in doc


def test_class_names_and_near_matches(tmp_path, images):
    args = ["fit", "--model", TINY, "--images", images, *TINY_FIT, "-q", "--json"]
    proc = face(*args, "--class-id", "Cat", "--out", tmp_path / "cat", cwd=tmp_path, tiny=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["class_id"], summary["class_name"]) == (2, "cat")
    proc = face(*args, "--class-id", "bea", "--out", tmp_path / "x", cwd=tmp_path, tiny=True)
    one_error_line(proc, 2, "--class-id 'bea' is not a class name of test:tiny", "'bee' (1)")
    assert not (tmp_path / "x").exists()


def test_stability_on_request(tmp_path, images):
    proc = tiny_fit(images, tmp_path / "run", "--stability", "--json", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    value = json.loads(proc.stdout)["metrics"]["fit"]["stability"]
    assert isinstance(value, float) and -1.0 <= value <= 1.0
    assert ConceptBank.load(tmp_path / "run").metadata["metrics"]["fit"]["stability"] == value


def test_stability_needs_five_images(tmp_path, monkeypatch, capsys):
    from face_concepts.cli.main import main

    _tiny.patch_load_model(monkeypatch, _tiny.tiny_split(TINY, seed=0))
    few = _tiny.write_png_folder(tmp_path / "few", n=3)
    argv = ["fit", "--model", TINY, "--images", str(few), "--class-id", "1", *TINY_FIT]
    assert main([*argv, "--stability", "--json", "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "C-Stab not computed: it refits on 5 folds" in err
    assert json.loads(out)["metrics"]["fit"]["stability"] is None


def test_docs_the_code_points_to_exist():
    pointers = [ROOT / "Makefile", ROOT / "src/face_concepts/data/bundled.py"]
    assert all("docs/assets.md" in p.read_text() for p in pointers)
    text = (ROOT / "docs/assets.md").read_text()
    for needle in ("bundled:mobilenet_v2", "--no-deps", "--weights random", "foolbox"):
        assert needle in text


# ----------------------------------------------------------------------------- item 11: install
def test_pyproject_builds_without_deprecation_warnings():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught] == []
    assert dist.metadata.license_expression == "MIT"


def test_make_setup_prints_its_steps(tmp_path):
    proc = subprocess.run(
        ["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True,
        cwd=ROOT, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0 and "No such file" in proc.stderr:
        pytest.skip("make is not installed")
    steps = [line for line in proc.stdout.splitlines() if "face-concepts setup:" in line]
    assert [s.split('"')[3][:5] for s in steps[:4]] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    installs = [line for line in proc.stdout.splitlines() if "pip install" in line]
    assert installs and all(" -q" in line for line in installs)
    assert not any(line.lstrip().startswith("#") for line in proc.stdout.splitlines())


# ----------------------------------------------------------------------------- item 2: retries
def test_a_retry_reads_its_activations_from_the_cache_and_says_so(tmp_path, images):
    """The default cache serves a retry with other settings, and the progress line says so;
    ``--no-cache`` extracts again."""
    env = {"FACE_CONCEPTS_CACHE": str(tmp_path / "cache")}
    args = ["fit", "--model", TINY, "--images", images, "--class-id", "1", *TINY_FIT]

    def activation_lines(out: str, *extra: str) -> list[str]:
        proc = face(*args, "--out", tmp_path / out, *extra, cwd=tmp_path, env=env, tiny=True)
        assert proc.returncode == 0, proc.stderr
        return [ln for ln in proc.stderr.splitlines() if ln.startswith("activations:")]

    first = activation_lines("a")
    assert first and not any("cache" in ln for ln in first)
    retry = activation_lines("b", "--n-concepts", "3")
    assert len(retry) == len(first)
    assert all(ln.endswith("all read from the cache") for ln in retry), retry
    assert not any("cache" in ln for ln in activation_lines("c", "--no-cache"))


# ----------------------------------------------------------------------------- item 3: advice
def test_no_python_expressions_in_cli_messages(tmp_path, images):
    proc = face("fit", "--model", "torchvision:resnet18", "--weights", "random", "--layer",
                "layr3", "--images", images, "--class-id", "1", "--out", tmp_path / "r", "-q",
                cwd=tmp_path)  # fmt: skip
    line = one_error_line(proc, 1, "--layer 'layr3' is not a module", "'layer3'")
    assert "named_modules" not in line and "layer=" not in line
    proc = face("fit", "--model", "bundled:mobilenet_v2", "--weights", "random", "--images",
                images, "--class-id", "1", "--out", tmp_path / "r", "-q", cwd=tmp_path)  # fmt: skip
    one_error_line(proc, 1, "--model torchvision:mobilenet_v2")


def test_no_pytorch_advice_to_unpickle(tmp_path, images):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled",))

    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": Payload()}, evil)
    proc = face("fit", "--model", "torchvision:resnet18", "--weights", evil, "--images", images,
                "--class-id", "1", "--out", tmp_path / "r", "-q", cwd=tmp_path)  # fmt: skip
    line = one_error_line(proc, 1, "could not be loaded safely", "Python object print")
    for advice in ("weights_only=False", "weights_only` set to `False", "trust", "safe_globals"):
        assert advice not in line
    assert "unpickled" not in proc.stdout


def test_face_paper_leaks_no_pytorch_warning(tmp_path, images):
    proc = tiny_fit(images, tmp_path / "run", "--method", "face-paper", "--max-iter", "30",
                    cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "requires_grad" not in proc.stderr and "Triggered internally" not in proc.stderr


def test_load_model_takes_check_non_negative():
    from face_concepts.models import load_model

    split = load_model(
        "torchvision:resnet18", "random", layer="layer3.1.conv2", check_non_negative=False
    )
    with torch.inference_mode():
        assert float(split.features(split.probe(1)).min()) < 0  # kept signed, as asked


@pytest.mark.slow
def test_signed_flag_fits_and_the_run_reloads(tmp_path, images):
    run = tmp_path / "run"
    argv = ["fit", "--model", "torchvision:mobilenet_v3_small", "--weights", "random"]
    argv += ["--images", images, "--class-id", "1", "--n-concepts", "2", "--max-iter", "10"]
    signed = face(*argv, "--out", tmp_path / "signed", "-q", cwd=tmp_path)  # the default
    assert signed.returncode == 0, signed.stderr
    assert ConceptBank.load(tmp_path / "signed").metadata["fit"]["bank"] == "signed"
    proc = face(*argv, "--signed", "posneg", "--out", run, "-q", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ConceptBank.load(run).metadata["model"]["transform"] == "posneg"
    proc = face("evaluate", run, "--json", "-q", cwd=tmp_path)  # reloads with the transform
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_a_method_that_needs_non_negative_rows_names_the_flags_on_a_signed_layer(tmp_path, images):
    """CRAFT on a signed layer: one line in flag words, which names the flags that work."""
    argv = ["fit", "--model", "torchvision:mobilenet_v3_small", "--weights", "random", "-q"]
    argv += ["--images", images, "--class-id", "1", "--n-concepts", "2", "--method", "craft"]
    proc = face(*argv, "--out", tmp_path / "run", cwd=tmp_path)
    line = one_error_line(proc, 1, "--method craft", "--method face or nmf", "--signed posneg")
    assert "signed=" not in line and "'posneg'" not in line and "method 'face'" not in line
    assert not (tmp_path / "run").exists()  # nothing half-written


@pytest.mark.slow
def test_an_intermediate_layer_states_its_approximation_on_the_terminal_and_in_the_run(
    tmp_path, images
):
    """Item 1: the split's approximation is one warning line, and the run records it."""
    argv = ["fit", "--model", "torchvision:resnet18", "--weights", "random", "--layer", "layer3"]
    argv += ["--images", images, "--class-id", "1", "--n-concepts", "2", "--max-iter", "10"]
    proc = face(*argv, "--n-designs", "8", "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "does not reproduce the model" in ln]
    assert len(warned) == 1 and warned[0].startswith("face-concepts: warning: "), proc.stderr
    assert "approximate split: layer 'layer3'" in warned[0] and "Traceback" not in proc.stderr
    meta = ConceptBank.load(tmp_path / "run").metadata
    assert "approximate split" in meta["model"]["approximation"]
    assert meta["model"]["exact"] is False
    assert any("approximate split" in w for w in meta["warnings"])


# ----------------------------------------------------------------------------- item 5: overwriting
def test_fit_refuses_to_overwrite_a_run_unless_asked(tmp_path, images):
    run = tmp_path / "run"
    assert tiny_fit(images, run, "-q", cwd=tmp_path).returncode == 0
    proc = face("explain", images / "img0.png", "--run", run, "-q", cwd=tmp_path, tiny=True)
    assert proc.returncode == 0, proc.stderr
    (run / "report.html").write_text("<html>the old run's atlas</html>")
    held = _tiny.write_png_folder(tmp_path / "held", n=2, seed=1)
    proc = face("evaluate", run, "--images", held, "--save", "-q", cwd=tmp_path, tiny=True)
    assert proc.returncode == 0, proc.stderr
    derived = ["explain-img0.png", "report.html", "evaluations"]
    assert all((run / name).exists() for name in derived)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    proc = tiny_fit(images, run, "--class-id", "2", cwd=tmp_path)
    one_error_line(proc, 2, f"--out {run} already holds a run", "--overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before

    proc = tiny_fit(images, run, "--class-id", "2", "--overwrite", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not any((run / name).exists() for name in derived)
    assert ConceptBank.load(run).metadata["class_id"] == 2
    assert json.loads((run / "command.json").read_text())["class_id"] == 2


def test_fit_refuses_a_folder_of_other_files(tmp_path, images):
    proc = tiny_fit(images, images.parent, cwd=tmp_path)  # --out the folder holding photos/
    one_error_line(proc, 2, "other entries", "no run")


def test_named_evaluations_are_kept_side_by_side(tmp_path, images):
    run = tmp_path / "run"
    assert tiny_fit(images, run, "--heldout", images, "-q", cwd=tmp_path).returncode == 0
    fit_metrics = ConceptBank.load(run).metadata["metrics"]
    night = _tiny.write_png_folder(tmp_path / "night shots", n=2, seed=3)
    day = _tiny.write_png_folder(tmp_path / "day", n=3, seed=4)
    for extra in (["--images", night, "--save"], ["--images", day, "--save", "sunny"]):
        proc = face("evaluate", run, *extra, "-q", "--json", cwd=tmp_path, tiny=True)
        assert proc.returncode == 0, proc.stderr
    saved = {p.name: json.loads(p.read_text()) for p in (run / "evaluations").iterdir()}
    assert sorted(saved) == ["night_shots.json", "sunny.json"]
    assert saved["night_shots.json"]["metrics"]["n_images"] == 2
    assert saved["sunny.json"]["metrics"]["n_images"] == 3
    assert ConceptBank.load(run).metadata["metrics"] == fit_metrics  # fit and heldout kept
    again = face("evaluate", run, "--images", day, "--save", "sunny", cwd=tmp_path, tiny=True)
    one_error_line(again, 2, "already has an evaluation named 'sunny'", "--overwrite")
    proc = face("evaluate", run, "--images", night, "--save", "sunny", "--overwrite", "-q",
                cwd=tmp_path, tiny=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "evaluations/sunny.json").read_text())["metrics"]["n_images"] == 2


def test_atlas_refuses_a_folder_that_holds_something_before_loading(tmp_path, images):
    """``atlas --out`` into a folder with files: one usage line naming ``--overwrite``, in
    seconds (before any model loads), and the folder untouched."""
    out = tmp_path / "atlas"
    out.mkdir()
    (out / "report.html").write_text("<html>an earlier atlas</html>")
    start = time.monotonic()
    argv = ["atlas", "--model", TINY, "--images", images, "--classes", "0,1", "--out", out]
    proc = face(*argv, cwd=tmp_path)
    assert time.monotonic() - start < USAGE_SECONDS
    one_error_line(proc, 2, "--overwrite")
    assert [p.name for p in out.iterdir()] == ["report.html"]
    assert (out / "report.html").read_text() == "<html>an earlier atlas</html>"


# ----------------------------------------------------------------------------- item 6: weights
def test_random_weights_are_explicit_seeded_and_reload(tmp_path):
    from face_concepts.models import load_model

    state = torch.random.get_rng_state()
    a = load_model("torchvision:resnet18", "random")
    b = load_model("torchvision:resnet18", weights="random")
    assert a.fingerprint == b.fingerprint  # the same untrained tensors every time
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator untouched
    timm = pytest.importorskip("timm")
    assert timm is not None
    c, d = load_model("timm:resnet18", "random"), load_model("timm:resnet18", "random")
    assert c.fingerprint == d.fingerprint


@pytest.mark.slow
def test_random_weights_and_class_names_on_the_command_line(tmp_path, images):
    run = tmp_path / "run"
    argv = ["fit", "--model", "torchvision:mobilenet_v2", "--weights", "random"]
    argv += ["--images", images, "--class-id", "tabby", "--n-concepts", "2", "--max-iter", "10"]
    proc = face(*argv, "--out", run, "-q", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["class_id"], summary["class_name"]) == (281, "tabby")
    assert json.loads((run / "command.json").read_text())["weights"] == "random"
    proc = face("evaluate", run, "--json", "-q", cwd=tmp_path)  # the same fingerprint again
    assert proc.returncode == 0, proc.stderr


def test_offline_hub_download_fails_in_seconds(tmp_path, images):
    pytest.importorskip("timm")
    # Port 9 on this machine refuses connections: the hub is unreachable, whatever the network.
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    start = time.perf_counter()
    proc = face("fit", "--model", "timm:resnet18", "--images", images, "--class-id", "1",
                "--out", tmp_path / "r", cwd=tmp_path, env=env)  # fmt: skip
    seconds = time.perf_counter() - start
    assert "Retrying" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("loading model")]
    assert len(lines) == 1 and proc.returncode == 1, proc.stderr
    for needle in ("cannot be reached", "--weights FILE", "--weights random"):
        assert needle in lines[0]
    assert "weights=" not in lines[0] and seconds < OFFLINE_SECONDS, seconds


def test_offline_torchvision_download_fails_at_once(tmp_path, monkeypatch):
    import torchvision

    from face_concepts.models import zoo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(zoo, "_reachable", lambda url, timeout=None: False)

    def no_download(*args, **kwargs):
        if kwargs.get("weights") is not None:
            raise AssertionError("a download was attempted")
        return real(*args, **kwargs)

    real = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", no_download)
    with pytest.raises(zoo.WeightsUnavailableError, match="cannot be reached") as info:
        zoo.load_model("torchvision:resnet18")
    assert "weights='random'" in str(info.value) and "--weights random" in info.value.cli_message


def test_reachability_probe_is_bounded():
    from face_concepts.models.zoo import _reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _reachable(f"http://127.0.0.1:{port}/x", timeout=2)
    start = time.perf_counter()
    assert not _reachable(f"http://127.0.0.1:{port}/x", timeout=2)  # closed now
    assert time.perf_counter() - start < 4


def test_the_fit_summary_says_when_the_importance_ran_in_bfloat16(capsys):
    from face_concepts.cli.fit import _print_fit

    summary = {
        "run_dir": "run", "n_concepts": 3, "method": "face", "class_id": 1, "class_name": "b",
        "n_images": 4, "n_iter": 5, "solver": "jacobian", "metrics": {}, "files": ["bank"],
    }  # fmt: skip
    _print_fit({**summary, "importance_precision": "full"})
    assert "bfloat16" not in capsys.readouterr().out
    _print_fit({**summary, "importance_precision": "bfloat16"})
    out = capsys.readouterr().out
    assert "Sobol importance with the head in bfloat16" in out
    assert "(--importance-precision full:" in out and "importance_precision" not in out
