"""The first half of a dense layer's backward pass: ``dZ = act'(Z) * dY`` and ``db = sum(dZ)``.

One kernel computes ``dZ`` and its column sums together, so ``dZ`` is read
from memory once. Layout: a block is ``STRIP`` consecutive columns by
``ROW_THREADS`` rows of threads (``threadIdx.x`` along the columns, so each
warp reads 32 consecutive elements of one row: coalesced). Block row ``y`` of
``R`` block rows walks rows ``y * ROW_THREADS + threadIdx.y``, stepping by
``R * ROW_THREADS``; each thread adds its rows in order, then the block folds
its ``ROW_THREADS`` partial sums through shared memory in a fixed order and
writes one partial row. With ``R == 1`` that row is ``db`` itself; otherwise a
second pass sums the ``R`` partial rows per column, in order. No atomics, so
the same input gives bit-identical sums on every run.

Softmax's Jacobian couples a row's elements, so ``softmax_gradient_and_bias``
is two kernels: the row pass of ``softmax.py``, then the column sums.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from numba import cuda

from . import activations, softmax
from .activations import ELEMENTWISE, scalar_functions
from .common import (
    FLOAT_DTYPES,
    MAX_BLOCKS,
    PtxVariant,
    array,
    device_function,
    launch,
    numba_type,
    scalar,
    scratch,
)

# Columns per block: one warp reads 32 consecutive elements of a row, a whole
# 128-byte line in float32 (two in float64).
STRIP = 32
# Rows of threads per block: 32 x 8 = 256 threads, as common.THREADS; the fold
# buffer is 8 x 32 elements, 1 KiB (float32) or 2 KiB (float64) of shared memory.
ROW_THREADS = 8
# At least this many rows per block row (8 per thread), so the fold and the
# partial row a block writes cost little next to the rows it reads.
MIN_ROWS_PER_BLOCK = 64
# At most this many block rows: the partials then hold at most 256 rows, and the
# second pass adds at most 256 / ROW_THREADS = 32 of them per thread.
MAX_ROW_BLOCKS = 256


def row_blocks(N: int, O: int) -> int:
    """Block rows for a column reduction over ``(N, O)``: enough to fill the GPU, at least 1."""
    strips = -(-O // STRIP)
    wanted = -(-N // MIN_ROWS_PER_BLOCK)
    return max(1, min(wanted, MAX_ROW_BLOCKS, MAX_BLOCKS // max(1, strips)))


@functools.cache
def strip_fold(dtype: Any) -> Any:
    """Device function ``fold(acc, partial, j)``: a block's column partial sums, in fixed order.

    Every thread of a ``(STRIP, ROW_THREADS)`` block passes its running sum
    ``acc`` for column ``j``; the threads of row 0 add the other rows' sums in
    order and write ``partial[blockIdx.y, j]``. All threads must call it: it
    holds ``cuda.syncthreads()``.
    """
    element = numba_type(dtype)

    def fold(acc, partial, j):
        s = cuda.shared.array((ROW_THREADS, STRIP), element)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        s[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and j < partial.shape[1]:
            for k in range(1, ROW_THREADS):
                acc += s[k, tx]
            partial[cuda.blockIdx.y, j] = acc

    return device_function(fold)


@functools.cache
def _column_sum_kernel(dtype: Any) -> Any:
    zero = scalar(dtype)(0.0)
    fold = strip_fold(dtype)

    @cuda.jit
    def column_sum_kernel(A, partial):
        """partial[y, j] = sum of A[:, j] over the rows of block row y, for (N, O) A."""
        N, O = A.shape
        j = cuda.blockIdx.x * STRIP + cuda.threadIdx.x
        acc = zero
        if j < O:
            step = cuda.gridDim.y * ROW_THREADS
            for i in range(cuda.blockIdx.y * ROW_THREADS + cuda.threadIdx.y, N, step):
                acc += A[i, j]
        fold(acc, partial, j)

    return column_sum_kernel


@functools.cache
def _activation_bias_kernel(dtype: Any, name: str) -> Any:
    function = scalar_functions(dtype)[name]
    zero = scalar(dtype)(0.0)
    fold = strip_fold(dtype)

    @cuda.jit
    def activation_gradient_bias_kernel(dY, Z, dZ, partial):
        """dZ = f'(Z) * dY over (N, O); partial[y, j] = its column sums over block row y."""
        N, O = Z.shape
        j = cuda.blockIdx.x * STRIP + cuda.threadIdx.x
        acc = zero
        if j < O:
            step = cuda.gridDim.y * ROW_THREADS
            for i in range(cuda.blockIdx.y * ROW_THREADS + cuda.threadIdx.y, N, step):
                g = dY[i, j] * function(Z[i, j])[1]
                dZ[i, j] = g
                acc += g
        fold(acc, partial, j)

    return activation_gradient_bias_kernel


def _partials_buffer(dtype: Any, R: int, O: int) -> Any:
    """The first pass's ``(R, O)`` partial sums, in a scratch buffer reused by every call."""
    return scratch("column_partials", R * O, dtype).reshape(R, O)


def launch_with_column_sums(kernel: Any, args: tuple[Any, ...], shape: Any, out: Any) -> None:
    """Launch a strip kernel ``kernel(*args, partial)`` and reduce its partials into ``out``.

    Args:
        kernel: a kernel over an ``(N, O)`` array in ``(STRIP, ROW_THREADS)``
            blocks that ends with ``strip_fold(...)(acc, partial, j)``.
        args: its arguments before ``partial``.
        shape: ``(N, O)``, the rows and columns it walks.
        out: float device array ``(O,)``; receives the column sums (zeros when
            ``N == 0``). Nothing is launched when ``O == 0``.
    """
    N, O = shape
    if O == 0:  # a (0, R) grid is invalid on a GPU; out and the kernel's outputs are empty
        return
    R = row_blocks(N, O)
    strips = -(-O // STRIP)
    threads = (STRIP, ROW_THREADS)
    final = out.reshape(1, O)
    partial = final if R == 1 else _partials_buffer(out.dtype, R, O)
    launch(kernel, ((strips, R), threads), *args, partial)
    if R > 1:
        launch(_column_sum_kernel(out.dtype), ((strips, 1), threads), partial, final)


def column_sums(A: Any, out: Any) -> None:
    """Write ``out = sum(A, axis=0)``, deterministically (two passes when ``A`` is tall).

    Args:
        A: float32 or float64 device array ``(N, O)``, C-contiguous.
        out: device array ``(O,)`` of the dtype of ``A``.
    """
    launch_with_column_sums(_column_sum_kernel(A.dtype), (A,), A.shape, out)


def activation_gradient_and_bias(activation: str, dY: Any, Z: Any, dZ: Any, db: Any | None) -> None:
    """Write ``dZ = activation'(Z) * dY`` and, unless ``db`` is None, ``db = sum(dZ, axis=0)``.

    Args:
        activation: a name in ``activations.ELEMENTWISE``.
        dY: float32 or float64 device array ``(N, O)``, the gradient of the activation's output.
        Z: the activation's input, shape and dtype of ``dY``.
        dZ: device array of that shape and dtype; may be ``dY`` itself (for
            ``"linear"`` nothing is then written to it).
        db: device array ``(O,)`` of that dtype, or None.
    """
    if db is None:
        if not (activation == "linear" and dZ is dY):
            activations.backward(activation, dY, Z, dZ)
    elif activation == "linear" and dZ is dY:
        column_sums(dY, db)
    else:
        kernel = _activation_bias_kernel(Z.dtype, activation)
        launch_with_column_sums(kernel, (dY, Z, dZ), Z.shape, db)


def softmax_gradient_and_bias(dY: Any, Y: Any, dZ: Any, db: Any | None) -> None:
    """Write ``dZ = Y * (dY - rowsum(dY * Y))`` and, unless ``db`` is None, ``db = sum(dZ)``.

    Two kernels (the softmax row pass, then the column sums), as the row sum
    must be complete before any element of ``dZ`` is known.

    Args:
        dY: float32 or float64 device array ``(N, O)``, the gradient of the softmax output.
        Y: the softmax output, shape and dtype of ``dY``.
        dZ: device array of that shape and dtype (may be ``dY`` itself).
        db: device array ``(O,)`` of that dtype, or None.
    """
    softmax.softmax_backward(dY, Y, dZ)
    if db is not None:
        column_sums(dZ, db)


def ptx_variants() -> Iterator[PtxVariant]:
    """Every kernel the launchers here launch, for each dtype and activation."""
    for dtype in FLOAT_DTYPES:
        flat, rows = array(dtype, 1), array(dtype, 2)
        short = dtype.name.replace("float", "f")
        yield f"column_sums[{short}]", _column_sum_kernel(dtype), (rows, rows)
        for name in ELEMENTWISE:
            yield (
                f"activation_gradient_and_bias[{name},{short}]",
                _activation_bias_kernel(dtype, name),
                (rows, rows, rows, rows),
            )
            # Without db the launcher runs the elementwise backward kernel of activations.py.
            yield (
                f"activation_gradient[{name},{short}]",
                activations._backward_kernel(dtype, name),
                (flat, flat, flat),
            )
