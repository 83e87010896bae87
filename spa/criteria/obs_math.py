"""Optimal Brain Surgeon algebra for removing input columns of a linear layer.

For a layer ``y = W x`` (``W``: rows = outputs, columns = input features) and the input's second
moment ``H = E[x xᵀ]`` (damped: ``H + λI``, ``λ = damp · mean(diag H)``), removing the column set
``M`` and letting the remaining columns absorb what they can costs

    E(M) = tr( W[:,M] · (H⁻¹[M,M])⁻¹ · W[:,M]ᵀ )

and the optimal update of the surviving columns is

    W ← W − W[:,M] · (H⁻¹[M,M])⁻¹ · H⁻¹[M,:]          (columns M become exactly 0)

which equals the least-squares reconstruction of ``W x`` from the kept inputs only
(Hassibi & Stork 1993; Frantar & Alistarh, Optimal Brain Compression, 2022). ``E(M)`` is the
increase of the mean squared reconstruction error ``E‖Wx − W'x‖²``.

With ``H = diag(d) + μμᵀ`` (the data-free estimate: per-feature variance plus the mean outer product)
everything has a closed form (Sherman–Morrison), with ``s = Σ μ²/d`` and ``s_M`` its sum over M:

    E(M) = Σ_r [ Σ_{j∈M} d_j W_rj² + (Σ_{j∈M} W_rj μ_j)² / (1 + s − s_M) ]

>>> rng = np.random.default_rng(0)
>>> w, d, mu = rng.standard_normal((3, 6)), rng.uniform(1, 2, 6), rng.standard_normal(6)
>>> m = np.array([1, 4])
>>> h = np.diag(d) + np.outer(mu, mu)
>>> bool(np.isclose(removal_error(w, np.linalg.inv(h), m), diag_rank1_errors(w, d, mu, m)))
True
"""

from __future__ import annotations

import numpy as np

DEFAULT_DAMP = 0.01


def damping(h: np.ndarray, damp: float = DEFAULT_DAMP) -> float:
    """``λ = damp · mean(diag H)`` (``damp`` itself when the diagonal is all zero)."""
    mean_diag = float(np.mean(np.diag(h))) if h.size else 0.0
    return damp * mean_diag if mean_diag > 0 else max(damp, 1e-12)


def damped_inverse(h: np.ndarray, damp: float = DEFAULT_DAMP) -> np.ndarray:
    """``(H + λI)⁻¹`` through a Cholesky factorisation (λ grows tenfold until it succeeds)."""
    h = np.asarray(h, dtype=np.float64)
    lam = damping(h, damp)
    eye = np.eye(h.shape[0])
    for _ in range(8):
        try:
            chol = np.linalg.cholesky(h + lam * eye)
            break
        except np.linalg.LinAlgError:
            lam *= 10
    else:  # pragma: no cover - a matrix that never becomes positive definite
        raise np.linalg.LinAlgError("H + λI is not positive definite")
    inv_l = np.linalg.solve(chol, eye)
    return inv_l.T @ inv_l


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a⁻¹ b``; least squares when ``a`` is singular (degenerate statistics, e.g. constant inputs)."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def removal_error(w: np.ndarray, hinv: np.ndarray, m: np.ndarray) -> float:
    """``E(M) = tr(W[:,M] (H⁻¹[M,M])⁻¹ W[:,M]ᵀ)``."""
    m = np.asarray(m, dtype=np.int64)
    if not m.size:
        return 0.0
    wm = w[:, m]
    return float(np.sum(wm.T * _solve(hinv[np.ix_(m, m)], wm.T)))


def obs_update(w: np.ndarray, hinv: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``W − W[:,M] (H⁻¹[M,M])⁻¹ H⁻¹[M,:]``, with the columns ``M`` set to exactly 0."""
    m = np.asarray(m, dtype=np.int64)
    w = np.array(w, dtype=np.float64, copy=True)
    if not m.size:
        return w
    coef = _solve(hinv[np.ix_(m, m)], hinv[m, :])
    w -= w[:, m] @ coef
    w[:, m] = 0.0
    return w


def _column_sets(col_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(channels present, [channels, columns] index) when every channel owns equally many columns."""
    present, counts = np.unique(col_labels, return_counts=True)
    if not len(present) or np.any(counts != counts[0]):
        return None
    order = np.argsort(col_labels, kind="stable")
    return present, order.reshape(len(present), counts[0])


def channel_errors(w: np.ndarray, hinv: np.ndarray, col_labels: np.ndarray, channels: int) -> np.ndarray:
    """``E({columns of c})`` for every channel ``c`` alone (0 for channels with no column here)."""
    out = np.zeros(channels)
    sets = _column_sets(col_labels)
    if sets is None:
        for c in np.unique(col_labels):
            out[c] = removal_error(w, hinv, np.flatnonzero(col_labels == c))
        return out
    present, idx = sets
    blocks = hinv[idx[:, :, None], idx[:, None, :]]  # [C, t, t]
    wc = np.transpose(w[:, idx], (1, 2, 0))  # [C, t, rows]
    try:
        sol = np.linalg.solve(blocks, wc)
    except np.linalg.LinAlgError:  # degenerate statistics (e.g. constant inputs): least squares instead
        sol = np.stack([np.linalg.lstsq(b, x, rcond=None)[0] for b, x in zip(blocks, wc)])
    out[present] = np.einsum("ctr,ctr->c", wc, sol)
    return out


def diag_rank1_errors(w: np.ndarray, d: np.ndarray, mu: np.ndarray, m: np.ndarray) -> float:
    """``E(M)`` for ``H = diag(d) + μμᵀ`` in closed form (see the module docstring)."""
    m = np.asarray(m, dtype=np.int64)
    s = float(np.sum(mu**2 / d))
    s_m = float(np.sum(mu[m] ** 2 / d[m]))
    wm = w[:, m]
    return float(np.sum(wm**2 * d[m]) + np.sum((wm @ mu[m]) ** 2) / (1.0 + s - s_m))


def diag_rank1_channel_errors(w: np.ndarray, d: np.ndarray, mu: np.ndarray, col_labels: np.ndarray,
                              channels: int) -> np.ndarray:
    """:func:`diag_rank1_errors` of every channel's columns alone."""
    s = float(np.sum(mu**2 / d))
    var_part = np.zeros(channels)
    np.add.at(var_part, col_labels, np.sum(w**2, axis=0) * d)
    s_c = np.zeros(channels)
    np.add.at(s_c, col_labels, mu**2 / d)
    mean_cols = w * mu  # [rows, cols]
    mean_part = np.zeros((w.shape[0], channels))
    np.add.at(mean_part.T, col_labels, mean_cols.T)
    out = var_part + np.sum(mean_part**2, axis=0) / (1.0 + s - s_c)
    present = np.zeros(channels, dtype=bool)
    present[col_labels] = True
    return np.where(present, out, 0.0)
