"""Sequential reconstruction: re-solve every layer that reads pruned channels against the original
layer's outputs, given the *pruned* model's own inputs, in topological order (OBC / SparseGPT style).

For a layer seen as ``y = W x`` (a :class:`~spa.criteria.consumers.Consumer`: Conv unfolded, one block
per conv group; ConvTranspose per input position; Gemm / MatMul with a 2-D weight), ``x`` its input in
the original model and ``x̂`` its input in the pruned model (everything upstream already pruned *and*
reconstructed), ``S`` the kept input columns, the new weights solve the ridge problem

    W'_S, d = argmin  Σ‖W x − W'_S x̂_S − d‖²  +  n·μ·(λ‖W'_S − P_S‖² + λ₁‖d‖²)

with ``d`` a per-output shift the layer's bias (or the running mean of the BatchNorm after it) absorbs
when it has one, and ``P_S`` the weights the criterion left at the kept columns (OBS: its one-shot
update; magnitude criteria: the original) — regularised towards them, not towards 0, so directions the
calibration data never excites keep their weights. With ``x̂ ← [x̂_S; 1]`` (the ones row only when ``d``
is solved), ``H = E[x̂ x̂ᵀ]``, ``T = E[(W x) x̂ᵀ]``, ``D = diag(λ, …, λ, λ₁)``,
``λ = damp · mean(diag H_SS)`` and ``λ₁ = damp``, the closed form is

    [W'_S, d] = (T + [P_S, 0]·μD) (H + μD)⁻¹

With ``P = W`` and ``x̂ = x`` (nothing changed upstream, no intercept) and ``μ = 1`` this is the one-shot
OBS update ``W_S + W_M H_MS (H_SS + λI)⁻¹`` (:mod:`spa.criteria.obs_math`); otherwise it also corrects
the error the layers before it left behind instead of letting it compound. ``μ`` is chosen per layer
block from ``1, 4, …, 1024, ∞`` (``∞``: keep ``P``) by two-fold cross-validation over the calibration
samples (even / odd), so a layer with fewer samples than inputs (a dense head after a few dozen images)
is not fitted to noise. ``H`` and ``T`` are accumulated per fold in float64 over the calibration
batches (memory: the statistics, never the activations).

Layers are solved in *levels*: a level holds the layers none of whose inputs depends on a layer of the
same or a later level. Per level the masked twin carrying every earlier solution runs in ONNX Runtime
next to the original model, batch by batch on the same calibration data (two passes per level); the
layers a reconstructed layer feeds are re-solved too, even when they lost no column of their own (their
inputs drifted). The solutions are written as full-size weights (removed columns 0), so the pruned model
and its masked twin carry the same values and the mask oracle holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from spa.analysis.groups import Analysis
from spa.calibration.data import CalibrationError, CalibrationSource
from spa.calibration.runner import run_batches
from spa.calibration.stats import CHUNK_ELEMENTS
from spa.criteria.base import Updates
from spa.criteria.calibrated import MAX_FEATURES, add_to_bias, weight
from spa.criteria.consumers import Consumer, group_consumers
from spa.criteria.obs_math import DEFAULT_DAMP, damping
from spa.plan import Plan
from spa.rules.base import Slot
from spa.rules.registry import RuleRegistry
from spa.surgery import masked_twin, twin_kept

#: multipliers of the damping tried by cross-validation (``inf``: keep the criterion's weights)
MULTIPLIERS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, float("inf"))


@dataclass
class _Moments:
    """Sums of ``x̂x̂ᵀ``, ``(Wx)x̂ᵀ`` and ``‖Wx‖²`` over the rows seen, and their count."""

    hh: np.ndarray
    ty: np.ndarray
    yy: float = 0.0
    count: int = 0

    def add(self, y: np.ndarray, xh: np.ndarray) -> None:
        """Add rows: ``y`` the original layer's outputs, ``xh`` the pruned model's kept inputs (+ ones)."""
        self.hh += xh.T @ xh
        self.ty += y.T @ xh
        self.yy += float(np.einsum("ij,ij->", y, y))
        self.count += len(xh)

    def __add__(self, other: _Moments) -> _Moments:
        return _Moments(self.hh + other.hh, self.ty + other.ty, self.yy + other.yy, self.count + other.count)

    def error(self, a: np.ndarray) -> float:
        """``Σ‖Wx − a x̂‖²`` over the rows seen (``a``: [rows, kept (+1)])."""
        return max(self.yy - 2.0 * float(np.sum(a * self.ty)) + float(np.sum((a @ self.hh) * a)), 0.0)


@dataclass
class _Block:
    """One row block (one conv group) of a layer: the target, the prior and two folds of statistics.

    The calibration samples alternate between the folds (sample ``i`` goes to fold ``i mod 2``), so the
    damping can be chosen by cross-validation before the final solve on both.
    """

    rows: slice
    features: np.ndarray  # the block's columns of the unfolded input (original layout)
    cols: np.ndarray  # the kept columns of the block's matrix
    w0: np.ndarray  # the original weight of the block [rows, columns]: the target is W x
    prior: np.ndarray  # what the ridge pulls towards: the criterion's weights at the kept columns (+ 0 shift)
    intercept: bool
    folds: tuple[_Moments, _Moments] = field(init=False)

    def __post_init__(self) -> None:
        k = len(self.cols) + int(self.intercept)
        self.folds = tuple(_Moments(np.zeros((k, k)), np.zeros((self.w0.shape[0], k))) for _ in range(2))  # type: ignore[assignment]

    def update(self, fold: int, rows_orig: np.ndarray, rows_hat: np.ndarray) -> None:
        """Add one chunk of unfolded original / pruned inputs (same samples, same row order) to ``fold``."""
        y = rows_orig[:, self.features].astype(np.float64) @ self.w0.T
        xh = rows_hat[:, self.features[self.cols]].astype(np.float64)
        if self.intercept:
            xh = np.hstack([xh, np.ones((len(xh), 1))])
        self.folds[fold].add(y, xh)

    @property
    def total(self) -> _Moments:
        """Both folds together."""
        return self.folds[0] + self.folds[1]


@dataclass
class _Layer:
    """One layer to reconstruct: its view, kept matrix columns, level and statistics."""

    view: Consumer
    keep: np.ndarray  # bool per matrix column
    level: int = 0
    blocks: list[_Block] = field(default_factory=list)
    seen: int = 0

    def start(self, analysis: Analysis, updates: Updates) -> None:
        """Fresh statistics: the original weight is the target, the criterion's (in ``updates``) the prior."""
        c = self.view
        w0 = c.matrix(weight(analysis, c.weight))
        now = c.matrix(weight(analysis, c.weight, updates))
        cols = np.flatnonzero(self.keep)
        extra = np.zeros((w0.shape[0], int(c.bias is not None)))
        self.blocks = [_Block(b.rows, b.features, cols, w0[b.rows], np.hstack([now[b.rows][:, cols], extra[b.rows]]),
                              c.bias is not None) for b in c.blocks]
        self.seen = 0

    def update(self, x_orig: np.ndarray, x_hat: np.ndarray) -> None:
        """Add one batch of this layer's input in the original and in the pruned model (chunked)."""
        c = self.view
        if x_orig.shape != x_hat.shape:
            raise CalibrationError(f"{c.op} '{c.node}': its input has shape {x_hat.shape} in the pruned model's "
                                   f"twin and {x_orig.shape} in the original")
        if not len(x_orig):
            return
        per_sample = max(c.rows_of(x_orig[:1]).shape[0], 1) * c.features
        step = 2 * max(1, CHUNK_ELEMENTS // per_sample)
        for i in range(0, len(x_orig), step):
            for fold in (0, 1):
                first = i + (fold - self.seen - i) % 2  # samples of this fold: global index ≡ fold (mod 2)
                xo, xh = x_orig[first:i + step:2], x_hat[first:i + step:2]
                if len(xo):
                    ro, rh = c.rows_of(xo), c.rows_of(xh)
                    for b in self.blocks:
                        b.update(fold, ro, rh)
        self.seen += len(x_orig)


def _damping(m: _Moments, k: int, intercept: bool, damp: float) -> np.ndarray:
    """The base damping ``D``: ``λ = damp · mean(diag H_SS)`` on the kept inputs, ``damp`` on the shift."""
    h = m.hh / max(m.count, 1)
    d = np.full(h.shape[0], damping(h[:k, :k], damp) if k else damp)
    if intercept:
        d[-1] = damp
    return d


def _ridge(m: _Moments, prior: np.ndarray, d: np.ndarray, mults: Sequence[float]) -> list[np.ndarray]:
    """``(T + P·μD)(H + μD)⁻¹`` for every multiplier ``μ`` (``inf``: ``P``), with one eigendecomposition
    of ``D^-½ H D^-½``."""
    n = max(m.count, 1)
    s = 1.0 / np.sqrt(d)
    lam, q = np.linalg.eigh((m.hh / n) * s[:, None] * s[None, :])
    ts = (m.ty / n) * s[None, :]
    ps = prior * (d * s)[None, :]
    out = []
    for mu in mults:
        if not np.isfinite(mu):
            out.append(prior.copy())
            continue
        b = (ts + mu * ps) @ q / np.maximum(lam + mu, 1e-300)[None, :]
        out.append((b @ q.T) * s[None, :])
    return out


def solve_block(b: _Block, damp: float = DEFAULT_DAMP,
                mults: Sequence[float] = MULTIPLIERS) -> tuple[np.ndarray, float]:
    """``[W'_S, d] = (T + P·μD)(H + μD)⁻¹`` of one block and the ``μ`` of ``mults`` with the least
    two-fold cross-validated error (the first when a fold is empty; see the module docstring)."""
    k, total = len(b.cols), b.total
    d = _damping(total, k, b.intercept, damp)
    mults = tuple(mults)
    if len(mults) > 1 and all(f.count for f in b.folds):
        cv = np.zeros(len(mults))
        for f in (0, 1):
            fits = _ridge(b.folds[f], b.prior, _damping(b.folds[f], k, b.intercept, damp), mults)
            cv += [b.folds[1 - f].error(a) for a in fits]
        mu = mults[int(np.argmin(cv))]
    else:
        mu = mults[0]
    return _ridge(total, b.prior, d, [mu])[0], mu


def _apply(analysis: Analysis, layer: _Layer, updates: Updates, damp: float) -> dict[str, object]:
    """Solve every block of ``layer`` and write its weight (and bias shift) into ``updates``."""
    c = layer.view
    w = weight(analysis, c.weight, updates)
    new = np.zeros_like(c.matrix(w))
    shift = np.zeros(new.shape[0])
    cols = np.flatnonzero(layer.keep)
    before = after = total = 0.0
    mus = []
    for b in layer.blocks:
        a, mu = solve_block(b, damp)
        m = b.total
        before, after, total = before + m.error(b.prior), after + m.error(a), total + m.yy
        mus.append(mu)
        new[b.rows, cols] = a[:, :len(cols)]
        if b.intercept:
            shift[b.rows] = a[:, -1]
    updates[c.weight] = c.unmatrix(new, w).astype(np.asarray(w).dtype)
    if c.bias is not None:  # the shift replaces any the criterion made: start from the original bias
        updates[c.bias.name] = np.array(weight(analysis, c.bias.name), copy=True)
        add_to_bias(analysis, c, shift, updates)
    return {"node": c.node, "op": c.op, "level": layer.level, "columns": int(layer.keep.size),
            "kept_columns": int(layer.keep.sum()), "bias": c.bias is not None,
            "damp_multiplier": max(mus) if mus else None,
            "error_before": round(before / total, 6) if total else 0.0,
            "error_after": round(after / total, 6) if total else 0.0}


def layers(analysis: Analysis, plan: Plan, max_features: int = MAX_FEATURES) -> tuple[list[_Layer], list[str]]:
    """The layers to reconstruct, in graph order with their levels, and why others are skipped: every
    consumer that loses input columns, and every consumer downstream of one (its inputs drift)."""
    kept = twin_kept(analysis, plan)
    found: dict[str, _Layer] = {}
    skipped: list[str] = []
    for gid in analysis.labelled_groups():
        for c in group_consumers(analysis, gid):
            if not isinstance(c, Consumer) or c.node in found:
                continue
            if c.shared or c.features > max_features:
                why = "its weight is shared" if c.shared else f"it reads {c.features} unfolded features"
                skipped.append(f"{c.op} '{c.node}': {why} (limit {max_features})" if not c.shared
                               else f"{c.op} '{c.node}': {why}")
                continue
            w = weight(analysis, c.weight)
            el = np.ones(w.shape[c.axis], dtype=bool)
            slot = Slot(c.weight, c.axis)
            if slot in kept:
                el[:] = False
                el[kept[slot]] = True
            found[c.node] = _Layer(c, el[np.arange(c.matrix(w).shape[1]) // c.taps])
    return _levels(analysis, found), sorted(set(skipped))


def _levels(analysis: Analysis, found: dict[str, _Layer]) -> list[_Layer]:
    """Assign levels (graph order) and keep the layers that lose columns or read a changed one's output."""
    level: dict[str, int] = {}
    dirty: dict[str, bool] = {}
    out: list[_Layer] = []
    for node in analysis.model.graph.nodes:
        ins = [t.name for t in node.inputs if t is not None]
        lv = max((level.get(t, 0) for t in ins), default=0)
        changed = any(dirty.get(t, False) for t in ins)
        layer = found.get(node.name)
        if layer is not None and (changed or not layer.keep.all()):
            layer.level = lv
            out.append(layer)
            lv, changed = lv + 1, True
        for t in node.outputs:
            level[t.name], dirty[t.name] = lv, changed
    return out


def _accumulate(original: onnx.ModelProto, twin: onnx.ModelProto, source: CalibrationSource, at: list[_Layer],
                threads: int) -> int:
    """Run both models over ``source`` batch by batch, feeding each layer's input pair; the samples seen."""
    taps = list(dict.fromkeys(layer.view.input for layer in at))
    runs = zip(run_batches(original, source, taps, threads=threads, progress=False, desc="reconstruction"),
               run_batches(twin, source, taps, threads=threads, progress=False, desc="reconstruction"))
    seen = 0
    for ro, rt in runs:
        if ro.samples != rt.samples:
            raise CalibrationError(f"the calibration data ({source.describe()}) gave different batches to two "
                                   "runs; reconstruction needs a source that reads the same samples every time")
        for layer in at:
            layer.update(np.asarray(ro.values[layer.view.input]), np.asarray(rt.values[layer.view.input]))
        seen += ro.samples
    return seen


def reconstruct(analysis: Analysis, plan: Plan, updates: Updates | None, source: CalibrationSource,
                registry: RuleRegistry | None = None, *, damp: float = DEFAULT_DAMP,
                max_features: int = MAX_FEATURES, threads: int = 1,
                progress: Callable[[str], None] | None = None) -> tuple[Updates, dict[str, object]]:
    """Sequential reconstruction of every layer that lost inputs or reads drifted ones (module docstring).

    Args:
        analysis, plan: the prune.
        updates: the criterion's compensation (kept for the layers not reconstructed; replaced for the
            others, which are solved from the original weights).
        source: the calibration data (read twice per level; it must give the same batches every time).
        registry: rules for the masked twin.
        damp: ``λ = damp · mean(diag H)``.
        max_features: layers reading more unfolded features are skipped (``H`` is features²).
        threads: ONNX Runtime threads.
        progress: called once per level.

    Returns:
        The updates and a record for the report: ``layers``, ``levels``, ``ort_passes``, ``samples``,
        ``damp``, ``seconds``, ``skipped`` and per layer its relative output error
        ``Σ‖Wx − W'x̂‖² / Σ‖Wx‖²`` on the calibration data before (its weights as the criterion left
        them) and after.
    """
    t0 = time.perf_counter()
    out: Updates = dict(updates or {})
    todo, skipped = layers(analysis, plan, max_features)
    levels = sorted({layer.level for layer in todo})
    original = analysis.model.to_onnx() if todo else None
    per_layer: list[dict[str, object]] = []
    samples = passes = 0
    for i, lv in enumerate(levels):
        if progress is not None:
            progress(f"reconstructing: level {i + 1}/{len(levels)}")
        at = [layer for layer in todo if layer.level == lv]
        for layer in at:
            layer.start(analysis, out)
        twin = masked_twin(analysis, plan, out, registry).to_onnx()
        samples = _accumulate(original, twin, source, at, threads)  # type: ignore[arg-type]
        passes += 2
        per_layer += [_apply(analysis, layer, out, damp) for layer in at]
    record: dict[str, object] = {"layers": len(todo), "levels": len(levels), "ort_passes": passes,
                                 "samples": samples, "damp": damp, "seconds": round(time.perf_counter() - t0, 3),
                                 "skipped": skipped, "per_layer": per_layer}
    return out, record
