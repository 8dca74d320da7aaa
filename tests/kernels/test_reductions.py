"""Reduction kernels against NumPy: sums, means, penalties, accuracy counts.

Sums accumulate in float64, so float32 inputs are compared with the float64
sum of the same values at float64 precision. Sizes cover one block of one warp
(3 elements), one block (51) and several blocks (2805 > 2048 = 256 threads x 8
elements), with its second pass; the row counts cover ties, NaN, several row
blocks and rows wider than a block.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.kernels import reductions, rows
from dlcore.kernels.common import THREADS, blocks_for
from numba import cuda

SHAPES = [(3,), (3, 17), (5, 33, 17)]


def scalar_of(launcher, *arrays, **options) -> float:
    """Run ``launcher(*device arrays, out, **options)`` and return ``out[0]``."""
    out = cuda.device_array(1, dtype=np.float64)
    launcher(*[cuda.to_device(a) for a in arrays], out, **options)
    return out.copy_to_host()[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sum_mean_and_penalty(shape, dtype):
    rng = np.random.default_rng(0)
    A = rng.standard_normal(shape).astype(dtype)
    A.flat[0] = 0.0
    exact = A.astype(np.float64)
    np.testing.assert_allclose(scalar_of(reductions.sum_all, A), exact.sum(), rtol=1e-12)
    np.testing.assert_allclose(scalar_of(reductions.mean_all, A), exact.mean(), rtol=1e-12)
    expected = 0.01 * np.abs(exact).sum() + 0.003 * (exact * exact).sum()
    actual = scalar_of(reductions.penalty, A, l1=0.01, l2=0.003)
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_several_blocks_are_bit_identical_from_run_to_run():
    A = np.random.default_rng(1).standard_normal(2805)
    assert blocks_for(A.size, THREADS * reductions.ITEMS_PER_THREAD) == 2
    first = scalar_of(reductions.sum_all, A)
    assert scalar_of(reductions.sum_all, A) == first
    np.testing.assert_allclose(first, A.sum(), rtol=1e-12)


def test_count_nonbinary():
    Y = np.array([[0.0, 1.0, 0.5], [-1.0, 1.0, 0.0]])
    assert scalar_of(reductions.count_nonbinary, Y) == 2.0
    assert scalar_of(reductions.count_nonbinary, np.array([0.0, 1.0, 1.0])) == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("l1", "l2"), [(0.01, 0.003), (0.0, 0.5), (0.2, 0.0)])
def test_backprop_penalty(l1, l2, dtype, fma_atol):
    rng = np.random.default_rng(2)
    W = rng.standard_normal((5, 33, 17)).astype(dtype)
    W.flat[:3] = 0.0  # sign(0) = 0
    dW = rng.standard_normal(W.shape).astype(dtype)
    d_W, d_dW = cuda.to_device(W), cuda.to_device(dW)
    reductions.backprop_penalty(d_W, d_dW, l1=l1, l2=l2)
    expected = dW.astype(np.float64) + l1 * np.sign(W) + 2.0 * l2 * W.astype(np.float64)
    atol = fma_atol(dW, l1, 2.0 * l2 * W, dtype=dtype)  # dW + l1 sign(W) + 2 l2 W, fused
    assert np.all(np.abs(d_dW.copy_to_host() - expected) <= atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_count_correct_binary(dtype):
    rng = np.random.default_rng(3)
    P = rng.uniform(size=(33, 5)).astype(dtype)
    Y = rng.integers(0, 2, size=P.shape).astype(dtype)
    P.flat[:3] = 0.5  # not above 0.5: predicts 0
    expected = np.sum((P > 0.5) == (Y > 0.5))
    assert scalar_of(counter("binary"), P, Y) == expected


def counter(kind):
    """``count_correct`` of one ``kind``, shaped like the other launchers."""

    def launcher(Y_pred, Y_true, out):
        reductions.count_correct(kind, Y_pred, Y_true, out)

    return launcher


def categorical_case(shape, rng):
    """Rows with ties (first index wins) in predictions and targets, and a NaN row."""
    N, O = shape
    P = rng.uniform(size=shape)
    Y = np.eye(O)[rng.integers(0, O, size=N)]
    if N >= 2 and O >= 3:
        P[0, [1, O - 1]] = 2.0  # tie: argmax 1
        Y[0] = 0.0
        Y[0, [1, 2]] = 1.0  # tie: argmax 1, a hit
        P[1, [0, 2]] = 2.0  # tie: argmax 0
        Y[1] = np.eye(O)[2]  # a miss unless ties resolved last
    if N >= 3:
        P[2, 2] = np.nan  # numpy.argmax counts NaN as the maximum
    return P, Y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (33, 5), (2, 300)], ids=str)
def test_count_correct_categorical_and_sparse(shape, dtype):
    rng = np.random.default_rng(4)
    P, Y = categorical_case(shape, rng)
    if shape == (2, 300):
        P[1, [10, 266, 299]] = 5.0  # tied maxima in lanes 10, 10 and 43 of a 256-lane row
        Y[1] = np.eye(300)[10]
    P, Y = P.astype(dtype), Y.astype(dtype)
    labels = np.argmax(Y, axis=1).astype(np.int64)
    expected = np.sum(np.argmax(P, axis=1) == labels)
    assert scalar_of(counter("categorical"), P, Y) == expected
    assert scalar_of(counter("sparse"), P, labels) == expected


def test_count_correct_unknown_kind_names_the_valid_ones():
    P = cuda.to_device(np.zeros((1, 1)))
    with pytest.raises(KeyError, match="binary, categorical, sparse"):
        reductions.count_correct("top_k", P, P, cuda.device_array(1))


def test_grid_sizes():
    assert [rows.row_width(O) for O in (1, 3, 10, 33, 256, 5000)] == [1, 4, 16, 64, 256, 256]
    assert rows.row_grid(1, 1) == (1, 32, 1)  # one warp for a one-row batch
    assert rows.row_grid(33, 5) == (2, THREADS, 8)
    assert rows.row_grid(3, 300) == (3, THREADS, THREADS)
    assert rows.block_threads(0) == 32
    assert rows.block_threads(100) == 128
    assert rows.block_threads(10**6) == THREADS
