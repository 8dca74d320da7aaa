"""PReLU kernels against the NumPy engine's formula (``backends/generic.py``).

The backward pass sums ``alpha``'s gradient in blocks of 32 columns by 8 rows of
threads, at least 64 rows a block row: 65 rows take two block rows and the
second pass, 33 and 65 columns two and three strips. Float16 kernels compute and sum
in float32 and round once (``half_atol``); 65 rows take the float32 partial sums'
second pass before ``dalpha`` is rounded.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.kernels import prelu as kernels
from half_rounding import half_atol
from numba import cuda

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}
CASES = [
    ((1, 1), np.float64),
    ((3, 17), np.float64),
    ((17, 33), np.float64),
    ((65, 3), np.float64),
    ((65, 65), np.float64),
    ((65, 33), np.float32),
    ((3, 17), np.float16),
    ((65, 33), np.float16),
]


def dtype_id(value) -> str:
    return getattr(value, "__name__", str(value))


def close(actual: np.ndarray, expected: np.ndarray, dtype) -> None:
    rtol = TOLERANCE[np.float32 if dtype == np.float16 else dtype]
    atol = rtol * max(1.0, len(expected))
    if dtype == np.float16:  # float32's tolerance, then one rounding to float16
        float32_atol = atol + rtol * np.abs(expected)
        np.testing.assert_array_less(
            np.abs(actual - expected), half_atol(expected, float32_atol=float32_atol)
        )
        return
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def data(rng, shape, dtype):
    X = rng.standard_normal(shape)
    X[0, 0] = 0.0  # X > 0 is the test: zero takes the alpha branch
    dY = rng.standard_normal(shape)
    alpha = rng.uniform(0.0, 0.5, size=shape[1])
    return X.astype(dtype), dY.astype(dtype), alpha.astype(dtype)


@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=dtype_id)
def test_prelu_forward(shape, dtype, rng):
    X, _, alpha = data(rng, shape, dtype)
    Y = cuda.device_array_like(X)
    kernels.prelu_forward(cuda.to_device(X), cuda.to_device(alpha), Y)
    X64, alpha64 = X.astype(np.float64), alpha.astype(np.float64)
    close(Y.copy_to_host(), np.where(X64 > 0, X64, alpha64 * X64), dtype)


@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=dtype_id)
def test_prelu_backward(shape, dtype, rng):
    X, dY, alpha = data(rng, shape, dtype)
    dX = cuda.device_array_like(X)
    dalpha = cuda.device_array(shape[1], dtype=dtype)
    kernels.prelu_backward(cuda.to_device(dY), cuda.to_device(X), cuda.to_device(alpha), dX, dalpha)
    X64, dY64, alpha64 = (a.astype(np.float64) for a in (X, dY, alpha))
    close(dX.copy_to_host(), np.where(X64 > 0, dY64, alpha64 * dY64), dtype)
    expected = np.where(X64 > 0, 0.0, dY64 * X64).sum(axis=0)
    close(dalpha.copy_to_host(), expected, dtype)


def test_prelu_backward_in_place_and_bit_identical_on_repeat(rng):
    X, dY, alpha = data(rng, (65, 3), np.float64)
    sums = []
    for _ in range(2):
        d_dY, dalpha = cuda.to_device(dY), cuda.device_array(3)
        kernels.prelu_backward(d_dY, cuda.to_device(X), cuda.to_device(alpha), d_dY, dalpha)
        sums.append(dalpha.copy_to_host())
    close(d_dY.copy_to_host(), np.where(X > 0, dY, alpha * dY), np.float64)
    np.testing.assert_array_equal(sums[0], sums[1])


@pytest.mark.parametrize(
    ("shape", "dtype"), [((3, 17), np.float64), ((17, 3), np.float32), ((17, 3), np.float16)]
)
def test_prelu_backward_without_dalpha_writes_the_same_dX(shape, dtype, rng):
    X, dY, alpha = data(rng, shape, dtype)
    d_dY, d_X, d_alpha = cuda.to_device(dY), cuda.to_device(X), cuda.to_device(alpha)
    alone, fused = cuda.device_array_like(X), cuda.device_array_like(X)
    kernels.prelu_backward(d_dY, d_X, d_alpha, alone, None)
    kernels.prelu_backward(d_dY, d_X, d_alpha, fused, cuda.device_array(shape[1], dtype=dtype))
    X64, dY64, alpha64 = (a.astype(np.float64) for a in (X, dY, alpha))
    close(alone.copy_to_host(), np.where(X64 > 0, dY64, alpha64 * dY64), dtype)
    np.testing.assert_array_equal(alone.copy_to_host(), fused.copy_to_host())
