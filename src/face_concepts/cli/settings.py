"""Command-line settings: defaults, the TOML config file (``--config``), the flags; usage checks."""

from __future__ import annotations

import argparse
import difflib
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

try:  # Python ≥ 3.11; older ones read config files when tomli is installed
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    try:
        import tomli as tomllib  # type: ignore[no-redef]  # Python < 3.11 only
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]  # Python < 3.11 only

from face_concepts.cli.common import (
    CHOICES,
    COMMANDS,
    METHOD_NAMES,
    MINIMUM,
    OPTIONS,
    PATH_KEYS,
    RANDOM_WEIGHTS,
    SIGNED_CHOICES,
    UsageError,
    _flag,
)
from face_concepts.pipeline.config import fit_batch_conflict


def _class_arg(text: str) -> int | str:
    """``--class-id``: an index (``285``) or a class name (``tabby``), resolved after loading."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


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
    for key, choices in CHOICES.items():
        value = getattr(s, key, None)
        if key != "method" and value is not None and value not in choices:
            words = ", ".join(map(str, choices))
            raise UsageError(f"{_flag(key)} must be one of {words}, got {value!r}")
    signed = getattr(s, "signed", None)
    if signed is not None and signed not in SIGNED_CHOICES:
        raise UsageError(f"--signed must be posneg or relu, got {signed!r}")
    conflict = fit_batch_conflict(
        method, getattr(s, "kl_weight", None), getattr(s, "fit_batch_size", None), cli=True
    )
    if conflict is not None:
        raise UsageError(conflict)


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
