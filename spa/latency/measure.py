"""Whole-model latency of a pruned model as a fraction of the original's, robust to a busy machine.

The two models run alternately in one process (the order swaps every round, inputs bound once with
io-binding: :class:`spa.runtime.timing.Runner`), and the fraction is the *median of the per-round
ratios* pruned/original. Load from other processes comes in bursts and drifts; a burst spoils one
round's ratio, which the median drops, and a drift scales both runs of a round alike. On a shared
2-core machine the ratio of the two medians spread over 0.40–0.47 across six repeats of the same
ResNet-50 pair (20 rounds each), the median of per-round ratios over 0.45–0.47. A comparison runs at
least about two seconds (:func:`rounds`), so a small model gets more rounds.

>>> paired_fraction([[10.0, 10.0, 30.0], [5.0, 6.0, 14.0]])
0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spa.runtime.feeds import input_shapes, make_feeds
from spa.runtime.session import ModelLike, session
from spa.runtime.timing import Runner, alternate

#: a comparison of two models runs at least this long (see :func:`rounds`)
MIN_SECONDS = 2.0


def paired_samples(models: Sequence[ModelLike], *, providers: Sequence[str], threads: int = 1, warmup: int = 3,
                   iters: int = 20, seed: int = 0) -> list[list[float]]:
    """Milliseconds of ``iters`` alternating rounds: ``samples[k][i]`` is model ``k`` in round ``i``."""
    device = "cpu" if providers[0] == "CPUExecutionProvider" else "cuda"
    runners = []
    for m in models:
        sess = session(m, providers, threads=threads)
        runners.append(Runner(sess, make_feeds(sess, input_shapes(sess, "model"), seed), device))
    return alternate(runners, warmup=warmup, iters=iters)


def paired_fraction(samples: Sequence[Sequence[float]]) -> float:
    """Median over rounds of ``samples[1][i] / samples[0][i]``."""
    a, b = np.asarray(samples[0], dtype=np.float64), np.asarray(samples[1], dtype=np.float64)
    return float(np.median(b / a))


@dataclass(frozen=True)
class Comparison:
    """A pruned model timed against the original.

    Attributes:
        fraction: median per-round ratio pruned/original (the measured latency fraction).
        original_ms: the original's median.
        pruned_ms: the pruned model's median.
    """

    fraction: float
    original_ms: float
    pruned_ms: float


def compare(original: ModelLike, pruned: ModelLike, *, providers: Sequence[str], threads: int = 1,
            iters: int = 20) -> Comparison:
    """Time ``pruned`` against ``original`` (see the module docstring)."""
    s = paired_samples([original, pruned], providers=providers, threads=threads, iters=iters)
    return Comparison(paired_fraction(s), float(np.median(s[0])), float(np.median(s[1])))


def baseline(model: ModelLike, *, providers: Sequence[str], threads: int = 1,
             iters: int = 20) -> tuple[float, dict[str, tuple[int, ...]]]:
    """The median latency of one model and the concrete input shapes it was timed with."""
    shapes = input_shapes(session(model, providers, threads=threads), "model")
    return float(np.median(paired_samples([model], providers=providers, threads=threads, iters=iters)[0])), shapes


def rounds(iters: int, original_ms: float, min_seconds: float = MIN_SECONDS) -> int:
    """Rounds for a comparison with an original of ``original_ms``: at least ``iters``, and enough for
    about ``min_seconds`` of timing (a small model's few milliseconds are easily spoilt by one burst of
    load), at most 200.

    >>> rounds(20, 60.0), rounds(20, 10.0), rounds(20, 0.01)
    (20, 100, 200)
    """
    return max(iters, min(200, int(np.ceil(min_seconds * 1e3 / (2 * max(original_ms, 1e-6))))))
