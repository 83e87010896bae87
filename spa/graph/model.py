"""`ModelGraph`: the working representation of a model inside spa.

A thin wrapper around an onnx-graphsurgeon graph that also remembers what the graph alone does not
carry (IR version, opset imports, metadata) so the exported model loads wherever the input did, and
that answers the questions rules ask: a tensor's shape, rank, constant value, producer and consumers.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa.graph.io import MAX_IR_VERSION
from spa.graph.shapes import complete_shapes
from spa.graph.weights import mapped_as_arrays, stubbed

log = logging.getLogger(__name__)

Dim = int | str | None


def _copy_fields(src: onnx.ModelProto | onnx.GraphProto, dst: onnx.ModelProto | onnx.GraphProto, skip: str) -> None:
    """Copy every set field of the protobuf message ``src`` into ``dst`` but the one named ``skip``
    (repeated fields extended, messages copied, scalars assigned)."""
    for field_desc, value in src.ListFields():
        if field_desc.name == skip:
            continue
        if hasattr(value, "extend"):
            getattr(dst, field_desc.name).extend(value)
        elif hasattr(value, "CopyFrom"):
            getattr(dst, field_desc.name).CopyFrom(value)
        else:
            setattr(dst, field_desc.name, value)


def _lite_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers carry dims but no data (cheap to copy and infer)."""
    lite = onnx.ModelProto()
    graph = model.graph
    inits = list(graph.initializer)
    graph_copy = onnx.GraphProto()
    _copy_fields(graph, graph_copy, skip="initializer")  # then add data-less stand-ins
    for init in inits:
        if init.HasField("raw_data") and len(init.raw_data) > 4096:
            stub = graph_copy.initializer.add()
            stub.name, stub.data_type = init.name, init.data_type
            stub.dims.extend(init.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            entry = stub.external_data.add()
            entry.key, entry.value = "location", "__spa_stripped__"
        else:
            graph_copy.initializer.add().CopyFrom(init)
    _copy_fields(model, lite, skip="graph")
    lite.graph.CopyFrom(graph_copy)
    return lite


def _unknown(d: onnx.TensorShapeProto.Dimension) -> bool:
    return not d.HasField("dim_value") and (not d.dim_param or d.dim_param.startswith("unk__"))


def _merge_declared(inferred: onnx.ModelProto, declared: dict[str, onnx.ValueInfoProto]) -> bool:
    """Fill what inference left unknown from declared value_info; returns whether anything changed."""
    changed = False
    have = {vi.name: vi for vi in inferred.graph.value_info}
    for name, dv in declared.items():
        dt = dv.type.tensor_type
        if not dt.HasField("shape"):
            continue
        iv = have.get(name)
        if iv is None or not iv.type.tensor_type.HasField("shape"):
            if iv is None:
                inferred.graph.value_info.append(dv)
            else:
                iv.CopyFrom(dv)
            changed = True
            continue
        dims = iv.type.tensor_type.shape.dim
        if len(dims) != len(dt.shape.dim):
            continue
        for mine, theirs in zip(dims, dt.shape.dim):
            if _unknown(mine) and not _unknown(theirs):
                mine.CopyFrom(theirs)
                changed = True
    return changed


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference without serialising the weights; updates ``model`` in place.

    Large initializers are swapped for data-less stand-ins (shape inference needs only their dims), so
    this works for models above the 2 GB protobuf limit and is fast. Declared ``value_info`` is kept as
    a starting point (custom ops' outputs), and shapes inference leaves unknown are completed by
    :func:`spa.graph.shapes.complete_shapes`. The result is written onto ``model``, which is returned.
    """
    lite = _lite_copy(model)
    declared = {vi.name: vi for vi in lite.graph.value_info}
    del lite.graph.value_info[:]  # exporters' annotations can be stale: infer from scratch first
    inferred = lite
    fallback_used = False
    for _ in range(6):  # inference, then complete what it could not solve, and let that flow on
        try:
            inferred = onnx.shape_inference.infer_shapes(inferred, data_prop=True)
        except Exception as exc:  # noqa: BLE001 - inference failures must not stop analysis: rules see unknown shapes
            log.warning("shape inference failed: %s", exc)
            break
        if complete_shapes(inferred):
            continue
        if fallback_used:
            break
        # declared shapes only where inference found nothing: whole tensors (custom ops' outputs) or
        # single unknown dims (``cos[:seq]``) — never over a dimension inference knows
        fallback_used = True
        if not _merge_declared(inferred, declared):
            break
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    by_name = {o.name: o for o in inferred.graph.output}
    for o in model.graph.output:
        if not o.type.tensor_type.HasField("shape") and o.name in by_name:
            o.CopyFrom(by_name[o.name])
    return model


@dataclass
class ModelGraph:
    """A graphsurgeon graph plus the model-level fields needed to write it back.

    Attributes:
        graph: the graphsurgeon graph (nodes in topological order).
        ir_version: IR version to write.
        opset_imports: opset imports of the source model.
        metadata: ``metadata_props`` of the source model.
        producer_name: the source model's producer name.
    """

    graph: gs.Graph
    ir_version: int
    opset_imports: list[onnx.OperatorSetIdProto]
    metadata: dict[str, str] = field(default_factory=dict)
    producer_name: str = ""
    base_dir: Path | None = None
    #: the opset of the input when normalisation converted it (None: not converted)
    converted_from_opset: int | None = None

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_graph(cls, graph: gs.Graph, template: onnx.ModelProto, base_dir: Path | None = None) -> ModelGraph:
        """Wrap ``graph`` with ``template``'s model fields and refresh all tensor shapes."""
        mg = cls(
            base_dir=base_dir,
            graph=graph,
            ir_version=min(int(template.ir_version) or MAX_IR_VERSION, MAX_IR_VERSION),
            opset_imports=[copy.deepcopy(o) for o in template.opset_import],
            metadata={p.key: p.value for p in template.metadata_props},
            producer_name=template.producer_name,
        )
        mg.refresh_shapes()
        return mg

    def refresh_shapes(self) -> None:
        """Infer intermediate shapes again; shapes already known (declared value_info) are kept as hints."""
        io_ids = {id(t) for t in self.graph.inputs} | {id(t) for t in self.graph.outputs}
        with stubbed(self.graph):
            model = infer_shapes(self._export())
        shapes: dict[str, tuple[Dim, ...]] = {}
        for vi in list(model.graph.value_info) + list(model.graph.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else
                    (d.dim_param if d.dim_param and not d.dim_param.startswith("unk__") else None)
                    for d in tt.shape.dim
                )
        dtypes = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
        for name, t in self.graph.tensors().items():
            if isinstance(t, gs.Variable) and id(t) not in io_ids:
                if name in shapes:
                    t.shape = list(shapes[name])
                if t.dtype is None and dtypes.get(name):
                    t.dtype = onnx.helper.tensor_dtype_to_np_dtype(dtypes[name])

    # -- export --------------------------------------------------------------------------------------
    def to_onnx(self, *, check: bool = False) -> onnx.ModelProto:
        """Export to a self-contained ModelProto with the source model's IR version, opsets and metadata.

        Memory-mapped weights are copied into the proto; for models near or above 2 GB write them with
        :func:`spa.graph.io.save_graph` instead, which streams weights to an external-data file.
        """
        with mapped_as_arrays(self.graph):
            model = self._export()
        if check:
            onnx.checker.check_model(model, full_check=True)
        return model

    def interface(self) -> onnx.ModelProto:
        """The model without its weight data (constants over ``STUB_BYTES`` as data-less stand-ins):
        enough to read its inputs, outputs and nodes, never to run it."""
        with stubbed(self.graph):
            return self._export()

    def _export(self) -> onnx.ModelProto:
        model: onnx.ModelProto = gs.export_onnx(self.graph, do_type_check=False)
        for t in model.graph.initializer:
            # graphsurgeon copies a constant's imported data_location onto the exported tensor even when
            # its values are now in memory (sliced, folded, mapped): EXTERNAL without a location is a
            # tensor ONNX Runtime refuses ("Missing 'location'"), so it is stored inline
            if t.data_location == onnx.TensorProto.EXTERNAL and not any(e.key == "location" for e in t.external_data):
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
        model.ir_version = self.ir_version
        del model.opset_import[:]
        model.opset_import.extend(self.opset_imports)
        domains = {o.domain for o in self.opset_imports}
        for node in model.graph.node:
            if node.domain not in domains and node.domain not in ("", "ai.onnx"):
                model.opset_import.append(onnx.helper.make_opsetid(node.domain, 1))
                domains.add(node.domain)
        if self.producer_name:
            model.producer_name = self.producer_name
        for k, v in self.metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        return model

    def copy(self) -> ModelGraph:
        """Deep copy (graph and constants)."""
        return ModelGraph(
            graph=self.graph.copy(),
            ir_version=self.ir_version,
            opset_imports=[copy.deepcopy(o) for o in self.opset_imports],
            metadata=dict(self.metadata),
            producer_name=self.producer_name,
            base_dir=self.base_dir,
            converted_from_opset=self.converted_from_opset,
        )

    # -- queries used by rules -----------------------------------------------------------------------
    @property
    def opset(self) -> int:
        """Default-domain opset version."""
        for o in self.opset_imports:
            if o.domain in ("", "ai.onnx"):
                return int(o.version)
        return 1

    def tensors(self) -> dict[str, gs.Tensor]:
        """All tensors by name."""
        tensors: dict[str, gs.Tensor] = self.graph.tensors()
        return tensors


def shape_of(t: gs.Tensor) -> tuple[Dim, ...] | None:
    """A tensor's shape as a tuple (ints for static dims, str/None for dynamic), or None if unknown."""
    if t is None or t.shape is None:
        return None
    if isinstance(t, gs.Constant):
        return tuple(int(d) for d in t.shape)
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) else None)
                 for d in t.shape)


def const_value(t: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, or None for variables and missing optional inputs."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    return None
