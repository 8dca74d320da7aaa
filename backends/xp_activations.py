"""Activation functions, forward and backward, written against the Python array API.

Every function takes the array namespace ``xp`` (``numpy``, an ``array_api_compat``
namespace for CuPy, ``array_api_strict``) and uses only functions of the 2023.12
standard, so the generic engine runs unchanged on every namespace. Constants are
Python floats, never host arrays, so nothing here ties an array to the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

from . import custom
from .base import Array
from .names import ELU_ALPHA, LEAKY_RELU_NEGATIVE_SLOPE, SELU_ALPHA, SELU_SCALE

# erf is evaluated in two pieces, each a short Chebyshev series (Clenshaw):
#   |x| <= _ERF_SPLIT:      erf(x) = x * g(x**2), g = erf(x) / x is even and smooth;
#   _ERF_SPLIT < |x| <= 6:  erf(x) = 1 - exp(-x**2) * h(1/x), h = erfc(x) * exp(x**2)
#                           is smooth and slowly varying in 1/x, so no cancellation
#                           near 1 and few terms are needed.
# Beyond 6, erfc(x) < 2.2e-17 and erf rounds to +-1 in float64.
# The degrees give a maximum absolute error below 5e-15 on float64.
_ERF_SPLIT = 1.5
_ERF_CUTOFF = 6.0
_ERF_SMALL_DEGREE = 14
_ERF_LARGE_DEGREE = 16


def _chebyshev_coefficients(f: Callable[[float], float], degree: int) -> tuple[float, ...]:
    """Coefficients of the Chebyshev interpolant of ``f`` on [-1, 1] at first-kind nodes."""
    n = degree + 1
    angles = [math.pi * (k + 0.5) / n for k in range(n)]
    values = [f(math.cos(a)) for a in angles]
    # math.fsum keeps the coefficients accurate to the last bit of float64
    # (numpy's chebinterpolate loses about a digit at these degrees).
    sums = [
        math.fsum(v * math.cos(j * a) for v, a in zip(values, angles, strict=True))
        for j in range(n)
    ]
    return tuple((1.0 if j == 0 else 2.0) / n * s for j, s in enumerate(sums))


def _erf_over_x(u: float) -> float:
    x = math.sqrt(0.5 * _ERF_SPLIT**2 * (u + 1.0))
    return 2.0 / math.sqrt(math.pi) if x == 0.0 else math.erf(x) / x


_W_LOW, _W_HIGH = 1.0 / _ERF_CUTOFF, 1.0 / _ERF_SPLIT


def _scaled_erfc(t: float) -> float:
    x = 1.0 / (_W_LOW + 0.5 * (t + 1.0) * (_W_HIGH - _W_LOW))
    return math.erfc(x) * math.exp(x * x)


_ERF_SMALL = _chebyshev_coefficients(_erf_over_x, _ERF_SMALL_DEGREE)
_ERF_LARGE = _chebyshev_coefficients(_scaled_erfc, _ERF_LARGE_DEGREE)


def _clenshaw(t: Array, coefficients: tuple[float, ...]) -> Array:
    """Sum of ``coefficients[k] * T_k(t)``; the first step runs on Python floats."""
    t2 = 2.0 * t
    b1, b2 = coefficients[-1], 0.0
    for c in coefficients[-2:0:-1]:
        b1, b2 = t2 * b1 - b2 + c, b1
    return t * b1 - b2 + coefficients[0]


def erf(xp: ModuleType, x: Array) -> Array:
    """The error function, elementwise, with array API operations only.

    Args:
        xp: the array namespace of ``x``.
        x: float32 or float64 array of any shape.

    Returns:
        ``erf(x)``, same shape and dtype as ``x``; in float64 the absolute error
        is below 1e-14 everywhere; ``erf(+-inf) = +-1``.
    """
    a = xp.abs(x)
    # Each piece is evaluated everywhere and then selected, so clip its argument
    # into its own interval: no division by zero, no overflow in the other piece.
    small = xp.clip(x, min=-_ERF_SPLIT, max=_ERF_SPLIT)
    small_value = small * _clenshaw(small * small * (2.0 / _ERF_SPLIT**2) - 1.0, _ERF_SMALL)
    large = xp.clip(a, min=_ERF_SPLIT, max=_ERF_CUTOFF)
    t = (1.0 / large - _W_LOW) * (2.0 / (_W_HIGH - _W_LOW)) - 1.0
    large_value = 1.0 - xp.exp(-large * large) * _clenshaw(t, _ERF_LARGE)
    return xp.where(a <= _ERF_SPLIT, small_value, xp.sign(x) * large_value)


def sigmoid(xp: ModuleType, Z: Array) -> Array:
    """Logistic sigmoid ``1 / (1 + exp(-Z))``, elementwise, without overflow.

    Args:
        xp: the array namespace of ``Z``.
        Z: float array of any shape.

    Returns:
        Float array of the shape and dtype of ``Z``, in [0, 1].
    """
    e = xp.exp(-xp.abs(Z))  # in (0, 1], so neither branch can overflow
    return xp.where(Z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(xp: ModuleType, Z: Array) -> Array:
    """Softmax over the last axis, stable for any magnitude of ``Z``.

    Args:
        xp: the array namespace of ``Z``.
        Z: float array ``(..., O)``.

    Returns:
        Float array of the shape and dtype of ``Z`` whose rows sum to 1.
    """
    E = xp.exp(Z - xp.max(Z, axis=-1, keepdims=True))
    return E / xp.sum(E, axis=-1, keepdims=True)


def log_softmax(xp: ModuleType, Z: Array) -> Array:
    """Logarithm of the softmax over the last axis, stable for any magnitude of ``Z``.

    Args:
        xp: the array namespace of ``Z``.
        Z: float array ``(..., O)``.

    Returns:
        Float array of the shape and dtype of ``Z``: ``Z - logsumexp(Z, axis=-1)``.
    """
    S = Z - xp.max(Z, axis=-1, keepdims=True)
    return S - xp.log(xp.sum(xp.exp(S), axis=-1, keepdims=True))


def _mask(xp: ModuleType, condition: Array, like: Array) -> Array:
    return xp.astype(condition, like.dtype)


def _elu(xp: ModuleType, Z: Array, alpha: float) -> Array:
    # expm1 only on the non-positive part, so large positive Z cannot overflow.
    return xp.where(Z > 0.0, Z, alpha * xp.expm1(xp.clip(Z, max=0.0)))


def _gelu(xp: ModuleType, Z: Array) -> Array:
    return 0.5 * Z * (1.0 + erf(xp, Z * (1.0 / math.sqrt(2.0))))


def _backprop_gelu(xp: ModuleType, dY: Array, Z: Array) -> Array:
    cdf = 0.5 * (1.0 + erf(xp, Z * (1.0 / math.sqrt(2.0))))
    pdf = xp.exp(-0.5 * Z * Z) * (1.0 / math.sqrt(2.0 * math.pi))
    return dY * (cdf + Z * pdf)


def _backprop_swish(xp: ModuleType, dY: Array, Z: Array, Y: Array) -> Array:
    s = sigmoid(xp, Z)
    return dY * (s + Y * (1.0 - s))  # d(z s)/dz = s + z s (1 - s), and z s = Y


_FORWARD: dict[str, Callable[[ModuleType, Array], Array]] = {
    "linear": lambda xp, Z: Z,
    "relu": lambda xp, Z: xp.clip(Z, min=0.0),
    "sigmoid": sigmoid,
    "tanh": lambda xp, Z: xp.tanh(Z),
    "softmax": softmax,
    "leaky_relu": lambda xp, Z: xp.where(Z > 0.0, Z, LEAKY_RELU_NEGATIVE_SLOPE * Z),
    "elu": lambda xp, Z: _elu(xp, Z, ELU_ALPHA),
    "selu": lambda xp, Z: SELU_SCALE * _elu(xp, Z, SELU_ALPHA),
    "swish": lambda xp, Z: Z * sigmoid(xp, Z),
    "softplus": lambda xp, Z: xp.log1p(xp.exp(-xp.abs(Z))) + xp.clip(Z, min=0.0),
    "softsign": lambda xp, Z: Z / (1.0 + xp.abs(Z)),
    "gelu": _gelu,
    "hard_sigmoid": lambda xp, Z: xp.clip(Z * (1.0 / 6.0) + 0.5, min=0.0, max=1.0),
    "exponential": lambda xp, Z: xp.exp(Z),
}

_BACKWARD: dict[str, Callable[[ModuleType, Array, Array, Array], Array]] = {
    "linear": lambda xp, dY, Z, Y: dY,
    "relu": lambda xp, dY, Z, Y: dY * _mask(xp, Z > 0.0, dY),
    "sigmoid": lambda xp, dY, Z, Y: dY * Y * (1.0 - Y),
    "tanh": lambda xp, dY, Z, Y: dY * (1.0 - Y * Y),
    "softmax": lambda xp, dY, Z, Y: Y * (dY - xp.sum(dY * Y, axis=-1, keepdims=True)),
    "leaky_relu": lambda xp, dY, Z, Y: xp.where(Z > 0.0, dY, LEAKY_RELU_NEGATIVE_SLOPE * dY),
    # For Z <= 0, elu(Z) = alpha (e^Z - 1), whose derivative alpha e^Z is Y + alpha.
    "elu": lambda xp, dY, Z, Y: xp.where(Z > 0.0, dY, dY * (Y + ELU_ALPHA)),
    "selu": lambda xp, dY, Z, Y: xp.where(
        Z > 0.0, SELU_SCALE * dY, dY * (Y + SELU_SCALE * SELU_ALPHA)
    ),
    "swish": _backprop_swish,
    "softplus": lambda xp, dY, Z, Y: dY * sigmoid(xp, Z),
    "softsign": lambda xp, dY, Z, Y: dY / ((1.0 + xp.abs(Z)) * (1.0 + xp.abs(Z))),
    "gelu": lambda xp, dY, Z, Y: _backprop_gelu(xp, dY, Z),
    "hard_sigmoid": lambda xp, dY, Z, Y: dY * _mask(xp, (Z > -3.0) & (Z < 3.0), dY) / 6.0,
    "exponential": lambda xp, dY, Z, Y: dY * Y,
}


def forward(xp: ModuleType, name: str, Z: Array) -> Array:
    """Apply the activation ``name`` to ``Z``.

    Args:
        xp: the array namespace of ``Z``.
        name: a name from ``names.ACTIVATIONS`` or of a custom activation
            (``custom.ACTIVATIONS``); any other raises ``KeyError``.
        Z: float32 or float64 array ``(N, O)`` (any shape for the elementwise
            activations); softmax runs over the last axis.

    Returns:
        ``Y``, same shape and dtype as ``Z``. For ``"linear"`` this is ``Z`` itself.
    """
    function = _FORWARD.get(name)
    if function is None:
        return custom.forward(xp, name, Z)
    return function(xp, Z)


def backward(xp: ModuleType, name: str, dY: Array, Z: Array, Y: Array) -> Array:
    """Gradient of the activation ``name`` with respect to its input.

    Args:
        xp: the array namespace of the arrays.
        name: a name from ``names.ACTIVATIONS`` or of a custom activation
            (``custom.ACTIVATIONS``); any other raises ``KeyError``.
        dY: float ``(N, O)``, the gradient of the loss with respect to ``Y``.
        Z: float ``(N, O)``, the input given to ``forward``.
        Y: float ``(N, O)``, the output ``forward`` returned for ``Z``.

    Returns:
        ``dZ``, float ``(N, O)`` of the dtype of ``dY``: ``activation'(Z) * dY``,
        or for softmax the product of its Jacobian with ``dY``. For ``"linear"``
        this is ``dY`` itself.
    """
    function = _BACKWARD.get(name)
    if function is None:
        return custom.backward(xp, name, dY, Z, Y)
    return function(xp, dY, Z, Y)


# ---------------------------------------------------------------- parameterised activations
# The layers ReLU, LeakyReLU and ELU take their constants as arguments; these are the
# generic engine's versions of Engine.relu_family and Engine.elu.


def relu_family(
    xp: ModuleType, Z: Array, negative_slope: float, max_value: float | None, threshold: float
) -> Array:
    """Keras's ReLU: ``min(z, max_value)`` where ``z > threshold``, else
    ``negative_slope * (z - threshold)``; float ``Z`` of any shape, same shape out."""
    upper = Z if max_value is None else xp.clip(Z, max=max_value)
    return xp.where(Z > threshold, upper, negative_slope * (Z - threshold))


def backprop_relu_family(
    xp: ModuleType,
    dY: Array,
    Z: Array,
    negative_slope: float,
    max_value: float | None,
    threshold: float,
) -> Array:
    """``dY`` times the derivative of ``relu_family``: 1 on ``(threshold, max_value)``,
    ``negative_slope`` below ``threshold``, 0 elsewhere."""
    inside = Z > threshold
    if max_value is not None:
        inside = inside & (Z < max_value)
    below = _mask(xp, Z < threshold, dY) * negative_slope
    return dY * (_mask(xp, inside, dY) + below)


def elu(xp: ModuleType, Z: Array, alpha: float) -> Array:
    """``z`` where ``z > 0``, else ``alpha * (exp(z) - 1)``; float ``Z`` of any shape."""
    return _elu(xp, Z, alpha)


def backprop_elu(xp: ModuleType, dY: Array, Z: Array, alpha: float) -> Array:
    """``dY`` times ELU's derivative, ``1`` where ``z > 0`` else ``alpha * exp(z)``."""
    return xp.where(Z > 0.0, dY, dY * (alpha * xp.exp(xp.clip(Z, max=0.0))))


def alpha_dropout_constants(rate: float) -> tuple[float, float, float]:
    """``(a, b, alpha_p)`` of alpha dropout at ``rate`` (``0 < rate < 1``): dropped units
    take ``alpha_p = -SELU_SCALE * SELU_ALPHA``, then ``y = a * x + b`` restores the
    mean and variance of a standard normal input."""
    alpha_p = -SELU_SCALE * SELU_ALPHA
    a = ((1.0 - rate) * (1.0 + rate * alpha_p**2)) ** -0.5
    return a, -a * alpha_p * rate, alpha_p
