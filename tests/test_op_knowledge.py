"""Op knowledge lives in the rules (``spa/rules``), not in switches on op types spread over the code.

Outside ``spa/rules/`` and ``spa/graph/`` (normalisation may name the ops it folds), no module may
compare a node's ``.op`` / ``.op_type`` with a string literal or a tuple/list/set of them, nor hold a
module-level dict keyed by op names (a dispatch table: keys include ``Conv``, ``Gemm`` or ``MatMul``).
A new op is taught in one place: its rule (cost, matrix view, latency key, moments, ...).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

SPA = Path(__file__).resolve().parent.parent / "spa"
#: ``recover`` is an ONNX interpreter in torch (like ``onnx.reference``): its op table says how to *run* each
#: ONNX op, not how channels couple, cost or read; it is checked op by op against ONNX Runtime
#: (``tests/recover/test_ops.py``) and lives apart because torch is an optional extra the rules must not need
EXEMPT = ("rules", "graph", "recover")
DISPATCH_KEYS = {"Conv", "Gemm", "MatMul"}

#: switches allowed outside the rules, each with the reason it stays (path relative to spa/, line text)
ALLOWED: set[tuple[str, str]] = set()


def _modules() -> list[Path]:
    return sorted(p for p in SPA.rglob("*.py") if p.relative_to(SPA).parts[0] not in EXEMPT)


def _is_op(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in ("op", "op_type")


def _literal_strings(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return False


def violations(source: str) -> list[tuple[int, str]]:
    """Line and description of every op switch in ``source``."""
    tree = ast.parse(source)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for a, b in itertools.pairwise(operands):
                if (_is_op(a) and _literal_strings(b)) or (_is_op(b) and _literal_strings(a)):
                    out.append((node.lineno, "compares an op type with a literal"))
    for stmt in tree.body:
        value = stmt.value if isinstance(stmt, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Dict):
            keys = {k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if keys & DISPATCH_KEYS:
                out.append((stmt.lineno, "a dict keyed by op names (dispatch table)"))
    return out


def test_detector_finds_switches() -> None:
    src = ('X = {"Conv": 1, "Gemm": 2}\nif node.op == "Conv": pass\nif n.op_type in ("A", "B"): pass\n'
           'if node.op in OPS: pass\n')
    lines = [line for line, _ in violations(src)]
    assert lines == [2, 3, 1] or sorted(lines) == [1, 2, 3]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SPA)))
def test_no_op_switch_outside_rules(path: Path) -> None:
    rel = str(path.relative_to(SPA))
    lines = path.read_text().splitlines()
    found = [(ln, why, lines[ln - 1].strip()) for ln, why in violations(path.read_text())
             if (rel, lines[ln - 1].strip()) not in ALLOWED]
    assert not found, f"{rel}: op knowledge outside spa/rules: {found}"
