"""Dropout kernels: mask values, kept fraction, determinism per seed, and the draws themselves.

Generators use the default grid (64 threads in the simulator), so 4096
elements take 64 draws a thread and 3 elements leave most threads idle.

Float16 is exact against NumPy's float16: the scale ``1 / (1 - rate)`` is rounded to
float16, and the float32 product of two float16 numbers is exact before its one rounding,
as NumPy's float16 product is.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from dlcore.kernels import dropout as kernels
from numba import cuda
from numba.cuda.random import xoroshiro128p_uniform_float64

DTYPES = (np.float64, np.float32, np.float16)
SHAPES = ((1,), (3,), (64, 64), (17, 33))


def dtype_id(value) -> str:
    return getattr(value, "__name__", str(value))


def run_dropout(generator, X: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    Y = cuda.device_array_like(X)
    mask = cuda.device_array_like(X)
    kernels.dropout(generator, cuda.to_device(X), Y, mask, rate=rate)
    return Y.copy_to_host(), mask.copy_to_host()


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mask_values_and_output(shape, dtype, rng):
    rate = 0.3
    X = rng.standard_normal(shape).astype(dtype)
    Y, mask = run_dropout(kernels.DropoutGenerator(7), X, rate)
    assert Y.dtype == mask.dtype == dtype and Y.shape == mask.shape == shape
    kept = mask != 0
    np.testing.assert_array_equal(mask[kept], dtype(1.0 / (1.0 - rate)))
    np.testing.assert_array_equal(Y, X * mask)
    n = X.size
    if n >= 1000:  # the kept count is Binomial(n, 1 - rate): within 5 standard deviations
        sigma = math.sqrt(n * rate * (1.0 - rate))
        assert abs(kept.sum() - n * (1.0 - rate)) < 5 * sigma


def test_mask_is_the_generators_uniform_draw_at_least_rate():
    """Element i is thread i % threads's next xoroshiro128p_uniform_float64 draw >= rate."""
    rate, n = 0.4, 1000
    generator = kernels.DropoutGenerator(11)
    twin = kernels.DropoutGenerator(11)

    @cuda.jit
    def uniform_kernel(states, u):
        """u[i] = the uniform float64 draw of thread i % threads, in grid-stride order."""
        start = cuda.grid(1)
        for i in range(start, u.size, cuda.gridsize(1)):
            u[i] = xoroshiro128p_uniform_float64(states, start)

    u = cuda.device_array(n, dtype=np.float64)
    with warnings.catch_warnings():  # the simulator's uint64 arithmetic warns on wrap-around
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        uniform_kernel[twin.blocks, twin.threads_per_block](twin.states, u)
    expected = u.copy_to_host() >= rate
    for dtype in DTYPES:  # every dtype draws the same decisions
        _, mask = run_dropout(generator, np.ones(n, dtype=dtype), rate)
        np.testing.assert_array_equal(mask != 0, expected)
        generator = kernels.DropoutGenerator(11)


def test_same_seed_same_masks_different_seed_different_masks(rng):
    X = rng.standard_normal((17, 33))
    first, second, other = (kernels.DropoutGenerator(seed) for seed in (3, 3, 4))
    mask_a1, mask_a2 = run_dropout(first, X, 0.5)[1], run_dropout(first, X, 0.5)[1]
    mask_b1, mask_b2 = run_dropout(second, X, 0.5)[1], run_dropout(second, X, 0.5)[1]
    np.testing.assert_array_equal(mask_a1, mask_b1)
    np.testing.assert_array_equal(mask_a2, mask_b2)
    assert not np.array_equal(mask_a1, mask_a2)  # the states advance between calls
    assert not np.array_equal(mask_a1, run_dropout(other, X, 0.5)[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_rate_zero_keeps_everything(dtype, rng):
    X = rng.standard_normal((3, 17)).astype(dtype)
    Y, mask = run_dropout(kernels.DropoutGenerator(1), X, 0.0)
    np.testing.assert_array_equal(mask, np.ones_like(X))
    np.testing.assert_array_equal(Y, X)


def test_small_grid_strides_over_a_larger_tensor(rng):
    """16 threads over 65 elements: every element gets a mask, about half of them kept."""
    X = rng.standard_normal(65)
    Y, mask = run_dropout(kernels.DropoutGenerator(5, threads=16), X, 0.5)
    assert set(np.unique(mask)) <= {0.0, 2.0}
    assert 10 < np.count_nonzero(mask) < 55
    np.testing.assert_array_equal(Y, X * mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(1,), (17, 33)], ids=str)
def test_backprop_dropout(shape, dtype, rng):
    dY = rng.standard_normal(shape).astype(dtype)
    mask = (rng.random(shape) >= 0.3).astype(dtype) / dtype(0.7)
    dX = cuda.device_array_like(dY)
    kernels.backprop_dropout(cuda.to_device(dY), cuda.to_device(mask), dX)
    np.testing.assert_array_equal(dX.copy_to_host(), dY * mask)
