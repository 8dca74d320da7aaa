"""Elementwise activation kernels against the array API reference on NumPy (float64).

Float16 kernels compute in float32 and round once: within ``half_atol`` of the float64
reference on their float16 inputs, the float32 term being the float32 test's tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_activations
from dlcore.kernels import activations
from half_rounding import half_atol
from numba import cuda

# float32 kernels compute in float32; compared with the float64 reference at this scale
TOLERANCE = {np.float64: 1e-13, np.float32: 2e-6}

# float16 tops out at 65504: exp(9) times |dY| < 8 stays below it
HALF_RANGE = 9.0


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype, name: str) -> None:
    """Relative to ``1 + |expected|`` in float32 and float64; ``half_atol`` in float16."""
    scale = 1.0 + np.abs(expected)
    if dtype == np.float16:
        atol = half_atol(expected, float32_atol=TOLERANCE[np.float32] * scale)
        assert np.all(np.abs(actual - expected) <= atol), name
        return
    assert np.max(np.abs(actual - expected) / scale) < TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_every_activation_and_its_derivative(dtype):
    rng = np.random.default_rng(0)
    # 17 x 33 crosses no tile; the values cover both branches of every piecewise
    # activation, the hard_sigmoid corners and large magnitudes.
    Z = rng.standard_normal((17, 33)) * 4
    Z[0, :6] = [0.0, -3.0, 3.0, 30.0, -30.0, 1e-9]
    if dtype == np.float16:
        Z = np.clip(Z, -HALF_RANGE, HALF_RANGE)
    dY = rng.standard_normal(Z.shape)
    device_Z = cuda.to_device(Z.astype(dtype))
    device_dY = cuda.to_device(dY.astype(dtype))
    for name in activations.ELEMENTWISE:
        Y = cuda.device_array(Z.shape, dtype=dtype)
        dZ = cuda.device_array(Z.shape, dtype=dtype)
        activations.forward(name, device_Z, Y)
        activations.backward(name, device_dY, device_Z, dZ)
        Z_used = Z.astype(dtype).astype(np.float64)
        expected_Y = xp_activations.forward(np, name, Z_used)
        dY_used = dY.astype(dtype).astype(np.float64)
        expected_dZ = xp_activations.backward(np, name, dY_used, Z_used, expected_Y)
        assert_close(Y.copy_to_host(), expected_Y, dtype, name)
        assert_close(dZ.copy_to_host(), expected_dZ, dtype, name)


def test_every_elementwise_activation_has_its_device_function():
    assert set(activations.scalar_functions(np.float64)) == set(activations.ELEMENTWISE)


def test_in_place_and_single_element():
    Z = cuda.to_device(np.array([[-2.0]]))
    activations.forward("relu", Z, Z)
    assert Z.copy_to_host()[0, 0] == 0.0
    dY = cuda.to_device(np.array([[5.0]]))
    activations.backward("sigmoid", dY, cuda.to_device(np.array([[0.0]])), dY)
    assert dY.copy_to_host()[0, 0] == 5.0 * 0.25
