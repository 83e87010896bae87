"""Errors are errors: a rule's rewrite or twin hook that fails while pruning becomes a
:class:`~spa.errors.CouplingError` naming the node (exit code 3, one line), not a traceback; a rewrite
hook that finds its node changed since the analysis says so (:func:`spa.rules.base.graph_changed`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import spa
from spa.cli import main
from spa.errors import CouplingError, SpaError, UsageError
from spa.options import PruneOptions
from spa.rules.base import NodeContext, RewriteContext, TwinContext
from spa.rules.concat_split import SplitRule
from spa.rules.defaults import DEFAULT_RULES
from spa.rules.elementwise import UnaryRule
from spa.rules.registry import RuleRegistry
from tests.test_options import GridSampleRule, _cnn, _grid_model


def _grid_node(m: onnx.ModelProto) -> str:
    return next(n.name for n in m.graph.node if n.op_type == "GridSample")


class BrokenRewrite(GridSampleRule):
    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        raise ValueError("cannot reshape array of size 16 into shape (3,)")


class BrokenTwin(GridSampleRule):
    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:
        raise IndexError("index 15 is out of bounds for axis 0 with size 8")


class RefusingRewrite(GridSampleRule):
    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:
        raise UsageError("my rule refuses")


def test_failing_rewrite_hook_is_a_coupling_error_naming_the_node() -> None:
    m = _grid_model()
    registry = RuleRegistry([*DEFAULT_RULES, BrokenRewrite()])
    with pytest.raises(CouplingError, match=f"GridSample '{_grid_node(m)}': rewriting after pruning failed: "
                                            "ValueError: cannot reshape") as info:
        spa.prune(m, ratio=0.5, registry=registry)
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.exit_code == 3


def test_failing_twin_hook_is_a_coupling_error_naming_the_node() -> None:
    m = _grid_model()
    registry = RuleRegistry([*DEFAULT_RULES, BrokenTwin()])
    with pytest.raises(CouplingError, match=f"GridSample '{_grid_node(m)}': restricting its statistics"):
        spa.prune(m, PruneOptions(ratio=0.5, emit_masked=True), registry=registry)


def test_spa_errors_from_hooks_pass_through_unchanged() -> None:
    registry = RuleRegistry([*DEFAULT_RULES, RefusingRewrite()])
    with pytest.raises(UsageError, match=r"^my rule refuses$"):
        spa.prune(_grid_model(), ratio=0.5, registry=registry)


def test_cli_reports_a_failing_rewrite_in_one_line_with_exit_code_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI prunes with the default rules: break the one for the Relu between the two convolutions."""
    def broken(self: UnaryRule, ctx: NodeContext, rw: RewriteContext) -> None:
        raise KeyError("x")

    monkeypatch.setattr(UnaryRule, "rewrite", broken)
    model = tmp_path / "m.onnx"
    onnx.save(_cnn(), model)
    capsys.readouterr()
    code = main(["prune", str(model), "--ratio", "0.5", "-o", str(tmp_path / "p.onnx")])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("spa: error: Relu '") and "rewriting after pruning failed: KeyError" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "p.onnx").exists()


def test_rewrite_of_a_changed_graph_names_the_node() -> None:
    """A Split whose input lost its shape after the analysis: the hook says the graph changed."""
    x = gs.Variable("x", np.float32, None)
    y0, y1 = gs.Variable("y0", np.float32, (1, 2)), gs.Variable("y1", np.float32, (1, 2))
    node = gs.Node("Split", "split7", attrs={"axis": 1}, inputs=[x], outputs=[y0, y1])
    rw = RewriteContext(lambda s: np.arange(2), lambda s: 2)
    with pytest.raises(CouplingError, match="Split 'split7': input or input shape missing at rewrite time"):
        SplitRule().rewrite(NodeContext(node, 17), rw)


def test_coupling_error_is_a_spa_error() -> None:
    assert issubclass(CouplingError, SpaError) and CouplingError.exit_code == 3
