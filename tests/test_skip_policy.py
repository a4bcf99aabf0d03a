"""The skip policy of tests/_skip_guard.py, run on a throw-away test tree in a child pytest.

CI (``.ci/run``) sets FACE_CONCEPTS_FORBID_SKIPS=1: a skip for a missing package or dataset fails
the run and is listed on one line; gpu-marked tests are the one allowed skip. Local runs
(``make test``) keep allowing skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from _skip_guard import FORBID_SKIPS_ENV, GPU_SKIP_REASON

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
MISSING = "face_concepts_no_such_module_xyz"


def _tree(root: Path, *, with_missing: bool) -> None:
    (root / "pytest.ini").write_text(
        "[pytest]\naddopts = -ra --strict-markers\nmarkers =\n    gpu: needs a CUDA device\n",
        encoding="utf-8",
    )
    (root / "conftest.py").write_text(
        "from _skip_guard import pytest_collection_modifyitems, pytest_configure  # noqa: F401\n",
        encoding="utf-8",
    )
    (root / "test_ok.py").write_text("def test_ok():\n    pass\n", encoding="utf-8")
    (root / "test_gpu.py").write_text(
        "import pytest\n\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    pass\n", encoding="utf-8"
    )
    if with_missing:
        (root / "test_missing.py").write_text(
            f"import pytest\n\n\ndef test_needs_it():\n    pytest.importorskip('{MISSING}')\n",
            encoding="utf-8",
        )
        (root / "test_module_skip.py").write_text(
            f"import pytest\n\npytest.importorskip('{MISSING}')\n\n\ndef test_never():\n    pass\n",
            encoding="utf-8",
        )


def _pytest(root: Path, forbid: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FORBID_SKIPS_ENV}
    if forbid:
        env[FORBID_SKIPS_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ci_fails_on_a_missing_dependency_skip_and_lists_it(tmp_path):
    _tree(tmp_path, with_missing=True)
    done = _pytest(tmp_path, forbid=True)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    lines = [ln for ln in out.splitlines() if f"{FORBID_SKIPS_ENV}: FAILED" in ln]
    assert len(lines) == 1, out  # one line lists them all
    line = lines[0]
    assert "2 test(s) skipped for a missing dependency" in line
    assert "test_missing.py::test_needs_it" in line and "test_module_skip.py" in line
    assert f"could not import '{MISSING}'" in line
    assert "test_gpu.py" not in line  # the allowed skip is never listed as a failure


def test_local_runs_still_allow_skips(tmp_path):
    _tree(tmp_path, with_missing=True)
    done = _pytest(tmp_path, forbid=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert FORBID_SKIPS_ENV not in done.stdout
    assert "skipped" in done.stdout


def test_gpu_marked_tests_are_the_one_allowed_skip_and_say_so(tmp_path):
    _tree(tmp_path, with_missing=False)
    done = _pytest(tmp_path, forbid=True)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    if torch.cuda.is_available():
        assert "2 passed" in out
    else:
        assert GPU_SKIP_REASON in out and "1 passed, 1 skipped" in out
        assert "1 gpu-marked test(s) skipped (no CUDA device; allowed)" in out


def test_ci_script_forbids_skips_and_installs_the_dataset():
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert f"export {FORBID_SKIPS_ENV}=1" in script
    assert "dataset-fashion-mnist" in script and "dpkg -s" in script
