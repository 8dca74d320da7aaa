"""Normalization kernels against float64 NumPy formulas.

The column kernels walk strips of 32 columns with 8 rows of threads (33 columns
take two strips, 65 rows eight rows per thread and a remainder); the row kernels
give each row a group of lanes (17 columns: 32 lanes, 15 idle). Float32 results
are compared within a few ulps of the largest term entering them, times the
number of terms summed.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.kernels import normalization as kernels
from numba import cuda

pytestmark = pytest.mark.cudasim

CASES = [
    ((1, 1), np.float64),
    ((3, 17), np.float64),
    ((65, 33), np.float64),
    ((17, 3), np.float32),
]
EPS = 1e-3


def dtype_id(value) -> str:
    return getattr(value, "__name__", str(value))


def close(actual, expected, dtype, terms: int) -> None:
    scale = max(1.0, float(np.max(np.abs(expected))))
    tol = (1e-12 if dtype == np.float64 else 1e-6) * terms * scale
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol)


def host(*arrays):
    return [cuda.to_device(a) for a in arrays]


@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=dtype_id)
def test_batch_moments_and_normalize(shape, dtype, rng):
    N, F = shape
    X = (rng.standard_normal(shape) * 3 + 5).astype(dtype)
    gamma, beta = rng.standard_normal(F).astype(dtype), rng.standard_normal(F).astype(dtype)
    dX, dgamma, dbeta = host(X, gamma, beta)
    mean, var = cuda.device_array(F, dtype), cuda.device_array(F, dtype)
    kernels.batch_moments(dX, mean, var)
    X64 = X.astype(np.float64)
    close(mean.copy_to_host(), X64.mean(axis=0), dtype, N)
    close(var.copy_to_host(), X64.var(axis=0), dtype, 4 * N)
    Y, Xhat = cuda.device_array(shape, dtype), cuda.device_array(shape, dtype)
    kernels.batch_normalize(dX, mean, var, dgamma, dbeta, EPS, Y, Xhat)
    m, v = mean.copy_to_host().astype(np.float64), var.copy_to_host().astype(np.float64)
    xhat = (X64 - m) / np.sqrt(v + EPS)
    close(Xhat.copy_to_host(), xhat, dtype, 4)
    close(Y.copy_to_host(), gamma * xhat + beta, dtype, 4)
    kernels.batch_normalize(dX, mean, var, None, None, EPS, Y, Xhat)
    close(Y.copy_to_host(), xhat, dtype, 4)


@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=dtype_id)
@pytest.mark.parametrize("batch_statistics", [True, False])
def test_batch_normalize_backward(shape, dtype, batch_statistics, rng):
    N, F = shape
    dY = rng.standard_normal(shape).astype(dtype)
    Xhat = rng.standard_normal(shape).astype(dtype)
    var = rng.uniform(0.5, 2.0, F).astype(dtype)
    gamma = rng.standard_normal(F).astype(dtype)
    d_dY, d_Xhat, d_var, d_gamma = host(dY, Xhat, var, gamma)
    dgamma, dbeta = cuda.device_array(F, dtype), cuda.device_array(F, dtype)
    dX = cuda.device_array(shape, dtype)
    kernels.batch_normalize_backward(
        d_dY, d_Xhat, d_var, d_gamma, EPS, batch_statistics, dgamma, dbeta, dX
    )
    dY64, Xhat64 = dY.astype(np.float64), Xhat.astype(np.float64)
    sum_dy, sum_dyx = dY64.sum(axis=0), (dY64 * Xhat64).sum(axis=0)
    close(dbeta.copy_to_host(), sum_dy, dtype, N)
    close(dgamma.copy_to_host(), sum_dyx, dtype, N)
    factor = gamma / np.sqrt(var.astype(np.float64) + EPS)
    if batch_statistics:
        expected = factor / N * (N * dY64 - sum_dy - Xhat64 * sum_dyx)
    else:
        expected = factor * dY64
    close(dX.copy_to_host(), expected, dtype, 4 * N)
    # no weight gradients (a frozen layer): the input gradient alone
    kernels.batch_normalize_backward(
        d_dY, d_Xhat, d_var, None, EPS, batch_statistics, None, None, dX
    )
    close(dX.copy_to_host(), expected / gamma, dtype, 4 * N)


@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=dtype_id)
def test_layer_normalize_forward_and_backward(shape, dtype, rng):
    N, F = shape
    X = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    gamma, beta = rng.standard_normal(F).astype(dtype), rng.standard_normal(F).astype(dtype)
    dY = rng.standard_normal(shape).astype(dtype)
    d_X, d_gamma, d_beta, d_dY = host(X, gamma, beta, dY)
    Y, Xhat = cuda.device_array(shape, dtype), cuda.device_array(shape, dtype)
    inv_std = cuda.device_array(N, dtype)
    kernels.layer_normalize(d_X, d_gamma, d_beta, EPS, Y, Xhat, inv_std)
    X64 = X.astype(np.float64)
    mean = X64.mean(axis=1, keepdims=True)
    r = 1 / np.sqrt(((X64 - mean) ** 2).mean(axis=1, keepdims=True) + EPS)
    xhat = (X64 - mean) * r
    close(inv_std.copy_to_host(), r[:, 0], dtype, 4 * F)
    close(Xhat.copy_to_host(), xhat, dtype, 4 * F)
    close(Y.copy_to_host(), gamma * xhat + beta, dtype, 4 * F)
    dX = cuda.device_array(shape, dtype)
    kernels.layer_normalize_backward(d_dY, Xhat, inv_std, d_gamma, dX)
    xh, rr = Xhat.copy_to_host().astype(np.float64), inv_std.copy_to_host().astype(np.float64)
    G = dY.astype(np.float64) * gamma
    expected = (
        rr[:, None]
        / F
        * (F * G - G.sum(axis=1, keepdims=True) - xh * (G * xh).sum(axis=1, keepdims=True))
    )
    close(dX.copy_to_host(), expected, dtype, 4 * F)
    dgamma, dbeta = cuda.device_array(F, dtype), cuda.device_array(F, dtype)
    kernels.column_moment_sums(d_dY, Xhat, dgamma, dbeta)
    close(dgamma.copy_to_host(), (dY * xh).sum(axis=0), dtype, N)
    close(dbeta.copy_to_host(), dY.astype(np.float64).sum(axis=0), dtype, N)


@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=dtype_id)
@pytest.mark.parametrize("invert", [False, True])
def test_standardize_and_moving_average(shape, dtype, invert, rng):
    N, F = shape
    X = rng.standard_normal(shape).astype(dtype)
    mean = rng.standard_normal(F).astype(dtype)
    var = rng.uniform(0.0, 3.0, F).astype(dtype)
    var[0] = 0.0  # sqrt(0) is floored at 1e-7
    d_X, d_mean, d_var = host(X, mean, var)
    Y = cuda.device_array(shape, dtype)
    d = np.maximum(np.sqrt(var.astype(np.float64)), 1e-7)
    kernels.standardize(d_X, d_mean, d_var, invert, Y)
    expected = mean + X * d if invert else (X - mean.astype(np.float64)) / d
    close(Y.copy_to_host(), expected, dtype, 4)
    kernels.standardize(d_X, None, d_var, invert, Y)
    close(Y.copy_to_host(), X * d if invert else X / d, dtype, 4)
    moving = cuda.to_device(var.copy())
    kernels.moving_average(moving, d_mean, 0.9)
    close(moving.copy_to_host(), var * 0.9 + mean.astype(np.float64) * 0.1, dtype, 4)


def test_empty_arrays_launch_nothing():
    X = cuda.device_array((0, 3), np.float64)
    var = cuda.to_device(np.ones(3))
    kernels.batch_normalize(X, var, var, None, None, EPS, X, X)
    kernels.standardize(X, None, var, False, X)
    empty = cuda.device_array((2, 0), np.float64)
    none = cuda.device_array(0, np.float64)
    kernels.batch_moments(empty, none, none)
    kernels.batch_normalize_backward(empty, empty, none, None, EPS, True, none, none, empty)
