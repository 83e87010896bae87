"""The vocabulary every channel rule speaks.

A *slot* is one axis of one tensor (activation or initializer). A rule looks at one node and returns
*relations* between the slots of its inputs and outputs:

* :class:`Link` — element ``ia[k]`` of slot ``a`` is the same channel as element ``ib[k]`` of slot ``b``
  (``None`` means ``arange(size)``). Identity, offsets (Concat/Split/Slice), strides (Flatten),
  per-group positions (grouped Conv) are all links.
* :class:`Member` — an initializer slot whose slices are removed with the channel, and its *role*: a
  ``consumer`` slice reads the channel (zeroed in the masked twin), a ``producer`` slice writes it, a
  ``param`` slice transforms it per channel (BN scale, bias, PReLU slope).
* :class:`Barrier` — a slot (or every axis of a tensor) that must not be pruned, with the reason.
* :class:`Choice` — several candidate links of which exactly one is kept (a Reshape that merges or
  splits axes couples the merged axis with one of its factors); the analysis keeps the first whose
  slot is owned by weights and blocks the others' slots.
* :class:`Tag` — a hint naming what kind of channels a slot carries (``"head"``); it links nothing
  and the analysis may ignore it.
* :class:`Statistic` — the node computes a statistic *over* an activation slot (LayerNorm/RMSNorm mean
  and variance, a ReduceMean): its channels are not independent, so the slot is a barrier unless the
  user asks to prune the hidden size (``--prune-hidden``); then the slot stays prunable, the group's
  kind is ``hidden``, and the rule's :meth:`ChannelRule.twin` hook restricts the statistic to the kept
  channels in the masked twin (what the pruned model computes over its narrower axis).

A rule may also *rewrite* its node after pruning (``group`` attribute, Reshape/Split/Slice constants).

>>> Link(Slot("x", 1), Slot("y", 1)).a
Slot(tensor='x', axis=1)
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, SupportsInt, TypeGuard, overload

import numpy as np
import onnx_graphsurgeon as gs

from spa.errors import CouplingError, UnsupportedModelError
from spa.graph.model import Dim, const_value, shape_of

if TYPE_CHECKING:
    from spa.rules.moments import Result, Walk
    from spa.rules.views import Consumer


@dataclass(frozen=True)
class Slot:
    """One axis of one tensor."""

    tensor: str
    axis: int


class Role(str, enum.Enum):
    """How an initializer slice relates to the channel it belongs to."""

    PRODUCER = "producer"
    CONSUMER = "consumer"
    PARAM = "param"


@dataclass(frozen=True, eq=False)
class Link:
    """Element ``ia[k]`` of ``a`` and element ``ib[k]`` of ``b`` are one channel (None = identity)."""

    a: Slot
    b: Slot
    ia: np.ndarray | None = None
    ib: np.ndarray | None = None


@dataclass(frozen=True)
class Member:
    """An initializer slot sliced with its channels, and its role."""

    slot: Slot
    role: Role


class Explanation(str):
    """A barrier reason that explains *why* its axis must stay better than the generic reasons of the same
    group (an axis a rule does not map, two activations contracted): reports show it first
    (:func:`lead`). A plain ``str`` everywhere else.

    >>> lead(["Expand 'e' does not map axis 1", Explanation("rotary embeddings pair dims", "rope")])[0]
    'rotary embeddings pair dims'
    """

    #: the node whose rule gave it (to pick, of several, the one nearest a block)
    node: str

    def __new__(cls, text: str, node: str = "") -> Explanation:
        obj = super().__new__(cls, text)
        obj.node = node
        return obj


def lead(reasons: Iterable[str]) -> list[str]:
    """``reasons`` with every :class:`Explanation` first (each side in its own order)."""
    items = list(reasons)
    return [r for r in items if isinstance(r, Explanation)] + [r for r in items if not isinstance(r, Explanation)]


@dataclass(frozen=True)
class Barrier:
    """A slot (``axis`` None: every axis of ``tensor``) that must keep all its channels."""

    tensor: str
    axis: int | None
    reason: str


@dataclass(frozen=True, eq=False)
class Choice:
    """Keep one of ``options`` (each ``option.a`` is the option's own slot); block the others."""

    options: tuple[Link, ...]
    reason: str


@dataclass(frozen=True)
class Tag:
    """A hint for reports: ``slot`` carries channels of ``kind`` (e.g. ``"head"``). Couples nothing.

    >>> Tag(Slot("scores", 1), "head").kind
    'head'
    """

    slot: Slot
    kind: str


@dataclass(frozen=True)
class Statistic:
    """``slot`` is reduced over by a statistic (mean, variance, norm): a barrier with ``reason``, or —
    when hidden-size pruning is on — a prunable slot of a ``hidden`` group (see :class:`TwinContext`).

    ``local=True`` marks a statistic that stays the same statistic of the pruned layer when taken over
    the kept channels, and does not tie the slot to the model's hidden size: ConvNeXt-V2's global
    response normalisation divides each channel's spatial norm by the mean norm over the MLP's channels.
    Such a slot is prunable by default (no ``hidden`` kind, no barrier); the rule's ``twin`` hook still
    restricts the statistic to the kept channels in the masked twin.

    >>> Statistic(Slot("x", 2), "LayerNormalization 'ln' normalises over axis 2").slot.axis
    2
    """

    slot: Slot
    reason: str
    local: bool = False


Relation = Link | Member | Barrier | Choice | Tag | Statistic


@dataclass(frozen=True)
class Cost:
    """The multiply–accumulates of one node (see :meth:`ChannelRule.cost`).

    ``macs`` is a product of sizes; every slot of ``scaled_by`` is one factor of it (or proportional to
    one), so a plan that keeps the fraction ``f_s`` of the elements of each slot ``s`` leaves
    ``macs · Π_s f_s`` (:meth:`kept`). Slots not pruned count ``f = 1``.

    >>> Cost(100, (Slot("w", 0), Slot("w", 1))).kept({Slot("w", 0): 0.5})
    50.0
    """

    macs: int
    scaled_by: tuple[Slot, ...] = ()

    def kept(self, fractions: Mapping[Slot, float]) -> float:
        """MACs left when each slot keeps ``fractions[slot]`` of its elements."""
        f = 1.0
        for s in self.scaled_by:
            f *= fractions.get(s, 1.0)
        return self.macs * f


#: an attribute value in a latency-table key (:meth:`ChannelRule.latency_key`)
AttrValue = int | float | str | tuple[int, ...] | tuple[float, ...]


class NodeContext:
    """What a rule may ask about the graph around one node.

    Args:
        node: the node.
        opset: the model's default-domain opset.
        shapes: concrete shapes that override the graph's (the MAC counter passes the shapes of one run,
            :func:`spa.analysis.cost.concrete_shapes`); None: the shapes stored on the tensors.
    """

    def __init__(self, node: gs.Node, opset: int, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self.node = node
        self.opset = opset
        self.shapes = shapes

    @property
    def op(self) -> str:
        """The node's op type (typed: onnx-graphsurgeon's attributes are untyped)."""
        return str(self.node.op)

    # tensors -----------------------------------------------------------------------------------------
    def input(self, k: int) -> gs.Tensor | None:
        """The k-th input, or None when absent/empty (optional input)."""
        ins = self.node.inputs
        if k < len(ins) and ins[k] is not None and ins[k].name != "":
            return ins[k]
        return None

    def output(self, k: int) -> gs.Tensor | None:
        """The k-th output, or None when absent."""
        outs = self.node.outputs
        if k < len(outs) and outs[k].name != "":
            return outs[k]
        return None

    def shape(self, t: gs.Tensor | None) -> tuple[Dim, ...] | None:
        """Shape of ``t`` (None if unknown); from :attr:`shapes` first when given."""
        if t is None:
            return None
        if self.shapes is not None and t.name in self.shapes:
            return tuple(self.shapes[t.name])
        return shape_of(t)

    def rank(self, t: gs.Tensor | None) -> int | None:
        """Rank of ``t`` (None if unknown)."""
        s = self.shape(t)
        return None if s is None else len(s)

    @staticmethod
    def const(t: gs.Tensor | None) -> np.ndarray | None:
        """Value of a constant input, None for activations."""
        return const_value(t)

    @staticmethod
    def is_const(t: gs.Tensor | None) -> bool:
        """Whether ``t`` is an initializer/constant."""
        return isinstance(t, gs.Constant)

    @staticmethod
    def is_weight(t: gs.Tensor | None) -> bool:
        """A constant, or a QDQ weight: ``DequantizeLinear`` of a constant (or of ``QuantizeLinear`` of a
        float constant). The quantisation rules make every axis of that constant a consumer member, so the
        masked twin zeroes the channels the weight reads."""
        for _ in range(2):  # DequantizeLinear(const) or DequantizeLinear(QuantizeLinear(const))
            if isinstance(t, gs.Constant):
                return True
            producers = getattr(t, "inputs", None) or []
            if len(producers) != 1 or producers[0].op not in ("DequantizeLinear", "QuantizeLinear"):
                return False
            t = producers[0].inputs[0]
        return isinstance(t, gs.Constant)

    def attr(self, name: str, default: object = None) -> object:
        """A node attribute (any type: prefer the typed :meth:`int_attr`, :meth:`ints_attr`)."""
        return self.node.attrs.get(name, default)

    def int_attr(self, name: str, default: int) -> int:
        """An integer attribute (``axis``, ``group``, ``keepdims``...), ``default`` when absent or None.

        >>> ctx = NodeContext(gs.Node("Concat", "c", attrs={"axis": -1}), 17)
        >>> ctx.int_attr("axis", 0), ctx.int_attr("missing", 7)
        (-1, 7)
        """
        v = self.node.attrs.get(name)
        if v is None:
            return default
        if not isinstance(v, SupportsInt):
            raise UnsupportedModelError(
                f"{self.node.op} '{self.node.name}': attribute '{name}' is {type(v).__name__} {v!r}, expected an "
                "integer; fix the model (onnx.checker.check_model reports malformed attributes)"
            )
        return int(v)

    @overload
    def ints_attr(self, name: str) -> list[int] | None: ...
    @overload
    def ints_attr(self, name: str, default: Sequence[int]) -> list[int]: ...
    def ints_attr(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        """An integer-list attribute (``perm``, ``axes``), ``default`` when absent or None.

        >>> ctx = NodeContext(gs.Node("Transpose", "t", attrs={"perm": [0, 2, 1]}), 17)
        >>> ctx.ints_attr("perm"), ctx.ints_attr("axes"), ctx.ints_attr("axes", [1])
        ([0, 2, 1], None, [1])
        """
        v = self.node.attrs.get(name)
        if v is None:
            return None if default is None else list(default)
        items = v if isinstance(v, (list, tuple, np.ndarray)) else [v]
        out: list[int] = []
        for x in items:
            if not isinstance(x, SupportsInt):
                raise UnsupportedModelError(
                    f"{self.node.op} '{self.node.name}': attribute '{name}' holds {type(x).__name__} {x!r}, "
                    "expected integers; fix the model (onnx.checker.check_model reports malformed attributes)"
                )
            out.append(int(x))
        return out

    def ints(self, attr: str, input_index: int | None) -> list[int] | None:
        """Integer list given as attribute (older opsets) or constant input (newer ones).

        Returns None when neither is present or the input is computed at run time.
        """
        if attr in self.node.attrs and self.node.attrs[attr] is not None:
            v = self.node.attrs[attr]
            return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if input_index is not None:
            t = self.input(input_index)
            if t is not None:
                v = self.const(t)
                return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]
        return None

    # relation helpers --------------------------------------------------------------------------------
    def barrier_all(self, reason: str) -> list[Relation]:
        """Barriers on every axis of every input and output of the node."""
        rels: list[Relation] = []
        for t in list(self.node.inputs) + list(self.node.outputs):
            if t is not None and t.name:
                rels.append(Barrier(t.name, None, reason))
        return rels


def graph_changed(ctx: NodeContext, what: str) -> CouplingError:
    """The error a rewrite hook raises when its node no longer looks as the analysis saw it.

    >>> ctx = NodeContext(gs.Node("Split", "s"), 17)
    >>> str(graph_changed(ctx, "input shape unknown")).split(";")[0]
    "Split 's': input shape unknown at rewrite time, although the analysis related its channels"
    """
    return CouplingError(
        f"{ctx.op} '{ctx.node.name}': {what} at rewrite time, although the analysis related its channels; "
        "the graph changed between analysis and pruning: prune the model that was analysed "
        "(run `spa analyze` on it to see its groups), or report the model"
    )


def size_spec(ctx: NodeContext, index: int) -> tuple[list[int | None], gs.Node | None, bool] | None:
    """Entries of a size-vector input (Reshape target, Expand ``shape``, Tile ``repeats``), None for computed ones.

    A constant gives its values; a ``Concat`` of pieces (possibly behind Casts: tf2onnx builds size
    vectors in int32) gives the constant pieces' values and None for the computed ones. Also returned:
    the Concat (None for a constant) and whether a rewrite may edit its constant pieces (the Concat feeds
    only this node). None when the input is neither.
    """
    t = ctx.input(index)
    v = ctx.const(t)
    if v is not None:
        return [int(a) for a in v.reshape(-1)], None, True
    while t is not None and len(t.inputs) == 1 and t.inputs[0].op == "Cast" and len(t.outputs) == 1:
        t = t.inputs[0].inputs[0]
    if t is None or len(t.inputs) != 1 or t.inputs[0].op != "Concat":
        return None
    concat = t.inputs[0]
    spec: list[int | None] = []
    for piece in concat.inputs:
        pv = ctx.const(piece)
        if pv is not None:
            spec += [int(a) for a in pv.reshape(-1)]
            continue
        ps = ctx.shape(piece)
        if ps is None or len(ps) != 1 or static(ps[0]) is None:
            return None
        spec += [None] * int(ps[0])  # type: ignore[arg-type]
    return spec, concat, len(t.outputs) == 1


def norm_axis(axis: int, rank: int) -> int:
    """Normalise a possibly negative axis."""
    return axis + rank if axis < 0 else axis


def static(d: Dim) -> int | None:
    """A dimension as an int, or None when symbolic/unknown."""
    return int(d) if isinstance(d, (int, np.integer)) else None


def dims_product(dims: Iterable[object]) -> int:
    """Product of a shape's sizes, counting every dimension that is not a positive int (symbolic,
    unknown) as 1 — one sample of a dynamic batch.

    >>> dims_product([2, 3, None, "N"])
    6
    """
    p = 1
    for d in dims:
        p *= int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1
    return p


def attr_value(value: object) -> AttrValue:
    """An attribute value as a hashable, JSON-able value (lists → tuples, numpy scalars → Python, bytes → str).

    >>> attr_value([1, 2]), attr_value(b"SAME_UPPER")
    ((1, 2), 'SAME_UPPER')
    """
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [v.item() if isinstance(v, np.generic) else v for v in value]
        if _all_ints(items):
            return tuple(items)
        if _all_floats(items):
            return tuple(items)
    elif isinstance(value, bytes):
        return value.decode()
    else:
        item = value.item() if isinstance(value, np.generic) else value
        if isinstance(item, (int, float, str)):
            return item
    raise UnsupportedModelError(f"attribute value {value!r} is not a number, string or list of numbers")


def _all_ints(items: list[object]) -> TypeGuard[list[int]]:
    return all(isinstance(v, int) for v in items)


def _all_floats(items: list[object]) -> TypeGuard[list[float]]:
    return all(isinstance(v, (int, float)) for v in items)


def all_axes(t: gs.Tensor, shape: Sequence[Dim] | None) -> tuple[Slot, ...]:
    """Every axis of ``t`` as a slot (none when the shape is unknown)."""
    return tuple(Slot(t.name, a) for a in range(len(shape or ())))


def same_dim(a: Dim, b: Dim) -> bool:
    """Whether two dims are known to be equal (equal ints or the same symbol)."""
    return a is not None and a == b


def identity_links(x: str, y: str, axes: Iterable[tuple[int, int]]) -> list[Relation]:
    """Identity links between axis pairs of two tensors."""
    return [Link(Slot(x, ax), Slot(y, ay)) for ax, ay in axes]


Kept = Callable[[Slot], "np.ndarray | None"]


class RewriteContext:
    """What a rule may use to rewrite its node after pruning.

    Args:
        kept: kept element indices of a pruned slot, None when not pruned.
        sizes: new size of a pruned slot.
        graph: the graph being rewritten, where a rewrite may add nodes (a private copy of a shared size
            vector, :meth:`set_vector`); :attr:`added` says whether one did (the caller re-sorts).
    """

    def __init__(self, kept: Kept, sizes: Callable[[Slot], int | None], graph: gs.Graph | None = None) -> None:
        self._kept = kept
        self._sizes = sizes
        self.graph = graph
        self.added = False

    def kept(self, tensor: gs.Tensor | None, axis: int) -> np.ndarray | None:
        """Kept element indices of a pruned slot; None when the slot is not pruned."""
        if tensor is None:
            return None
        return self._kept(Slot(tensor.name, axis))

    def new_size(self, tensor: gs.Tensor, axis: int, old: int) -> int:
        """Size of an axis after pruning (``old`` when it is not pruned)."""
        k = self.kept(tensor, axis)
        return old if k is None else len(k)

    def set_vector(self, node: gs.Node, index: int, values: Sequence[int | None], concat: gs.Node | None,
                   *, private: bool = False) -> None:
        """Write a size vector into ``node``'s input ``index``: a fresh constant, or — when the vector is
        built by ``concat`` at run time — into that Concat's constant pieces (run-time pieces kept). With
        ``private``, ``concat`` (shared with other nodes) is copied for ``node`` alone first."""
        if concat is None:
            self.set_const_input(node, index, np.asarray(values, dtype=np.int64))
            return
        if private:
            concat = self._private_copy(node, index, concat)
        pos = 0
        for k, piece in enumerate(list(concat.inputs)):
            n = int(np.prod(piece.shape)) if piece.shape is not None else 0
            if isinstance(piece, gs.Constant):
                self.set_const_input(concat, k, np.asarray(values[pos:pos + n], dtype=np.int64))
            pos += n

    def _private_copy(self, node: gs.Node, index: int, concat: gs.Node) -> gs.Node:
        """A copy of ``concat`` (same inputs) that feeds ``node``'s input ``index`` only."""
        if self.graph is None:
            raise CouplingError(f"{node.op} '{node.name}': its size vector is shared with other nodes and this "
                                "rewrite has no graph to add a private copy to; prune through spa.prune")
        old = concat.outputs[0]
        out = gs.Variable(f"{old.name}__spa_{node.name or id(node)}", dtype=old.dtype, shape=old.shape)
        copy = gs.Node("Concat", name=f"{concat.name}__spa_{node.name or id(node)}", attrs=dict(concat.attrs),
                       inputs=list(concat.inputs), outputs=[out])
        self.graph.nodes.append(copy)
        node.inputs[index] = out
        self.added = True
        return copy

    @staticmethod
    def set_const_input(node: gs.Node, index: int, value: np.ndarray) -> None:
        """Replace constant input ``index`` of ``node`` with a fresh constant (never mutates shared ones)."""
        old = node.inputs[index]
        name = f"{old.name}__spa_{node.name or id(node)}"
        node.inputs[index] = gs.Constant(name, np.asarray(value, dtype=np.asarray(old.values).dtype))


class TwinContext:
    """What a rule may use to rewrite its node in the *masked twin* (see :meth:`ChannelRule.twin`).

    Args:
        graph: the twin's graph (new nodes are appended to it; the caller sorts it afterwards).
        kept: kept element indices of a pruned slot, None when not pruned.
    """

    def __init__(self, graph: gs.Graph, kept: Kept) -> None:
        self.graph = graph
        self._kept = kept
        self._count = 0

    def mask(self, tensor: gs.Tensor | None, axis: int, size: int) -> np.ndarray | None:
        """Boolean keep-mask of length ``size`` for a pruned slot, None when the slot is not pruned."""
        if tensor is None:
            return None
        k = self._kept(Slot(tensor.name, axis))
        if k is None or len(k) == size:
            return None
        m = np.zeros(size, dtype=bool)
        m[k] = True
        return m

    def fresh(self, base: str) -> str:
        """A tensor/node name not used yet."""
        self._count += 1
        return f"{base}__spa_twin{self._count}"

    def op(self, op: str, inputs: Sequence[gs.Tensor], like: gs.Tensor, attrs: dict[str, object] | None = None,
           out: gs.Variable | None = None) -> gs.Variable:
        """Append node ``op(inputs)`` to the twin; its output (``out`` or a fresh variable) has ``like``'s dtype."""
        y = out if out is not None else gs.Variable(self.fresh(like.name), dtype=like.dtype)
        self.graph.nodes.append(gs.Node(op, name=self.fresh(f"{op}_{like.name}"), attrs=attrs or {},
                                        inputs=list(inputs), outputs=[y]))
        return y

    def constant(self, value: np.ndarray, like: gs.Tensor) -> gs.Constant:
        """A constant with ``like``'s dtype (a numeric numpy type; others cannot carry masked statistics)."""
        try:
            dtype = np.dtype(like.dtype) if like.dtype is not None else np.dtype(np.float32)
        except TypeError:  # an ONNX type numpy has no dtype for (float8, ...)
            dtype = np.dtype(object)
        if dtype.kind not in "fiu":
            raise UnsupportedModelError(
                f"the masked twin needs statistics over '{like.name}', whose type {like.dtype} numpy cannot "
                "compute in; prune without --emit-masked/--prune-hidden, or convert the model to float")
        return gs.Constant(self.fresh(f"{like.name}_c"), np.asarray(value, dtype=dtype))


class ChannelRule(ABC):
    """Channel behaviour of one op family.

    Attributes:
        op_types: the op types this rule handles.
        domain: their domain ("" for ai.onnx).
        min_opset, max_opset: opset range (inclusive) of the default domain this rule is valid for.
    """

    op_types: Sequence[str] = ()
    domain: str = ""
    min_opset: int = 1
    max_opset: int = 10_000

    @abstractmethod
    def relate(self, ctx: NodeContext) -> list[Relation]:
        """Relations between the node's slots."""

    def rewrite(self, ctx: NodeContext, rw: RewriteContext) -> None:  # noqa: B027 - optional hook
        """Fix attributes/constants of the node after its slots were pruned (default: nothing)."""

    def twin(self, ctx: NodeContext, tw: TwinContext) -> None:  # noqa: B027 - optional hook
        """Make the node compute, in the masked twin, what the pruned model computes (rules that emit a
        :class:`Statistic` restrict the statistic to kept channels here; default: nothing)."""

    # op knowledge beyond channels --------------------------------------------------------------------
    def cost(self, ctx: NodeContext) -> Cost | None:
        """The node's multiply–accumulates at the shapes ``ctx`` sees, and the slots they scale with.

        None (the default): the op does no MAC-counted work (elementwise ops, pooling, data movement).
        Dimensions that are not positive ints (symbolic, unknown) count as 1.
        """
        return None

    def matrix_view(self, ctx: NodeContext, slot: Slot, labels: np.ndarray) -> Consumer | str:
        """The node as ``y = W x`` read through its weight's consumer ``slot`` (channel ``labels`` per
        element), for the calibrated criteria (:mod:`spa.criteria.consumers`); or why there is none."""
        return f"no matrix view of {ctx.node.op} '{ctx.node.name}'"

    def latency_key(self, ctx: NodeContext, in_shapes: Sequence[tuple[int, ...]],
                    out_shape: tuple[int, ...]) -> tuple[tuple[str, AttrValue], ...] | None:
        """The attributes that, with the op and the concrete (possibly pruned) input shapes, fix the node's
        latency, sorted by name with defaults filled in — the op-specific part of
        :class:`spa.latency.layers.LayerConfig`. None (the default): the op's latency is not tabulated."""
        return None

    def aligned_slots(self, ctx: NodeContext) -> tuple[Slot, ...]:
        """Slots whose kept element counts should be whole SIMD blocks (ONNX Runtime's NCHWc kernels of
        depthwise and grouped convolutions: 8 channels with AVX2, 16 with AVX-512; 8 for CUDA fp16 tensor
        cores) — a hard rule for the latency-chosen channel counts (:mod:`spa.latency.counts`). Default:
        none."""
        return ()

    def shape_value(self, ctx: NodeContext) -> np.ndarray | None:
        """The node's output value when it follows from its inputs' *shapes* alone (Shape, Size), for
        evaluating shape arithmetic at concrete shapes (:func:`spa.analysis.cost.concrete_shapes`).
        Default: None (the output depends on input values)."""
        return None

    def refuses(self, ctx: NodeContext, values: Mapping[str, np.ndarray]) -> str | None:
        """Why the node cannot run at the concrete shapes of ``ctx.shapes`` (with the small tensor
        ``values`` known there), for choosing the sizes MACs are counted at
        (:func:`spa.analysis.metrics.representative`): one line naming the node, or None when nothing
        shows it cannot. Default: None (ONNX's shape inference still reports contradictions)."""
        return None

    def running_stats(self, ctx: NodeContext) -> bool:
        """Whether the node normalises with running statistics stored in the model (an inference-mode
        BatchNormalization): its input 1 is a per-channel scale γ, inputs 3 and 4 the running mean and
        variance. Default: False."""
        return False

    def neutral_value(self, ctx: NodeContext, t: gs.Constant, values: np.ndarray) -> np.ndarray | int | None:
        """The value of constant input ``t`` (``values``) that contributes nothing through this node —
        what a removed channel's weight slice is set to. None (the default): the node has no opinion
        (0 is used)."""
        return None

    def moments(self, ctx: NodeContext, out: gs.Tensor, axis: int, walk: Walk) -> Result:
        """Per-element mean and variance of ``out`` along ``axis`` from those of the node's inputs (``walk``
        gives an input's), for the data-free criterion (:mod:`spa.rules.moments` holds the transfers and
        their maths). Default: a reason — the op has no moment transfer, the estimate stops here."""
        return f"no BatchNormalization before {ctx.node.op} '{ctx.node.name}'"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.op_types)})"
