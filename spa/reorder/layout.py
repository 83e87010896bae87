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
"""

from __future__ import annotations

from collections.abc import Sequence


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


def contiguous_order(kept: Sequence[int], subsets: Sequence[set[int]]) -> list[int]:
    """An order of ``kept`` in which the ``subsets`` are as contiguous as possible."""
    by_sig: dict[frozenset[int], list[int]] = {}
    for c in kept:
        sig = frozenset(i for i, s in enumerate(subsets) if c in s)
        by_sig.setdefault(sig, []).append(c)
    blocks = sorted(by_sig.items(), key=lambda kv: (-len(kv[0]), sorted(kv[0]), kv[1][0]))
    best = _score(blocks, len(subsets))
    improved = True
    while improved:
        improved = False
        for i in range(len(blocks)):
            for j in range(len(blocks)):
                if i == j:
                    continue
                trial = blocks[:i] + blocks[i + 1:]
                trial.insert(j, blocks[i])
                sc = _score(trial, len(subsets))
                if sc > best:
                    blocks, best, improved = trial, sc, True
                    break
            if improved:
                break
    return [c for _, chans in blocks for c in chans]
