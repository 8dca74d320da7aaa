"""Activations whose constants are arguments: Keras's ``ReLU`` (slope, ceiling,
threshold) and ``ELU`` (alpha), forward and backward, elementwise over flat arrays.

The constants arrive as kernel arguments of the compute dtype, so one compiled kernel
per dtype serves every layer, whatever its constants. Backward recomputes the
derivative from ``Z``, as ``activations.py`` does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

from numba import cuda

from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    PtxVariant,
    array,
    compute_dtype,
    grid_for,
    launch,
    numba_type,
    scalar,
)


@functools.cache
def _relu_kernels(dtype: Any) -> tuple[Any, Any]:
    f = scalar(compute_dtype(dtype))
    zero, one = f(0.0), f(1.0)

    @cuda.jit
    def relu_family_kernel(Z, Y, slope, upper, threshold):
        """Y = min(z, upper) where z > threshold, else slope * (z - threshold)."""
        for i in range(cuda.grid(1), Z.size, cuda.gridsize(1)):
            z = f(Z[i])
            Y[i] = min(z, upper) if z > threshold else slope * (z - threshold)

    @cuda.jit
    def backprop_relu_family_kernel(dY, Z, dZ, slope, upper, threshold):
        """dZ = dY * (1 on (threshold, upper), slope below threshold, else 0)."""
        for i in range(cuda.grid(1), Z.size, cuda.gridsize(1)):
            z = f(Z[i])
            d = zero
            if z > threshold and z < upper:
                d = one
            elif z < threshold:
                d = slope
            dZ[i] = f(dY[i]) * d

    return relu_family_kernel, backprop_relu_family_kernel


@functools.cache
def _elu_kernels(dtype: Any) -> tuple[Any, Any]:
    f = scalar(compute_dtype(dtype))
    zero = f(0.0)

    @cuda.jit
    def elu_kernel(Z, Y, alpha):
        """Y = z where z > 0, else alpha * (exp(z) - 1)."""
        for i in range(cuda.grid(1), Z.size, cuda.gridsize(1)):
            z = f(Z[i])
            Y[i] = z if z > zero else alpha * math.expm1(z)

    @cuda.jit
    def backprop_elu_kernel(dY, Z, dZ, alpha):
        """dZ = dY where z > 0, else dY * alpha * exp(z)."""
        for i in range(cuda.grid(1), Z.size, cuda.gridsize(1)):
            z = f(Z[i])
            dy = f(dY[i])
            dZ[i] = dy if z > zero else dy * (alpha * math.exp(z))

    return elu_kernel, backprop_elu_kernel


def _flat(*arrays: Any) -> tuple[Any, ...]:
    return tuple(A.reshape(A.size) for A in arrays)


def _relu_constants(
    dtype: Any, negative_slope: float, max_value: float | None, threshold: float
) -> tuple[Any, Any, Any]:
    f = scalar(compute_dtype(dtype))
    upper = math.inf if max_value is None else max_value
    return f(negative_slope), f(upper), f(threshold)


def relu_family(
    Z: Any, Y: Any, *, negative_slope: float, max_value: float | None, threshold: float
) -> None:
    """Keras's ReLU of ``Z`` into ``Y``: ``min(z, max_value)`` where ``z > threshold``,
    else ``negative_slope * (z - threshold)``.

    Args:
        Z: C-contiguous float16, float32 or float64 device array of any shape.
        Y: device array of the shape and dtype of ``Z`` (may be ``Z`` itself).
        negative_slope, threshold: floats; max_value: a float, or ``None`` for no ceiling.
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    constants = _relu_constants(Z.dtype, negative_slope, max_value, threshold)
    launch(_relu_kernels(Z.dtype)[0], grid_for(Z.size), *_flat(Z, Y), *constants)


def backprop_relu_family(
    dY: Any,
    Z: Any,
    dZ: Any,
    *,
    negative_slope: float,
    max_value: float | None,
    threshold: float,
) -> None:
    """``dZ = dY * relu_family'(Z)``; the three arrays have one shape and dtype."""
    if dZ.size == 0:  # nothing to write: launch nothing
        return
    constants = _relu_constants(Z.dtype, negative_slope, max_value, threshold)
    launch(_relu_kernels(Z.dtype)[1], grid_for(Z.size), *_flat(dY, Z, dZ), *constants)


def elu(Z: Any, Y: Any, *, alpha: float) -> None:
    """ELU of ``Z`` into ``Y`` (same shape and dtype): ``z`` where ``z > 0``, else
    ``alpha * (exp(z) - 1)``."""
    if Y.size == 0:  # nothing to write: launch nothing
        return
    alpha_ = scalar(compute_dtype(Z.dtype))(alpha)
    launch(_elu_kernels(Z.dtype)[0], grid_for(Z.size), *_flat(Z, Y), alpha_)


def backprop_elu(dY: Any, Z: Any, dZ: Any, *, alpha: float) -> None:
    """``dZ = dY * (1 if z > 0 else alpha * exp(z))``; one shape and dtype."""
    if dZ.size == 0:  # nothing to write: launch nothing
        return
    alpha_ = scalar(compute_dtype(Z.dtype))(alpha)
    launch(_elu_kernels(Z.dtype)[1], grid_for(Z.size), *_flat(dY, Z, dZ), alpha_)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel of the module, for each dtype (float16 included), as launched."""
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        flat, s = array(dtype, 1), numba_type(compute_dtype(dtype))
        short = dtype.name.replace("float", "f")
        relu_forward, relu_backward = _relu_kernels(dtype)
        elu_forward, elu_backward = _elu_kernels(dtype)
        yield f"relu_family[{short}]", relu_forward, (flat, flat, s, s, s)
        yield f"backprop_relu_family[{short}]", relu_backward, (flat, flat, flat, s, s, s)
        yield f"elu[{short}]", elu_forward, (flat, flat, s)
        yield f"backprop_elu[{short}]", elu_backward, (flat, flat, flat, s)
