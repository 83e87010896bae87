"""Property-based tests over random CNN-like graphs (see :mod:`tests.graph_strategies`).

1. Pruning any generated graph at any ratio/criterion either passes the mask oracle or — when nothing
   is prunable — leaves the model's size unchanged; it never raises anything but a :class:`spa.SpaError`,
   and a SpaError is only accepted when it names an unsupported construct.
2. ``spa.analyze`` groups are disjoint in their (tensor, axis) members, and the output-channel axis of
   every Conv/ConvTranspose weight belongs to exactly one group.

Both run deterministically (``derandomize=True``, 200 examples each) so CI sees the same examples every
time; the file takes about 20 s on 2 cores. For a longer local hunt, set ``SPA_RANDOM_GRAPH_EXAMPLES``
(e.g. 5000); ``check_prune``/``check_analysis`` can also be driven by a custom ``@given`` (other
criteria, ``global_rank``, ``unconstrained``, ... pass through ``check_prune``'s keyword arguments).
A failure prints the drawn graph as a readable list of blocks plus a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import spa
from spa.graph.model import ModelGraph
from spa.runtime.feeds import random_inputs
from spa.runtime.session import session
from tests.graph_strategies import GeneratedModel, cnn_models
from tests.oracle import assert_oracle

SETTINGS = settings(
    max_examples=int(os.environ.get("SPA_RANDOM_GRAPH_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

RATIOS = (0.25, 0.5, 0.75)
CRITERIA = ("l1", "l2", "random")

#: SpaError messages that explain a construct spa does not support (acceptable outcomes).
UNSUPPORTED_HINTS = ("not supported", "unsupported", "cannot handle")


def _runs_in_ort(model: onnx.ModelProto) -> None:
    sess = session(model)
    sess.run(None, random_inputs(sess, seed=0))


def check_prune(gm: GeneratedModel, ratio: float, criterion: str, **prune_kwargs: object) -> None:
    """The pruning property for one drawn model (also used by exploratory runs with more examples)."""
    model = gm.model
    onnx.checker.check_model(model, full_check=True)
    _runs_in_ort(model)  # a failure here is a generator bug, not a spa bug
    try:
        result = assert_oracle(model, ratio, criterion, expect_pruned=False, **prune_kwargs)  # type: ignore[arg-type]
    except spa.SpaError as exc:
        msg = str(exc).lower()
        if not any(h in msg for h in UNSUPPORTED_HINTS):
            pytest.fail(f"spa raised {type(exc).__name__} on a valid generated graph: {exc}")
        event("outcome: SpaError (unsupported construct)")
        return
    before, after = result.report["params_before"], result.report["params_after"]
    pruned = sum(1 for gp in result.plan.groups if gp.removed)
    narrowed = sum(1 for gp in result.plan.groups for c in gp.consumers if c.mode != "zero")
    event(f"outcome: {'pruned' if pruned else 'narrowed consumers only' if narrowed else 'nothing pruned'}")
    if pruned:
        assert after < before, "a plan that removes channels must remove parameters"  # type: ignore[operator]
    elif narrowed:  # unconstrained: shared tensors keep everything, some consumers read fewer channels
        assert after < before, "a consumer reading fewer channels must have fewer weights"  # type: ignore[operator]
    else:
        assert after == before, "nothing pruned, yet the parameter count changed"
        assert result.report["macs_after"] == result.report["macs_before"]


def _conv_output_axes(mg: ModelGraph) -> list[tuple[str, int]]:
    """(weight, output-channel axis) of every Conv/ConvTranspose with an initializer weight."""
    out = []
    for node in mg.graph.nodes:
        if node.op not in ("Conv", "ConvTranspose") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if isinstance(w, gs.Constant):
            group = int(node.attrs.get("group", 1))
            if node.op == "Conv":
                out.append((w.name, 0))
            elif group == 1:
                out.append((w.name, 1))
    return out


def check_analysis(gm: GeneratedModel) -> None:
    """The structural property for one drawn model."""
    mg = spa.load(gm.model)
    analysis = spa.analyze(mg)
    seen = Counter((m.tensor, m.axis) for g in analysis.groups for m in g.members)
    dup = [k for k, n in seen.items() if n > 1]
    assert not dup, f"slots in more than one group: {dup}"
    for g in analysis.groups:
        if g.prunable:
            assert g.channels >= 2
            assert g.id in analysis.classes
            for slot, labels in analysis.classes[g.id].items():
                assert len(labels) and int(np.max(labels)) < g.channels, f"bad channel labels on {slot}"
    for key in _conv_output_axes(mg):
        assert seen[key] == 1, f"Conv weight axis {key} is in {seen[key]} groups (expected exactly 1)"


@SETTINGS
@given(gm=cnn_models(), ratio=st.sampled_from(RATIOS), criterion=st.sampled_from(CRITERIA))
def test_prune_passes_mask_oracle(gm: GeneratedModel, ratio: float, criterion: str) -> None:
    check_prune(gm, ratio, criterion)


@SETTINGS
@given(gm=cnn_models())
def test_analysis_groups_partition_slots(gm: GeneratedModel) -> None:
    check_analysis(gm)


@settings(max_examples=int(os.environ.get("SPA_RANDOM_GRAPH_EXAMPLES", "100")), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(gm=cnn_models(), ratio=st.sampled_from(RATIOS), reorder=st.booleans(),
       mode=st.sampled_from(["layout", "gather", "zero"]))
def test_unconstrained_passes_mask_oracle(gm: GeneratedModel, ratio: float, reorder: bool, mode: str) -> None:
    """UPSCALE export (per-consumer subsets, Slice/Gather/zero reads, reordering) on random graphs."""
    check_prune(gm, ratio, "l2", unconstrained=True, reorder=reorder, consumer_mode=mode)


@settings(max_examples=int(os.environ.get("SPA_RANDOM_GRAPH_EXAMPLES", "100")), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(gm=cnn_models(), ratio=st.sampled_from(RATIOS))
def test_prune_hidden_passes_mask_oracle(gm: GeneratedModel, ratio: float) -> None:
    """``--prune-hidden`` on random graphs: reductions and global pools over channels become masked
    statistics (their groups prunable, kind ``hidden``); the twin's masked statistics must still match."""
    check_prune(gm, ratio, "l2", prune_hidden=True)


@settings(max_examples=int(os.environ.get("SPA_RANDOM_GRAPH_EXAMPLES", "200")) // 5, deadline=None,
          derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(gm=cnn_models(), ratio=st.sampled_from(RATIOS))
def test_sequential_reconstruction_passes_mask_oracle(gm: GeneratedModel, ratio: float) -> None:
    """``--reconstruct sequential`` on random graphs: the re-solved weights (and bias / BatchNorm shifts)
    reach the masked twin too."""
    from spa.calibration import RandomSource

    check_prune(gm, ratio, "l2", calibration=RandomSource(samples=8, batch_size=4, seed=0), reconstruct="sequential",
                realign=False)
