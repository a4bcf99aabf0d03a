"""``ExplainerConfig``: every setting of an explainer, declared once.

One frozen dataclass holds each setting with its default, its type, a one-line help text and its
bound (a minimum or a list of choices). Everything else reads it:

- :class:`~face_concepts.ConceptExplainer` and
  :class:`~face_concepts.pipeline.shared.SharedConceptExplainer` take the same keyword arguments
  (their defaults are this class's) and hold one as ``explainer.config``;
- a saved run records it (:meth:`ExplainerConfig.from_dict` reads the record back);
- the benchmark and the demo build one per fit;
- the command line generates its flags, their ``--help`` (with the real default) and their
  bounds from :data:`SETTINGS` (``face_concepts.cli.common``).

This module imports nothing heavy (no torch), so that ``face-concepts --help`` stays fast.

Examples
--------
>>> cfg = ExplainerConfig(n_concepts=5)
>>> cfg.n_concepts, cfg.kl_weight
(5, 1.0)
>>> ExplainerConfig.from_dict(cfg.to_dict()) == cfg
True
>>> ExplainerConfig(n_concepts=0)
Traceback (most recent call last):
...
ValueError: n_concepts must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULTS",
    "IMPORTANCE_PRECISIONS",
    "METHOD_NAMES",
    "SETTINGS",
    "ExplainerConfig",
    "Setting",
    "config_attributes",
    "fit_batch_conflict",
]

# face_concepts.methods.registry.METHODS, named here so that a typo is refused without importing
# torch (tests/cli/test_cli_journey.py and tests/pipeline/test_config.py check that they agree).
METHOD_NAMES = ("face", "face-paper", "nmf", "craft", "ice")
# face_concepts.importance.PRECISIONS, named here for the same reason (tests/pipeline/test_config.py).
IMPORTANCE_PRECISIONS = ("auto", "full", "bfloat16")


def _setting(
    default: Any,
    help: str,
    *,
    kind: type | tuple[type, ...],
    minimum: float | None = None,
    choices: tuple[Any, ...] | None = None,
    flag: str | None = "",
    saved: bool = True,
) -> Any:
    """A dataclass field with its description.

    ``kind``: the accepted Python type(s) (``None`` is accepted when the default is None);
    ``flag``: the command-line name (``""``: the field's own name with dashes; ``None``: no
    flag, a Python-only setting); ``saved``: recorded with a run (False for settings that say
    how to run, not what was fitted: device, progress, cache folder).
    """
    meta = {"help": help, "kind": kind, "minimum": minimum, "choices": choices}
    return field(default=default, metadata={**meta, "flag": flag, "saved": saved})


@dataclass(frozen=True)
class ExplainerConfig:
    """Every setting of a concept explainer (see the module docstring).

    Examples
    --------
    >>> ExplainerConfig().method
    'face'
    """

    method: str = _setting("face", "concept-extraction method", kind=str, choices=METHOD_NAMES)
    n_concepts: int = _setting(10, "number of concepts (r)", kind=int, minimum=1)
    kl_weight: float | str = _setting(  # a number, or "auto"
        1.0,
        "λ, the weight of FACE's KL term (used by method face only). The engine FACE() "
        "defaults to the authors' 1e-5, which gives about the same concepts as λ = 0 at this "
        "objective's scale (benchmarks/results/reproduction.md); 1.0 is where the KL term "
        "changes them. 'auto': the smallest λ on the grid 0, 0.01, 0.1, 1, 10, 100 whose top-1 "
        "agreement on a held-out fifth of the images reaches target_agreement, then refitted on "
        "all of them",
        kind=(float, str),
        minimum=0.0,
    )
    target_agreement: float = _setting(
        0.99,
        "with kl_weight auto: the held-out top-1 agreement (between 0 and 1) that the chosen λ "
        "must reach",
        kind=float,
        minimum=0.0,
    )
    patch_size: int = _setting(64, "crop size in pixels", kind=int, minimum=1)
    stride: int | None = _setting(
        None, "step between crops in pixels (default: 0.8 × the crop size)", kind=int, minimum=1,
        flag=None,
    )  # fmt: skip
    resize_patches: bool | None = _setting(
        None,
        "resize crops to the model input size (default: the method's own choice; craft resizes)",
        kind=bool,
        flag=None,
    )
    encoder_kl_weight: str | float = _setting(
        "fit",
        "λ of the single encoder that gives image codes and every metric ('fit': the fit's λ)",
        kind=(str, float),
        minimum=0.0,
        flag=None,
    )
    n_designs: int = _setting(32, "Sobol designs", kind=int, minimum=2)
    importance_precision: str = _setting(
        "auto",
        "what the head runs in for the Sobol importance when it is not a linear layer (an "
        "intermediate layer's head is the rest of the network): 'auto' is bfloat16 where the "
        "hardware multiplies it natively (a CPU with AMX, a CUDA GPU): about 3x faster on "
        "ResNet-18's tail after layer3, 1.5x on MobileNetV2's after features.14, with the same "
        "ranking there; 'full' the activations' own precision; 'bfloat16' always. The run "
        "records which one ran",
        kind=str,
        choices=IMPORTANCE_PRECISIONS,
    )
    filter_correct: bool = _setting(
        False, "keep only the images the model assigns to the class", kind=bool
    )
    batch_size: int = _setting(
        64,
        "images (or crops) per forward pass of the model while extracting activations; "
        "memory only, the concepts do not depend on it. Not a mini-batch of the "
        "factorisation (that is fit_batch_size)",
        kind=int,
        minimum=1,
    )
    max_iter: int | None = _setting(
        None,
        "solver iterations (default: the solver's own, face and nmf 2000, face-paper 22000; "
        "craft and ice run scikit-learn's NMF with its own 200 and ignore this setting)",
        kind=int,
        minimum=1,
    )
    tol: float | None = _setting(
        None,
        "solver tolerance (default: the solver's own, face and nmf 1e-5, relative decrease of the "
        "objective per iteration; face-paper 1e-3; ignored by craft and ice, scikit-learn's "
        "1e-4)",
        kind=float,
        minimum=0.0,
    )
    fit_batch_size: int | None = _setting(
        None,
        "rows per mini-batch of the FACE factorisation (default: every row at once); for more "
        "rows than fit in memory; methods face and nmf only (max_iter and tol then count epochs, "
        "defaults 50 and 1e-4)",
        kind=int,
        minimum=1,
    )
    random_state: int = _setting(0, "seed of every random step", kind=int, minimum=0, flag="seed")
    device: str | None = _setting(
        None,
        "where the model and the factorisation run: cpu, cuda[:i] or auto (default: cpu, or the "
        "model's device)",
        kind=str,
        saved=False,
    )
    progress: bool = _setting(True, "progress bars on stderr", kind=bool, saved=False)
    verbose: bool = _setting(
        False,
        "the solver's progress on stderr while fitting (iteration, objective, elapsed time)",
        kind=bool,
        flag=None,
        saved=False,
    )
    cache_dir: str | None = _setting(
        None,
        "folder of the on-disk activation cache, reused by later runs on the same model, "
        "layer, preprocessing, crops and images (default: no cache)",
        kind=(str, os.PathLike),
        saved=False,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check(f, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        problem = fit_batch_conflict(self.method, self.kl_weight, self.fit_batch_size)
        if problem is not None:
            raise ValueError(problem)

    # ------------------------------------------------------------------ persistence
    def to_dict(self, *, saved_only: bool = False) -> dict[str, Any]:
        """The settings as a JSON-able dict (``saved_only``: those a run records)."""
        out = {}
        for f in dataclasses.fields(self):
            if saved_only and not f.metadata["saved"]:
                continue
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            elif f.name == "device" and value is not None:
                value = str(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> ExplainerConfig:
        """A config from :meth:`to_dict`'s output or from a saved run's ``config`` record.

        A run's record also holds ``method_spec`` (the method's preset, derived) and
        ``encoder`` (``{"kl_weight": λ}``, read as ``encoder_kl_weight``). ``overrides`` win.
        Unknown keys are refused, naming the valid ones.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"explainer settings must be a dict, got {type(data).__name__}")
        given = {k: v for k, v in data.items() if k != "method_spec"}
        encoder = given.pop("encoder", None)
        if isinstance(encoder, Mapping) and "kl_weight" in encoder:
            given.setdefault("encoder_kl_weight", encoder["kl_weight"])
        given.update(overrides)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"unknown explainer setting(s) {unknown}; valid: {names}")
        return cls(**given)

    @classmethod
    def coerce(cls, settings: ExplainerConfig | Mapping[str, Any]) -> ExplainerConfig:
        """``settings`` as a config: a config as it is, a dict of settings through
        :meth:`from_dict` (unknown keys refused)."""
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, Mapping):
            return cls.from_dict(settings)
        raise TypeError(
            "settings must be an ExplainerConfig or a dict of its settings, got "
            f"{type(settings).__name__}"
        )

    def replace(self, **changes: Any) -> ExplainerConfig:
        """A copy with ``changes`` (validated)."""
        return self.from_dict(self.to_dict(), **changes)


@dataclass(frozen=True)
class Setting:
    """One field of :class:`ExplainerConfig`, described (what the CLI's flags are made from)."""

    name: str
    default: Any
    kind: type | tuple[type, ...]
    help: str
    minimum: float | None
    choices: tuple[Any, ...] | None
    flag: str | None  # the command-line name with underscores (``seed``); None: no flag
    saved: bool


SETTINGS: dict[str, Setting] = {
    f.name: Setting(
        f.name,
        f.default,
        f.metadata["kind"],
        f.metadata["help"],
        f.metadata["minimum"],
        f.metadata["choices"],
        f.name if f.metadata["flag"] == "" else f.metadata["flag"],
        f.metadata["saved"],
    )
    for f in dataclasses.fields(ExplainerConfig)
}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    words = {int: "an integer", float: "a real number", bool: "true or false", str: "a string"}
    return " or ".join(words.get(k, k.__name__) for k in kinds if k is not os.PathLike)


def _check(f: dataclasses.Field, value: Any) -> Any:
    """``value`` of field ``f`` checked (and a whole float made a float); else one clear line."""
    meta, name = f.metadata, f.name
    if value is None and f.default is None:
        return None
    if name == "device" and type(value).__name__ == "device":  # a torch.device
        return value
    if name == "kl_weight" and isinstance(value, str):
        if value != "auto":
            raise ValueError(f"kl_weight must be 'auto' or a number >= 0, got {value!r}")
        return value
    if name == "target_agreement" and isinstance(value, numbers.Real) and float(value) > 1:
        raise ValueError(f"target_agreement must be between 0 and 1, got {value}")
    if name == "encoder_kl_weight" and isinstance(value, str):
        if value != "fit":
            raise ValueError(f"encoder_kl_weight must be 'fit' or a number >= 0, got {value!r}")
        return value
    kinds = meta["kind"] if isinstance(meta["kind"], tuple) else (meta["kind"],)
    if float in kinds and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    elif int in kinds and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    elif not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise TypeError(f"{name} must be {_kind_name(meta['kind'])}, got {value!r}")
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ValueError(f"{name} must be >= {meta['minimum']:g}, got {value}")
    return value


def fit_batch_conflict(
    method: Any, kl_weight: Any, fit_batch_size: Any, *, cli: bool = False
) -> str | None:
    """Why ``fit_batch_size`` cannot go with this method or λ, or None when it can.

    Only FACE's MM-HALS engine fits by mini-batches (methods face and nmf): craft and ice run
    scikit-learn's NMF, face-paper the authors' Adam loop, and ``kl_weight="auto"`` refits at
    several λ from warm-started codes of every row. ``cli``: the message names flags.

    Examples
    --------
    >>> fit_batch_conflict("face", 1.0, 256) is None
    True
    >>> print(fit_batch_conflict("craft", 1.0, 256))
    fit_batch_size is for methods face and nmf only: method 'craft' factorises with scikit-learn's NMF, which has no mini-batch fit; leave fit_batch_size unset (every row at once) or use method 'face' or 'nmf'
    """
    if fit_batch_size is None:
        return None
    if method == "face" and kl_weight == "auto":
        if cli:
            return (
                "--fit-batch-size cannot be used with --kl-weight auto, which refits at several "
                "λ from warm-started codes of every row; give a number for --kl-weight or leave "
                "--fit-batch-size unset"
            )
        return (
            "fit_batch_size cannot be used with kl_weight='auto', which refits at several λ "
            "from warm-started codes of every row; give a number for kl_weight or leave "
            "fit_batch_size unset"
        )
    nmf = "factorises with scikit-learn's NMF, which has no mini-batch fit"
    why = {
        "craft": nmf,
        "ice": nmf,
        "face-paper": "runs the authors' Adam solver, which has no mini-batch fit (the "
        "mini-batch fit updates the bank by MM-HALS)",
    }.get(method)
    if why is None:
        return None
    if cli:
        return (
            f"--fit-batch-size is for --method face and nmf only: --method {method} {why}; "
            "leave --fit-batch-size unset (every row at once) or use --method face or nmf"
        )
    return (
        f"fit_batch_size is for methods face and nmf only: method {method!r} {why}; leave "
        "fit_batch_size unset (every row at once) or use method 'face' or 'nmf'"
    )


def config_attributes(cls: type) -> type:
    """Class decorator: one attribute per setting, read from and written to ``self.config``.

    The explainers keep their scikit-learn-style attributes (``explainer.n_concepts``) while
    the one :class:`ExplainerConfig` they hold stays the only copy of each setting; setting an
    attribute replaces the config with a validated copy.
    """

    def attribute(name: str) -> property:
        def get(self: Any) -> Any:
            return getattr(self.config, name)

        def set_(self: Any, value: Any) -> None:
            self.config = self.config.replace(**{name: value})

        return property(get, set_, doc=SETTINGS[name].help)

    for name in SETTINGS:
        setattr(cls, name, attribute(name))
    return cls


DEFAULTS = ExplainerConfig()  # every setting at its default
