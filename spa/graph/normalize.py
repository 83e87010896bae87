"""Normalisation passes that make exporter idioms uniform before the analysis.

The pipeline (:func:`normalize`) is:

1. drop initializers listed as graph inputs (old exporters) so weights are not taken for inputs;
2. infer shapes (with data propagation, so computed Reshape targets get shapes);
3. fold constant subgraphs with onnx-graphsurgeon (``Constant`` nodes become initializers, shape
   subgraphs become constants, inside ``If``/``Loop``/``Scan`` bodies too) — quantisation nodes are
   never folded; an ``If`` whose condition folds to a constant is replaced by its branch
   (:func:`inline_constant_ifs`; graphsurgeon's own flattening loses branch outputs);
4. bypass pass-through ``Identity`` and inference ``Dropout`` nodes;
5. clean up, sort topologically, and infer shapes once more.

A model older than :data:`MIN_OPSET` is first converted to :data:`CONVERT_TO` with
``onnx.version_converter`` (the result remembers ``converted_from_opset``; :func:`spa.api.load` then
checks the conversion against the original in ONNX Runtime, which spa.graph does not use).

Each step is a small function ``(graph) -> bool`` that says whether it changed the graph.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from spa.errors import InvalidModelError, SpaError, UnsupportedModelError
from spa.graph.model import ModelGraph, infer_shapes
from spa.graph.validate_input import forget_placeholder_dims, validate_input
from spa.graph.weights import attach_external

log = logging.getLogger(__name__)

#: Oldest default-domain opset spa reads without converting.
MIN_OPSET = 11
#: The opset older models are converted to.
CONVERT_TO = 13
#: Ops that constant folding must leave alone (folding them would change the model's meaning).
_NO_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
            "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (ai.onnx) opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise InvalidModelError("model imports no default-domain opset")


def convert_opset(model: onnx.ModelProto, target: int = CONVERT_TO) -> onnx.ModelProto:
    """``model`` converted to opset ``target`` with ``onnx.version_converter`` (IR version raised to what
    the opset needs).

    Raises:
        UnsupportedModelError: the converter fails, or its result fails the ONNX checker.
    """
    opset = default_opset(model)
    try:
        converted = onnx.version_converter.convert_version(model, target)
        converted.ir_version = max(int(converted.ir_version), 7)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, ...
        reason = " ".join(str(exc).split())[:200]
        raise UnsupportedModelError(
            f"opset {opset} is older than the oldest spa reads ({MIN_OPSET}) and onnx.version_converter cannot "
            f"convert it to opset {target} ({type(exc).__name__}: {reason}); re-export the model at opset "
            f"{MIN_OPSET} or newer") from None
    log.warning("converted the model from opset %d to %d (onnx.version_converter)", opset, target)
    return converted


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    names = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in names]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)


def _replace_uses(tensor: gs.Tensor, by: gs.Tensor) -> None:
    """Make every node that reads ``tensor`` read ``by`` instead (graph outputs are left alone)."""
    for consumer in list(tensor.outputs):
        for k, t in enumerate(consumer.inputs):
            if t is tensor:
                consumer.inputs[k] = by


def bypass_passthrough(graph: gs.Graph) -> bool:
    """Remove Identity and inference-mode Dropout nodes by rewiring their consumers.

    Returns:
        Whether any node was removed.
    """
    outputs = {id(t) for t in graph.outputs}
    changed = False
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout") or (node.domain or "") not in ("", "ai.onnx"):
            continue
        if node.op == "Dropout":
            if len(node.outputs) > 1 and node.outputs[1].outputs:
                continue  # mask output used: keep the node
            if len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant) and node.inputs[2].name:
                continue  # training_mode is dynamic
        src, dst = node.inputs[0], node.outputs[0]
        if id(dst) in outputs:
            continue
        _replace_uses(dst, src)
        node.outputs.clear()
        changed = True
    if changed:
        graph.cleanup()
    return changed


def fold_constants(graph: gs.Graph) -> bool:
    """Fold constant subgraphs (shape arithmetic, Constant nodes) into initializers."""
    before = len(graph.nodes)
    try:
        graph.fold_constants(
            error_ok=True,
            flatten_subgraphs=False,  # graphsurgeon's own flattening loses branch outputs: inline_constant_ifs
            should_exclude_node=lambda n: n.op in _NO_FOLD,
        )
    except Exception as exc:  # noqa: BLE001 - graphsurgeon raises plain exceptions on odd graphs: folding is optional
        log.warning("constant folding skipped: %s", exc)
        return False
    graph.cleanup()
    return len(graph.nodes) != before


def inline_constant_ifs(graph: gs.Graph) -> bool:
    """Replace every ``If`` of ``graph`` whose condition is a constant by the branch it takes.

    The branch's nodes move into ``graph`` (their own tensors renamed so they cannot collide with the
    outer graph's), and each ``If`` output is produced by an ``Identity`` of the branch output, which
    :func:`bypass_passthrough` removes later: a branch output may be a node's output, a branch
    constant or an outer-scope tensor, and each way the ``If``'s consumers keep a producer.

    Returns:
        Whether any ``If`` was inlined.
    """
    changed = False
    for node in list(graph.nodes):
        if node.op != "If" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
            continue
        cond = bool(node.inputs[0].values.reshape(-1)[0]) if node.inputs[0].values.size else False
        branch = node.attrs.get("then_branch" if cond else "else_branch")
        if not isinstance(branch, gs.Graph) or len(branch.outputs) != len(node.outputs):
            continue
        outer = {id(t) for t in graph.tensors().values()} - {id(t) for n in branch.nodes for t in n.outputs}
        suffix = f"__{node.name or 'if'}_{'then' if cond else 'else'}"
        for t in branch.tensors().values():
            if id(t) not in outer and t.name:
                t.name += suffix
        outs = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()
        moved = list(branch.nodes) + [
            gs.Node("Identity", name=f"{o.name}{suffix}_out", inputs=[b], outputs=[o])
            for b, o in zip(branch.outputs, outs)]
        branch.nodes.clear()
        at = graph.nodes.index(node)
        graph.nodes[at:at + 1] = moved
        log.info("If '%s' has a constant condition (%s): inlined its branch", node.name, cond)
        changed = True
    if changed:
        graph.cleanup()
    return changed


def constant_nodes_to_initializers(graph: gs.Graph) -> bool:
    """Turn ``Constant`` nodes holding a tensor into initializers (paddle2onnx stores weights so)."""
    changed = False
    for node in list(graph.nodes):
        if node.op != "Constant" or not node.outputs:
            continue
        value = node.attrs.get("value")
        if not isinstance(value, gs.Constant):
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name, value.values)
        _replace_uses(out, const)
        for k, t in enumerate(graph.outputs):
            if t is out:
                graph.outputs[k] = const
        node.outputs.clear()
        changed = True
    if changed:
        graph.cleanup()
    return changed


def normalize(model: onnx.ModelProto, *, fold: bool = True, base_dir: Path | None = None) -> ModelGraph:
    """Normalise a model for analysis.

    Args:
        model: the loaded model (not modified).
        fold: run constant folding.
        base_dir: folder of the model file when its external data was left on disk: the tensors are
            then memory-mapped (see :mod:`spa.graph.weights`).

    Returns:
        A :class:`~spa.graph.model.ModelGraph` with shapes inferred.

    Raises:
        UnsupportedModelError: the opset is older than :data:`MIN_OPSET` and cannot be converted.
    """
    if not model.graph.node and not model.graph.output:
        raise InvalidModelError("model has an empty graph (no nodes and no outputs); nothing to prune")
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UnsupportedModelError(
            f"opset {opset} is newer than this onnx package knows ({newest}); upgrade onnx"
        )
    m = onnx.ModelProto()
    m.CopyFrom(model)
    forget_placeholder_dims(m)
    validate_input(m)
    converted_from = None
    if opset < MIN_OPSET:
        m, converted_from = convert_opset(m), opset
        model = m
    _drop_initializer_inputs(m)
    m = infer_shapes(m)
    try:
        graph = gs.import_onnx(m)
        if base_dir is not None:
            attach_external(graph, base_dir)
        constant_nodes_to_initializers(graph)
        if fold:
            fold_constants(graph)
            if inline_constant_ifs(graph):
                fold_constants(graph)
        bypass_passthrough(graph)
        graph.cleanup().toposort()
        mg = ModelGraph.from_graph(graph, template=model, base_dir=base_dir)
        mg.converted_from_opset = converted_from
        return mg
    except SpaError:
        raise
    except Exception as exc:  # graphsurgeon/onnx helpers fail on malformed graphs: say so in one line
        raise InvalidModelError(
            f"the graph could not be converted ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "check it with onnx.checker.check_model(model, full_check=True)") from exc
