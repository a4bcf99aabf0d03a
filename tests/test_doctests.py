"""The examples in ``src/face_concepts`` docstrings run, and print what they say they print.

One test per module that has examples (``>>>``), run with the standard library's doctest runner
(ELLIPSIS, NORMALIZE_WHITESPACE) in a temporary working directory. Examples marked
``# doctest: +SKIP`` need what a test machine may lack (real photos, model weights, ImageNet,
a Ray cluster); they are still compiled, so a syntax error in them fails too. Each module's
skip-only status is declared in ``SKIP_ONLY``: a module that gains or loses runnable examples
must be moved in or out, so that no module's examples are silently all skipped.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

import face_concepts

SRC = Path(face_concepts.__file__).parent

# Modules whose every example needs real images, weights, data sets or a cluster.
SKIP_ONLY = {
    "face_concepts.data.idx",  # the Fashion-MNIST files of the Debian package
    "face_concepts.pipeline.classes",  # a model and per-class images (fit_classes)
    "face_concepts.pipeline.explainer",  # MobileNetV2 weights and a folder of photos
    "face_concepts.pipeline.jobs",  # folders of photos
    "face_concepts.report",  # a saved run
    "face_concepts.report.atlas",  # a saved run
}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(
    _module_name(p) for p in SRC.rglob("*.py") if ">>> " in p.read_text(encoding="utf-8")
)


def test_every_skip_only_module_exists():
    assert set(SKIP_ONLY) <= set(MODULES), set(SKIP_ONLY) - set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    examples = [ex for t in tests for ex in t.examples]
    for t in tests:
        for ex in t.examples:
            compile(ex.source, f"{t.name} (line {t.lineno})", "single")
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for t in tests:
        # only this module's own docstrings (the finder also visits re-exported objects)
        if t.filename is not None and Path(t.filename).resolve() == Path(module.__file__).resolve():
            runner.run(t, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, out.getvalue()
    if name in SKIP_ONLY:
        assert result.attempted == 0, f"{name} has runnable examples now: drop it from SKIP_ONLY"
    else:
        assert examples and result.attempted > 0, (
            f"{name}: every example is skipped; make one run or add the module to SKIP_ONLY"
        )
