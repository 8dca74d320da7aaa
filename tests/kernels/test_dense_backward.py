"""Fused activation gradient and bias gradient against the NumPy engine's reference.

Blocks are 32 columns by 8 rows of threads and a block row takes at least 64
rows, so 65 rows need two block rows and the second pass over their partial
sums, and 33 or 65 columns need two or three column strips. Simulated blocks
are slow (each thread is an OS thread): every activation runs on one small
shape, the layout is swept with a few activations.

Float16 arrays are computed in float32 and ``dZ`` and ``db`` rounded once: they are
checked against float64 references from the float16 inputs within a float32 bound
plus half a float16 ulp (``half_rounding.half_atol``).
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_activations
from dlcore.kernels import dense_backward as kernels
from dlcore.kernels.activations import ELEMENTWISE
from half_rounding import half_atol
from numba import cuda

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}
SHAPES = [(1, 1), (3, 17), (17, 33), (65, 3), (33, 65), (65, 65)]


def reference(name: str, dY: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(dZ, db)`` in float64 from ``backends/xp_activations.py``."""
    dY, Z = dY.astype(np.float64), Z.astype(np.float64)
    Y = xp_activations.forward(np, name, Z)
    dZ = xp_activations.backward(np, name, dY, Z, Y)
    return dZ, dZ.sum(axis=0)


def close(actual: np.ndarray, expected: np.ndarray, dtype) -> None:
    rtol = TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(1.0, len(expected)))


def launch(name: str, dY: np.ndarray, Z: np.ndarray, with_bias: bool = True):
    """Run ``activation_gradient_and_bias`` on device copies; return host ``(dZ, db)``."""
    d_dY, d_Z = cuda.to_device(dY), cuda.to_device(Z)
    d_dZ = cuda.device_array_like(dY)
    d_db = cuda.device_array(dY.shape[1], dtype=dY.dtype) if with_bias else None
    kernels.activation_gradient_and_bias(name, d_dY, d_Z, d_dZ, d_db)
    return d_dZ.copy_to_host(), (d_db.copy_to_host() if with_bias else None)


def inputs(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype), (2.0 * rng.standard_normal(shape)).astype(
        dtype
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_activation(name, dtype, rng):
    dY, Z = inputs(rng, (17, 3), dtype)
    dZ, db = launch(name, dY, Z)
    expected_dZ, expected_db = reference(name, dY, Z)
    close(dZ, expected_dZ, dtype)
    close(db, expected_db, dtype)


# One activation per shape: the layout does not depend on the activation.
@pytest.mark.parametrize(
    ("name", "shape"), list(zip(["relu", "tanh", "swish"] * 2, SHAPES, strict=True)), ids=str
)
def test_shapes_across_strips_and_block_rows(name, shape, rng):
    dY, Z = inputs(rng, shape, np.float64)
    dZ, db = launch(name, dY, Z)
    expected_dZ, expected_db = reference(name, dY, Z)
    close(dZ, expected_dZ, np.float64)
    close(db, expected_db, np.float64)


def test_float32_with_two_block_rows(rng):
    dY, Z = inputs(rng, (65, 33), np.float32)
    assert kernels.row_blocks(65, 33) == 2
    dZ, db = launch("sigmoid", dY, Z)
    expected_dZ, expected_db = reference("sigmoid", dY, Z)
    close(dZ, expected_dZ, np.float32)
    close(db, expected_db, np.float32)


@pytest.mark.parametrize("name", ["linear", "gelu"])
def test_without_bias(name, rng):
    dY, Z = inputs(rng, (17, 33), np.float64)
    dZ, db = launch(name, dY, Z, with_bias=False)
    assert db is None
    close(dZ, reference(name, dY, Z)[0], np.float64)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_in_place(with_bias, rng):
    dY, Z = inputs(rng, (65, 17), np.float64)
    d_dY = cuda.to_device(dY)
    d_db = cuda.device_array(17) if with_bias else None
    kernels.activation_gradient_and_bias("linear", d_dY, cuda.to_device(Z), d_dY, d_db)
    np.testing.assert_array_equal(d_dY.copy_to_host(), dY)
    if with_bias:
        close(d_db.copy_to_host(), dY.sum(axis=0), np.float64)


def test_in_place_and_bit_identical_on_repeat(rng):
    dY, Z = inputs(rng, (65, 3), np.float64)
    sums = []
    for _ in range(2):
        d_dY, d_db = cuda.to_device(dY), cuda.device_array(3)
        kernels.activation_gradient_and_bias("elu", d_dY, cuda.to_device(Z), d_dY, d_db)
        sums.append(d_db.copy_to_host())
    expected_dZ, expected_db = reference("elu", dY, Z)
    close(d_dY.copy_to_host(), expected_dZ, np.float64)
    close(sums[0], expected_db, np.float64)
    np.testing.assert_array_equal(sums[0], sums[1])


@pytest.mark.parametrize(
    ("shape", "dtype", "with_bias"),
    [((65, 10), np.float64, True), ((65, 10), np.float32, True), ((17, 10), np.float64, False)],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_softmax_gradient_and_bias(shape, dtype, with_bias, rng):
    dY = rng.standard_normal(shape).astype(dtype)
    Y = xp_activations.softmax(np, rng.standard_normal(shape)).astype(dtype)
    d_dZ = cuda.device_array_like(dY)
    d_db = cuda.device_array(shape[1], dtype=dtype) if with_bias else None
    kernels.softmax_gradient_and_bias(cuda.to_device(dY), cuda.to_device(Y), d_dZ, d_db)
    Y64 = Y.astype(np.float64)
    expected = xp_activations.backward(np, "softmax", dY.astype(np.float64), Y64, Y64)
    close(d_dZ.copy_to_host(), expected, dtype)
    if with_bias:
        close(d_db.copy_to_host(), expected.sum(axis=0), dtype)


@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (130, 5)], ids=str)
def test_column_sums(shape, rng):
    A = rng.standard_normal(shape)
    out = cuda.device_array(shape[1])
    kernels.column_sums(cuda.to_device(A), out)
    close(out.copy_to_host(), A.sum(axis=0), np.float64)


def test_row_blocks():
    assert kernels.row_blocks(1, 10) == 1
    assert kernels.row_blocks(64, 10) == 1
    assert kernels.row_blocks(65, 10) == 2
    assert kernels.row_blocks(10**6, 10) == kernels.MAX_ROW_BLOCKS
    # Many strips already fill the GPU: fewer block rows.
    assert kernels.row_blocks(10**6, 32 * 2112) == 1


# Float32 roundings allowed in one dZ = dY * f'(Z): the derivative's own few (exp, erf,
# tanh) and the product. Measured against max(|dY|, |dZ|), not |dZ|: f' = 1 - tanh(z)**2
# cancels, so where it is tiny its float32 error is an ulp of 1, not of f'.
DERIVATIVE_ULPS = 16
F16 = np.dtype(np.float16)


def half_inputs(rng, shape):
    """``(dY, Z)`` as float16 arrays (dY standard normal, Z with standard deviation 2)."""
    dY, Z = inputs(rng, shape, np.float64)
    return dY.astype(F16), Z.astype(F16)


def assert_half_close(fma_atol, dZ, db, dY, expected_dZ, expected_db):
    """dZ within its float32 error (``DERIVATIVE_ULPS`` of max(|dY|, |dZ|)) plus one
    float16 rounding; db, a float32 sum of N unrounded products, within N more roundings
    of the sum of those magnitudes plus one float16 rounding."""
    assert dZ.dtype == F16 and db.dtype == F16
    scale = np.maximum(np.abs(dY.astype(np.float64)), np.abs(expected_dZ))
    dz_atol = fma_atol(scale, ulps=DERIVATIVE_ULPS)
    db_atol = fma_atol(scale.sum(axis=0), ulps=DERIVATIVE_ULPS + len(dY))
    np.testing.assert_array_less(
        np.abs(dZ - expected_dZ), half_atol(expected_dZ, float32_atol=dz_atol)
    )
    np.testing.assert_array_less(
        np.abs(db - expected_db), half_atol(expected_db, float32_atol=db_atol)
    )


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_activation_in_float16(name, rng, fma_atol):
    dY, Z = half_inputs(rng, (17, 3))
    dZ, db = launch(name, dY, Z)
    assert_half_close(fma_atol, dZ, db, dY, *reference(name, dY, Z))


# One block, two column strips, two block rows (float32 partial rows, second pass).
@pytest.mark.parametrize(
    ("name", "shape"), [("tanh", (1, 1)), ("gelu", (17, 33)), ("elu", (65, 33))]
)
def test_float16_across_strips_and_block_rows(name, shape, rng, fma_atol):
    dY, Z = half_inputs(rng, shape)
    dZ, db = launch(name, dY, Z)
    assert_half_close(fma_atol, dZ, db, dY, *reference(name, dY, Z))


@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (130, 5)], ids=str)
def test_column_sums_in_float16(shape, rng, fma_atol):
    A = rng.standard_normal(shape).astype(F16)
    out = cuda.device_array(shape[1], dtype=F16)
    kernels.column_sums(cuda.to_device(A), out)
    magnitude = np.abs(A.astype(np.float64)).sum(axis=0)
    expected = A.astype(np.float64).sum(axis=0)
    atol = half_atol(expected, float32_atol=fma_atol(magnitude, ulps=shape[0]))
    np.testing.assert_array_less(np.abs(out.copy_to_host() - expected), atol)


def test_float16_without_bias_and_in_place(rng, fma_atol):
    dY, Z = half_inputs(rng, (17, 33))
    dZ, db = launch("gelu", dY, Z, with_bias=False)
    assert db is None and dZ.dtype == F16
    expected_dZ = reference("gelu", dY, Z)[0]
    scale = np.maximum(np.abs(dY.astype(np.float64)), np.abs(expected_dZ))
    atol = half_atol(expected_dZ, float32_atol=fma_atol(scale, ulps=DERIVATIVE_ULPS))
    np.testing.assert_array_less(np.abs(dZ - expected_dZ), atol)
    # Linear in place: dZ is dY, untouched; db its column sums.
    d_dY, d_db = cuda.to_device(dY), cuda.device_array(33, dtype=F16)
    kernels.activation_gradient_and_bias("linear", d_dY, cuda.to_device(Z), d_dY, d_db)
    np.testing.assert_array_equal(d_dY.copy_to_host(), dY)
    expected_db = dY.astype(np.float64).sum(axis=0)
    magnitude = np.abs(dY.astype(np.float64)).sum(axis=0)
    atol = half_atol(expected_db, float32_atol=fma_atol(magnitude, ulps=len(dY)))
    np.testing.assert_array_less(np.abs(d_db.copy_to_host() - expected_db), atol)


def test_float16_over_no_rows_writes_zero_sums():
    empty = np.zeros((0, 5), F16)
    dZ, db = launch("relu", empty, empty)
    assert dZ.shape == (0, 5)
    np.testing.assert_array_equal(db, np.zeros(5, F16))


def test_float16_sums_are_float32_sums_rounded_once():
    # Column 0: 2048 then sixteen 1s; in float16 2048 + 1 rounds back to 2048, so only a
    # float32 sum gives 2064. Column 1: +-60000 twice, whose float16 running sum would
    # overflow at 120000 and stay inf; in float32 it cancels to 0. 65 rows: two block rows.
    dY = np.zeros((65, 2), F16)
    dY[:17, 0] = [2048.0] + [1.0] * 16
    dY[:4, 1] = [60000.0, 60000.0, -60000.0, -60000.0]
    assert kernels.row_blocks(*dY.shape) == 2
    dZ, db = launch("linear", dY, dY)
    np.testing.assert_array_equal(dZ, dY)
    np.testing.assert_array_equal(db, [2064.0, 0.0])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # simulator
def test_float16_overflow_is_infinite():
    # dZ = 60000 * exp(2) and the sum 40000 + 40000 exceed float16's largest value, 65504.
    dY = np.array([[60000.0, 40000.0], [1.0, 40000.0]], F16)
    Z = np.array([[2.0, 0.0], [0.0, 0.0]], F16)
    dZ, db = launch("exponential", dY, Z)
    np.testing.assert_array_equal(dZ, [[np.inf, 40000.0], [1.0, 40000.0]])
    np.testing.assert_array_equal(db, [np.inf, np.inf])


def test_float16_sums_are_bit_identical_on_repeat(rng):
    dY, Z = half_inputs(rng, (130, 3))  # three block rows
    sums = [launch("swish", dY, Z)[1] for _ in range(2)]
    np.testing.assert_array_equal(sums[0], sums[1])
