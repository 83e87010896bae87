"""UPSCALE-style unconstrained pruning: per-consumer subsets, union kept, Slice/Gather/zero reads,
channel reordering — all checked by the mask oracle."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import spa
from spa.reorder.layout import contiguous, contiguous_order
from spa.rules.base import Slot
from tests.oracle import GraphBuilder, assert_oracle

MODES = ["layout", "gather", "zero", "auto"]


def _residual_stage(blocks: int = 3, c: int = 16) -> GraphBuilder:
    """A residual stream read by several blocks' first convs (the UPSCALE case)."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 8, 8])
    s = b.op("Relu", [b.bn(b.conv(x, 3, c), c)])
    for _ in range(blocks):
        h = b.op("Relu", [b.conv(s, c, c // 2)])  # type: ignore[arg-type]
        h = b.conv(h, c // 2, c)  # type: ignore[arg-type]
        s = b.op("Relu", [b.op("Add", [s, h])])  # type: ignore[list-item]
    b.output(b.conv(s, c, 4, k=1))  # type: ignore[arg-type]
    return b


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_residual_stage_is_exact(mode: str, ratio: float, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    r = assert_oracle(_residual_stage().build(), ratio, unconstrained=True, consumer_mode=mode)
    reads = r.report["consumer_reads"]
    assert sum(reads.values()) > 0  # type: ignore[union-attr]
    if mode == "zero":
        assert reads["slice"] == reads["gather"] == 0  # type: ignore[index]
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("Gather") == reads["gather"] and ops.count("Slice") == reads["slice"]  # type: ignore[index]


def test_union_is_kept_and_consumers_read_their_own() -> None:
    m = _residual_stage().build()
    r = spa.prune(m, ratio=0.5, unconstrained=True)
    con = spa.prune(m, ratio=0.5)
    stream = next(gp for gp in r.plan.groups if gp.consumers)
    same = next(gp for gp in con.plan.groups if gp.group == stream.group)
    # the union keeps at least as many channels as each consumer, and each consumer keeps the same count
    assert stream.kept >= same.kept
    for c in stream.consumers:
        assert len(c.kept) == same.kept
        assert set(c.kept) <= set(range(stream.channels)) - set(stream.removed)


def test_reordering_makes_fewer_copies() -> None:
    m = _residual_stage(blocks=4).build()
    naive = spa.prune(m, ratio=0.5, unconstrained=True, reorder=False).report["consumer_reads"]
    ordered = spa.prune(m, ratio=0.5, unconstrained=True, reorder=True).report["consumer_reads"]
    assert ordered["gather"] <= naive["gather"]  # type: ignore[index]
    assert ordered["slice"] >= naive["slice"]  # type: ignore[index]


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "mobilenetv2", "densenet", "fpn", "unet"])
def test_zoo_unconstrained_reordered(zoo_export, name: str) -> None:  # type: ignore[no-untyped-def]
    assert_oracle(str(zoo_export(name, "legacy")), 0.5, unconstrained=True)


def test_layout_two_overlapping_sets() -> None:
    order = contiguous_order(list(range(8)), [{0, 1, 2, 3, 4}, {3, 4, 5, 6, 7}, {3, 4}])
    assert sorted(order) == list(range(8))
    for s in ({0, 1, 2, 3, 4}, {3, 4, 5, 6, 7}, {3, 4}):
        assert contiguous(order, s)


def test_layout_cannot_always_win_but_stays_a_permutation() -> None:
    rng = np.random.default_rng(0)
    kept = list(range(20))
    sets = [set(rng.choice(20, 10, replace=False).tolist()) for _ in range(4)]
    order = contiguous_order(kept, sets)
    assert sorted(order) == kept


# --- Concat groups (DenseNet): per-consumer counts, within-block reordering -----------------------------

def _dense_block(layers: int = 4, c0: int = 8, growth: int = 4, head: str = "gemm") -> GraphBuilder:
    """A DenseNet block: every layer reads BN-ReLU of the concatenation of all earlier feature maps."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 6, 6])
    cur, c = b.conv(x, 3, c0), c0
    for _ in range(layers):
        h = b.op("Relu", [b.bn(cur, c)])
        h = b.op("Relu", [b.conv(h, c, 2 * growth, k=1)])  # type: ignore[arg-type]
        new = b.conv(h, 2 * growth, growth)  # type: ignore[arg-type]
        cur, c = b.op("Concat", [cur, new], axis=1), c + growth  # type: ignore[assignment]
    h = b.op("Relu", [b.bn(cur, c)])
    if head == "gemm":  # GAP -> Flatten -> Gemm: one element per channel
        flat = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)  # type: ignore[list-item]
        b.output(b.op("Gemm", [flat, b.weight(5, c), b.const(np.zeros(5, np.float32))], transB=1))  # type: ignore[arg-type,list-item]
    else:  # Flatten of the map -> MatMul: 36 elements per channel
        flat = b.op("Flatten", [h], axis=1)  # type: ignore[list-item]
        b.output(b.op("MatMul", [flat, b.weight(c * 36, 5, scale=0.05)]))  # type: ignore[arg-type,list-item]
    return b


def _concat_group(result: spa.api.PruneResult) -> int:
    """The id of the pruned group whose slots do not all hold every channel (the Concat group)."""
    a = result.analysis
    for gp in result.plan.groups:
        if any(len(np.unique(lab)) < gp.channels for lab in a.classes[gp.group].values()) and gp.consumers:
            return gp.group
    raise AssertionError("no unconstrained Concat group")


@pytest.mark.parametrize("head", ["gemm", "matmul"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_dense_block_is_exact(head: str, mode: str, ratio: float, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    m = _dense_block(head=head).build()
    for reorder in (False, True):
        r = assert_oracle(m, ratio, unconstrained=True, reorder=reorder, consumer_mode=mode)
        reads = r.report["consumer_reads"]
        ops = [n.op_type for n in r.model.graph.node]
        assert ops.count("Gather") == reads["gather"] and ops.count("Slice") == reads["slice"]  # type: ignore[index]
        gid = _concat_group(r)
        gp = next(g for g in r.plan.groups if g.group == gid)
        assert bool(gp.order) == reorder  # the layout is chosen before the read modes


def test_concat_consumers_keep_their_own_count() -> None:
    """Each consumer keeps as many of *its* channels as the constrained plan leaves it, only channels it
    reads, and the shared tensors keep exactly the union (every channel here is read by the last conv)."""
    m = _dense_block(layers=5).build()
    con = spa.prune(m, ratio=0.5)
    r = spa.prune(m, ratio=0.5, unconstrained=True)
    gid = _concat_group(r)
    classes = r.analysis.classes[gid]
    removed_c = set(con.plan.removed(gid))
    gp = next(g for g in r.plan.groups if g.group == gid)
    union: set[int] = set()
    for c in gp.consumers:
        reads = set(np.unique(classes[Slot(c.tensor, c.axis)]).tolist())
        assert set(c.kept) <= reads
        assert len(c.kept) == len(reads - removed_c)
        union |= set(c.kept)
    assert set(range(gp.channels)) - set(gp.removed) >= union


def test_reordering_concat_makes_fewer_gathers() -> None:
    m = _dense_block(layers=5).build()
    for ratio in (0.25, 0.5):
        naive = spa.prune(m, ratio=ratio, unconstrained=True, reorder=False)
        ordered = spa.prune(m, ratio=ratio, unconstrained=True, reorder=True)
        n, o = naive.report["consumer_reads"], ordered.report["consumer_reads"]
        assert o["gather"] + o["slice"] == n["gather"] + n["slice"]  # type: ignore[index,operator]
        assert o["gather"] < n["gather"]  # type: ignore[index,operator]
        # the first dense layer reads one block, the second two: both can always be made contiguous
        gp = next(g for g in ordered.plan.groups if g.group == _concat_group(ordered))
        first_two = [c for c in gp.consumers if c.mode == "slice"]
        assert len(first_two) >= 2


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("mode", ["layout", "zero", "auto"])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_zoo_densenet_concat_reordered(zoo_export, exporter: str, mode: str, ratio: float, tmp_path,  # type: ignore[no-untyped-def]
                                       monkeypatch) -> None:
    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    path = str(zoo_export("densenet", exporter))
    r = assert_oracle(path, ratio, unconstrained=True, reorder=True, consumer_mode=mode)
    reads = r.report["consumer_reads"]
    ops = [n.op_type for n in r.model.graph.node]
    assert ops.count("Gather") == reads["gather"] and ops.count("Slice") == reads["slice"]  # type: ignore[index]
    gp = next(g for g in r.plan.groups if g.group == _concat_group(r))
    assert gp.order, "the dense block's concat group was not reordered"
    if mode == "layout":
        naive = spa.prune(path, ratio=ratio, unconstrained=True, reorder=False).report["consumer_reads"]
        assert reads["gather"] < naive["gather"]  # type: ignore[index,operator]
        assert reads["slice"] > naive["slice"]  # type: ignore[index,operator]


# --- which channels may move ------------------------------------------------------------------------------

def _blocks(model) -> tuple[object, dict[int, np.ndarray]]:  # type: ignore[no-untyped-def]
    from spa.reorder.blocks import channel_blocks

    a = spa.analyze(spa.load(model))
    return a, {g.id: channel_blocks(a, g.id) for g in a.prunable}


def test_blocks_of_a_dense_block_are_its_producers() -> None:
    _a, blocks = _blocks(_dense_block(layers=3, c0=8, growth=4).build())
    big = max(blocks.values(), key=len)
    assert big.tolist() == [0] * 8 + [1] * 4 + [2] * 4 + [3] * 4  # stem, then one block per layer


def _concat_then(op: str) -> GraphBuilder:
    """conv a, conv b -> Concat -> ``op`` -> two 1x1 conv consumers (+ a head)."""
    b = GraphBuilder(opset=13)
    x = b.input("x", [1, 3, 6, 6])
    p, q = b.conv(x, 3, 4), b.conv(x, 3, 4)
    cat = b.op("Concat", [p, p] if op == "repeat" else [p, q], axis=1)
    if op == "gconv":  # grouped conv reading the concat: interleaved in-group positions
        mid = b.conv(cat, 8, 8, k=1, group=2)  # type: ignore[arg-type]
    elif op == "gather":  # constant-index Gather: its rewrite looks kept indices up by value
        mid = b.op("Gather", [cat, b.const(np.array([0, 1, 2, 5, 6, 7], np.int64))], axis=1)  # type: ignore[list-item]
    else:
        mid = cat
    c_mid = 6 if op == "gather" else 8
    outs = [b.conv(mid, c_mid, 3, k=1), b.conv(mid, c_mid, 3, k=1)]  # type: ignore[arg-type]
    b.output(b.op("Add", outs))  # type: ignore[arg-type]
    return b


@pytest.mark.parametrize("op", ["repeat", "gconv", "gather"])
def test_blocks_freeze_what_cannot_move(op: str) -> None:
    model = _concat_then(op).build()
    _a, blocks = _blocks(model)
    frozen = [gid for gid, bl in blocks.items() if (bl < 0).any()]
    assert frozen, f"{op}: nothing frozen"
    for mode in ("layout", "gather"):
        assert_oracle(model, 0.5, unconstrained=True, reorder=True, consumer_mode=mode, expect_pruned=False)


def test_exported_order_keeps_block_boundaries() -> None:
    from spa.reorder.blocks import exported_order

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 3)  # 3 elements per channel (a Flatten)
    block = np.array([0, 0, 0, 0, 1, 1, -1, -1, 2, 2])
    for _ in range(20):
        rank = rng.permutation(10)
        idx = np.sort(rng.choice(30, 20, replace=False))
        out = exported_order(labels, idx, rank, block)
        assert sorted(out.tolist()) == idx.tolist()
        assert block[labels[out]].tolist() == block[labels[idx]].tolist()  # blocks stay in place
        frozen = out[block[labels[out]] < 0]
        assert frozen.tolist() == sorted(frozen.tolist())


# --- property: random Concat-heavy graphs -------------------------------------------------------------------

@st.composite
def concat_models(draw: st.DrawFn) -> tuple[object, list[str]]:
    """Dense-style chains of Concat with random twists: prepended or repeated inputs, BN/Relu or not
    between the concat and its consumers, Split/Slice/Gather/grouped or depthwise convs reading it,
    and a GAP-Gemm or Flatten-MatMul head."""
    b = GraphBuilder(opset=draw(st.sampled_from([13, 17])), seed=draw(st.integers(0, 2**16)))
    steps: list[str] = []
    x = b.input("x", [1, 3, 4, 4])
    c = draw(st.integers(2, 6))
    cur = b.conv(x, 3, c, bias=draw(st.booleans()))
    for _ in range(draw(st.integers(2, 5))):
        src = cur
        if draw(st.booleans()):
            src = b.bn(src, c)
        if draw(st.booleans()):
            src = b.op("Relu", [src])  # type: ignore[assignment]
        g = draw(st.integers(1, 4))
        reader = draw(st.sampled_from(["conv", "conv", "conv", "split", "slice", "gather", "gconv", "dw"]))
        if reader == "split" and c >= 2:
            a = draw(st.integers(1, c - 1))
            parts = b.op("Split", [src, b.const(np.array([a, c - a], np.int64))], n_out=2, axis=1)
            new = b.op("Add", [b.conv(parts[0], a, g, k=1), b.conv(parts[1], c - a, g, k=1)])  # type: ignore[index]
        elif reader == "slice" and c >= 2:
            s = draw(st.integers(0, c - 2))
            e = draw(st.integers(s + 1, c))
            sl = b.op("Slice", [src, b.const(np.array([s], np.int64)), b.const(np.array([e], np.int64)),
                                b.const(np.array([1], np.int64))])
            new = b.op("Add", [b.conv(sl, e - s, g, k=1), b.conv(src, c, g, k=1)])  # type: ignore[arg-type]
        elif reader == "gather":
            idx = np.sort(draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True)))
            if draw(st.booleans()):
                idx = idx[::-1].copy()
            ga = b.op("Gather", [src, b.const(idx.astype(np.int64))], axis=1)
            new = b.op("Add", [b.conv(ga, len(idx), g, k=1), b.conv(src, c, g, k=1)])  # type: ignore[arg-type]
        elif reader in ("gconv", "dw") and c % 2 == 0:
            grp = c if reader == "dw" else 2
            mid = b.conv(src, c, c, k=1, group=grp)  # type: ignore[arg-type]
            new = b.conv(b.op("Relu", [mid]), c, g, k=3)  # type: ignore[arg-type]
        else:
            reader = "conv"
            new = b.conv(b.op("Relu", [b.conv(src, c, 2 * g, k=1)]), 2 * g, g)  # type: ignore[arg-type]
        how = draw(st.sampled_from(["append", "append", "prepend", "repeat"]))
        inputs = {"append": [cur, new], "prepend": [new, cur], "repeat": [cur, new, new]}[how]
        cur = b.op("Concat", inputs, axis=draw(st.sampled_from([1, -3])))  # type: ignore[assignment]
        c += g * (2 if how == "repeat" else 1)
        steps.append(f"{reader} -> +{g} ({how}) = {c}")
    h = b.op("Relu", [b.bn(cur, c)])
    if draw(st.booleans()):
        flat = b.op("Flatten", [b.op("GlobalAveragePool", [h])], axis=1)  # type: ignore[list-item]
        out = b.op("Gemm", [flat, b.weight(3, c)], transB=1)  # type: ignore[list-item]
        steps.append("head: GAP-Flatten-Gemm")
    else:
        flat = b.op("Flatten", [h], axis=1)  # type: ignore[list-item]
        out = b.op("MatMul", [flat, b.weight(c * 16, 3, scale=0.1)])  # type: ignore[list-item]
        steps.append("head: Flatten-MatMul")
    b.output(out)  # type: ignore[arg-type]
    return b.build(), steps


@settings(max_examples=int(os.environ.get("SPA_RANDOM_GRAPH_EXAMPLES", "60")), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=concat_models(), ratio=st.sampled_from([0.25, 0.5, 0.75]), reorder=st.booleans(),
       mode=st.sampled_from(["layout", "gather", "zero"]))
def test_concat_graphs_pass_mask_oracle(drawn: tuple[object, list[str]], ratio: float, reorder: bool,
                                        mode: str) -> None:
    """UPSCALE export of random Concat-heavy graphs: pruned == masked twin, whatever is reordered."""
    model, _steps = drawn
    r = assert_oracle(model, ratio, unconstrained=True, reorder=reorder, consumer_mode=mode,  # type: ignore[arg-type]
                      expect_pruned=False)
    multi = [gp for gp in r.plan.groups if gp.order
             and any(len(np.unique(lab)) < gp.channels for lab in r.analysis.classes[gp.group].values())]
    event(f"reordered Concat groups: {'yes' if multi else 'no'}")


def test_auto_mode_measures_on_the_provider_and_caches_per_device(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``consumer_mode="auto"`` times on the given provider; timings go to one cache file per provider +
    device, and a second prune of the same model measures nothing new."""
    from spa.latency import cost

    monkeypatch.setenv("SPA_CACHE_DIR", str(tmp_path))
    seen: list[tuple[str, ...]] = []
    real = cost._time

    def spy(model, feeds, providers, runs=15):  # type: ignore[no-untyped-def]
        seen.append(tuple(providers))
        return real(model, feeds, providers, runs=3)

    monkeypatch.setattr(cost, "_time", spy)
    m = _residual_stage().build()
    first = assert_oracle(m, 0.5, unconstrained=True, consumer_mode="auto", providers=["CPUExecutionProvider"])
    assert seen and set(seen) == {("CPUExecutionProvider",)}
    files = list((tmp_path / "consumer_costs").glob("cpu-*.json"))
    assert len(files) == 1 and files[0].read_text().startswith("{")
    n = len(seen)
    again = spa.prune(m, ratio=0.5, unconstrained=True, consumer_mode="auto", providers=["CPUExecutionProvider"])
    assert len(seen) == n  # every timing came from the cache
    assert [c.mode for gp in again.plan.groups for c in gp.consumers] == \
        [c.mode for gp in first.plan.groups for c in gp.consumers]
