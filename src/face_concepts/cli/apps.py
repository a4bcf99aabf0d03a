"""``face-concepts demo`` and ``benchmark``: the bundled demo and the benchmark runner."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

from face_concepts.cli.common import (
    _emit_json,
    _jsonable,
    _say,
)


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
