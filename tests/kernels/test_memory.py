"""Memory kernels (fill, copy, row gathers) against NumPy, on shapes that fill no block.

Float16 is filled and copied (a mixed-precision layer's arrays; it is not gathered), and
the copy converts between float16, float32 and float64 exactly as NumPy's ``astype``.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.kernels import memory as kernels
from numba import cuda

DTYPES = (np.float64, np.float32, np.int64)
FILLED_AND_COPIED = (*DTYPES, np.float16)
SHAPES = ((1,), (3,), (17, 33), (3, 5, 7), (0, 4))


def case_id(value) -> str:
    return getattr(value, "__name__", str(value))


def sample(rng, shape, dtype) -> np.ndarray:
    return (100 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", FILLED_AND_COPIED, ids=case_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fill(shape, dtype, rng):
    A = cuda.to_device(sample(rng, shape, dtype))
    kernels.fill(A, 2.5)
    np.testing.assert_array_equal(A.copy_to_host(), np.full(shape, 2.5).astype(dtype))
    kernels.fill(A, 0.0)
    np.testing.assert_array_equal(A.copy_to_host(), np.zeros(shape, dtype=dtype))
    kernels.fill(A, 0.1)  # rounded to the dtype once, as NumPy rounds it
    np.testing.assert_array_equal(A.copy_to_host(), np.full(shape, 0.1).astype(dtype))


@pytest.mark.parametrize("dtype", FILLED_AND_COPIED, ids=case_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_copy(shape, dtype, rng):
    src = sample(rng, shape, dtype)
    dst = cuda.to_device(np.zeros(shape, dtype=dtype))
    kernels.copy(cuda.to_device(src), dst)
    np.testing.assert_array_equal(dst.copy_to_host(), src)


# float16's rounding cases: ties to even (1 + 2**-11, 1 + 3 * 2**-11), its largest value
# and past it (to inf), subnormals and below them (to 0), signed zero, inf and NaN
HALF_EDGES = np.array(
    [1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65520.0, 1e-8, 3e-8, 1.5 * 2**-24, 6.1e-5]
    + [-0.0, 0.1, -3.5, np.inf, -np.inf, np.nan, 1.0 / 3.0, 2.0**-14 * (1 + 2**-11)]
)
CONVERSIONS = [
    (np.float16, np.float32),
    (np.float16, np.float64),
    (np.float32, np.float16),
    (np.float64, np.float16),
]


# 65520 overflows float16 on purpose; NumPy (and the simulator's threads) warn of it
@pytest.mark.filterwarnings("ignore:.*overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(("source", "target"), CONVERSIONS, ids=case_id)
def test_converting_copy_rounds_as_numpy(source, target, rng):
    """NumbaEngine.cast: float16 to and from float32 and float64, rounded to nearest once."""
    values = np.concatenate([HALF_EDGES, 10 * rng.standard_normal(33)]).astype(source)
    dst = cuda.device_array(values.shape, dtype=target)
    kernels.copy(cuda.to_device(values), dst)
    np.testing.assert_array_equal(dst.copy_to_host(), values.astype(target))


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
