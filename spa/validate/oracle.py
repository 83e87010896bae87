"""The mask oracle: the pruned model must compute what the masked twin computes.

The masked twin keeps the original architecture and zeroes, at their consumers, the weight slices
that read removed channels. For any input, ``pruned(x) == masked(x)`` up to float rounding. This
catches every slicing, offset, Reshape-constant and group error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from spa.errors import ValidationError
from spa.graph.model import ModelGraph
from spa.runtime.compare import OutputDiff, compare_outputs
from spa.runtime.feeds import graph_of, random_inputs, runnable_shapes
from spa.runtime.session import session

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of comparing two models on the same random inputs."""

    ok: bool
    diffs: tuple[OutputDiff, ...]
    trials: int

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable dict."""
        return {"ok": self.ok, "trials": self.trials, "outputs": [d.to_json() for d in self.diffs]}


ModelLike = onnx.ModelProto | str | os.PathLike[str] | ModelGraph


def _exported(model: ModelLike) -> onnx.ModelProto | str | os.PathLike[str]:
    """What ONNX Runtime loads: a ModelGraph exported, anything else as given."""
    return model.to_onnx() if isinstance(model, ModelGraph) else model


def verify(
    pruned: ModelLike,
    reference: ModelLike,
    *,
    trials: int = 3,
    seed: int = 0,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> VerifyResult:
    """Compare a pruned model with its masked twin (the mask oracle) or any reference model.

    Both run on ``trials`` seeded random inputs (``seed``, ``seed + 1``, ...; ``shapes`` fixes dynamic
    input dimensions) and every output is compared; the worst difference per output over all trials is
    reported. Outputs are matched by name. This is :func:`spa.verify`.
    """
    a, b = session(_exported(pruned)), session(_exported(reference))
    names_a = [o.name for o in a.get_outputs()]
    names_b = [o.name for o in b.get_outputs()]
    if names_a != names_b:
        raise ValidationError(f"output names differ: {names_a} vs {names_b}")
    worst: dict[str, OutputDiff] = {}
    # dynamic sizes the model accepts (multiples of 32, ...): the graph rules out some before any run
    shapes = runnable_shapes(b, shapes, seed=seed, graph=lambda: graph_of(reference))
    for t in range(trials):
        feeds = random_inputs(b, seed=seed + t, shapes=shapes)
        try:
            out_a = a.run(None, feeds)
        except Exception as exc:
            raise ValidationError(f"pruned model fails in ONNX Runtime: {str(exc).splitlines()[0]}") from exc
        out_b = b.run(None, feeds)
        for d in compare_outputs(names_a, out_a, out_b, rtol, atol):
            w = worst.get(d.name)
            if w is None or d.max_abs > w.max_abs or not d.ok:
                worst[d.name] = OutputDiff(d.name, max(d.max_abs, w.max_abs if w else 0.0),
                                           max(d.max_rel, w.max_rel if w else 0.0),
                                           min(d.cosine, w.cosine if w else 1.0), d.ok and (w.ok if w else True))
    diffs = tuple(worst[n] for n in names_a)
    return VerifyResult(all(d.ok for d in diffs), diffs, trials)


#: the former name of :func:`verify`
compare_models = verify
