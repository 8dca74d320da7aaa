"""Activations of the generic engine against independent float64 NumPy references.

Every test runs on two namespaces: NumPy itself, and array_api_strict restricted to
the 2023.12 standard on its simulated non-CPU device, where any use of a function
outside the standard or any mixing with host arrays raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_strict
import numpy as np
import pytest
from dlcore.backends import xp_activations as xa
from dlcore.backends.names import ACTIVATIONS

DEVICE = array_api_strict.Device("device1")

# Keras 3 defaults, written out here rather than read from names.py.
LEAKY_SLOPE = 0.2
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _ref_sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _ref_softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(x - np.logaddexp.reduce(x, axis=-1, keepdims=True))


def _ref_elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))


REFERENCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": _ref_sigmoid,
    "tanh": np.tanh,
    "softmax": _ref_softmax,
    "leaky_relu": lambda x: np.where(x >= 0, x, LEAKY_SLOPE * x),
    "elu": lambda x: _ref_elu(x, 1.0),
    "selu": lambda x: SELU_SCALE * _ref_elu(x, SELU_ALPHA),
    "swish": lambda x: x * _ref_sigmoid(x),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "hard_sigmoid": lambda x: np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0,  # relu6(x+3)/6
    "exponential": np.exp,
}


@dataclass
class Namespace:
    """An array namespace with host transfers, so tests can feed and read it."""

    xp: ModuleType
    to_xp: Callable[[np.ndarray], Any]
    to_np: Callable[[Any], np.ndarray]


def _strict_to_np(a: Any) -> np.ndarray:
    assert a.device == DEVICE, f"result left the device: {a.device}"
    return np.from_dlpack(a.to_device(array_api_strict.Device("CPU_DEVICE")))


@pytest.fixture(params=["numpy", "array_api_strict"])
def ns(request: pytest.FixtureRequest) -> Iterator[Namespace]:
    if request.param == "numpy":
        yield Namespace(np, lambda a: a.copy(), np.asarray)
    else:
        with array_api_strict.ArrayAPIStrictFlags(api_version="2023.12"):
            yield Namespace(
                array_api_strict,
                lambda a: array_api_strict.asarray(a, device=DEVICE),
                _strict_to_np,
            )


def test_references_cover_every_activation() -> None:
    assert set(REFERENCE) == set(ACTIVATIONS)


# Negatives, zero, positives, the hard_sigmoid corners +-3, and large magnitudes.
VALUES = np.array(
    [
        [-50.0, -20.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 20.0, 50.0],
        [-6.2, -4.1, -2.9, -1.7, -0.3, 1e-9, 0.2, 1.3, 2.6, 3.4, 7.5],
    ]
)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_forward_matches_reference(ns: Namespace, name: str) -> None:
    Y = ns.to_np(xa.forward(ns.xp, name, ns.to_xp(VALUES)))
    assert Y.dtype == np.float64
    np.testing.assert_allclose(Y, REFERENCE[name](VALUES), rtol=1e-13, atol=1e-14)


def _points_away_from_kinks(rng: np.random.Generator) -> np.ndarray:
    """Points at least 0.1 away from the kinks at 0 and +-3, some of them large."""
    magnitudes = np.concatenate(
        [rng.uniform(0.1, 2.9, 14), rng.uniform(3.1, 6.0, 6), [12.0, 20.0, 35.0, 50.0]]
    )
    signs = rng.choice([-1.0, 1.0], magnitudes.size)
    return rng.permutation(signs * magnitudes).reshape(4, 6)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_backward_matches_finite_differences(ns: Namespace, name: str) -> None:
    rng = np.random.default_rng(7)
    Z = _points_away_from_kinks(rng)
    dY = rng.normal(size=Z.shape)
    f = REFERENCE[name]
    h = 1e-6
    expected = np.empty_like(Z)
    # Gradient of sum(dY * f(Z)) one entry at a time: covers softmax's full Jacobian.
    for index in np.ndindex(Z.shape):
        step = np.zeros_like(Z)
        step[index] = h
        expected[index] = np.sum(dY * (f(Z + step) - f(Z - step))) / (2 * h)

    Zx = ns.to_xp(Z)
    Yx = xa.forward(ns.xp, name, Zx)
    dZ = ns.to_np(xa.backward(ns.xp, name, ns.to_xp(dY), Zx, Yx))
    assert dZ.dtype == np.float64
    np.testing.assert_allclose(dZ, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_float32_in_float32_out(ns: Namespace, name: str) -> None:
    rng = np.random.default_rng(3)
    Z = rng.uniform(-6.0, 6.0, size=(5, 7))
    dY = rng.normal(size=Z.shape)
    Z32, dY32 = ns.to_xp(Z.astype(np.float32)), ns.to_xp(dY.astype(np.float32))
    Z64 = Z.astype(np.float32).astype(np.float64)  # the same inputs, exactly

    Y32 = xa.forward(ns.xp, name, Z32)
    dZ32 = xa.backward(ns.xp, name, dY32, Z32, Y32)
    Y32_np, dZ32_np = ns.to_np(Y32), ns.to_np(dZ32)
    assert Y32_np.dtype == np.float32
    assert dZ32_np.dtype == np.float32

    Y64 = xa.forward(np, name, Z64)
    dZ64 = xa.backward(np, name, dY.astype(np.float32).astype(np.float64), Z64, Y64)
    np.testing.assert_allclose(Y32_np, REFERENCE[name](Z64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dZ32_np, dZ64, rtol=1e-5, atol=1e-6)


def test_saturating_activations_are_stable_at_huge_inputs(ns: Namespace) -> None:
    Z = np.array([[-800.0, -40.0, 0.0, 40.0, 800.0]])
    Zx = ns.to_xp(Z)
    np.testing.assert_allclose(
        ns.to_np(xa.sigmoid(ns.xp, Zx)), [[0.0, math.exp(-40.0), 0.5, 1.0, 1.0]], rtol=1e-14
    )
    np.testing.assert_allclose(
        ns.to_np(xa.forward(ns.xp, "softplus", Zx)),
        [[0.0, math.log1p(math.exp(-40.0)), math.log(2.0), 40.0, 800.0]],
        rtol=1e-14,
    )
    np.testing.assert_array_equal(ns.to_np(xa.forward(ns.xp, "elu", Zx))[0, 3:], [40.0, 800.0])
    for name in ("sigmoid", "softplus", "swish", "elu", "selu", "gelu", "softsign"):
        Y = xa.forward(ns.xp, name, Zx)
        dZ = ns.to_np(xa.backward(ns.xp, name, ns.to_xp(np.ones_like(Z)), Zx, Y))
        assert np.all(np.isfinite(dZ)), name


def test_softmax_and_log_softmax_with_huge_logits(ns: Namespace) -> None:
    Z = np.array([[1000.0, 999.0, -1000.0], [-1000.0, -1001.0, -1002.0], [0.0, 0.0, 0.0]])
    # Shift-invariance gives the exact answers: rows equal to [1, 0, -1999], [0, -1, -2], 0.
    e1, e2 = math.exp(-1.0), math.exp(-2.0)
    log_expected = np.array(
        [
            [-math.log1p(e1), -1.0 - math.log1p(e1), -2000.0 - math.log1p(e1)],
            [-math.log1p(e1 + e2), -1.0 - math.log1p(e1 + e2), -2.0 - math.log1p(e1 + e2)],
            [-math.log(3.0)] * 3,
        ]
    )
    Zx = ns.to_xp(Z)
    P = ns.to_np(xa.forward(ns.xp, "softmax", Zx))
    np.testing.assert_allclose(P, np.exp(log_expected), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(P.sum(axis=-1), 1.0, rtol=1e-15)
    log_P = ns.to_np(xa.log_softmax(ns.xp, Zx))
    np.testing.assert_allclose(log_P, log_expected, rtol=1e-14)


def test_erf_is_accurate_to_float64(ns: Namespace) -> None:
    x = np.concatenate([np.linspace(-10.0, 10.0, 200_001), [1e-300, -1e-12, 5.9, 6.0, 6.1]])
    result = ns.to_np(xa.erf(ns.xp, ns.to_xp(x)))
    assert result.dtype == np.float64
    assert np.max(np.abs(result - _erf(x))) < 1e-14
    edges = ns.to_np(xa.erf(ns.xp, ns.to_xp(np.array([-np.inf, 0.0, np.inf]))))
    np.testing.assert_array_equal(edges, [-1.0, 0.0, 1.0])


def test_erf_keeps_float32(ns: Namespace) -> None:
    x = np.linspace(-8.0, 8.0, 4001, dtype=np.float32)
    result = ns.to_np(xa.erf(ns.xp, ns.to_xp(x)))
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, _erf(x.astype(np.float64)), rtol=0, atol=1e-6)


def test_unknown_name_raises_key_error(ns: Namespace) -> None:
    Zx = ns.to_xp(np.zeros((2, 3)))
    with pytest.raises(KeyError, match="mish"):
        xa.forward(ns.xp, "mish", Zx)
    with pytest.raises(KeyError, match="mish"):
        xa.backward(ns.xp, "mish", Zx, Zx, Zx)


# ---------------------------------------------------------------------- through every engine
# The same references, reached through the engine interface, so that every engine
# (``pytest --engine NAME``) is held to them, whatever implements its activations.
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_engine_activation_matches_reference(engine, name: str) -> None:
    rng = np.random.default_rng(11)
    Z = _points_away_from_kinks(rng)
    dY = rng.normal(size=Z.shape)
    f = REFERENCE[name]
    Zx = engine.asarray(Z, dtype="float64")
    Yx = engine.activation(name, Zx)
    np.testing.assert_allclose(engine.to_numpy(Yx), f(Z), rtol=1e-12, atol=1e-14)
    expected = np.empty_like(Z)
    for index in np.ndindex(Z.shape):
        step = np.zeros_like(Z)
        step[index] = 1e-6
        expected[index] = np.sum(dY * (f(Z + step) - f(Z - step))) / 2e-6
    dZ = engine.backprop_activation(name, engine.asarray(dY, dtype="float64"), Zx, Yx)
    np.testing.assert_allclose(engine.to_numpy(dZ), expected, rtol=1e-6, atol=1e-8)
