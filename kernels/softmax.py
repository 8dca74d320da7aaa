"""Row-wise softmax, log-softmax and their gradients, and the fused cross-entropy gradients.

Layout of the row kernels: a block of ``THREADS`` threads is cut into groups of
``width`` consecutive threads, one group per row, where ``width`` is the
smallest power of two not below the row length, capped at ``THREADS``. The
library's common case, 10-wide rows, then runs 16 rows per block with 10 of
every 16 lanes busy (one block per row would leave 246 of 256 idle), and the
16 lanes of a group read one row's consecutive elements, so a warp reads two
whole adjacent rows. Rows of 256 or more get the whole block and each thread
strides over ``O / THREADS`` columns, so rows of a few thousand elements are
read with every access coalesced. Row maxima and sums are reduced through
shared memory by a tree within each group, in a fixed order, so results are
bit-identical from run to run. Each row is read two or three times; between
passes it stays in L1/L2, and recomputing ``exp`` costs less than a write.

The cross-entropy gradients are plain elementwise passes over flat arrays.

Softmax, log-softmax and softmax backward also take float16 arrays (a mixed-precision
layer's): they load float16, compute in float32 (the maxima, sums and shared-memory trees
too) and round once when they store. The cross-entropy gradients belong to the loss,
which runs in the model's float32 or float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from numba import cuda, types

from .common import (
    FLOAT_DTYPES,
    HALF_DTYPES,
    THREADS,
    PtxVariant,
    array,
    compute_dtype,
    grid_for,
    launch,
    numba_type,
    scalar,
)
from .rows import group_reductions, row_grid


@functools.cache
def _softmax_kernel(dtype: Any, log: bool) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)  # float16 loads to float32; a no-op otherwise
    f = scalar(compute)
    zero, neg_inf = f(0.0), f(-np.inf)
    element = numba_type(compute)
    group_sum, _, group_max, _ = group_reductions(compute)

    @cuda.jit
    def softmax_kernel(Z, Y, width):
        """Y = softmax(Z) (or log-softmax) over the rows of (N, O) arrays, ``width`` lanes a row."""
        s = cuda.shared.array(THREADS, element)
        N, O = Z.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        # The loop bounds are the same for the whole block, so every thread
        # reaches every syncthreads; rows past N only contribute identities.
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            m = neg_inf
            if i < N:
                for j in range(lane, O, width):
                    m = max(m, widen(Z[i, j]))
            m = group_max(s, t, lane, width, m)
            total = zero
            if i < N:
                for j in range(lane, O, width):
                    total += math.exp(widen(Z[i, j]) - m)
            total = group_sum(s, t, lane, width, total)
            if i < N:
                if log:
                    # (Z - m) first: folding m into log(total) would round
                    # log(total) to the precision of m's magnitude.
                    log_total = math.log(total)
                    for j in range(lane, O, width):
                        Y[i, j] = (widen(Z[i, j]) - m) - log_total
                else:
                    for j in range(lane, O, width):
                        Y[i, j] = math.exp(widen(Z[i, j]) - m) / total

    return softmax_kernel


@functools.cache
def _softmax_backward_kernel(dtype: Any) -> Any:
    compute = compute_dtype(dtype)
    widen = scalar(compute)
    zero = scalar(compute)(0.0)
    element = numba_type(compute)
    group_sum = group_reductions(compute)[0]

    @cuda.jit
    def softmax_backward_kernel(dY, Y, dZ, width):
        """dZ = Y * (dY - rowsum(dY * Y)) over (N, O) arrays, ``width`` lanes a row."""
        s = cuda.shared.array(THREADS, element)
        N, O = Y.shape
        t = cuda.threadIdx.x
        lane, group = t % width, t // width
        rows = cuda.blockDim.x // width
        for first in range(cuda.blockIdx.x * rows, N, cuda.gridDim.x * rows):
            i = first + group
            total = zero
            if i < N:
                for j in range(lane, O, width):
                    total += widen(dY[i, j]) * widen(Y[i, j])
            total = group_sum(s, t, lane, width, total)
            if i < N:
                for j in range(lane, O, width):
                    dZ[i, j] = widen(Y[i, j]) * (widen(dY[i, j]) - total)

    return softmax_backward_kernel


@functools.cache
def _difference_kernel(dtype: Any) -> Any:
    @cuda.jit
    def scaled_difference_kernel(P, Y, scale, dZ):
        """dZ = (P - Y) * scale over flat float arrays of one size."""
        start = cuda.grid(1)
        for k in range(start, P.size, cuda.gridsize(1)):
            dZ[k] = (P[k] - Y[k]) * scale

    return scaled_difference_kernel


@functools.cache
def _label_difference_kernel(dtype: Any) -> Any:
    one = scalar(dtype)(1.0)

    @cuda.jit
    def label_difference_kernel(P, labels, scale, dZ):
        """dZ = (P - onehot(labels)) * scale over (N, O) arrays, flat and coalesced."""
        N, O = P.shape
        start = cuda.grid(1)
        for k in range(start, N * O, cuda.gridsize(1)):
            i = k // O
            j = k - i * O
            p = P[i, j]
            dZ[i, j] = (p - one) * scale if labels[i] == j else p * scale

    return label_difference_kernel


def softmax(Z: Any, Y: Any) -> None:
    """Write ``Y = exp(Z - rowmax) / rowsum(exp(Z - rowmax))``, row by row.

    Args:
        Z: float16, float32 or float64 device array ``(N, O)``, C-contiguous.
        Y: device array of the shape and dtype of ``Z`` (may be ``Z`` itself).
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads, width = row_grid(*Z.shape)
    launch(_softmax_kernel(Z.dtype, False), (blocks, threads), Z, Y, width)


def log_softmax(Z: Any, Y: Any) -> None:
    """Write ``Y = Z - rowmax - log(rowsum(exp(Z - rowmax)))``, row by row.

    Args:
        Z: float16, float32 or float64 device array ``(N, O)``, C-contiguous.
        Y: device array of the shape and dtype of ``Z`` (may be ``Z`` itself).
    """
    if Y.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads, width = row_grid(*Z.shape)
    launch(_softmax_kernel(Z.dtype, True), (blocks, threads), Z, Y, width)


def softmax_backward(dY: Any, Y: Any, dZ: Any) -> None:
    """Write ``dZ = Y * (dY - rowsum(dY * Y))``, softmax's Jacobian times ``dY``.

    Args:
        dY: float16, float32 or float64 device array ``(N, O)``, the gradient of the
            softmax output.
        Y: the softmax output, shape and dtype of ``dY``.
        dZ: device array of that shape and dtype (may be ``dY`` itself).
    """
    if dZ.size == 0:  # nothing to write: launch nothing
        return
    blocks, threads, width = row_grid(*Y.shape)
    launch(_softmax_backward_kernel(Y.dtype), (blocks, threads), dY, Y, dZ, width)


def softmax_crossentropy_gradient(P: Any, Y_true: Any, dZ: Any) -> None:
    """Write ``dZ = (P - Y) / N``, the fused gradient of softmax and categorical cross-entropy.

    Args:
        P: float32 or float64 device array ``(N, O)``, the softmax probabilities.
        Y_true: float one-hot targets ``(N, O)`` of the dtype of ``P``, or int64
            class labels ``(N,)``.
        dZ: device array of the shape and dtype of ``P`` (may be ``P`` itself).
    """
    if dZ.size == 0:  # nothing to write: launch nothing
        return
    N = P.shape[0]
    scale = scalar(P.dtype)(1.0 / N)
    if Y_true.ndim == 1:
        kernel = _label_difference_kernel(P.dtype)
        launch(kernel, grid_for(P.size), P, Y_true, scale, dZ)
    else:
        flat = P.reshape(P.size), Y_true.reshape(Y_true.size), dZ.reshape(dZ.size)
        launch(_difference_kernel(P.dtype), grid_for(P.size), flat[0], flat[1], scale, flat[2])


def sigmoid_crossentropy_gradient(P: Any, Y_true: Any, dZ: Any) -> None:
    """Write ``dZ = (P - Y) / (N * O)``, the fused gradient of sigmoid and binary cross-entropy.

    Args:
        P: float32 or float64 device array ``(N, O)``, the sigmoid outputs.
        Y_true: float targets of the shape and dtype of ``P``.
        dZ: device array of the shape and dtype of ``P`` (may be ``P`` itself).
    """
    if dZ.size == 0:  # nothing to write: launch nothing
        return
    scale = scalar(P.dtype)(1.0 / P.size)
    p, y, dz = P.reshape(P.size), Y_true.reshape(Y_true.size), dZ.reshape(dZ.size)
    launch(_difference_kernel(P.dtype), grid_for(P.size), p, y, scale, dz)


def _row_variants(dtype: np.dtype) -> Iterator[PtxVariant]:
    """Softmax, log-softmax and softmax backward in ``dtype``, with their argument types."""
    rows = array(dtype, 2)
    short = dtype.name.replace("float", "f")
    width = types.int64
    yield f"softmax[{short}]", _softmax_kernel(dtype, False), (rows, rows, width)
    yield f"log_softmax[{short}]", _softmax_kernel(dtype, True), (rows, rows, width)
    yield f"softmax_backward[{short}]", _softmax_backward_kernel(dtype), (rows, rows, rows, width)


def _gradient_variants(dtype: np.dtype) -> Iterator[PtxVariant]:
    """The fused cross-entropy gradients in ``dtype``, with their argument types."""
    flat, rows = array(dtype, 1), array(dtype, 2)
    short = dtype.name.replace("float", "f")
    scale = numba_type(dtype)
    # The one-hot softmax and the sigmoid cross-entropy gradients share this kernel.
    yield f"scaled_difference[{short}]", _difference_kernel(dtype), (flat, flat, scale, flat)
    yield (
        f"softmax_crossentropy_gradient[labels,{short}]",
        _label_difference_kernel(dtype),
        (rows, array(np.int64, 1), scale, rows),
    )


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel this module launches, for each dtype, with its argument types: the
    row kernels in float16 too (a layer's), the loss gradients in float32 and float64."""
    for dtype in FLOAT_DTYPES:
        yield from _row_variants(dtype)
        yield from _gradient_variants(dtype)
    for dtype in HALF_DTYPES:
        yield from _row_variants(dtype)
