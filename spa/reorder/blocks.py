"""Which channels of a group may be permuted, and how a permutation orders each slot's elements.

A group's channels are *labels*; every slot maps its elements to labels
(:attr:`spa.analysis.groups.Analysis.classes`). In a group built by Concat (DenseNet: every dense layer
reads the concatenation of all earlier feature maps) the concatenated slot holds the labels of several
producers, one *block* after another, and the block order is fixed by the Concat nodes. What may still
move is the order of channels *inside* a producer's block: permuting a producer's output channels, with
every per-channel parameter after it and the consumers' input columns, computes the same function.

**Blocks.** Two labels are in one block when exactly the same slots hold them (producer blocks of a
Concat chain; the whole group when every slot holds every channel). A block is *movable* when, in every
slot that holds it,

1. its elements form one contiguous run (a Concat of a tensor with itself repeats the block: frozen),
2. inside that run labels never decrease, so each channel's elements are one contiguous chunk in
   channel order (a Flatten's ``C*H*W`` axis qualifies; an interleaved grouped-conv input, a channel
   shuffle, an NHWC flatten or a permuting Gather do not: frozen),

and no slot holding it is an input or output of an op whose rewrite maps kept indices by *value*
(:data:`VALUE_MAPPED_OPS`: Gather rewrites its indices with ``np.searchsorted`` on the kept indices, which
must then be sorted). Under these conditions every slot of the group shows a movable block as the same
sequence of channel chunks, and every rule links slots chunk to chunk (identity, Concat/Split/Slice
offsets at block boundaries, Flatten/Reshape strides, depthwise repeats), so permuting the chunks of a
block alike in every slot is a relabelling of its channels — exact, like pruning a subset of them.
Slice rewrites with ``np.searchsorted`` too, but a Slice boundary is always a block boundary (the
labels on either side are held by different slots), so the kept indices are partitioned at every
boundary it searches for and the binary search stays correct.

**Exported order.** :func:`exported_order` keeps every slot's runs where they are and sorts only the
elements *inside* a movable block's run by the layout rank (ties: element index, so a channel's chunk
keeps its inner order); frozen elements stay in index order. A plan's layout can therefore never move a
channel across a block boundary, whatever it says.

>>> import numpy as np
>>> labels = np.array([0, 1, 2, 3, 4])          # a Concat of a 3-channel and a 2-channel producer
>>> block = np.array([0, 0, 0, 1, 1])
>>> rank = np.array([2, 0, 1, 4, 3])            # layout: 1, 2, 0 | 4, 3
>>> exported_order(labels, np.arange(5), rank, block).tolist()
[1, 2, 0, 4, 3]
>>> exported_order(labels, np.arange(5), rank, np.array([0, 0, 0, -1, -1])).tolist()  # 2nd block frozen
[1, 2, 0, 3, 4]
"""

from __future__ import annotations

import numpy as np

from spa.analysis.groups import Analysis
from spa.rules.base import Slot

#: ops whose rewrite looks kept indices up by value (``np.searchsorted``): their slots keep index order
VALUE_MAPPED_OPS = frozenset({"Gather"})


def channel_blocks(analysis: Analysis, gid: int) -> np.ndarray:
    """Block of every channel of group ``gid``; ``-1`` for channels that must keep their order.

    Blocks are numbered in the order of their first channel (see the module docstring for the
    conditions a movable block meets).
    """
    cls = analysis.labels(gid)
    n = analysis.groups[gid].channels
    slots = list(cls)
    if not slots or n == 0:
        return np.full(n, -1, dtype=np.int64)
    member = np.zeros((len(slots), n), dtype=bool)
    for k, s in enumerate(slots):
        member[k, cls[s]] = True
    packed = np.ascontiguousarray(np.packbits(member, axis=0).T)  # one row of bytes per channel
    _, first, sig = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    sig = np.asarray(sig).reshape(-1)
    # number blocks by their first channel so block ids follow channel order
    renumber = np.empty(len(first), dtype=np.int64)
    renumber[np.argsort(first, kind="stable")] = np.arange(len(first))
    block = renumber[sig]
    frozen = np.zeros(len(first), dtype=bool)
    for s in slots:
        labels = cls[s]
        if not len(labels):
            continue
        b = block[labels]
        starts = np.ones(len(b), dtype=bool)
        starts[1:] = b[1:] != b[:-1]
        frozen |= np.bincount(b[starts], minlength=len(first)) > 1  # a block in several runs
        falling = ~starts[1:] & (labels[1:] < labels[:-1])  # a run whose labels go backwards
        frozen[b[1:][falling]] = True
    for s in _value_mapped_slots(analysis, set(slots)):
        frozen[np.unique(block[cls[s]])] = True
    return np.where(frozen[block], -1, block)


def _value_mapped_slots(analysis: Analysis, slots: set[Slot]) -> set[Slot]:
    ops = {n.name or n.op: n.op for n in analysis.model.graph.nodes}
    out: set[Slot] = set()
    for link, node in analysis.links():
        if ops.get(node) in VALUE_MAPPED_OPS:
            out |= {s for s in (link.a, link.b) if s in slots}
    return out


def exported_order(labels: np.ndarray, idx: np.ndarray, rank: np.ndarray, block: np.ndarray) -> np.ndarray:
    """The kept elements ``idx`` (ascending) of a slot in exported order.

    Args:
        labels: the slot's element → channel map.
        idx: kept element indices, ascending.
        rank: layout position of every channel (only compared inside one block).
        block: :func:`channel_blocks` of the group (``-1``: frozen).
    """
    if len(idx) < 2:
        return idx
    lab = labels[idx]
    b = block[lab]
    new_run = np.ones(len(idx), dtype=bool)
    new_run[1:] = (b[1:] != b[:-1]) | (b[1:] < 0)
    run = np.cumsum(new_run)
    return idx[np.lexsort((idx, rank[lab], run))]
