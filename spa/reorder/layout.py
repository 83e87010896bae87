"""Channel layouts that make consumers' channel subsets contiguous.

Given the kept channels of a shared tensor and, per consumer, the subset it reads, find an order of the
kept channels in which as many subsets as possible are contiguous ranges (then the consumer reads a
Slice instead of a Gather), and the others span as little as possible.

Channels with the same *signature* (the set of consumers that read them) are interchangeable, so the
search orders signature blocks: start shared-first (blocks read by more consumers first, as UPSCALE
lays channels out along paths of high overlap), then improve by moving single blocks while that makes
more subsets contiguous or shortens their spans.

>>> order = contiguous_order([0, 1, 2, 3, 4, 5], [{0, 1, 2, 3}, {2, 3, 4, 5}])
>>> [contiguous(order, s) for s in ({0, 1, 2, 3}, {2, 3, 4, 5})]
[True, True]

**Blocks** (:func:`block_orders`). In a group built by Concat the shared tensor is a fixed sequence of
producer blocks and only the order *inside* each block is free (:mod:`spa.reorder.blocks`). A consumer
reading channels from several blocks can be contiguous only if the blocks it touches are adjacent, every
block strictly between its first and last is read in full, its part of the first block is a *suffix* of
that block and its part of the last block a *prefix* (one block: any interval). Those consumers put
interval/prefix/suffix constraints on their end blocks; each block is then laid out on its own by
:func:`contiguous_order` with the prefix/suffix sets pinned to its ends. Consumers that cannot be
contiguous whatever the layout (a partial block in the middle of their range) only ask for few
fragments: inside runs of channels the constraints do not tell apart, channels are clustered by which
of those consumers read them.

>>> orders = block_orders({0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}, [([0, 1], {2, 3, 4}), ([0], {1, 2})])
>>> [c for b in (0, 1) for c in orders[b]]
[0, 1, 2, 3, 4, 5, 6, 7]
>>> orders = block_orders({0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}, [([0, 1], {0, 3, 6}), ([0], {1, 2})])
>>> order = [c for b in (0, 1) for c in orders[b]]
>>> contiguous(order, {0, 3, 6}), contiguous(order, {1, 2})
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: a run of frozen elements in a consumer's source slot: read by the consumer (IN) or not (OUT)
FIXED_IN, FIXED_OUT = -1, -2


def contiguous(order: Sequence[int], subset: set[int]) -> bool:
    """Whether ``subset`` occupies consecutive positions of ``order``."""
    pos = [i for i, c in enumerate(order) if c in subset]
    return not pos or pos[-1] - pos[0] + 1 == len(pos)


def _keys(orders: np.ndarray, length: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Score of each row of ``orders`` (signature-block indices), higher is better: first the number of
    contiguous sets, then minus the total span wasted inside the sets' ranges."""
    ln = length[orders]                                     # trials x blocks
    end = np.cumsum(ln, axis=1)
    start = end - ln
    m = member[orders]                                      # trials x blocks x sets
    count = length @ member                                 # a set's size does not depend on the order
    rows = np.arange(len(orders))[:, None]
    first = start[rows, m.argmax(axis=1)]
    last = end[rows, m.shape[1] - 1 - m[:, ::-1].argmax(axis=1)]
    present = count > 0
    waste = np.where(present, last - first - count, 0)
    big = int(length.sum()) + 1
    return (waste == 0).sum(axis=1, where=present[None, :]) * (big * member.shape[1] + 1) - waste.sum(axis=1)


def contiguous_order(kept: Sequence[int], subsets: Sequence[set[int]], *, heads: Sequence[int] = (),
                     tails: Sequence[int] = ()) -> list[int]:
    """An order of ``kept`` in which the ``subsets`` are as contiguous as possible.

    Channels with one signature form a block; blocks start shared-first, then a first-improvement local
    search moves one block at a time to another position while that makes more sets contiguous or
    their spans shorter (every insertion position of a block is scored at once, in numpy).

    Args:
        kept: the channels to order.
        subsets: channel sets that should be contiguous.
        heads: indices of ``subsets`` that should also start the order (prefixes).
        tails: indices of ``subsets`` that should also end the order (suffixes).
    """
    by_sig: dict[frozenset[int], list[int]] = {}
    for c in kept:
        sig = frozenset(i for i, s in enumerate(subsets) if c in s)
        by_sig.setdefault(sig, []).append(c)
    head, tail = frozenset(heads), frozenset(tails)
    blocks = sorted(by_sig.items(), key=lambda kv: (0 if kv[0] & head else 2 if kv[0] & tail else 1,
                                                    -len(kv[0]), sorted(kv[0]), kv[1][0]))
    n = len(blocks)
    if n < 2 or not subsets:
        return [c for _, chans in blocks for c in chans]
    # pinned one-element pseudo blocks at both ends (indices n, n + 1): a head set contiguous with the
    # first is a prefix, a tail set contiguous with the last a suffix
    sigs = [sig for sig, _ in blocks] + [head, tail]
    member = np.zeros((n + 2, len(subsets)), dtype=bool)
    for b, sig in enumerate(sigs):
        member[b, list(sig)] = True
    length = np.array([len(chans) for _, chans in blocks] + [1, 1], dtype=np.int64)
    pos = np.arange(n)
    perm = np.arange(n)

    def framed(rows: np.ndarray) -> np.ndarray:
        lead, trail = np.full((len(rows), 1), n), np.full((len(rows), 1), n + 1)
        return np.hstack([lead, rows, trail])

    best = int(_keys(framed(perm[None, :]), length, member)[0])
    improved = True
    while improved:
        improved = False
        for i in range(n):
            rest = np.delete(perm, i)
            j = pos[:, None]                                # trial j inserts block perm[i] at j
            trials = np.where(pos[None, :] < j, rest[np.minimum(pos, n - 2)][None, :],
                              np.where(pos[None, :] == j, perm[i], rest[np.maximum(pos - 1, 0)][None, :]))
            keys = _keys(framed(trials), length, member)
            keys[i] = best  # j == i is the current order
            better = np.flatnonzero(keys > best)
            if len(better):
                perm, best, improved = trials[better[0]], int(keys[better[0]]), True
                break
    return [c for b in perm for c in blocks[b][1]]


def block_orders(members: Mapping[int, Sequence[int]],
                 reads: Sequence[tuple[Sequence[int], set[int]]]) -> dict[int, list[int]]:
    """Per movable block, an order of its channels that makes the consumers' reads contiguous.

    Args:
        members: kept channels of every movable block, in index order.
        reads: per consumer, its source slot as a sequence of segments in slot order — a movable block
            id, or :data:`FIXED_IN` / :data:`FIXED_OUT` for a run of frozen elements it reads / skips —
            and the channels it reads.

    Returns:
        The channels of every block of ``members``, in layout order.
    """
    full = {b: set(m) for b, m in members.items()}
    strict: dict[int, list[tuple[set[int], str]]] = {b: [] for b in members}
    loose: dict[int, list[set[int]]] = {b: [] for b in members}
    for segments, sub in reads:
        parts = [sub & full[s] if s >= 0 else set() for s in segments]
        touched = [i for i, s in enumerate(segments) if s == FIXED_IN or parts[i]]
        if not touched:
            continue
        f, last = touched[0], touched[-1]
        feasible = all(s == FIXED_IN or (s >= 0 and parts[i] == full[s])
                       for i, s in enumerate(segments[f + 1:last], f + 1))
        for i in touched:
            s = segments[i]
            if s < 0 or parts[i] == full[s]:
                continue
            if not feasible:
                loose[s].append(parts[i])
            else:
                strict[s].append((parts[i], "interval" if f == last else "tail" if i == f else "head"))
    out = {}
    for b, chans in members.items():
        sets = [p for p, _ in strict[b]]
        order = list(chans)
        if sets:
            order = contiguous_order(chans, sets, heads=[k for k, (_, kind) in enumerate(strict[b]) if kind == "head"],
                                     tails=[k for k, (_, kind) in enumerate(strict[b]) if kind == "tail"])
        out[b] = _cluster(order, sets, loose[b]) if loose[b] else order
    return out


def _cluster(order: list[int], strict: Sequence[set[int]], loose: Sequence[set[int]]) -> list[int]:
    """Inside every run of channels the ``strict`` sets do not tell apart, sort channels by membership
    of the ``loose`` sets (largest first), so each loose set falls into few fragments."""
    ranked = sorted(range(len(loose)), key=lambda k: (-len(loose[k]), k))

    def key(c: int) -> tuple[int, ...]:
        return tuple(0 if c in loose[k] else 1 for k in ranked)

    out: list[int] = []
    run: list[int] = []
    sig: frozenset[int] | None = None
    for c in order:
        s = frozenset(i for i, st in enumerate(strict) if c in st)
        if s != sig and run:
            out += sorted(run, key=key)
            run = []
        sig = s
        run.append(c)
    return out + sorted(run, key=key)
