"""Elementwise activation kernels against the array API reference on NumPy (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from dlcore.backends import xp_activations
from dlcore.kernels import activations
from numba import cuda

# float32 kernels compute in float32; compared with the float64 reference at this scale
TOLERANCE = {np.float64: 1e-13, np.float32: 2e-6}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_activation_and_its_derivative(dtype):
    rng = np.random.default_rng(0)
    # 17 x 33 crosses no tile; the values cover both branches of every piecewise
    # activation, the hard_sigmoid corners and large magnitudes.
    Z = rng.standard_normal((17, 33)) * 4
    Z[0, :6] = [0.0, -3.0, 3.0, 30.0, -30.0, 1e-9]
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
        expected_dZ = xp_activations.backward(np, name, dY.astype(dtype), Z_used, expected_Y)
        scale_Y = 1.0 + np.abs(expected_Y)
        scale_dZ = 1.0 + np.abs(expected_dZ)
        tolerance = TOLERANCE[dtype]
        assert np.max(np.abs(Y.copy_to_host() - expected_Y) / scale_Y) < tolerance, name
        assert np.max(np.abs(dZ.copy_to_host() - expected_dZ) / scale_dZ) < tolerance, name


def test_every_elementwise_activation_has_its_device_function():
    assert set(activations.scalar_functions(np.float64)) == set(activations.ELEMENTWISE)


def test_in_place_and_single_element():
    Z = cuda.to_device(np.array([[-2.0]]))
    activations.forward("relu", Z, Z)
    assert Z.copy_to_host()[0, 0] == 0.0
    dY = cuda.to_device(np.array([[5.0]]))
    activations.backward("sigmoid", dY, cuda.to_device(np.array([[0.0]])), dY)
    assert dY.copy_to_host()[0, 0] == 5.0 * 0.25
