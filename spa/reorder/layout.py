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

#: a run of frozen elements in a consumer's source slot: read by the consumer (IN) or not (OUT)
FIXED_IN, FIXED_OUT = -1, -2


def contiguous(order: Sequence[int], subset: set[int]) -> bool:
    """Whether ``subset`` occupies consecutive positions of ``order``."""
    pos = [i for i, c in enumerate(order) if c in subset]
    return not pos or pos[-1] - pos[0] + 1 == len(pos)


def _score(blocks: list[tuple[frozenset[int], list[int]]], n_sets: int) -> tuple[int, int]:
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    count: dict[int, int] = {}
    pos = 0
    for sig, chans in blocks:
        for s in sig:
            start.setdefault(s, pos)
            end[s] = pos + len(chans)
            count[s] = count.get(s, 0) + len(chans)
        pos += len(chans)
    contiguous_sets = sum(1 for s in range(n_sets) if s in count and end[s] - start[s] == count[s])
    span = sum(end[s] - start[s] - count[s] for s in count)
    return contiguous_sets, -span


def contiguous_order(kept: Sequence[int], subsets: Sequence[set[int]], *, heads: Sequence[int] = (),
                     tails: Sequence[int] = ()) -> list[int]:
    """An order of ``kept`` in which the ``subsets`` are as contiguous as possible.

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
    # pinned one-element pseudo blocks at both ends: a head set is contiguous with the first, a prefix
    lead: list[tuple[frozenset[int], list[int]]] = [(head, [-1])] if head else []
    trail: list[tuple[frozenset[int], list[int]]] = [(tail, [-1])] if tail else []

    def score(bl: list[tuple[frozenset[int], list[int]]]) -> tuple[int, int]:
        return _score(lead + bl + trail, len(subsets))

    blocks = sorted(by_sig.items(), key=lambda kv: (0 if kv[0] & head else 2 if kv[0] & tail else 1,
                                                    -len(kv[0]), sorted(kv[0]), kv[1][0]))
    best = score(blocks)
    improved = True
    while improved:
        improved = False
        for i in range(len(blocks)):
            for j in range(len(blocks)):
                if i == j:
                    continue
                trial = blocks[:i] + blocks[i + 1:]
                trial.insert(j, blocks[i])
                sc = score(trial)
                if sc > best:
                    blocks, best, improved = trial, sc, True
                    break
            if improved:
                break
    return [c for _, chans in blocks for c in chans]


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
