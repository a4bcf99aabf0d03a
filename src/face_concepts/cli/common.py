"""What every command shares: the settings table, flag groups, usage errors and output helpers.

``main.py`` builds the parser and runs the commands; ``atlas.py`` adds the many-class command.
Both import from here, never from each other's module.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from face_concepts._core.paths import default_cache_dir
from face_concepts.pipeline.config import METHOD_NAMES, SETTINGS, ExplainerConfig, Setting

__all__ = ["METHOD_NAMES", "MINIMUM", "OPTIONS", "UsageError", "explainer_config"]

PROG = "face-concepts"
_S = argparse.SUPPRESS

# The explainer's settings that have a flag, by flag name (``seed`` is ``random_state``):
# their type, default, help and bound come from ExplainerConfig (face_concepts.pipeline.config).
EXPLAINER_FLAGS: dict[str, Setting] = {s.flag: s for s in SETTINGS.values() if s.flag}
# Of those, the ones every command takes (in the "common options" group); the others are the
# fit flags, which `fit` and `atlas` both take.
COMMON_SETTINGS = ("device", "seed", "progress")
FIT_SETTINGS = tuple(k for k in EXPLAINER_FLAGS if k not in COMMON_SETTINGS)


def _option(flag: str) -> tuple[type | tuple[type, ...], Any]:
    """``(type(s), default)`` of an explainer setting, as a config file may give it."""
    setting = EXPLAINER_FLAGS[flag]
    kinds = setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)
    kinds = tuple(k for k in kinds if k in (bool, int, float, str))  # what TOML can hold
    return (kinds[0] if len(kinds) == 1 else kinds), setting.default


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
    **{flag: _option(flag) for flag in EXPLAINER_FLAGS},  # method, n_concepts, ..., seed, device
    "stability": (bool, False),
    "no_cache": (bool, False),
    "out": (str, None),
    "overwrite": (bool, False),
    "json": (bool, False),
    "quiet": (bool, False),
    "top": (int, 6),
    "n_examples": (int, 3),
    "quick": (bool, False),
    "save": ((bool, str), False),
    # atlas (many classes; cli/atlas.py)
    "classes": (str, None),
    "bundled": (bool, False),
    "shared": (bool, False),
    "executor": (str, "local"),
    "address": (str, None),
    "workers": (int, None),
    "gpus_per_task": (float, 0.0),
}
PATH_KEYS = ("weights", "images", "heldout", "out", "cache_dir")
COMMANDS = ("demo", "fit", "evaluate", "report", "explain", "benchmark", "atlas")
RANDOM_WEIGHTS = "random"  # --weights random: untrained weights (face_concepts.models.zoo)
SIGNED_CHOICES = ("posneg", "relu")
# Lower bounds of the numeric settings, checked before anything is loaded (atlas checks its
# --workers and --gpus-per-task itself, also before loading): the explainer's from its config.
MINIMUM: dict[str, float] = {
    **{k: s.minimum for k, s in EXPLAINER_FLAGS.items() if s.minimum is not None},
    "top": 1,
    "n_examples": 0,
}
# The explainer flags that take one of a few words (checked before anything is loaded).
CHOICES: dict[str, tuple[Any, ...]] = {
    k: s.choices for k, s in EXPLAINER_FLAGS.items() if s.choices is not None
}
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


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


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


# ---------------------------------------------------------------------- parser
def _default(key: str) -> str:
    """``"default: VALUE"`` from :data:`OPTIONS`, so that ``--help`` shows what runs."""
    return f"default: {OPTIONS[key][1]}"


def setting_help(flag: str) -> str:
    """The ``--help`` text of an explainer flag: its config help, choices and real default."""
    setting = EXPLAINER_FLAGS[flag]
    text = cli_words(setting.help)  # the config's help names Python arguments
    if setting.choices:
        *first, last = setting.choices
        text += f": {', '.join(first)} or {last}"
    if setting.default is None:  # the help itself says what runs when the flag is not given
        return text
    if isinstance(setting.default, bool):
        return f"{text} (default: {'on' if setting.default else 'off'})"
    return f"{text} (default: {setting.default})"


def _number_or_word(number: type, words: bool) -> Any:
    """argparse type of a numeric setting; one that also takes a word (``auto``) keeps words."""
    if not words:
        return number

    def convert(text: str) -> Any:
        try:
            return number(text)
        except ValueError:
            return text

    convert.__name__ = number.__name__  # argparse names it in "invalid int value"
    return convert


def _add_setting(g: Any, flag: str) -> None:
    """``--FLAG`` of an explainer setting, generated from ExplainerConfig."""
    setting = EXPLAINER_FLAGS[flag]
    name = "--" + flag.replace("_", "-")
    if setting.kind is bool:
        kwargs: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
    else:
        kinds = setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)
        number = next((k for k in kinds if k in (int, float)), None)
        kwargs = {} if number is None else {"type": _number_or_word(number, str in kinds)}
        if flag.endswith("_dir"):
            kwargs["metavar"] = "DIR"
    help_text = CACHE_HELP if flag == "cache_dir" else setting_help(flag)
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    g.add_argument(name, default=_S, help=help_text, **kwargs)


# The command line caches activations by default (Python: ExplainerConfig.cache_dir, no cache
# unless given): a retry, another method or another --n-concepts on the same images and layer
# then skips the extraction.
CACHE_HELP = (
    "folder of the on-disk activation cache, reused by later runs on the same model, layer, "
    "preprocessing, crops and images (default: $FACE_CONCEPTS_CACHE, else "
    "~/.cache/face-concepts/activations; --no-cache for none)"
)


def fit_flags(p: argparse.ArgumentParser) -> None:
    """The explainer's flags that `fit` and `atlas` take (every one, generated)."""
    for flag in FIT_SETTINGS:
        _add_setting(p, flag)
    p.add_argument(
        "--no-cache", action="store_true", default=_S,
        help="extract the activations again instead of reusing or writing the cache",
    )  # fmt: skip
    p.add_argument(
        "--stability", action=argparse.BooleanOptionalAction, default=_S,
        help="compute C-Stab: refit on 5 folds of the images (5 more fits; needs at least 5 "
        "images) (default: off, shown as n/a)",
    )  # fmt: skip


def explainer_config(s: SimpleNamespace, **overrides: Any) -> ExplainerConfig:
    """The explainer settings of resolved command-line settings (flags over config over
    defaults), ``overrides`` last."""
    values = {name: getattr(s, setting.flag) for name, setting in SETTINGS.items() if setting.flag}
    if values.get("cache_dir") is None and not getattr(s, "no_cache", False):
        values["cache_dir"] = str(default_cache_dir())
    return ExplainerConfig(**{**values, **overrides})


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--config", metavar="FILE", default=_S, help="TOML file of settings")
    for flag in COMMON_SETTINGS:
        _add_setting(g, flag)
    g.add_argument("--json", action="store_true", default=_S, help="results as JSON on stdout")
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


# ---------------------------------------------------------------------- classes
def resolve_class(value: int | str, split: Any, model: str, flag: str = "--class-id") -> int:
    """A class given on the command line (``flag``): an index as given, or a name looked up in
    the model's class names (:func:`face_concepts.models.metadata.class_index`: whatever their
    case, ``_`` or ``-`` for spaces, ``egyptian_cat``); a name that matches none is a usage
    error listing the near matches."""
    from face_concepts.models.metadata import class_index

    try:
        return class_index(split, value, argument=flag[2:].replace("-", "_"), model=model)
    except ValueError as exc:
        raise UsageError(cli_words(str(exc))) from None
