"""Dimensions that symbolic inference leaves unknown, read off two concrete evaluations of the graph.

Exporters with dynamic axes compute masks and shape vectors from the inputs' *values* and shapes with
ops symbolic inference cannot follow (``Range`` over a computed length, ``Gather`` with computed
indices, broadcasts of an unknown mask against ``[batch, heads, seq, seq]``): optimum's decoders lose
the batch and sequence symbols at the attention mask, and with them the size of the merge before the
output projection (``(?, ?, H, Dh) → (batch, seq, ?)``), which then cannot pair heads with the hidden
axis.

:func:`probe_shapes` evaluates every shape twice with :func:`spa.analysis.cost.concrete_shapes`, each
dynamic input dimension set to a different small prime in each probe (``sequence`` 7 then 8, ``batch``
5 then 6, ...), and fills only the dims symbolic inference left unknown: a dim with the same value in
both probes is that constant; one whose two values are those of an input symbol is that symbol;
anything else stays unknown. This is evidence, not proof (a dim could agree with a symbol at both
probes and not elsewhere), so the probes stay small — inside position tables, so ``cos[:seq]`` is not
clipped — and every pruning is checked by the mask oracle.

>>> _dim(None, 4, 4, {}), _dim(None, 7, 8, {(7, 8): "seq"}), _dim(None, 35, 48, {(7, 8): "seq"}), _dim("B", 5, 6, {})
(4, 'seq', None, 'B')
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from spa.analysis.cost import concrete_shapes
from spa.graph.model import Dim, ModelGraph, shape_of
from spa.rules.conv import conv_channels
from spa.rules.registry import RuleRegistry

log = logging.getLogger(__name__)

#: the value of the i-th dynamic input dimension in each probe (pairs unique, first ≠ second)
_PROBES = ((5, 7, 11, 13, 17, 19, 23, 29), (6, 8, 12, 14, 18, 20, 24, 30))


def _dim(have: Dim, a: int | None, b: int | None, symbols: dict[tuple[int, int], str]) -> Dim:
    """One dim: kept when known, else the constant or symbol the two probe values show."""
    if have is not None or a is None or b is None:
        return have
    if a == b:
        return a
    return symbols.get((a, b))


def _key(i: int, k: int, d: object) -> str | tuple[int, int] | None:
    """What names input ``i``'s dim ``k``: its symbol, its position when dynamic but nameless, None when static."""
    if isinstance(d, str):
        return d
    return None if isinstance(d, (int, np.integer)) and d >= 0 else (i, k)


def _probe_values(mg: ModelGraph, syms: list[str | tuple[int, int]]) -> dict[str | tuple[int, int], tuple[int, int]]:
    """Each dynamic input dimension's two probe values. An image input read by a Conv (optimum's
    ``pixel_values [batch, num_channels, height, width]``) gets the Conv's channel count on axis 1 (in both
    probes: a constant) and its height and width scaled by 32: small primes collapse under strided
    downsampling (13 and 14 are both 3 after a stride-4 patch embedding, which read as a constant 3)."""
    out = {s: (a, b) for s, a, b in zip(syms, *_PROBES)}
    for i, t in enumerate(mg.graph.inputs):
        shape = shape_of(t)
        channels = conv_channels(t) if shape is not None and len(shape) == 4 else None
        if shape is None or channels is None:
            continue
        for k, d in enumerate(shape):
            key = _key(i, k, d)
            if key is None or key not in out:
                continue
            a, b = out[key]
            out[key] = (channels, channels) if k == 1 else (a * 32, b * 32) if k >= 2 else (a, b)
    return out


def _symbols(mg: ModelGraph) -> list[str | tuple[int, int]]:
    """Dynamic input dimensions in order of appearance (each symbol once)."""
    seen: list[str | tuple[int, int]] = []
    for i, t in enumerate(mg.graph.inputs):
        for k, d in enumerate(t.shape or ()):
            key = _key(i, k, d)
            if key is not None and key not in seen:
                seen.append(key)
    return seen


def _open(mg: ModelGraph) -> list[gs.Variable]:
    """Variables whose shape (or one of its dims) symbolic inference left unknown."""
    out = []
    for t in mg.graph.tensors().values():
        if isinstance(t, gs.Variable):
            s = shape_of(t)
            if s is None or any(d is None for d in s):
                out.append(t)
    return out


def probe_shapes(mg: ModelGraph, registry: RuleRegistry | None = None) -> int:
    """Fill the unknown dims of ``mg``'s tensors from two concrete evaluations (module docstring).

    Graph inputs and outputs are never changed. Returns how many tensors gained a dim.
    """
    todo = _open(mg)
    syms = _symbols(mg)
    if not todo or not syms or len(syms) > len(_PROBES[0]):
        return 0
    io = {id(t) for t in mg.graph.inputs} | {id(t) for t in mg.graph.outputs}
    todo = [t for t in todo if id(t) not in io]
    probes = _probe_values(mg, syms)
    runs = []
    for values in zip(*probes.values()):
        value = dict(zip(probes, values))
        saved = [(t, t.shape) for t in mg.graph.inputs]
        try:
            for i, t in enumerate(mg.graph.inputs):
                if t.shape is not None:
                    t.shape = [d if _key(i, k, d) is None else value[_key(i, k, d)]  # type: ignore[index]
                               for k, d in enumerate(t.shape)]
            runs.append(concrete_shapes(mg, registry))
        finally:
            for t, s in saved:
                t.shape = s
    symbols = {(a, b): s for s, (a, b) in probes.items() if isinstance(s, str) and a != b}
    gained = 0
    for t in todo:
        a, b = runs[0].get(t.name), runs[1].get(t.name)
        if a is None or b is None or len(a) != len(b):
            continue
        have = shape_of(t)
        if have is None:
            have = (None,) * len(a)
        if len(have) != len(a):
            continue
        new = [_dim(h, int(x), int(y), symbols) for h, x, y in zip(have, a, b)]
        if new != list(have):
            t.shape = new
            gained += 1
    log.debug("probing filled dims of %d tensors", gained)
    return gained
