"""ExplainerConfig: every explainer setting declared once (issue 14 item 4), and fit → evaluate →
save written once (item 3).

Oracles: the explainers' signatures, the CLI's generated ``--help`` and tables, a saved run's
record, the activation cache's own files and a counted forward pass, and each explainer's own
``evaluate()`` for the metrics that ``fit_evaluate_save`` returns and saves.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import warnings

import pytest
import torch

import _tiny
from face_concepts import ConceptExplainer
from face_concepts._core.paths import default_cache_dir
from face_concepts.cli import common
from face_concepts.cli.main import build_parser
from face_concepts.cli.settings import resolve_settings
from face_concepts.importance import PRECISIONS
from face_concepts.methods.registry import METHODS
from face_concepts.pipeline.bank import ConceptBank
from face_concepts.pipeline.classes import ClassJob, fit_classes
from face_concepts.pipeline.config import (
    DEFAULTS,
    IMPORTANCE_PRECISIONS,
    METHOD_NAMES,
    SETTINGS,
    ExplainerConfig,
)
from face_concepts.pipeline.jobs import fit_evaluate_save
from face_concepts.pipeline.shared import SharedConceptExplainer

TINY = "test:config"
FAST = {"n_concepts": 2, "patch_size": 8, "n_designs": 8, "max_iter": 25, "progress": False}


@pytest.fixture(scope="module")
def split():
    return _tiny.tiny_split(TINY, seed=5, n_classes=3)


def images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 25-iteration budget may stop before tol
        return fn(*args, **kwargs)


def _subparser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command]


def _help_by_flag(command: str) -> dict[str, str]:
    """Each flag's help as ``--help`` prints it (argparse's % formatting applied)."""
    parser = _subparser(command)
    formatter = parser._get_formatter()
    return {
        opt: " ".join(formatter._expand_help(a).split())
        for a in parser._actions
        if a.help
        for opt in a.option_strings
    }


# ----------------------------------------------------------------------------- defaults, once
@pytest.mark.parametrize("cls", [ConceptExplainer, SharedConceptExplainer])
def test_signature_defaults_are_the_config_defaults(cls):
    params = inspect.signature(cls).parameters
    given = {k: p.default for k, p in params.items() if k != "split"}
    assert given == DEFAULTS.to_dict()


def test_cli_help_states_the_config_defaults():
    fit_help = _help_by_flag("fit")
    for name, setting in SETTINGS.items():
        if setting.flag is None:
            continue
        text = fit_help["--" + setting.flag.replace("_", "-")]
        if name == "cache_dir":  # the one setting whose command-line default differs (on)
            assert text == " ".join(common.CACHE_HELP.split())
            continue
        # the one help text, not a copy (its Python argument names in flag words)
        assert text.startswith(common.cli_words(setting.help)), name
        if setting.default is None:  # the help says what runs instead of a value
            assert "default:" in setting.help and "(default: None)" not in text, name
            continue
        value = setting.default
        shown = ("on" if value else "off") if isinstance(value, bool) else str(value)
        assert text.endswith(f"(default: {shown})"), name
    assert common.OPTIONS["seed"][1] == DEFAULTS.random_state
    for flag, setting in common.EXPLAINER_FLAGS.items():
        assert common.OPTIONS[flag][1] == setting.default
        assert common.MINIMUM.get(flag) == setting.minimum


def test_resolved_cli_defaults_build_the_default_config():
    s = resolve_settings(build_parser().parse_args(["fit"]))
    # every default is the config's, except the activation cache: on by default on the command line
    assert common.explainer_config(s) == dataclasses.replace(
        DEFAULTS, cache_dir=str(default_cache_dir())
    )
    s = resolve_settings(build_parser().parse_args(["fit", "--no-cache"]))
    assert common.explainer_config(s) == DEFAULTS


def test_every_setting_has_one_line_of_help_and_a_known_kind():
    for name, setting in SETTINGS.items():
        assert setting.help and "\n" not in setting.help, name
        assert setting.help == setting.help.strip() and not setting.help.endswith("."), name
        kinds = setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)
        assert all(isinstance(k, type) for k in kinds), name
    assert sorted(METHOD_NAMES) == sorted(METHODS) == sorted(SETTINGS["method"].choices)
    assert IMPORTANCE_PRECISIONS == PRECISIONS == SETTINGS["importance_precision"].choices


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"n_concepts": 0}, ValueError, "n_concepts must be >= 1, got 0"),
        ({"n_concepts": 2.5}, TypeError, "n_concepts must be an integer, got 2.5"),
        ({"n_concepts": True}, TypeError, "n_concepts must be an integer, got True"),
        ({"kl_weight": -1}, ValueError, "kl_weight must be >= 0, got -1.0"),
        ({"tol": float("inf")}, ValueError, "tol must be a finite number, got inf"),
        ({"n_designs": 1}, ValueError, "n_designs must be >= 2, got 1"),
        ({"method": "pca"}, ValueError, "method must be one of face, face-paper, nmf"),
        ({"filter_correct": "yes"}, TypeError, "filter_correct must be true or false"),
        ({"encoder_kl_weight": "auto"}, ValueError, "encoder_kl_weight must be 'fit' or a"),
        ({"random_state": -1}, ValueError, "random_state must be >= 0, got -1"),
        ({"batch_size": None}, TypeError, "batch_size must be an integer, got None"),
    ],
)
def test_validation_is_one_clear_line(split, changes, error, message):
    for make in (
        lambda: ExplainerConfig(**changes),
        lambda: ConceptExplainer(split, **changes),
        lambda: SharedConceptExplainer(split, **changes),
    ):
        with pytest.raises(error) as info:
            make()
        text = str(info.value)
        assert text.startswith(message) and "\n" not in text


def test_attributes_read_and_write_the_one_config(split):
    ex = ConceptExplainer(split, n_concepts=3, progress=False)
    assert ex.config == ExplainerConfig(n_concepts=3, progress=False)
    ex.max_iter = 7  # scikit-learn style attributes still work ...
    assert ex.config.max_iter == ex.max_iter == 7  # ... and change the one config
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        ex.max_iter = 0
    assert ex.max_iter == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.config.max_iter = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- persistence
def test_round_trip_to_dict_from_dict():
    cfg = ExplainerConfig(
        method="nmf", n_concepts=4, kl_weight=0.5, stride=6, resize_patches=True,
        encoder_kl_weight=0.0, n_designs=16, filter_correct=True, batch_size=8, max_iter=9,
        tol=1e-4, random_state=3, device="cpu", progress=False, verbose=True, cache_dir="c",
    )  # fmt: skip
    assert ExplainerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ExplainerConfig.from_dict(DEFAULTS.to_dict()) == DEFAULTS
    assert set(cfg.to_dict(saved_only=True)) == {k for k, s in SETTINGS.items() if s.saved}
    with pytest.raises(ValueError, match=r"unknown explainer setting\(s\) \['n_concept'\]"):
        ExplainerConfig.from_dict({"n_concept": 3})


def test_a_saved_run_records_and_reloads_its_config(split, tmp_path):
    ex = ConceptExplainer(split, **FAST, stride=6, random_state=2)
    result = quiet(fit_evaluate_save, ex, images(1), 1, out=tmp_path / "run")
    record = ConceptBank.load(result.run_dir).metadata["config"]
    resolved = ex.config.replace(  # the record holds the λ and resizing the method resolved
        kl_weight=ex.effective_kl_weight, resize_patches=False, encoder_kl_weight=1.0
    )
    assert ExplainerConfig.from_dict(record).to_dict(saved_only=True) == resolved.to_dict(
        saved_only=True
    )
    again = ConceptExplainer.load(result.run_dir, split=split)
    assert again.config.to_dict(saved_only=True) == ExplainerConfig.from_dict(record).to_dict(
        saved_only=True
    )


# ----------------------------------------------------------------------------- the CLI
def test_atlas_accepts_every_fit_flag():
    fit = {o for a in _subparser("fit")._actions for o in a.option_strings}
    atlas = {o for a in _subparser("atlas")._actions for o in a.option_strings}
    # --class-id names one class (atlas: --classes, which takes ids or names)
    assert fit - atlas == {"--class-id"}
    argv = ["atlas", "--classes", "0,1", "--out", "o", "--method", "nmf", "--n-concepts", "4",
            "--kl-weight", "0.5", "--patch-size", "8", "--n-designs", "16", "--batch-size", "3",
            "--max-iter", "9", "--tol", "0.001", "--filter-correct", "--cache-dir", "c",
            "--seed", "2", "--device", "cpu", "--no-progress", "--stability", "--overwrite"]  # fmt: skip
    s = resolve_settings(build_parser().parse_args(argv))
    assert common.explainer_config(s) == ExplainerConfig(
        method="nmf", n_concepts=4, kl_weight=0.5, patch_size=8, n_designs=16, batch_size=3,
        max_iter=9, tol=1e-3, filter_correct=True, cache_dir="c", random_state=2, device="cpu",
        progress=False,
    )  # fmt: skip
    assert s.stability is True and s.overwrite is True


def test_cli_bounds_come_from_the_config(tmp_path):
    from face_concepts.cli.main import main

    for flag, setting in common.EXPLAINER_FLAGS.items():
        if setting.minimum is None:
            continue
        below = setting.minimum - 1
        argv = ["fit", "--" + flag.replace("_", "-"), str(below), "--out", str(tmp_path / "x")]
        assert main(argv) == 2, flag


# ----------------------------------------------------------------------------- cache_dir, shared
def test_shared_fit_uses_cache_dir(split, tmp_path, monkeypatch):
    data = {0: images(2), 2: images(3)}
    cache = tmp_path / "cache"
    first = quiet(SharedConceptExplainer(split, **FAST, cache_dir=cache).fit, data)
    assert any(cache.rglob("manifest.json"))  # the activations were written there
    calls = []
    forward = split.features.forward
    monkeypatch.setattr(split.features, "forward", lambda x: calls.append(1) or forward(x))
    second = quiet(SharedConceptExplainer(split, **FAST, cache_dir=cache).fit, data)
    assert calls == []  # every activation came from the cache
    torch.testing.assert_close(second.concept_bank_, first.concept_bank_)
    monkeypatch.undo()
    # the atlas task too: the settings' cache_dir reaches the shared fit
    cache2 = tmp_path / "cache2"
    settings = {**FAST, "cache_dir": str(cache2)}
    jobs = [ClassJob(c, x) for c, x in data.items()]
    quiet(fit_classes, split, jobs, tmp_path / "atlas", settings=settings, shared=True)
    assert any(cache2.rglob("manifest.json"))


def test_fit_classes_refuses_unknown_settings(split, tmp_path):
    with pytest.raises(ValueError, match=r"unknown explainer setting\(s\) \['n_concept'\]"):
        fit_classes(split, [ClassJob(0, images(1))], tmp_path, settings={"n_concept": 3})


# ----------------------------------------------------------------------------- fit_evaluate_save
def test_fit_evaluate_save_one_class(split, tmp_path):
    ex = ConceptExplainer(split, **FAST)
    held = images(9, 3)
    result = quiet(fit_evaluate_save, ex, images(4, 5), 2, heldout=held, out=tmp_path / "r")
    assert result.explainer is ex and result.fit_seconds > 0
    assert result.metrics["fit"] == quiet(ex.evaluate).to_dict()
    assert result.metrics["heldout"] == quiet(ex.evaluate, held).to_dict()
    saved = ConceptBank.load(tmp_path / "r").metadata["metrics"]
    assert json.loads(json.dumps(result.metrics)) == saved
    nothing = quiet(fit_evaluate_save, ConceptExplainer(split, **FAST), images(4), 2)
    assert nothing.run_dir is None and set(nothing.metrics) == {"fit"}


def test_fit_evaluate_save_stability_needs_five_images(split):
    ex = ConceptExplainer(split, **FAST)
    said = []
    with pytest.warns(UserWarning, match="C-Stab not computed: .* needs at least 5 images, got 4"):
        result = fit_evaluate_save(ex, images(4), 2, stability=True, say=said.append)
    assert result.metrics["fit"]["stability"] is None and said == []
    ex = ConceptExplainer(split, **FAST)
    result = quiet(fit_evaluate_save, ex, images(4, 6), 2, stability=True, say=said.append)
    assert 0.0 <= result.metrics["fit"]["stability"] <= 1.0
    assert said == ["computing C-Stab: 5 refits on folds of the images ..."]


def test_fit_evaluate_save_shared(split, tmp_path):
    data, held = {0: images(2), 2: images(3)}, {2: images(7, 2)}
    shared = SharedConceptExplainer(split, **FAST)
    result = quiet(fit_evaluate_save, shared, data, heldout=held, out=tmp_path / "s")
    assert set(result.metrics) == {0, 2} and set(result.metrics[0]) == {"fit"}
    assert result.metrics[2]["heldout"] == quiet(shared.explainer(2).evaluate, held[2]).to_dict()
    meta = ConceptBank.load(tmp_path / "s").metadata
    assert [c["metrics"] for c in meta["classes"]] == json.loads(
        json.dumps([result.metrics[0], result.metrics[2]])
    )
    with pytest.raises(TypeError, match="give class_id with a ConceptExplainer"):
        fit_evaluate_save(shared, data, 0)
    with pytest.raises(TypeError, match="give class_id with a ConceptExplainer"):
        fit_evaluate_save(ConceptExplainer(split, **FAST), images(1))


def test_atlas_stability_per_class_and_shared(split, tmp_path):
    jobs = [ClassJob(0, images(2, 5)), ClassJob(2, images(3, 5))]
    per_class = quiet(
        fit_classes, split, jobs, tmp_path / "a", settings=FAST, stability=True
    )  # five refits per class on its own images
    assert all(0.0 <= r["metrics"]["fit"]["stability"] <= 1.0 for r in per_class)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (shared,) = fit_classes(
            split, jobs, tmp_path / "s", settings=FAST, shared=True, stability=True
        )
    assert any("C-Stab not computed for a shared bank" in str(w.message) for w in caught)
    assert all(c["metrics"]["fit"]["stability"] is None for c in shared["classes"])


def test_verbose_explainer_prints_the_solvers_progress_on_stderr(split, capsys):
    """``ConceptExplainer(verbose=True)``: the solver's iterations, objective and time on
    stderr, nothing on stdout; the default prints none."""
    settings = {**FAST, "max_iter": 12, "tol": 0.0, "random_state": 0}
    x = images(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ConceptExplainer(split, verbose=True, **settings).fit(x, class_id=1)
        out = capsys.readouterr()
        ConceptExplainer(split, **settings).fit(x, class_id=1)
        quiet = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if " iteration " in ln]
    assert lines and all("objective" in ln and ln.rstrip().endswith("s") for ln in lines), out.err
    assert out.out == "" and "iteration" not in quiet.err


def test_fit_takes_a_class_name_as_the_command_line_does(split):
    """``fit(images, class_id="Cat")`` is class 2 of the tiny model (ant, bee, cat); a name that
    matches none names its near matches, before any image is read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex = ConceptExplainer(split, **FAST).fit(images(3), class_id="Cat")
    assert ex.class_id_ == 2 and ex.class_name() == "cat"
    with pytest.raises(ValueError, match=r"class_id='bea' is not a class name .*'bee' \(1\)"):
        ConceptExplainer(split, **FAST).fit("no/such/folder", class_id="bea")
