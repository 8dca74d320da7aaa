"""Parametric ReLU, ``where(X > 0, X, alpha * X)`` with one ``alpha`` per column, and its gradient.

The forward pass is elementwise over the flat array. The backward pass writes
``dX`` and sums ``alpha``'s gradient over the rows in the same kernel, in the
coalesced, deterministic column layout of ``dense_backward.py`` (a block is 32
columns by 8 rows of threads; a second pass adds the block rows' partials).
Without ``dalpha`` (a frozen layer) the backward pass is elementwise, as the forward.

Float16 arrays (a mixed-precision layer's) are loaded into float32, computed and summed
in float32 (partial rows included, ``launch_with_column_sums``), and rounded once when
stored.
"""

from __future__ import annotations

import functools
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
    scalar,
)
from .dense_backward import ROW_THREADS, STRIP, launch_with_column_sums, strip_fold


@functools.cache
def _forward_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))  # float16 loads to float32; a no-op otherwise
    zero = scalar(compute_dtype(dtype))(0.0)

    @cuda.jit
    def prelu_forward_kernel(X, alpha, Y):
        """Y = where(X > 0, X, alpha * X) over (N, O), alpha (O,), flat and coalesced."""
        N, O = X.shape
        start = cuda.grid(1)
        for k in range(start, N * O, cuda.gridsize(1)):
            i = k // O
            j = k - i * O
            x = widen(X[i, j])
            Y[i, j] = x if x > zero else widen(alpha[j]) * x

    return prelu_forward_kernel


@functools.cache
def _backward_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))
    zero = scalar(compute_dtype(dtype))(0.0)
    fold = strip_fold(compute_dtype(dtype))

    @cuda.jit
    def prelu_backward_kernel(dY, X, alpha, dX, partial):
        """dX = where(X > 0, dY, alpha * dY); partial[y, j] = sum of where(X > 0, 0, dY * X)."""
        N, O = X.shape
        j = cuda.blockIdx.x * STRIP + cuda.threadIdx.x
        acc = zero
        if j < O:
            a = widen(alpha[j])
            step = cuda.gridDim.y * ROW_THREADS
            for i in range(cuda.blockIdx.y * ROW_THREADS + cuda.threadIdx.y, N, step):
                x, dy = widen(X[i, j]), widen(dY[i, j])
                if x > zero:
                    dX[i, j] = dy
                else:
                    dX[i, j] = a * dy
                    acc += dy * x
        fold(acc, partial, j)

    return prelu_backward_kernel


@functools.cache
def _input_gradient_kernel(dtype: Any) -> Any:
    widen = scalar(compute_dtype(dtype))
    zero = scalar(compute_dtype(dtype))(0.0)

    @cuda.jit
    def prelu_input_gradient_kernel(dY, X, alpha, dX):
        """dX = where(X > 0, dY, alpha * dY) over (N, O), flat and coalesced (no dalpha)."""
        N, O = X.shape
        start = cuda.grid(1)
        for k in range(start, N * O, cuda.gridsize(1)):
            i = k // O
            j = k - i * O
            dy = widen(dY[i, j])
            dX[i, j] = dy if widen(X[i, j]) > zero else widen(alpha[j]) * dy

    return prelu_input_gradient_kernel


def prelu_forward(X: Any, alpha: Any, Y: Any) -> None:
    """Write ``Y = where(X > 0, X, alpha * X)``, ``alpha`` broadcast along the rows.

    Args:
        X: float16, float32 or float64 device array ``(N, O)``, C-contiguous.
        alpha: device array ``(O,)`` of the dtype of ``X``.
        Y: device array of the shape and dtype of ``X`` (may be ``X`` itself).
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    launch(_forward_kernel(X.dtype), grid_for(X.size), X, alpha, Y)


def prelu_backward(dY: Any, X: Any, alpha: Any, dX: Any, dalpha: Any | None) -> None:
    """Write ``dX = where(X > 0, dY, alpha * dY)`` and ``dalpha = sum(where(X > 0, 0, dY * X))``.

    Without ``dalpha`` (a frozen layer) one elementwise kernel writes ``dX`` alone.

    Args:
        dY: float16, float32 or float64 device array ``(N, O)``, the gradient of the output.
        X: the forward pass's input, shape and dtype of ``dY``.
        alpha: device array ``(O,)`` of that dtype.
        dX: device array of the shape and dtype of ``X`` (may be ``dY`` itself).
        dalpha: device array ``(O,)`` of that dtype, receives the column sums over the
            rows; or None.
    """
    if dalpha is None:
        if dX.size == 0:  # nothing to write: launch nothing
            return
        launch(_input_gradient_kernel(X.dtype), grid_for(X.size), dY, X, alpha, dX)
        return
    launch_with_column_sums(_backward_kernel(X.dtype), (dY, X, alpha, dX), X.shape, dalpha)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel this module launches, float16 included (the column sums' second pass is
    dense_backward's). The float16 backward writes ``dalpha`` itself (one block row) or
    float32 partial rows (``prelu_backward[f16,partials]``)."""
    for dtype in (*FLOAT_DTYPES, *HALF_DTYPES):
        vector, rows = array(dtype, 1), array(dtype, 2)
        short = dtype.name.replace("float", "f")
        yield f"prelu_forward[{short}]", _forward_kernel(dtype), (rows, vector, rows)
        yield (
            f"prelu_backward[{short}]",
            _backward_kernel(dtype),
            (rows, rows, vector, rows, rows),
        )
        yield (
            f"prelu_input_gradient[{short}]",
            _input_gradient_kernel(dtype),
            (rows, rows, vector, rows),
        )
    for dtype in HALF_DTYPES:
        vector, rows, partials = array(dtype, 1), array(dtype, 2), array(compute_dtype(dtype), 2)
        yield (
            f"prelu_backward[{dtype.name.replace('float', 'f')},partials]",
            _backward_kernel(dtype),
            (rows, rows, vector, rows, partials),
        )
