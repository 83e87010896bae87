"""Sensitivity probes without rebuilding the model: one ONNX Runtime session, weights fed per probe.

A probe is the masked twin of one group pruned alone at one level: the same graph as the original, with
a few weights changed (removed channels zeroed at their consumers, compensation applied). Exporting that
twin and loading it into a new session per probe costs a copy of every weight twice (the export, then
ONNX Runtime's own), so a 125 M-parameter decoder took 17 minutes and 11.7× its size in peak memory for
72 probes. Here the original runs once as a *weight-fed* model: every float initializer of at least
:data:`spa.runtime.fed.MIN_FED` elements becomes a graph input, so one session serves every probe; a probe feeds the
twin's changed weights and the original's others (zero-copy views of the loaded, or memory-mapped,
arrays). A twin whose structure differs from the original's (a statistic restricted to kept channels
adds nodes) or that changes a constant that is not fed returns None from :meth:`FedModel.changed`, and
the caller falls back to exporting it.

Which weights changed is read from the twin itself: :func:`spa.surgery.masked_twin` copies the graph
sharing every constant's value object and replaces only those it edits, so identity (``is``) against the
original's values finds them without comparing data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa.calibration.runner import static_batch, tapped_model
from spa.graph.model import ModelGraph
from spa.quality.probe import ProbeData
from spa.runtime.fed import weight_fed
from spa.runtime.feeds import input_specs
from spa.runtime.session import session

log = logging.getLogger(__name__)



@dataclass
class FedModel:
    """The original model in one session with its float weights as inputs (see the module docstring).

    Attributes:
        session: the ONNX Runtime session of the weight-fed model.
        outputs_: the model's output names.
        weights: the original's value of every fed weight, by name.
        base: every original constant's value object, by name (identity marks an unchanged constant).
        ops: the original's node op types in order (a twin with other nodes is not fed).
        batches: the probe samples as feeds, in runs the model accepts.
    """

    session: object
    outputs_: list[str]
    weights: dict[str, np.ndarray]
    base: dict[str, object]
    ops: tuple[str, ...]
    batches: list[dict[str, np.ndarray]]
    #: the weight-fed graph and its export (weights as inputs: no weight data), for local probes
    graph: ModelGraph | None = None
    proto: onnx.ModelProto | None = None

    @classmethod
    def build(cls, mg: ModelGraph, data: ProbeData, threads: int = 1) -> FedModel | None:
        """The weight-fed session of ``mg`` over ``data`` (None when ONNX Runtime refuses it)."""
        fed, weights = weight_fed(mg)
        base = {t.name: t._values for t in mg.graph.tensors().values() if isinstance(t, gs.Constant)}
        try:
            proto = fed.to_onnx()
            sess = session(proto, threads=threads)
        except Exception as exc:  # noqa: BLE001 - any refusal means: probe the slow, exact way
            log.info("sensitivity probes rebuild each twin: the weight-fed model does not load (%s)", exc)
            return None
        specs = [s for s in input_specs(proto) if s.name not in weights]
        runs = list(_runs(data, [s.name for s in specs], static_batch(specs)))
        return cls(sess, [o.name for o in proto.graph.output], weights, base,
                   tuple(n.op for n in mg.graph.nodes), runs, fed, proto)

    def session_with(self, names: Sequence[str], threads: int = 1) -> object:
        """A session of the weight-fed model that also returns the intermediate tensors ``names``
        (:func:`spa.calibration.runner.tapped_model`)."""
        if self.proto is None:
            raise RuntimeError("this weight-fed model keeps no graph to fetch tensors from")
        return session(tapped_model(self.proto, names), threads=threads)

    def one_run(self, names: Sequence[str], threads: int = 1) -> dict[str, np.ndarray]:
        """``names`` (intermediate tensors or graph inputs) on the first probe run."""
        feeds = self.batches[0]
        fetch = [n for n in names if n not in feeds]
        values = self.session_with(fetch, threads).run(fetch, feeds | self.weights)  # type: ignore[attr-defined]
        return {n: feeds[n] for n in names if n in feeds} | dict(zip(fetch, values))

    def changed(self, twin: ModelGraph) -> dict[str, np.ndarray] | None:
        """The fed weights ``twin`` changes (None: it cannot be fed: other nodes, or a changed constant
        that is not fed)."""
        if tuple(n.op for n in twin.graph.nodes) != self.ops:
            return None
        out: dict[str, np.ndarray] = {}
        for t in twin.graph.tensors().values():
            if not isinstance(t, gs.Constant) or t._values is self.base.get(t.name, _MISSING):
                continue
            ref = self.weights.get(t.name)
            if ref is None or tuple(t.shape) != ref.shape:
                return None
            out[t.name] = np.ascontiguousarray(np.asarray(t.values), dtype=ref.dtype)
        return out

    def outputs(self, changed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The model's outputs over the probe samples with ``changed`` weights (concatenated, float64)."""
        weights = self.weights | dict(changed)
        got: list[list[np.ndarray]] = [[] for _ in self.outputs_]
        for feeds in self.batches:
            for k, v in enumerate(self.session.run(self.outputs_, feeds | weights)):  # type: ignore[attr-defined]
                got[k].append(np.asarray(v, dtype=np.float64))
        return [np.concatenate(v) if v and np.ndim(v[0]) else v[0] for v in got]


_MISSING = object()


def _runs(data: ProbeData, names: Sequence[str], fixed: int | None) -> Iterator[dict[str, np.ndarray]]:
    """The probe samples in runs of the data's batch size (of ``fixed`` samples for a fixed-batch model)."""
    arrays = {k: np.asarray(v) for k, v in data.source.arrays.items() if k in names}
    n = data.samples
    step = fixed or data.source.batch_size
    for start in range(0, n - (n % fixed if fixed else 0), step):
        yield {k: np.ascontiguousarray(v[start:start + step]) for k, v in arrays.items()}
