"""Elementwise activations: one scalar definition each, from which every kernel is built.

An activation is one device function of ``z`` returning ``(y, dy/dz)``. The
forward kernel keeps ``y``, the backward kernel multiplies ``dY`` by the
derivative, and the gemm epilogue (``gemm.py``) and the fused dense backward
(``dense_backward.py``) call the same function; the compiler drops whichever
half a kernel does not use. Backward recomputes the activation from ``Z``
instead of reading ``Y``: on a GPU the arithmetic is free and the read is not.

Softmax is not elementwise; it lives in ``softmax.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

from dlcore.backends.names import (
    ACTIVATIONS,
    ELU_ALPHA,
    LEAKY_RELU_NEGATIVE_SLOPE,
    SELU_ALPHA,
    SELU_SCALE,
)
from numba import cuda

from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    PtxVariant,
    array,
    compute_dtype,
    device_function,
    grid_for,
    launch,
    scalar,
)

# Every activation but softmax, which is row-wise (softmax.py).
ELEMENTWISE: tuple[str, ...] = tuple(name for name in ACTIVATIONS if name != "softmax")


@functools.cache
def scalar_functions(dtype: Any) -> dict[str, Any]:
    """Device functions ``f(z) -> (y, dy/dz)`` for every elementwise activation.

    Args:
        dtype: ``float32`` or ``float64``; the constants are of this dtype, so
            the functions compute in it (float16 kernels take the float32 ones,
            ``common.compute_dtype``).

    Returns:
        ``{name: device function}`` for every name in ``ELEMENTWISE``.
    """
    f = scalar(dtype)
    zero, half, one = f(0.0), f(0.5), f(1.0)
    leaky = f(LEAKY_RELU_NEGATIVE_SLOPE)
    elu_alpha = f(ELU_ALPHA)
    selu_scale, selu_scale_alpha = f(SELU_SCALE), f(SELU_SCALE * SELU_ALPHA)
    inv_sqrt2, inv_sqrt_2pi = f(1.0 / math.sqrt(2.0)), f(1.0 / math.sqrt(2.0 * math.pi))
    sixth, three = f(1.0 / 6.0), f(3.0)

    def linear(z):
        return z, one

    def relu(z):
        if z > zero:
            return z, one
        return zero, zero

    @device_function
    def sigmoid_of(z):
        e = math.exp(-abs(z))  # in (0, 1]: neither branch overflows
        if z >= zero:
            return one / (one + e)
        return e / (one + e)

    def sigmoid(z):
        y = sigmoid_of(z)
        return y, y * (one - y)

    def tanh(z):
        y = math.tanh(z)
        return y, one - y * y

    def leaky_relu(z):
        if z > zero:
            return z, one
        return leaky * z, leaky

    def elu(z):
        if z > zero:
            return z, one
        return elu_alpha * math.expm1(z), elu_alpha * math.exp(z)

    def selu(z):
        if z > zero:
            return selu_scale * z, selu_scale
        return selu_scale_alpha * math.expm1(z), selu_scale_alpha * math.exp(z)

    def swish(z):
        s = sigmoid_of(z)
        y = z * s
        return y, s + y * (one - s)

    def softplus(z):
        return math.log1p(math.exp(-abs(z))) + max(z, zero), sigmoid_of(z)

    def softsign(z):
        d = one + abs(z)
        return z / d, one / (d * d)

    def gelu(z):
        cdf = half * (one + math.erf(z * inv_sqrt2))
        return z * cdf, cdf + z * math.exp(-half * z * z) * inv_sqrt_2pi

    def hard_sigmoid(z):
        y = min(max(z * sixth + half, zero), one)
        return y, sixth if -three < z < three else zero

    def exponential(z):
        y = math.exp(z)
        return y, y

    table = {
        "linear": linear,
        "relu": relu,
        "sigmoid": sigmoid,
        "tanh": tanh,
        "leaky_relu": leaky_relu,
        "elu": elu,
        "selu": selu,
        "swish": swish,
        "softplus": softplus,
        "softsign": softsign,
        "gelu": gelu,
        "hard_sigmoid": hard_sigmoid,
        "exponential": exponential,
    }
    return {name: device_function(function) for name, function in table.items()}


@functools.cache
def _forward_kernel(dtype: Any, name: str) -> Any:
    function = scalar_functions(compute_dtype(dtype))[name]
    widen = scalar(compute_dtype(dtype))  # float16 loads to float32; a no-op otherwise

    @cuda.jit
    def activation_forward_kernel(Z, Y):
        """Y = f(Z) over flat float arrays of one size."""
        start = cuda.grid(1)
        for i in range(start, Z.size, cuda.gridsize(1)):
            Y[i] = function(widen(Z[i]))[0]

    return activation_forward_kernel


@functools.cache
def _backward_kernel(dtype: Any, name: str) -> Any:
    function = scalar_functions(compute_dtype(dtype))[name]
    widen = scalar(compute_dtype(dtype))

    @cuda.jit
    def activation_backward_kernel(dY, Z, dZ):
        """dZ = f'(Z) * dY over flat float arrays of one size."""
        start = cuda.grid(1)
        for i in range(start, Z.size, cuda.gridsize(1)):
            dZ[i] = widen(dY[i]) * function(widen(Z[i]))[1]

    return activation_backward_kernel


def forward(name: str, Z: Any, Y: Any) -> None:
    """Write ``Y = name(Z)`` elementwise.

    Args:
        name: one of ``ELEMENTWISE``.
        Z: C-contiguous float16, float32 or float64 device array of any shape (float16
            is computed in float32 and rounded once).
        Y: device array of the shape and dtype of ``Z`` (may be ``Z`` itself).
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    z, y = Z.reshape(Z.size), Y.reshape(Y.size)
    launch(_forward_kernel(Z.dtype, name), grid_for(Z.size), z, y)


def backward(name: str, dY: Any, Z: Any, dZ: Any) -> None:
    """Write ``dZ = name'(Z) * dY`` elementwise.

    Args:
        name: one of ``ELEMENTWISE``.
        dY: C-contiguous float16, float32 or float64 device array of any shape, the
            gradient of the output.
        Z: the activation's input, shape and dtype of ``dY``.
        dZ: device array of that shape and dtype (may be ``dY`` itself).
    """
    if dZ.size == 0:  # nothing to write: launch nothing
        return
    dy, z, dz = dY.reshape(dY.size), Z.reshape(Z.size), dZ.reshape(dZ.size)
    launch(_backward_kernel(Z.dtype, name), grid_for(Z.size), dy, z, dz)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every forward and backward kernel, for each dtype (float16 included), as launched."""
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        flat = array(dtype, 1)
        short = dtype.name.replace("float", "f")
        for name in ELEMENTWISE:
            yield f"activation_forward[{name},{short}]", _forward_kernel(dtype, name), (flat, flat)
            yield (
                f"activation_backward[{name},{short}]",
                _backward_kernel(dtype, name),
                (flat, flat, flat),
            )
