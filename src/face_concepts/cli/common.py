"""What every command shares: the settings table, flag groups, usage errors and output helpers.

``main.py`` builds the parser and runs the commands; ``atlas.py`` adds the many-class command.
Both import from here, never from each other's module.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PROG = "face-concepts"
_S = argparse.SUPPRESS

# Settings a config file may hold: key -> (type(s), default). Flags use the same names with "-";
# a config file may spell a key either way.
OPTIONS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "model": (str, "bundled:mobilenet_v2"),
    "weights": (str, None),
    "layer": (str, None),
    "signed": (str, None),
    "images": (str, None),
    "heldout": (str, None),
    "class_id": ((int, str), None),
    "method": (str, "face"),
    "n_concepts": (int, None),
    "kl_weight": (float, 1.0),
    "patch_size": (int, 64),
    "n_designs": (int, 32),
    "batch_size": (int, 64),
    "max_iter": (int, None),
    "tol": (float, None),
    "filter_correct": (bool, False),
    "stability": (bool, False),
    "out": (str, None),
    "overwrite": (bool, False),
    "seed": (int, 0),
    "device": (str, None),
    "json": (bool, False),
    "progress": (bool, True),
    "quiet": (bool, False),
    "top": (int, 6),
    "n_examples": (int, 3),
    "quick": (bool, False),
    "save": ((bool, str), False),
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
RANDOM_WEIGHTS = "random"  # --weights random: untrained weights (face_concepts.models.zoo)
SIGNED_CHOICES = ("posneg", "relu")
# face_concepts.methods.registry.METHODS, named here so that a typo is refused without importing torch
# (tests/cli/test_cli_journey.py checks that the two agree).
METHOD_NAMES = ("face", "face-paper", "nmf", "craft", "ice")
# Lower bounds of the numeric settings, checked before anything is loaded (atlas checks its
# --workers and --gpus-per-task itself, also before loading).
MINIMUM: dict[str, float] = {
    "n_concepts": 1, "kl_weight": 0.0, "patch_size": 1, "n_designs": 2, "batch_size": 1,
    "max_iter": 1, "tol": 0.0, "seed": 0, "top": 1, "n_examples": 0,
}  # fmt: skip
# What a fit writes into its run directory besides the bank, and what later commands add to it:
# `fit --overwrite` removes all of it, so nothing of the old run is left next to the new bank.
RUN_FILES = ("bank.json", "bank.safetensors", "command.json", "importance.png", "top_crops.png")
DERIVED = ("report.html", "explain-*.png", "evaluations")
EVALUATIONS = "evaluations"  # evaluate --save NAME writes RUN/evaluations/NAME.json


class UsageError(Exception):
    """A wrong command line or config file (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and a pointer to ``--help`` instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------- parser
def _default(key: str) -> str:
    """``"default: VALUE"`` from :data:`OPTIONS`, so that ``--help`` shows what runs."""
    return f"default: {OPTIONS[key][1]}"


# Said by every --max-iter / --tol help: the solver's own defaults, per method.
MAX_ITER_HELP = (
    "solver iterations (default: face and nmf 1000, face-paper 22000; craft and ice run "
    "scikit-learn's NMF with its own 200 and ignore this flag)"
)
TOL_HELP = (
    "solver tolerance (default: face and nmf 1e-5, relative decrease of the objective per "
    "iteration; face-paper 1e-3; ignored by craft and ice, scikit-learn's 1e-4)"
)
KL_HELP = (
    "λ, the weight of FACE's KL term (default: 1.0; used by method face only). The engine "
    "FACE() defaults to the authors' 1e-5, which gives the same concepts as λ = 0 at this "
    "objective's scale (benchmarks/results/reproduction.md); 1.0 is where the KL term changes "
    "them"
)
BATCH_HELP = (
    "images (or crops) per forward pass of the model while extracting activations (default: "
    "64); memory only, the concepts do not depend on it. Not a mini-batch of the "
    "factorisation, which always uses every row"
)


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--config", metavar="FILE", default=_S, help="TOML file of settings")
    g.add_argument("--device", default=_S, help="cpu, cuda[:i] or auto (default: cpu)")
    g.add_argument(
        "--seed",
        type=int,
        default=_S,
        help=f"random_state of every random step ({_default('seed')})",
    )
    g.add_argument("--json", action="store_true", default=_S, help="results as JSON on stdout")
    g.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=_S,
        help="progress bars on stderr (default: on)",
    )  # fmt: skip
    g.add_argument(
        "-q", "--quiet", action="store_true", default=_S,
        help="no progress, messages or warnings on stderr (errors still print)",
    )  # fmt: skip
    g.add_argument("--debug", action="store_true", default=_S, help="tracebacks on errors")


def _model_flags(p: argparse.ArgumentParser, *, spec: bool = True) -> None:
    if spec:
        p.add_argument(
            "--model", default=_S,
            help="bundled:NAME (offline), torchvision:NAME[:WEIGHTS] or timm:NAME "
            f"({_default('model')})",
        )  # fmt: skip
        p.add_argument(
            "--layer", default=_S,
            help="feature layer, a module name such as layer3 (default: the last feature map)",
        )  # fmt: skip
        p.add_argument(
            "--signed", choices=SIGNED_CHOICES, default=_S,
            help="for a layer with negative activations: posneg (exact, twice the channels, "
            "non-negative concepts) or relu (approximate) (default: keep the layer signed and "
            "fit a signed concept bank: codes >= 0, each concept a signed direction)",
        )  # fmt: skip
    p.add_argument(
        "--weights", metavar="FILE", default=_S,
        help="state-dict file of the model, or 'random' for untrained (seeded) weights "
        "(default: the pretrained weights, downloaded if not cached; bundled models carry theirs)",
    )  # fmt: skip


def _require(s: SimpleNamespace, *keys: str) -> None:
    missing = [k for k in keys if getattr(s, k, None) is None]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise UsageError(f"missing {flags} (a flag or a key in --config)")


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
