"""The documentation points at things that exist (issue 14 item 7).

- every ``docs/method.md §N`` cited in the code, the tests, the benchmarks and the docs names a
  numbered section of ``docs/method.md``, and nothing cites the old, absent ``method.md``;
- every ``file::test`` that ``docs/reliability.md`` cites is a test function in that file;
- every module and public name in the stage table of ``docs/architecture.md`` exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "face_concepts"
CITED_IN = ("src", "tests", "benchmarks", "docs", "README.md")


def _texts():
    for top in CITED_IN:
        path = ROOT / top
        files = [path] if path.is_file() else [*path.rglob("*.py"), *path.rglob("*.md")]
        for f in files:
            if "results" in f.relative_to(ROOT).parts:  # historic benchmark records
                continue
            yield f, f.read_text(encoding="utf-8")


def _sections() -> set[str]:
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#+ §(\d+(?:\.\d+)?) ", text, flags=re.M))


def test_method_sections_cited_exist():
    sections = _sections()
    assert {"1", "2", "2.1", "6", "9", "11"} <= sections
    bad = []
    for f, text in _texts():
        rel = f.relative_to(ROOT)
        for m in re.finditer(r"(\S*)method\.md(`?)\s*§(\d+(?:\.\d+)?)", text):
            prefix, section = m.group(1), m.group(3)
            line = text.count("\n", 0, m.start()) + 1
            if f.name != "method.md" and not prefix.endswith("docs/"):
                bad.append(f"{rel}:{line}: cites 'method.md §{section}'; write docs/method.md")
            elif section not in sections:
                bad.append(f"{rel}:{line}: docs/method.md has no §{section}")
    assert not bad, "\n".join(bad)


def test_method_sections_are_cited_within_the_document_correctly():
    # "§N" references inside docs/method.md itself point at its own sections.
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    body = re.sub(r"^#+ §\S+", "", text, flags=re.M)
    cited = set(re.findall(r"§(\d+(?:\.\d+)?)", body))
    assert cited <= _sections(), sorted(cited - _sections())


def test_reliability_cites_existing_tests():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    bad, current = [], None
    for m in re.finditer(r"`([\w/]*test_\w+\.py)?::(\w+)", text):
        current = m.group(1) or current
        source = ROOT / "tests" / current
        if not source.exists():
            bad.append(f"{current} does not exist under tests/")
        elif not re.search(rf"def {m.group(2)}\b", source.read_text(encoding="utf-8")):
            bad.append(f"{current}::{m.group(2)}")
    assert not bad, "\n".join(bad)


def _stage_rows():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        m = re.match(r"\| `(\w+)/` \| (.*?) \| (.*) \|$", line)
        if m:
            yield m.groups()


def _top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level, and ``Class.method`` (syntax tree)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):  # methods, as Class.method
                names |= {f"{node.name}.{f.name}" for f in node.body if hasattr(f, "name")}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_architecture_stage_table_names_exist():
    rows = list(_stage_rows())
    # Every stage of the package appears in the table.
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {stage for stage, _, _ in rows}
    bad = []
    for stage, modules, names in rows:
        for mod in re.findall(r"`([\w/]+\.py)`", modules):
            if not (SRC / stage / mod).exists():
                bad.append(f"{stage}/{mod}")
        defined = {path: _top_level_names(path) for path in (SRC / stage).rglob("*.py")}
        for name in re.findall(r"`([\w.]+)`", names):
            *module, attr = name.split(".")
            if not any(
                name in found or (attr in found and (not module or path.stem == module[-1]))
                for path, found in defined.items()
            ):
                bad.append(f"{stage}: {name}")
    assert not bad, "named in docs/architecture.md but absent: " + ", ".join(bad)
