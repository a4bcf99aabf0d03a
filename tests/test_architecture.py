"""The import contract (issue 14): data flows one way through the stages, with no cycles.

Every ``import`` in ``src/face_concepts`` is read from the syntax tree, including the ones inside
functions (a lazy import is still a dependency; it only hides a cycle from the interpreter).
A module may import its own stage and the stages below it, never a stage above; and the graph of
modules has no cycle. The stages, lowest first, are the ``LAYERS`` below; docs/architecture.md
draws the same picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "face_concepts"

# Lowest first. Names on one line are one stage: they may not import each other's stage either
# (importance and metrics are independent siblings).
LAYERS: list[tuple[str, ...]] = [
    ("_core",),
    ("data",),
    ("models",),
    ("activations",),
    ("decomposition",),
    ("importance", "metrics"),
    ("viz",),
    ("methods",),
    ("pipeline",),
    ("report",),
    ("apps",),
    ("cli",),
    ("__main__",),
]
# What a module may take from the package root itself: the version string only.
ROOT_NAMES = {"__version__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import of a face_concepts module in ``path``."""
    out = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith(PACKAGE)]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}:{node.lineno}: relative import; write it absolute"
            mod = node.module or ""
            if not mod.startswith(PACKAGE):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                if sub in modules:
                    out.append((sub, node.lineno))
                elif mod == PACKAGE:
                    if alias.name not in ROOT_NAMES:  # a lazy re-export: flagged as "root"
                        out.append((f"{PACKAGE}:{alias.name}", node.lineno))
                else:
                    out.append((mod, node.lineno))
    return [(m, line) for m, line in out if m != name]


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} belongs to no stage: add its folder to LAYERS")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {t for t, _ in _imports(m, p, modules)} for m, p in modules.items()}


def test_every_module_belongs_to_a_stage_and_imports_only_downwards():
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        here = _stage(name)
        for target, line in _imports(name, path, modules):
            if ":" in target:
                upward.append(f"{name}:{line} imports {target.split(':')[1]} from the package root")
                continue
            there = _stage(target)
            if here is None or there is None:
                continue
            same_stage = here == there and name.split(".")[1] == target.split(".")[1]
            if there > here or (there == here and not same_stage):
                upward.append(f"{name}:{line} imports {target}")
    assert not upward, "imports against the stages:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    # Tarjan's strongly connected components, iteratively written out as a plain DFS per root.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_contract_catches_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import and a planted cycle are found."""
    pkg = tmp_path / PACKAGE
    for sub in ("_core", "data"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "_core" / "a.py").write_text("def f():\n    from face_concepts.data import b\n")
    (pkg / "data" / "b.py").write_text("from face_concepts._core import a\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path, raising=False)
    globals()["SRC"], saved = tmp_path, SRC
    try:
        graph = _graph()
        assert "face_concepts.data.b" in graph["face_concepts._core.a"]
        assert "face_concepts._core.a" in graph["face_concepts.data.b"]
        try:
            test_every_module_belongs_to_a_stage_and_imports_only_downwards()
        except AssertionError as err:
            assert "face_concepts._core.a:2 imports face_concepts.data.b" in str(err)
        else:
            raise AssertionError("the upward import was not caught")
        try:
            test_the_import_graph_has_no_cycle()
        except AssertionError as err:
            assert "face_concepts._core.a <-> face_concepts.data.b" in str(err)
        else:
            raise AssertionError("the cycle was not caught")
    finally:
        globals()["SRC"] = saved
