"""The ``face-concepts`` command line: demo, fit, evaluate, report, explain, benchmark, atlas.

Results go to stdout (``--json``: one JSON document), progress and messages to stderr
(``-q``: none, warnings included; errors still print). Exit codes: 0 success, 1 runtime error
(one line ``face-concepts: error: …``; the traceback only with ``--debug``), 2 usage error (one
line ``face-concepts fit: error: … (see face-concepts fit --help)``), found before any model or
image is loaded wherever the flags alone show it. Settings come from flags, over a TOML file
given with ``--config`` (top-level keys, overridden by a table named after the command, e.g.
``[fit]``; keys are the flag names, ``class-id`` or ``class_id``; relative paths in it are taken
from the file's folder). Messages name flags (``--signed posneg``), never Python arguments.

Examples
--------
>>> from face_concepts.cli.main import main
>>> main(["fit", "--images", "cats/", "--class-id", "285", "--out", "runs/cat"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import math
import re
import shutil
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from face_concepts.cli.atlas import add_atlas_parser, cmd_atlas

try:  # Python ≥ 3.11; older ones read config files when tomli is installed
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    try:
        import tomli as tomllib  # type: ignore[no-redef]  # Python < 3.11 only
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]  # Python < 3.11 only

from face_concepts.cli.common import (
    _S,
    COMMANDS,
    DERIVED,
    EVALUATIONS,
    METHOD_NAMES,
    MINIMUM,
    OPTIONS,
    PATH_KEYS,
    PROG,
    RANDOM_WEIGHTS,
    RUN_FILES,
    SIGNED_CHOICES,
    UsageError,
    _common,
    _default,
    _emit_json,
    _jsonable,
    _model_flags,
    _Parser,
    _require,
    _say,
    explainer_config,
    fit_flags,
    resolve_class,
)


def _class_arg(text: str) -> int | str:
    """``--class-id``: an index (``285``) or a class name (``tabby``), resolved after loading."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option defaults to 'not given', so the config can fill it)."""
    from face_concepts import __version__

    parser = _Parser(
        prog=PROG, description="Faithful concept extraction (FACE) for image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", default=_S, help="tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="real MobileNetV2 + bundled photos, end to end")
    p.add_argument("--out", metavar="DIR", default=_S, help="output folder (face-concepts-demo)")
    p.add_argument("--n-concepts", type=int, default=_S, help="concepts per class")
    p.add_argument("--quick", action="store_true", default=_S, help="a smaller, faster demo")

    p = sub.add_parser("fit", help="extract the concepts of one class and save the run")
    _model_flags(p)
    p.add_argument("--images", metavar="PATH", default=_S, help="image folder or file (required)")
    p.add_argument("--heldout", metavar="PATH", default=_S, help="held-out images to evaluate")
    p.add_argument(
        "--class-id", metavar="CLASS", type=_class_arg, default=_S,
        help="class to explain: its index (285) or its name in the model's categories (tabby, "
        "'Egyptian cat') (required)",
    )  # fmt: skip
    fit_flags(p)  # every explainer setting, generated from ExplainerConfig; atlas takes them too
    p.add_argument("--out", metavar="DIR", default=_S, help="run directory to write (required)")
    p.add_argument(
        "--overwrite", action="store_true", default=_S,
        help="replace the run already in --out, and remove what was made from it (report.html, "
        "explain-*.png, saved evaluations) (default: refuse)",
    )  # fmt: skip

    p = sub.add_parser("evaluate", help="metrics of a saved run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--images", metavar="PATH", default=_S, help="held-out images (default: fit)")
    p.add_argument(
        "--save", nargs="?", const=True, metavar="NAME", default=_S,
        help="keep the metrics in the run as RUN_DIR/evaluations/NAME.json, beside the fit's "
        "(NAME default: the name of the --images folder or file, or 'fit')",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", default=_S,
        help="replace a saved evaluation of the same name (default: refuse)",
    )  # fmt: skip
    _model_flags(p, spec=False)

    p = sub.add_parser("report", help="write the HTML concept atlas of run(s)")
    p.add_argument("run", metavar="RUN_DIR", help="a run, or a folder of runs")
    p.add_argument("--out", metavar="FILE", default=_S, help="HTML file (RUN_DIR/report.html)")
    p.add_argument("--images", metavar="PATH", default=_S, help="example images for heatmaps")
    p.add_argument(
        "--n-examples",
        type=int,
        default=_S,
        help=f"heatmaps per concept ({_default('n_examples')})",
    )
    _model_flags(p, spec=False)

    p = sub.add_parser("explain", help="concept contributions to one image's prediction")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--run", metavar="RUN_DIR", required=True, help="saved run to explain with")
    p.add_argument("--out", metavar="PNG", default=_S, help="figure (RUN_DIR/explain-NAME.png)")
    p.add_argument("--top", type=int, default=_S, help=f"concepts drawn ({_default('top')})")
    _model_flags(p, spec=False)

    p = sub.add_parser("benchmark", help="methods × models × classes table")
    add_atlas_parser(sub)
    for child in sub.choices.values():
        _common(child)
    return parser


# ---------------------------------------------------------------------- settings
def _coerce(key: str, value: Any, where: str) -> Any:
    kinds = OPTIONS[key][0]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if key == "class_id" and isinstance(value, str):
        return _class_arg(value)
    if len(kinds) > 1 and any(isinstance(value, k) for k in kinds):
        return value
    kind = kinds[0]
    if key == "classes" and isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return ",".join(map(str, value))  # the flag's form: "285,207"
    if (
        key in ("images", "heldout")
        and isinstance(value, list)
        and all(isinstance(v, str) for v in value)
    ):
        return value
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UsageError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def _resolve_path(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_path(v, base) for v in value]
    if value == RANDOM_WEIGHTS:  # --weights random is a keyword, not a file next to the config
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def read_config(path: str | Path, command: str) -> dict[str, Any]:
    """Settings for ``command`` from a TOML file: top-level keys, then the ``[command]`` table."""
    p = Path(path)
    if tomllib is None:  # pragma: no cover
        raise RuntimeError("--config needs Python 3.11+ or the tomli package")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"config file {str(p)!r} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {str(p)!r} is not valid TOML: {exc}") from exc
    out: dict[str, Any] = {}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for table, values in [
        (None, {k: v for k, v in data.items() if k not in tables}),
        *tables.items(),
    ]:
        if table is not None and table not in COMMANDS:
            raise UsageError(
                f"config file {p}: unknown table [{table}]; tables are {list(COMMANDS)}"
            )
        if table not in (None, command):
            continue
        spelled: dict[str, str] = {}
        for given, value in values.items():
            key = given.replace("-", "_")  # the flag's spelling (class-id) or the underscore one
            if key not in OPTIONS:
                close = difflib.get_close_matches(key, list(OPTIONS), n=3)
                hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
                raise UsageError(
                    f"config file {p}: unknown key {given!r}{hint} (keys are the flag names, "
                    f"e.g. class-id or class_id: {sorted(OPTIONS)})"
                )
            if key in spelled:
                raise UsageError(
                    f"config file {p}: {spelled[key]!r} and {given!r} are the same setting; keep one"
                )
            spelled[key] = given
            value = _coerce(key, value, f"config file {p}")
            out[key] = _resolve_path(value, p.parent) if key in PATH_KEYS else value
    return out


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def check_settings(s: SimpleNamespace) -> None:
    """Usage errors that the settings alone show: refused before any model or image is loaded."""
    for key, minimum in MINIMUM.items():
        value = getattr(s, key, None)
        if value is None or isinstance(value, (bool, str)):  # a word (auto) is checked later
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{_flag(key)} must be a finite number, got {value}")
        if value < minimum:
            raise UsageError(f"{_flag(key)} must be >= {minimum}, got {value}")
    cid = getattr(s, "class_id", None)
    if isinstance(cid, int) and cid < 0:
        raise UsageError(f"--class-id must be >= 0 (or a class name), got {cid}")
    if isinstance(cid, str) and not cid:
        raise UsageError("--class-id is empty; give a class index or name")
    method = getattr(s, "method", None)
    if method is not None and method not in METHOD_NAMES:
        close = difflib.get_close_matches(str(method), METHOD_NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"--method must be one of {', '.join(METHOD_NAMES)}, got {method!r}{hint}")
    signed = getattr(s, "signed", None)
    if signed is not None and signed not in SIGNED_CHOICES:
        raise UsageError(f"--signed must be posneg or relu, got {signed!r}")


def resolve_settings(args: argparse.Namespace) -> SimpleNamespace:
    """Defaults, then the config file, then the flags given on the command line."""
    given = vars(args)
    settings = {k: default for k, (_, default) in OPTIONS.items()}
    from_file = {}
    if "config" in given and args.command != "benchmark":
        from_file = read_config(given["config"], args.command)
        settings.update(from_file)
    settings.update(given)
    settings.setdefault("debug", False)
    # what the user set (a flag or a config key), as opposed to a default: the demo keeps its
    # own defaults for what it is not told
    settings["explicit"] = frozenset(from_file) | frozenset(given)
    if settings["quiet"]:
        settings["progress"] = False
    resolved = SimpleNamespace(**settings)
    check_settings(resolved)
    return resolved


# ---------------------------------------------------------------------- commands
def _images_arg(value: Any, flag: str) -> Any:
    paths = value if isinstance(value, list) else [value]
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{flag} {str(p)!r} does not exist")
    return (
        [str(Path(p).resolve()) for p in paths]
        if isinstance(value, list)
        else str(Path(value).resolve())
    )


def _check_writable(out: Path) -> None:
    """Prove a file can be written where ``out`` will be, without creating ``out`` itself.

    The nearest existing ancestor must be a directory that accepts a (deleted) probe file;
    an OSError names the path, so a typo fails in seconds rather than after the fit.
    """
    import tempfile

    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        if not base.is_dir():
            raise NotADirectoryError(20, "not a directory", str(base))
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write to --out {out}: {exc.strerror or exc} ({base})") from None


def _run_contents(out: Path) -> list[Path]:
    """What in ``out`` belongs to a run: its files and what later commands derived from it."""
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    for pattern in DERIVED:
        found += sorted(out.glob(pattern))
    return found


def _check_overwrite(out: Path, overwrite: bool) -> list[Path]:
    """Refuse to write a run into a folder that holds one (or other files) without --overwrite.

    Returns what the old run left there, for removal once the new run is saved.
    """
    if not out.is_dir():
        return []
    found = _run_contents(out)
    others = [p for p in out.iterdir() if p not in found and not p.name.startswith(".")]
    if overwrite or not (found or others):
        return found
    if found:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise UsageError(
            f"--out {out} already holds a run ({names}); pass --overwrite to replace it (what "
            "was made from it, such as report.html, explain-*.png and saved evaluations, is "
            "removed too), or choose another --out"
        )
    raise UsageError(
        f"--out {out} is a folder with {len(others)} other entries (e.g. {others[0].name!r}) "
        "and no run; choose a new or empty folder, or pass --overwrite to write the run among them"
    )


def _remove_stale(found: list[Path]) -> None:
    """Remove what an overwritten run left, except the bank that the new save replaced."""
    for path in found:
        if path.name in ("bank.json", "bank.safetensors"):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def cmd_fit(s: SimpleNamespace) -> int:
    from face_concepts.models import load_model
    from face_concepts.pipeline.explainer import ConceptExplainer
    from face_concepts.pipeline.jobs import fit_evaluate_save
    from face_concepts.report.figures import write_fit_figures
    from face_concepts.report.runs import write_sidecar

    _require(s, "images", "class_id", "out")
    images = _images_arg(s.images, "--images")
    heldout = _images_arg(s.heldout, "--heldout") if s.heldout is not None else None
    out = Path(s.out)
    stale = _check_overwrite(out, s.overwrite)  # before any work, like the two checks around
    _check_writable(out)  # before the fit, not after minutes of work
    _say(s, f"loading model {s.model} ...")
    split = load_model(s.model, s.weights, device=s.device, layer=s.layer, signed=s.signed)
    class_id = resolve_class(s.class_id, split, s.model)
    config = explainer_config(s, verbose=s.progress)  # the solver's progress unless -q
    explainer = ConceptExplainer.from_config(split, config)
    named = f" ({s.class_id})" if isinstance(s.class_id, str) else ""
    _say(s, f"fitting {config.n_concepts} {s.method} concepts of class {class_id}{named} ...")
    result = fit_evaluate_save(
        explainer, images, class_id, heldout=heldout, stability=bool(s.stability), out=out,
        say=lambda message: _say(s, message),
    )  # fmt: skip
    metrics = result.metrics
    _remove_stale(stale)  # only now: a failed fit or save leaves the old run whole
    record = {k: getattr(s, k) for k in OPTIONS if k not in ("json", "progress", "quiet")}
    if record["cache_dir"] is None:  # recorded only when used: earlier records stay the same
        del record["cache_dir"]
    record.update(images=images, heldout=heldout, out=str(out.resolve()), command="fit")
    record["class_id"] = class_id
    if s.weights and s.weights != RANDOM_WEIGHTS:
        record["weights"] = str(Path(s.weights).resolve())
    files = [str(write_sidecar(out, record)), *map(str, write_fit_figures(explainer, out))]
    info = explainer.fit_info_
    summary = {
        "run_dir": str(out), "model": s.model, "method": s.method,
        "class_id": explainer.class_id_, "class_name": explainer.class_name(),
        "n_concepts": explainer.n_concepts, "n_images": explainer.n_images_,
        "n_iter": info.get("n_iter"), "converged": info.get("converged"),
        "objective": info.get("objective"), "importance": explainer.importance().tolist(),
        "metrics": metrics, "files": files,
    }  # fmt: skip
    if s.json:
        _emit_json(summary)
    else:
        _print_fit(summary)
    return 0


def _print_fit(summary: dict[str, Any]) -> None:
    from face_concepts.report.glossary import metric_table

    name = summary["class_name"] or ""
    print(
        f"run {summary['run_dir']}: {summary['n_concepts']} {summary['method']} concepts of "
        f"class {summary['class_id']} {name} from {summary['n_images']} images "
        f"({summary['n_iter']} iterations{'' if summary['converged'] else ', not converged'})"
    )
    for split, values in summary["metrics"].items():
        print(f"\nmetrics on the {split} images ({values.get('n_images')}):")
        print(metric_table(values))
    print("\nwrote " + ", ".join(summary["files"]))


def evaluation_name(save: Any, images: Any) -> str:
    """``evaluate --save [NAME]``: NAME, else the name of the images' folder or file, else "fit".

    Examples
    --------
    >>> evaluation_name(True, "/data/cats heldout/"), evaluation_name("night", None)
    ('cats_heldout', 'night')
    """
    if isinstance(save, str):
        name = save
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,99}", name):
            raise UsageError(
                f"--save {name!r}: a name is letters, digits, '_', '-' or '.' (100 at most), "
                "starting with a letter or digit"
            )
        return name
    if images is None:
        return "fit"
    if isinstance(images, list):
        return "images"
    path = Path(images)
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^\w.-]+", "_", stem).strip("._-")
    return name or "images"


def cmd_evaluate(s: SimpleNamespace) -> int:
    from face_concepts._core.io import atomic_write_json
    from face_concepts.report.glossary import metric_table
    from face_concepts.report.runs import load_run

    images = _images_arg(s.images, "--images") if s.images is not None else None
    target = None
    if s.save is not False and s.save is not None:
        name = evaluation_name(s.save, images)
        target = Path(s.run) / EVALUATIONS / f"{name}.json"
        if target.exists() and not s.overwrite:
            raise UsageError(
                f"the run already has an evaluation named {name!r} ({target}); pass --overwrite "
                "to replace it, or --save OTHER_NAME to keep both"
            )
    explainer = load_run(s.run, weights=s.weights, device=s.device, progress=s.progress)
    report = explainer.evaluate(images)
    metrics = report.to_dict()
    split = metrics.get("split") or ("heldout" if images else "fit")
    meta = explainer.metadata_
    result = {
        "run_dir": str(s.run), "class_id": explainer.class_id_, "class_name": meta.get("class_name"),
        "method": explainer.method, "split": split, "n_images": metrics.get("n_images"),
        "metrics": metrics,
    }  # fmt: skip
    if target is not None:
        import time

        record = {
            "name": target.stem, "images": images,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result,
        }  # fmt: skip
        atomic_write_json(target, record)
        result["saved"] = str(target)
    if s.json:
        _emit_json(result)
    else:
        print(
            f"run {s.run}: class {result['class_id']} {result['class_name'] or ''}, "
            f"method {result['method']}, {result['n_images']} {split} images"
        )
        print(metric_table(metrics))
        if target is not None:
            print(f"\nsaved as {target} (the fit's own metrics are unchanged)")
    return 0


def cmd_report(s: SimpleNamespace) -> int:
    from face_concepts.report import build_report, find_runs

    runs = find_runs(s.run)
    _say(s, f"building the atlas of {len(runs)} run(s) ...")
    images = _images_arg(s.images, "--images") if s.images is not None else None
    path = build_report(
        s.run, s.out, images=images, weights=s.weights, device=s.device,
        n_examples=s.n_examples, progress=s.progress,
    )  # fmt: skip
    if s.json:
        _emit_json({"report": str(path), "runs": [str(r) for r in runs]})
    else:
        print(f"wrote {path} ({len(runs)} run(s)); open it in a browser")
    return 0


def cmd_explain(s: SimpleNamespace) -> int:
    from face_concepts.pipeline.explain import explain_figure, explain_image, explain_table
    from face_concepts.report.figures import write_figure
    from face_concepts.report.runs import load_run

    explainer = load_run(s.run, weights=s.weights, device=s.device, progress=s.progress)
    result, x, maps = explain_image(explainer, s.image)
    out = Path(s.out) if s.out is not None else Path(s.run) / f"explain-{Path(s.image).stem}.png"
    write_figure(explain_figure(result, x, maps, explainer, top=s.top), out)
    result.update(run_dir=str(s.run), figure=str(out))
    if s.json:
        _emit_json(result)
    else:
        print(explain_table(result))
        print(f"\nwrote {out}")
    return 0


def cmd_demo(s: SimpleNamespace) -> int:
    try:
        demo = importlib.import_module("face_concepts.apps.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "face_concepts.apps.demo":
            raise
        raise RuntimeError("the demo is not installed in this version") from None
    run_demo = demo.run_demo
    out = Path(s.out or "face-concepts-demo")
    kwargs = {"progress": s.progress, "seed": s.seed, "quick": s.quick}
    if "n_concepts" in s.explicit:  # else the demo's own default (8 concepts per class)
        kwargs["n_concepts"] = s.n_concepts
    accepted = inspect.signature(run_demo).parameters
    if s.quick and "quick" not in accepted:
        _say(s, "--quick is not supported by this version of the demo; running the full demo")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
    summary = run_demo(out, **kwargs)
    report = out / "report.html"
    if not report.exists():
        from face_concepts.report import build_report

        _say(s, "building the concept atlas ...")
        report = build_report(out, device=s.device, progress=s.progress)
    summary = {**dict(summary or {}), "report": str(report)}
    if s.json:
        _emit_json(summary)
    else:
        fmt = getattr(demo, "format_summary", None)
        print(fmt(summary) if fmt else json.dumps(summary, indent=2, default=_jsonable))
        print(f"\nopen {report} in a browser to see the concept atlas")
    return 0


def cmd_benchmark(s: SimpleNamespace) -> int:
    try:
        run_benchmark = importlib.import_module("face_concepts.apps.benchmark.runner").run_benchmark
    except ModuleNotFoundError as exc:
        if exc.name != "face_concepts.apps.benchmark.runner":
            raise
        raise RuntimeError("benchmark runner not installed in this version") from None
    result = run_benchmark(getattr(s, "config", None))
    if s.json:
        _emit_json(result)
    else:
        print(
            result if isinstance(result, str) else json.dumps(result, indent=2, default=_jsonable)
        )
    return 0


HANDLERS = {
    "demo": cmd_demo,
    "fit": cmd_fit,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "explain": cmd_explain,
    "benchmark": cmd_benchmark,
    "atlas": cmd_atlas,
}


# ---------------------------------------------------------------------- output
def cli_words(text: str) -> str:
    """A library message in command-line words: Python argument names become flags.

    Examples
    --------
    >>> cli_words("n_concepts=500 must be <= 24; class_id must be >= 0")
    '--n-concepts 500 must be <= 24; --class-id must be >= 0'
    """
    for key in OPTIONS:
        flag = _flag(key)
        text = re.sub(rf"(?<![\w./-]){key}=", f"{flag} ", text)
        if "_" in key:  # an identifier, never an English word
            text = re.sub(rf"(?<![\w./-]){key}(?![\w/])", flag, text)
    return text


def _one_line(exc: BaseException) -> str:
    message = getattr(exc, "cli_message", None) or cli_words(str(exc))
    text = " ".join(message.split()) or type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, OSError, RuntimeError, UsageError)):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def _no_warning(*_: Any, **__: Any) -> None:
    """``-q``: warnings that code re-enables with ``simplefilter("always")`` stay silent too."""


def _show_warning(message: Any, category: type, *_: Any, **__: Any) -> None:
    # One line per warning, so that progress output stays readable.
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 1 runtime error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    debug = bool(getattr(args, "debug", False))
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            settings = resolve_settings(args)
            if settings.quiet:  # -q: no warnings either (errors still print)
                warnings.simplefilter("ignore")
                warnings.showwarning = _no_warning
            return HANDLERS[args.command](settings)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
