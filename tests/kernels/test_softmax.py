"""Softmax kernels against the NumPy engine's reference (``backends/xp_*.py``).

The row kernels give each row a group of ``row_width(O)`` threads, so the shapes
cover one lane per row (O=1), groups wider than the row (3, 10, 17, 33),
several rows per block and several blocks (65 rows of 10: 16 rows a block), and
rows wider than a block (300 > 256 threads). Simulated blocks are slow (each
thread is an OS thread), so the shapes stay small.

Float16 row kernels (softmax, log-softmax, softmax backward) compute in float32 and round
once: within ``half_atol`` of the float64 reference on their float16 inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_activations, xp_losses
from dlcore.kernels import rows
from dlcore.kernels import softmax as kernels
from dlcore.kernels.common import THREADS
from half_rounding import half_atol
from numba import cuda

SHAPES = [(1, 1), (3, 10), (17, 3), (65, 10), (5, 33), (2, 300)]
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


def dtype_id(value) -> str:
    return getattr(value, "__name__", str(value))


def run(launcher, *arrays: np.ndarray, out_shape=None) -> np.ndarray:
    """Launch ``launcher(*inputs, out)`` on device copies and return ``out`` on the host."""
    inputs = [cuda.to_device(a) for a in arrays]
    out = cuda.device_array(out_shape or arrays[0].shape, dtype=arrays[0].dtype)
    launcher(*inputs, out)
    return out.copy_to_host()


def close(actual: np.ndarray, expected: np.ndarray, dtype) -> None:
    if dtype == np.float16:  # float32's tolerance, then one rounding to float16
        rtol = TOLERANCE[np.float32]
        atol = half_atol(expected, float32_atol=rtol * (1 + np.abs(expected)))
        np.testing.assert_array_less(np.abs(actual - expected), atol)
        return
    rtol = TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol)


# float64 checks the layout on every shape; float32 and float16 their precision on two.
ROW_CASES = [(shape, np.float64) for shape in SHAPES] + [
    ((3, 10), np.float32),
    ((2, 300), np.float32),
    ((3, 10), np.float16),
    ((2, 300), np.float16),
]


@pytest.mark.parametrize(("shape", "dtype"), ROW_CASES, ids=dtype_id)
def test_softmax_forward_and_backward(shape, dtype, rng):
    Z = (3.0 * rng.standard_normal(shape)).astype(dtype)
    dY = rng.standard_normal(shape).astype(dtype)
    Z64, dY64 = Z.astype(np.float64), dY.astype(np.float64)
    Y64 = xp_activations.softmax(np, Z64)
    close(run(kernels.softmax, Z), Y64, dtype)
    close(run(kernels.log_softmax, Z), xp_activations.log_softmax(np, Z64), dtype)
    Y = Y64.astype(dtype)  # the backward's input, and its reference's
    expected = xp_activations.backward(np, "softmax", dY64, Z64, Y.astype(np.float64))
    close(run(kernels.softmax_backward, dY, Y), expected, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_softmax_is_stable_for_extreme_logits(dtype):
    Z = np.array(
        [
            [1000.0, -1000.0, 0.0, 999.0],
            [-1000.0, -1000.0, -1000.0, -1000.0],
            [1000.0, 1000.0, 1000.0, 1000.0],
            [-1000.0, 1000.0, -999.5, 1000.0],
        ],
        dtype=dtype,
    )
    Y = run(kernels.softmax, Z)
    logY = run(kernels.log_softmax, Z)
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(logY))
    close(Y, xp_activations.softmax(np, Z.astype(np.float64)), dtype)
    close(logY, xp_activations.log_softmax(np, Z.astype(np.float64)), dtype)
    sum_tolerance = Z.shape[1] * float(np.finfo(dtype).eps) if dtype == np.float16 else None
    np.testing.assert_allclose(Y.sum(axis=1), 1.0, rtol=sum_tolerance or TOLERANCE[dtype])


def test_softmax_in_place_and_repeatable(rng):
    Z = rng.standard_normal((17, 10))
    expected = xp_activations.softmax(np, Z)
    d_Z = cuda.to_device(Z)
    kernels.softmax(d_Z, d_Z)
    first = d_Z.copy_to_host()
    close(first, expected, np.float64)
    again = cuda.to_device(Z)
    kernels.softmax(again, again)
    np.testing.assert_array_equal(again.copy_to_host(), first)  # bit-identical


def test_row_kernels_stride_over_rows_beyond_the_grid(rng):
    # One block of 16 rows (O=10 gives 16 lanes a row) walks 33 rows in 3 steps.
    Z = rng.standard_normal((33, 10))
    dY = rng.standard_normal((33, 10))
    width = rows.row_width(10)
    assert THREADS // width < 33
    d_Z, d_dY = cuda.to_device(Z), cuda.to_device(dY)
    d_Y, d_dZ = cuda.device_array_like(Z), cuda.device_array_like(Z)
    kernels._softmax_kernel(np.dtype(np.float64), False)[1, THREADS](d_Z, d_Y, width)
    Y = xp_activations.softmax(np, Z)
    close(d_Y.copy_to_host(), Y, np.float64)
    kernels._softmax_backward_kernel(np.dtype(np.float64))[1, THREADS](d_dY, d_Y, d_dZ, width)
    close(d_dZ.copy_to_host(), xp_activations.backward(np, "softmax", dY, Z, Y), np.float64)


def test_row_width():
    assert [rows.row_width(O) for O in (1, 2, 3, 10, 17, 33, 256, 300, 5000)] == [
        1,
        2,
        4,
        16,
        32,
        64,
        256,
        256,
        256,
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (17, 10), (65, 3), (33, 33)], ids=str)
def test_softmax_crossentropy_gradient(shape, dtype, rng):
    N, O = shape
    P = xp_activations.softmax(np, rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, O, size=N).astype(np.int64)
    one_hot = np.eye(O, dtype=dtype)[labels]
    expected = xp_losses.softmax_crossentropy_gradient(np, P.astype(np.float64), labels)
    close(run(kernels.softmax_crossentropy_gradient, P, labels), expected, dtype)
    close(run(kernels.softmax_crossentropy_gradient, P, one_hot), expected, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(1, 1), (17, 10), (33, 33)], ids=str)
def test_sigmoid_crossentropy_gradient(shape, dtype, rng):
    P = rng.uniform(size=shape).astype(dtype)
    Y = rng.uniform(size=shape).astype(dtype)
    expected = xp_losses.sigmoid_crossentropy_gradient(np, P.astype(np.float64), Y)
    close(run(kernels.sigmoid_crossentropy_gradient, P, Y), expected, dtype)
