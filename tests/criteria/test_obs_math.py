"""OBS algebra against brute force: the update is the least-squares reconstruction from the kept
inputs, and E(M) is the increase of the reconstruction error."""

from __future__ import annotations

import numpy as np
import pytest

from spa.calibration.stats import ConvUnfold, SecondMoment, dense_rows
from spa.criteria.obs_math import (
    channel_errors,
    damped_inverse,
    diag_rank1_channel_errors,
    diag_rank1_errors,
    obs_update,
    removal_error,
)


def _lstsq_reconstruction(w: np.ndarray, x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """W' (same shape as W, zero outside ``kept``) minimising ‖X Wᵀ − X[:, kept] W'[:, kept]ᵀ‖."""
    target = x @ w.T
    sol, *_ = np.linalg.lstsq(x[:, kept], target, rcond=None)
    out = np.zeros_like(w)
    out[:, kept] = sol.T
    return out


def _layer(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W [rows, columns], X [samples, columns], column channel labels) of a Linear or unfolded Conv."""
    if kind == "linear":
        w = rng.standard_normal((5, 12))
        x = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12))  # correlated inputs
        return w, x, np.arange(12)
    c, taps = 4, 9
    w = rng.standard_normal((6, c, 3, 3))
    inp = rng.standard_normal((20, c, 7, 7))
    inp[:, 1] += 0.7 * inp[:, 0]  # correlated channels
    unfold = ConvUnfold((3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
    return w.reshape(6, -1), unfold.rows(inp), np.repeat(np.arange(c), taps)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_obs_update_is_least_squares_and_error_is_the_increase(kind: str) -> None:
    rng = np.random.default_rng(0)
    w, x, labels = _layer(kind, rng)
    n = len(x)
    h = x.T @ x / n
    hinv = np.linalg.inv(h)
    removed_channels = [1, 2] if kind == "linear" else [1]
    m = np.flatnonzero(np.isin(labels, removed_channels))
    kept = np.setdiff1d(np.arange(w.shape[1]), m)
    new = obs_update(w, hinv, m)
    best = _lstsq_reconstruction(w, x, kept)
    assert np.all(new[:, m] == 0)
    assert np.linalg.norm(new - best) <= 1e-6 * np.linalg.norm(best)
    increase = np.sum((x @ (w - new).T) ** 2) / n  # E‖Wx − W'x‖² (the unpruned error is 0)
    assert removal_error(w, hinv, m) == pytest.approx(increase, rel=1e-6)


def test_channel_errors_match_one_channel_removals() -> None:
    rng = np.random.default_rng(1)
    w, x, labels = _layer("conv", rng)
    hinv = damped_inverse(x.T @ x / len(x))
    got = channel_errors(w, hinv, labels, 5)  # channel 4 has no column here
    want = [removal_error(w, hinv, np.flatnonzero(labels == c)) for c in range(4)] + [0.0]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    irregular = np.array([0, 0, 1, 2, 2, 2, 1, 0, 3, 3, 3, 3])
    w2, x2, _ = _layer("linear", rng)
    hinv2 = damped_inverse(x2.T @ x2 / len(x2))
    want2 = [removal_error(w2, hinv2, np.flatnonzero(irregular == c)) for c in range(4)]
    np.testing.assert_allclose(channel_errors(w2, hinv2, irregular, 4), want2, rtol=1e-9)


def test_damping_keeps_a_singular_h_invertible() -> None:
    x = np.zeros((10, 3))
    x[:, 0] = 1.0  # two dead inputs: H is singular
    hinv = damped_inverse(x.T @ x / 10)
    assert np.all(np.isfinite(hinv))
    np.testing.assert_allclose(hinv, hinv.T)


def test_diag_plus_rank_one_closed_form() -> None:
    rng = np.random.default_rng(2)
    w, d, mu = rng.standard_normal((4, 8)), rng.uniform(0.5, 2.0, 8), rng.standard_normal(8)
    hinv = np.linalg.inv(np.diag(d) + np.outer(mu, mu))
    labels = np.repeat(np.arange(4), 2)
    for c in range(4):
        m = np.flatnonzero(labels == c)
        assert diag_rank1_errors(w, d, mu, m) == pytest.approx(removal_error(w, hinv, m), rel=1e-9)
    np.testing.assert_allclose(diag_rank1_channel_errors(w, d, mu, labels, 4),
                               [removal_error(w, hinv, np.flatnonzero(labels == c)) for c in range(4)], rtol=1e-9)


@pytest.mark.parametrize("groups", [1, 2])
def test_second_moment_streams_like_one_big_product(groups: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 6)).astype(np.float32)
    acc = SecondMoment(dense_rows(1), 6, groups)
    for i in range(0, 37, 10):
        acc.update(x[i:i + 10])
    full = x.astype(np.float64).T @ x.astype(np.float64) / 37
    if groups == 2:
        full[:3, 3:] = 0
        full[3:, :3] = 0
    np.testing.assert_allclose(acc.matrix, full, rtol=1e-12)
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=1e-5)


def test_second_moment_refuses_rows_of_another_width() -> None:
    """A tensor whose run-time width differs from its declared shape (an inconsistent model, found by the
    fuzzer) is a clean CalibrationError naming the tensor, not a numpy broadcast error."""
    import onnx
    from onnx import helper

    from spa.calibration.data import CalibrationError, RandomSource
    from spa.calibration.stats import SecondMoment, collect

    acc = SecondMoment(lambda x: x, 12)
    with pytest.raises(CalibrationError, match="48 features at run time"):
        acc.update(np.ones((2, 48), np.float32))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 48])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 48])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    with pytest.raises(CalibrationError, match="calibration tensor 'y'"):
        collect(m, RandomSource(samples=2, batch_size=2, seed=0), {"y": [SecondMoment(lambda v: v, 12)]})
