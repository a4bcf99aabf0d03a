"""The ``face-concepts`` command line: demo, fit, evaluate, report, explain, benchmark, atlas.

Results go to stdout (``--json``: one JSON document), progress and messages to stderr. Exit
codes: 0 success, 1 runtime error (one line ``face-concepts: error: …``; the traceback only with
``--debug``), 2 usage error. Settings come from flags, over a TOML file given with
``--config`` (top-level keys, overridden by a table named after the command, e.g. ``[fit]``;
keys are the flag names with ``_``; relative paths in it are taken from the file's folder).

Examples
--------
>>> from face_concepts.cli import main
>>> main(["fit", "--images", "cats/", "--class-id", "285", "--out", "runs/cat"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from face_concepts.cli_atlas import add_atlas_parser, cmd_atlas

try:  # Python ≥ 3.11; older ones read config files when tomli is installed
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

PROG = "face-concepts"
_S = argparse.SUPPRESS

# Settings a config file may hold: key -> (type, default). Flags use the same names with "-".
OPTIONS: dict[str, tuple[type, Any]] = {
    "model": (str, "bundled:mobilenet_v2"),
    "weights": (str, None),
    "layer": (str, None),
    "images": (str, None),
    "heldout": (str, None),
    "class_id": (int, None),
    "method": (str, "face"),
    "n_concepts": (int, None),
    "kl_weight": (float, 1.0),
    "patch_size": (int, 64),
    "n_designs": (int, 32),
    "batch_size": (int, 64),
    "max_iter": (int, None),
    "tol": (float, None),
    "filter_correct": (bool, False),
    "out": (str, None),
    "seed": (int, 0),
    "device": (str, None),
    "json": (bool, False),
    "progress": (bool, True),
    "quiet": (bool, False),
    "top": (int, 6),
    "n_examples": (int, 3),
    "quick": (bool, False),
    "save": (bool, False),
    # atlas (many classes; cli_atlas.py)
    "classes": (str, None),
    "bundled": (bool, False),
    "shared": (bool, False),
    "executor": (str, "local"),
    "address": (str, None),
    "workers": (int, None),
    "gpus_per_task": (float, 0.0),
}
PATH_KEYS = ("weights", "images", "heldout", "out")
COMMANDS = ("demo", "fit", "evaluate", "report", "explain", "benchmark", "atlas")


class UsageError(Exception):
    """A wrong command line or config file (exit code 2)."""


# ---------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--config", metavar="FILE", default=_S, help="TOML file of settings")
    g.add_argument("--device", default=_S, help="cpu (default), cuda[:i] or auto")
    g.add_argument("--seed", type=int, default=_S, help="random_state of every random step (0)")
    g.add_argument("--json", action="store_true", default=_S, help="results as JSON on stdout")
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=_S, help="progress bars"
    )
    g.add_argument("-q", "--quiet", action="store_true", default=_S, help="no messages on stderr")
    g.add_argument("--debug", action="store_true", default=_S, help="tracebacks on errors")


def _model_flags(p: argparse.ArgumentParser, *, spec: bool = True) -> None:
    if spec:
        p.add_argument("--model", default=_S, help="bundled:NAME, torchvision:NAME or timm:NAME")
        p.add_argument("--layer", default=_S, help="feature layer (default: last feature map)")
    p.add_argument("--weights", metavar="FILE", default=_S, help="state-dict file of the model")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option defaults to 'not given', so the config can fill it)."""
    from face_concepts import __version__

    parser = argparse.ArgumentParser(
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
    p.add_argument("--class-id", type=int, default=_S, help="class to explain (required)")
    p.add_argument("--method", default=_S, help="face (default), face-paper, nmf, craft or ice")
    p.add_argument("--n-concepts", type=int, default=_S, help="number of concepts (10)")
    p.add_argument("--kl-weight", type=float, default=_S, help="λ of FACE (1.0)")
    p.add_argument("--patch-size", type=int, default=_S, help="crop size in pixels (64)")
    p.add_argument("--n-designs", type=int, default=_S, help="Sobol designs (32)")
    p.add_argument("--batch-size", type=int, default=_S, help="images per forward pass (64)")
    p.add_argument("--max-iter", type=int, default=_S, help="solver iterations (its default)")
    p.add_argument("--tol", type=float, default=_S, help="solver tolerance (its default)")
    p.add_argument(
        "--filter-correct", action=argparse.BooleanOptionalAction, default=_S,
        help="keep only the images the model assigns to the class",
    )  # fmt: skip
    p.add_argument("--out", metavar="DIR", default=_S, help="run directory to write (required)")

    p = sub.add_parser("evaluate", help="metrics of a saved run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--images", metavar="PATH", default=_S, help="held-out images (default: fit)")
    p.add_argument("--save", action="store_true", default=_S, help="store the metrics in the run")
    _model_flags(p, spec=False)

    p = sub.add_parser("report", help="write the HTML concept atlas of run(s)")
    p.add_argument("run", metavar="RUN_DIR", help="a run, or a folder of runs")
    p.add_argument("--out", metavar="FILE", default=_S, help="HTML file (RUN_DIR/report.html)")
    p.add_argument("--images", metavar="PATH", default=_S, help="example images for heatmaps")
    p.add_argument("--n-examples", type=int, default=_S, help="heatmaps per concept (3)")
    _model_flags(p, spec=False)

    p = sub.add_parser("explain", help="concept contributions to one image's prediction")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--run", metavar="RUN_DIR", required=True, help="saved run to explain with")
    p.add_argument("--out", metavar="PNG", default=_S, help="figure (RUN_DIR/explain-NAME.png)")
    p.add_argument("--top", type=int, default=_S, help="concepts drawn (6)")
    _model_flags(p, spec=False)

    p = sub.add_parser("benchmark", help="methods × models × classes table")
    add_atlas_parser(sub)
    for child in sub.choices.values():
        _common(child)
    return parser


# ---------------------------------------------------------------------- settings
def _coerce(key: str, value: Any, where: str) -> Any:
    kind = OPTIONS[key][0]
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
        for key, value in values.items():
            if key not in OPTIONS:
                raise UsageError(
                    f"config file {p}: unknown key {key!r}; keys are {sorted(OPTIONS)}"
                )
            value = _coerce(key, value, f"config file {p}")
            out[key] = _resolve_path(value, p.parent) if key in PATH_KEYS else value
    return out


def resolve_settings(args: argparse.Namespace) -> SimpleNamespace:
    """Defaults, then the config file, then the flags given on the command line."""
    given = vars(args)
    settings = {k: default for k, (_, default) in OPTIONS.items()}
    if "config" in given and args.command != "benchmark":
        settings.update(read_config(given["config"], args.command))
    settings.update(given)
    settings.setdefault("debug", False)
    if settings["quiet"]:
        settings["progress"] = False
    return SimpleNamespace(**settings)


def _require(s: SimpleNamespace, *keys: str) -> None:
    missing = [k for k in keys if getattr(s, k, None) is None]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise UsageError(f"missing {flags} (a flag or a key in --config)")


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


def cmd_fit(s: SimpleNamespace) -> int:
    from face_concepts import ConceptExplainer, load_model
    from face_concepts.methods import get_method
    from face_concepts.report.figures import write_fit_figures
    from face_concepts.report.runs import write_sidecar

    _require(s, "images", "class_id", "out")
    get_method(s.method)  # fail on a typo before loading anything
    images = _images_arg(s.images, "--images")
    heldout = _images_arg(s.heldout, "--heldout") if s.heldout is not None else None
    _check_writable(Path(s.out))  # before the fit, not after minutes of work
    _say(s, f"loading model {s.model} ...")
    split = load_model(s.model, s.weights, device=s.device, layer=s.layer)
    explainer = ConceptExplainer(
        split, s.method, n_concepts=10 if s.n_concepts is None else s.n_concepts,
        kl_weight=s.kl_weight, patch_size=s.patch_size, n_designs=s.n_designs,
        batch_size=s.batch_size, filter_correct=s.filter_correct, max_iter=s.max_iter, tol=s.tol,
        random_state=s.seed, device=s.device, progress=s.progress,
    )  # fmt: skip
    _say(s, f"fitting {explainer.n_concepts} {s.method} concepts of class {s.class_id} ...")
    explainer.fit(images, s.class_id)
    metrics = {"fit": explainer.evaluate().to_dict()}
    if heldout is not None:
        metrics["heldout"] = explainer.evaluate(heldout).to_dict()
    out = Path(s.out)
    explainer.save(out, metrics=metrics)
    record = {k: getattr(s, k) for k in OPTIONS if k not in ("json", "progress", "quiet")}
    record.update(images=images, heldout=heldout, out=str(out.resolve()), command="fit")
    if s.weights:
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


def cmd_evaluate(s: SimpleNamespace) -> int:
    from face_concepts.bank import ConceptBank
    from face_concepts.report.glossary import metric_table
    from face_concepts.report.runs import load_run

    images = _images_arg(s.images, "--images") if s.images is not None else None
    explainer = load_run(s.run, weights=s.weights, device=s.device, progress=s.progress)
    report = explainer.evaluate(images)
    metrics = report.to_dict()
    split = metrics.get("split") or ("heldout" if images else "fit")
    if s.save:
        bank = ConceptBank.load(s.run)
        bank.metadata.setdefault("metrics", {})[split] = metrics
        bank.save(s.run)
    meta = explainer.metadata_
    result = {
        "run_dir": str(s.run), "class_id": explainer.class_id_, "class_name": meta.get("class_name"),
        "method": explainer.method, "split": split, "n_images": metrics.get("n_images"),
        "metrics": metrics,
    }  # fmt: skip
    if s.json:
        _emit_json(result)
    else:
        print(
            f"run {s.run}: class {result['class_id']} {result['class_name'] or ''}, "
            f"method {result['method']}, {result['n_images']} {split} images"
        )
        print(metric_table(metrics))
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
    from face_concepts.report.explain import explain_figure, explain_image, explain_table
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
        demo = importlib.import_module("face_concepts.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "face_concepts.demo":
            raise
        raise RuntimeError("the demo is not installed in this version") from None
    run_demo = demo.run_demo
    out = Path(s.out or "face-concepts-demo")
    kwargs = {"progress": s.progress, "seed": s.seed, "quick": s.quick, "n_concepts": s.n_concepts}
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
        run_benchmark = importlib.import_module("face_concepts.benchmark").run_benchmark
    except ModuleNotFoundError as exc:
        if exc.name != "face_concepts.benchmark":
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
def _say(s: SimpleNamespace, message: str) -> None:
    if not s.quiet:
        print(message, file=sys.stderr, flush=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    sys.stdout.flush()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, OSError, RuntimeError, UsageError)):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


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
