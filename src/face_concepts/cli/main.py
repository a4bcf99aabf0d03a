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
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from face_concepts.cli.apps import cmd_benchmark, cmd_demo
from face_concepts.cli.atlas import add_atlas_parser, cmd_atlas
from face_concepts.cli.common import (
    _S,
    PROG,
    UsageError,
    _common,
    _default,
    _model_flags,
    _Parser,
    cli_words,
    fit_flags,
)
from face_concepts.cli.fit import cmd_evaluate, cmd_fit
from face_concepts.cli.report import cmd_explain, cmd_report
from face_concepts.cli.settings import _class_arg, resolve_settings


def _add_demo(sub: Any) -> None:
    """The ``demo`` subcommand: its flags."""
    p = sub.add_parser("demo", help="real MobileNetV2 + bundled photos, end to end")
    p.add_argument("--out", metavar="DIR", default=_S, help="output folder (face-concepts-demo)")
    p.add_argument("--n-concepts", type=int, default=_S, help="concepts per class")
    p.add_argument("--quick", action="store_true", default=_S, help="a smaller, faster demo")


def _add_fit(sub: Any) -> None:
    """The ``fit`` subcommand: its flags (the explainer settings from ExplainerConfig)."""
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


def _add_evaluate(sub: Any) -> None:
    """The ``evaluate`` subcommand: its flags."""
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


def _add_report(sub: Any) -> None:
    """The ``report`` subcommand: its flags."""
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


def _add_explain(sub: Any) -> None:
    """The ``explain`` subcommand: its flags."""
    p = sub.add_parser("explain", help="concept contributions to one image's prediction")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--run", metavar="RUN_DIR", required=True, help="saved run to explain with")
    p.add_argument("--out", metavar="PNG", default=_S, help="figure (RUN_DIR/explain-NAME.png)")
    p.add_argument("--top", type=int, default=_S, help=f"concepts drawn ({_default('top')})")
    _model_flags(p, spec=False)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option defaults to 'not given', so the config can fill it)."""
    from face_concepts import __version__

    parser = _Parser(
        prog=PROG, description="Faithful concept extraction (FACE) for image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", default=_S, help="tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for add in (_add_demo, _add_fit, _add_evaluate, _add_report, _add_explain):
        add(sub)
    sub.add_parser("benchmark", help="methods × models × classes table")
    add_atlas_parser(sub)
    for child in sub.choices.values():
        _common(child)
    return parser


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
