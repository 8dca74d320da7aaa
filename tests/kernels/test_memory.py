"""Memory kernels (fill, copy, row gathers) against NumPy, on shapes that fill no block."""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.kernels import memory as kernels
from numba import cuda

DTYPES = (np.float64, np.float32, np.int64)
SHAPES = ((1,), (3,), (17, 33), (3, 5, 7), (0, 4))


def case_id(value) -> str:
    return getattr(value, "__name__", str(value))


def sample(rng, shape, dtype) -> np.ndarray:
    return (100 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fill(shape, dtype, rng):
    A = cuda.to_device(sample(rng, shape, dtype))
    kernels.fill(A, 2.5)
    np.testing.assert_array_equal(A.copy_to_host(), np.full(shape, 2.5).astype(dtype))
    kernels.fill(A, 0.0)
    np.testing.assert_array_equal(A.copy_to_host(), np.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_copy(shape, dtype, rng):
    src = sample(rng, shape, dtype)
    dst = cuda.to_device(np.zeros(shape, dtype=dtype))
    kernels.copy(cuda.to_device(src), dst)
    np.testing.assert_array_equal(dst.copy_to_host(), src)


def test_copy_into_a_view_leaves_the_rest_alone(rng):
    """The engine assigns into views of a flat parameter buffer."""
    flat = cuda.to_device(np.zeros(40))
    src = rng.standard_normal((3, 5))
    kernels.copy(cuda.to_device(src), flat[7:22].reshape(3, 5))
    expected = np.zeros(40)
    expected[7:22] = src.ravel()
    np.testing.assert_array_equal(flat.copy_to_host(), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=case_id)
@pytest.mark.parametrize(
    ("shape", "m"),
    [((1,), 1), ((17,), 33), ((1, 1), 3), ((17, 33), 9), ((5, 3), 65), ((6, 2, 3), 4), ((4, 3), 0)],
    ids=str,
)
def test_take_rows(shape, m, dtype, rng):
    A = sample(rng, shape, dtype)
    indices = rng.integers(0, shape[0], size=m).astype(np.int64)
    out = cuda.device_array((m, *shape[1:]), dtype=dtype)
    kernels.take_rows(cuda.to_device(A), cuda.to_device(indices), out)
    np.testing.assert_array_equal(out.copy_to_host(), A[indices])


@pytest.mark.parametrize("n_cols", [1, 3, 7, 32, 45])
def test_take_rows_grid_stride_walks_rows_and_columns(n_cols, rng):
    """One block of 32 threads over more elements: (row, col) must advance with the stride."""
    A = rng.standard_normal((11, n_cols))
    indices = rng.integers(0, 11, size=9).astype(np.int64)
    out = cuda.device_array(9 * n_cols)
    kernels.take_rows_kernel[1, 32](cuda.to_device(A), cuda.to_device(indices), out)
    np.testing.assert_array_equal(out.copy_to_host().reshape(9, n_cols), A[indices])
