"""The layering of spa's subpackages (docs/architecture.md, "Layers"), from the source itself.

import-linter (``make test`` runs ``lint-imports``) checks the layer order; these tests also look at what
it does not: every import, function-local ones included, makes an edge between subpackages, and the
graph has no cycle; no function imports a spa module; function-local imports of other packages are
only the optional extras listed below; ONNX Runtime sessions come from :mod:`spa.runtime.session`.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import networkx as nx

SPA = Path(__file__).resolve().parent.parent / "spa"

#: (file, module) of the function-local imports of other packages that are allowed: optional extras,
#: imported where they are used so that spa runs without them
OPTIONAL_EXTRAS = {
    ("spa/bench/plot.py", "matplotlib"),  # spa[plot]
    ("spa/executors/ray_cluster.py", "ray"),  # spa[ray]: --executor ray
    ("spa/bench/plot.py", "matplotlib.pyplot"),
    ("spa/bench/fp16.py", "onnxruntime.transformers.float16"),  # --fp16 converters, whichever is installed
    ("spa/bench/fp16.py", "onnxconverter_common.float16"),
    ("spa/calibration/images.py", "PIL"),  # pillow: image folders as calibration data
    ("spa/recover/backend.py", "torch"),  # spa[recover]: imported on first use
}
#: modules that create an ``onnxruntime.InferenceSession``
SESSION_FACTORIES = {
    "spa/runtime/session.py",  # the factory
    "spa/graph/validate_input.py",  # "does ONNX Runtime load it?" below spa.runtime (docs/architecture.md)
}


def _rel(f: Path) -> str:
    return f.relative_to(SPA.parent).as_posix()


def _subpackage(f: Path) -> str:
    parts = f.relative_to(SPA.parent).with_suffix("").parts
    return ".".join(parts[:2]) if len(parts) > 2 else f"spa.{parts[-1]}"


def _resolve(f: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = list(f.relative_to(SPA.parent).parent.parts)
    for _ in range(node.level - 1):
        base.pop()
    return ".".join(base + ([node.module] if node.module else []))


def _imports(f: Path) -> list[tuple[str, bool, int]]:
    """(module, inside a function, line) of every import statement of ``f``."""
    tree = ast.parse(f.read_text())
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.append((_resolve(f, node), id(node) in local, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in local, node.lineno) for a in node.names]
    return out


def _files() -> list[Path]:
    return sorted(SPA.rglob("*.py"))


def test_no_cycles_between_subpackages() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for f in _files():
        src = _subpackage(f)
        for mod, _local, _line in _imports(f):
            p = mod.split(".")
            if p[0] != "spa" or len(p) < 2:
                continue
            dst = f"spa.{p[1]}"
            if dst != src:
                edges[src].add(dst)
    g = nx.DiGraph([(a, b) for a in edges for b in edges[a]])
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert cycles == []


def test_no_function_local_spa_imports() -> None:
    local = [f"{_rel(f)}:{line} {mod}" for f in _files() for mod, is_local, line in _imports(f)
             if is_local and mod.split(".")[0] == "spa"]
    assert local == []


def test_function_local_imports_are_optional_extras() -> None:
    found = {(_rel(f), mod) for f in _files() for mod, is_local, _ in _imports(f)
             if is_local and mod.split(".")[0] != "spa"}
    assert found <= OPTIONAL_EXTRAS, sorted(found - OPTIONAL_EXTRAS)
    for path, mod in OPTIONAL_EXTRAS:
        if path.startswith("spa/rules/"):
            continue
        lines = (SPA.parent / path).read_text().splitlines()
        marked = [k for k, line in enumerate(lines) if "import" in line and mod in line
                  and ("optional extra" in line or (k and "optional extra" in lines[k - 1]))]
        assert marked, f"{path}: the import of {mod} needs a '# optional extra' comment"


def test_sessions_come_from_the_factory() -> None:
    creators = {_rel(f) for f in _files() if "InferenceSession(" in f.read_text()}
    assert creators == SESSION_FACTORIES


def test_no_assert_statements_in_spa() -> None:
    """Input and state checks raise :class:`spa.errors.SpaError` subclasses naming what failed: ``assert`` vanishes
    under ``python -O`` and ends in a bare traceback (docs/exit-codes.md)."""
    found = [f"{_rel(f)}:{node.lineno}" for f in _files()
             for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))) if isinstance(node, ast.Assert)]
    assert not found, f"assert statements in spa/ (raise a spa.errors subclass instead): {found}"


def test_analysis_internals_are_read_through_named_views() -> None:
    """Outside ``spa/analysis`` the layers read an :class:`~spa.analysis.groups.Analysis` through its named
    views (``labels``, ``roles_of``, ``links``, ``slot_info``, ``weight``...), not its raw fields."""
    raw = re.compile(r"\banalysis\.(classes|roles|channel_graph)\b")
    found = [f"{_rel(f)}:{k}" for f in _files() if not _rel(f).startswith("spa/analysis/")
             for k, line in enumerate(f.read_text().splitlines(), 1) if raw.search(line)]
    assert not found, found
